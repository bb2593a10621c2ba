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
# iptables: Debian's package carries both backends (legacy and nft, nft chosen
# by default). Rules must land in the backend the host's kube-proxy and Docker
# use, so iptables, iptables-save, iptables-restore and the ip6tables ones are
# links to contrib/iptables-mode.sh in /usr/local/sbin (ahead of /usr/sbin on
# PATH): the first call looks at the host's tables, sets the alternatives to
# legacy or nft and from then on the real commands run.
#
#   docker build -t udpoverlay:0.1.0 .          # the tag deploy/udpoverlay-etcd.yml names
#   docker run --rm udpoverlay:0.1.0 --version  # ... (fast path: cython)
#
# The base image is a tag: to pin it, pass its digest
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
# The daemon needs the host network, CAP_NET_ADMIN + CAP_NET_RAW (or
# privileged), /dev/net/tun and /run/flannel: see deploy/udpoverlay-etcd.yml.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Debian's versions are fixed by the base image's release; pinning exact
# package versions would break the build at the next security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev liburing-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY _fastpath ./_fastpath
COPY udpoverlay ./udpoverlay
COPY contrib ./contrib
RUN sh contrib/build-wheels.sh /wheels

FROM ${PYTHON_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables \
 && rm -rf /var/lib/apt/lists/* \
 && iptables-legacy-save --version && iptables-nft-save --version
COPY --chmod=0755 contrib/iptables-mode.sh /usr/local/sbin/iptables-mode
RUN for cmd in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
        ln -s iptables-mode "/usr/local/sbin/$cmd"; \
    done
# /wheels holds exactly one udpoverlay, the one the build stage made: no pin needed.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels udpoverlay \
 && udpoverlay --version
ENTRYPOINT ["udpoverlay"]
CMD ["run"]
