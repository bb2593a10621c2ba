"""Packaging that cannot run here in full (no `docker build`, no systemd as
PID 1): what can be checked is. The Dockerfile's build stage runs exactly
contrib/build-wheels.sh (which tests/integration/ops/test_wheel.py runs),
its runtime stage installs from those wheels alone and carries no
compiler; the DaemonSet parses and probes /healthz and /readyz on the port
the daemon is told; the unit file is Type=notify with a reload and passes
`systemd-analyze verify`; the package list installs ops/ and static/; the
licence is declared as setuptools wants it now (an SPDX expression and
license-files: no deprecation warning) and its file reaches the sdist, the
wheel (tests/integration/ops/test_wheel.py) and the image's build stage;
aetcd is bounded above (cluster/store/etcd.py reads its private attributes).
deploy/ and the image's iptables selector: test_deploy.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

from tests.support.requirements import require
from udpoverlay.config import envflags

ROOT = Path(__file__).resolve().parents[3]


def _stages() -> dict[str, list[str]]:
    """Dockerfile stage name -> its instructions (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = []
        elif current is not None:
            stages[current].append(line)
    return stages


def test_dockerfile_build_and_runtime_stages():
    stages = _stages()
    assert list(stages) == ["build", "runtime"]
    build, runtime = " ".join(stages["build"]), " ".join(stages["runtime"])
    assert "contrib/build-wheels.sh /wheels" in build
    assert "gcc" in build and "gcc" not in runtime and "Cython" not in runtime
    assert re.search(r"pip install .*--no-index --find-links /wheels udpoverlay", runtime)
    assert "from=build" in runtime and "iptables" in runtime and "nftables" in runtime
    assert 'ENTRYPOINT ["udpoverlay"]' in stages["runtime"]
    # every path the build stage copies exists
    for line in stages["build"]:
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    assert (ROOT / "contrib/build-wheels.sh").stat().st_mode & 0o111
    # what pyproject.toml names reaches the build stage (setuptools fails on a
    # missing license file)
    copied = {src for line in stages["build"] if line.startswith("COPY")
              for src in line.split()[1:-1]}
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {meta["readme"], *meta["license-files"], "pyproject.toml", "setup.py"} <= copied


def test_licence_declared_and_shipped():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    # an SPDX expression and license-files (setuptools >= 77); the TOML table is deprecated
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert any(r.replace(" ", "").startswith("setuptools>=77")
               for r in meta["build-system"]["requires"])
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000   # the full text
    assert "include LICENSE" in (ROOT / "MANIFEST.in").read_text().splitlines()


def test_private_internals_are_bounded_above():
    from packaging.requirements import Requirement
    from packaging.version import Version
    deps = {r.name: r for r in map(Requirement, tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    # EtcdClient subclasses aetcd 1.0's Client over its private attributes
    assert "class EtcdClient(aetcd.Client)" in (
        ROOT / "udpoverlay/cluster/store/etcdclient.py").read_text()
    aetcd = deps["aetcd"].specifier
    assert Version("1.0.0") in aetcd and Version("1.1.0") not in aetcd


def test_daemonset_parses_and_probes_the_endpoint():
    docs = list(yaml.safe_load_all((ROOT / "deploy/udpoverlay-etcd.yml").read_text()))
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    [c] = pod["containers"]
    assert c["securityContext"]["privileged"] is True
    args = c["args"]
    port = int(envflags.flag_value(args, "--healthz-port") or 0)
    assert port > 0
    [named] = [p for p in c["ports"] if p["name"] == c["livenessProbe"]["httpGet"]["port"]]
    assert named["containerPort"] == port
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["port"] == named["name"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/run/flannel"]]["hostPath"]["path"] == "/run/flannel"
    assert volumes[mounts["/dev/net/tun"]]["hostPath"]["type"] == "CharDevice"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLANNELD_ETCD_ENDPOINTS"].startswith("http")
    assert env["FLANNELD_SUBNET_FILE"] == "/run/flannel/subnet.env"
    assert ds["metadata"]["namespace"] == "kube-flannel"


def test_unit_file_and_env_example(tmp_path):
    unit = (ROOT / "contrib/udpoverlay.service").read_text()
    keys = dict(line.split("=", 1) for line in unit.splitlines()
                if "=" in line and not line.startswith("#"))
    assert keys["Type"] == "notify" and keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--env-file /etc/udpoverlay/udpoverlay.env" in keys["ExecStart"]
    # EnvironmentFile= would freeze the values at start, above the file: no reload
    assert "EnvironmentFile" not in keys
    caps = keys["CapabilityBoundingSet"].split()
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW"} <= set(caps)
    assert keys["DeviceAllow"] == "/dev/net/tun rw"
    example = envflags.read_env_file(str(ROOT / "contrib/udpoverlay.env"))
    assert example["FLANNELD_HEALTHZ_PORT"] and example["FLANNELD_V"] == "0"
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze")
    local = tmp_path / "udpoverlay.service"
    local.write_text(unit.replace("/opt/udpoverlay/bin/udpoverlay", shutil.which("true") or "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_list_and_dependencies():
    from setuptools import find_packages
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = meta["tool"]["setuptools"]["packages"]["find"]["include"]
    pkgs = set(find_packages(str(ROOT), include=include))
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".")
               for p in (ROOT / "udpoverlay").rglob("__init__.py")}
    # every runtime package is installed; the lab, tests and benchmarks are not
    assert pkgs == on_disk and "udpoverlay.config" in pkgs
    assert (ROOT / "lab" / "demo.py").is_file()
    assert any(d.startswith("prometheus-client") for d in meta["project"]["dependencies"])
    assert any(d.startswith("PyYAML") for d in meta["project"]["optional-dependencies"]["test"])
