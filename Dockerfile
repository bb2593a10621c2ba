# udpoverlay's container image (etcd mode, as kube-flannel's flanneld image).
#
# Stage "build": contrib/build-wheels.sh makes udpoverlay's wheel with the
# compiled fast path plus a wheel of every dependency (CI runs this same
# script: tests/integration/ops/test_wheel.py). Stage "runtime": those wheels
# installed with no compiler, no Cython and no index, plus only what the daemon
# runs at run time: iptables (iptables-restore/-save, flanneld's default rules)
# and nftables (`nft`, with EnableNFTables). Netlink is spoken directly
# (pyroute2): no iproute2 needed.
#
#   docker build -t udpoverlay .
#   docker run --rm udpoverlay --version        # ... (fast path: cython)
#
# The daemon needs the host network, CAP_NET_ADMIN + CAP_NET_RAW (or
# privileged), /dev/net/tun and /run/flannel: see deploy/udpoverlay-etcd.yml.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev liburing-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY _fastpath ./_fastpath
COPY udpoverlay ./udpoverlay
COPY contrib ./contrib
RUN sh contrib/build-wheels.sh /wheels

FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels udpoverlay \
 && udpoverlay --version
ENTRYPOINT ["udpoverlay"]
CMD ["run"]
