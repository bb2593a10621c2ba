"""What an operator meets at start-up, without root: a fatal error is one
line in the log's own form (priority err under journald, a JSON object
under --log-format json, asked for on the command line, in FLANNELD_* or
in the env file, also for argparse's errors), exit 2 for a bad setting;
the unit file does not loop on exit 2, holds kubelet back at most
TimeoutStartSec, has a watchdog, writes only its own directories and
passes `systemd-analyze verify` with a real ExecStart; the help texts
point the way."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.requirements import require

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "contrib/udpoverlay.service"


def _cli(tmp_path, args: list[str], env: dict[str, str] | None = None, *,
         journald: bool = False) -> tuple[int, list[str]]:
    """Run the CLI with stderr in a file (as journald's stream would be,
    JOURNAL_STREAM naming it when `journald`); (exit status, stderr lines)."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("FLANNELD_") and k != "JOURNAL_STREAM"}
    environ.update(env or {}, PYTHONPATH=str(ROOT))
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        if journald:
            st = os.fstat(f.fileno())
            environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        r = subprocess.run([sys.executable, "-m", "udpoverlay", *args], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=f, env=environ, cwd=str(ROOT),
                           timeout=60)
    return r.returncode, err.read_text().splitlines()


NO_MODE = ["run", "--public-ip", "198.18.0.1"]
BAD_FLAG = ["run", "--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16", "--bogus"]
BAD_VALUE = ["run", "--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16", "--mtu", "10"]


@pytest.mark.parametrize("args", [NO_MODE, BAD_FLAG, BAD_VALUE, ["bogus-command"]])
def test_fatal_error_under_journald_is_one_line_at_priority_err(tmp_path, args):
    code, lines = _cli(tmp_path, args, journald=True)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("<3>ERROR "), lines


@pytest.mark.parametrize("args, env, needle", [
    (BAD_FLAG, {"FLANNELD_LOG_FORMAT": "json"}, "unrecognized"),              # argparse's
    (["run", "-log-format=json", "--subnet", "198.19.1.0/24"], {}, "--network"),
    (NO_MODE + ["--log-format", "json"], {}, "--etcd-endpoints"),
    (BAD_VALUE + ["--log-format=json"], {}, "--mtu"),
])
def test_fatal_error_in_json_is_one_object(tmp_path, args, env, needle):
    code, lines = _cli(tmp_path, args, env, journald=True)     # json wins over journald
    assert code == 2, lines
    assert len(lines) == 1, lines
    doc = json.loads(lines[0])
    assert doc["level"] == "error" and doc["exit_status"] == 2, doc
    assert needle in doc["msg"] and doc["time"].endswith("Z"), doc


def test_fatal_error_in_json_from_the_env_file(tmp_path):
    """The unit's case: --log-format and the mistake both in the env file."""
    env_file = tmp_path / "udpoverlay.env"
    env_file.write_text("FLANNELD_LOG_FORMAT=json\nFLANNELD_SUBNET_LEASE_RENEW_MARGIN=0\n"
                        "FLANNELD_ETCD_ENDPOINTS=http://198.18.0.254:1\n")
    code, lines = _cli(tmp_path, ["run", "--env-file", str(env_file)])
    assert code == 2 and len(lines) == 1, lines
    doc = json.loads(lines[0])
    assert "FLANNELD_SUBNET_LEASE_RENEW_MARGIN" in doc["msg"] and doc["exit_status"] == 2
    env_file.write_text("FLANNELD_LOG_FORMAT=json\nFLANNELD_IFACE='unterminated\n")
    code, lines = _cli(tmp_path, ["run", "--env-file", str(env_file)])
    assert code == 2 and len(lines) == 1, lines        # the file itself is bad: text
    assert lines[0].startswith("udpoverlay: error: ") and str(env_file) in lines[0]


def test_fatal_error_in_a_file_or_on_a_terminal_stays_plain(tmp_path):
    code, lines = _cli(tmp_path, NO_MODE)
    assert code == 2 and len(lines) == 1
    assert lines[0] == ("udpoverlay: error: nothing to run: give --subnet and --network "
                        "(static mode, with --peer or --peers-file) or --etcd-endpoints "
                        "(cluster mode, flannel's etcd layout); see udpoverlay run --help")


def test_help_points_to_run_help_and_status_help_has_no_history():
    from udpoverlay.cli import build_parser
    parser = build_parser()
    top = parser.format_help()
    assert "udpoverlay run --help" in " ".join(top.split())
    status = " ".join(parser.status_parser.format_help().split())
    assert "while it starts" in status and "names the underlay" not in status
    run = " ".join(parser.run_parser.format_help().split())
    assert "--etcd-endpoints" in run and "exits 2" in run


def _unit() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    return keys


def _seconds(value: str) -> float:
    units = {"min": 60, "ms": 0.001, "s": 1, "h": 3600}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[:-len(suffix)]) * factor
    return float(value)


def test_unit_restart_and_ordering():
    k = _unit()
    # a bad setting (exit 2) is not restarted forever; other failures are
    assert k["Restart"] == ["always"] and k["RestartPreventExitStatus"] == ["2"]
    # ordered before kubelet/containerd, but holding them back a bounded time
    assert {"kubelet.service", "containerd.service"} <= set(k["Before"][0].split())
    assert "Requires" not in k and "RequiredBy" not in k        # ordering only
    start = k["TimeoutStartSec"][0]
    assert start != "infinity" and 0 < _seconds(start) <= 180, start
    watchdog = _seconds(k["WatchdogSec"][0])
    assert 10 <= watchdog < _seconds(start)
    assert k["Type"] == ["notify"] and k["NotifyAccess"] == ["main"]


def test_unit_writes_only_its_own_directories():
    k = _unit()
    writable = " ".join(k["ReadWritePaths"]).split()
    assert "/run" not in writable and "/" not in writable, writable
    assert set(writable) <= {"/run/flannel", "/run/udpoverlay", "/run/xtables.lock"}
    assert set(k["RuntimeDirectory"][0].split()) == {"flannel", "udpoverlay"}
    assert k["ProtectSystem"] == ["strict"] and k["UMask"] == ["0077"]
    assert k["SystemCallFilter"] == ["@system-service"]
    assert k["SystemCallErrorNumber"] == ["EPERM"]
    assert all("flannel-io" not in d for d in k["Documentation"])


def test_unit_verifies_with_a_real_exec_start(tmp_path):
    """systemd-analyze verify with ExecStart at an installed udpoverlay
    (this venv's console script, else `python -m udpoverlay`)."""
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze")
    script = Path(sys.executable).with_name("udpoverlay")
    exe = f"{script}" if script.exists() else f"{sys.executable} -m udpoverlay"
    text = UNIT.read_text().replace("/opt/udpoverlay/bin/udpoverlay", exe)
    assert exe in text
    local = tmp_path / "udpoverlay.service"
    local.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
    # and it does catch a mistake (the check can fail)
    local.write_text(text.replace("RestartPreventExitStatus=2", "RestartPreventExitStatus=x"))
    r = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                       text=True, timeout=60)
    assert "Failed to parse value" in r.stderr and ": x" in r.stderr, r.stderr


def test_an_unexpected_error_is_one_json_record_and_exit_1(monkeypatch, capsys):
    import logging

    from udpoverlay import cli
    from udpoverlay.ops import logs
    from udpoverlay.static import mode as static

    def boom(opts):
        raise RuntimeError("boom")
    monkeypatch.setattr(static, "run", boom)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        code = cli.main(["run", "--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16",
                         "--log-format", "json"])
    finally:
        if logs.current.handler is not None:
            root.removeHandler(logs.current.handler)
        logs.current.handler, logs.current.fmt = None, "text"
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logs.set_verbosity(0)
    assert code == 1
    lines = capsys.readouterr().err.splitlines()
    docs = [json.loads(line) for line in lines]       # every line is one JSON object
    assert docs[-1]["level"] == "error" and "unexpected error" in docs[-1]["msg"], docs
    assert "RuntimeError: boom" in docs[-1]["exc"]
    assert "starting: static mode" in docs[0]["msg"]


def _opts(**kw):
    from udpoverlay.config.options import build_cluster_options
    return build_cluster_options(endpoints="http://198.18.0.254:2379", **kw)


def test_preflight_checks_what_the_rules_need(tmp_path, monkeypatch):
    """ip_forward and the tools, only when rules are wanted; each failure
    names the fix in one line."""
    from udpoverlay.errors import FirewallError
    from udpoverlay.host.preflight import check_firewall_prerequisites as check

    off, on = tmp_path / "off", tmp_path / "on"
    off.write_text("0\n")
    on.write_text("1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    # no rules wanted (cluster mode without forward rules, no --ip-masq): nothing checked
    check(_opts(iptables_forward_rules=False), str(off))
    with pytest.raises(FirewallError, match=r"ip_forward is 0.*sysctl -w net.ipv4.ip_forward=1"):
        check(_opts(), str(off))
    with pytest.raises(FirewallError, match="cannot read"):
        check(_opts(), str(tmp_path / "missing"))
    with pytest.raises(FirewallError, match="iptables-save not found on PATH: install the "
                                            "iptables package"):
        check(_opts(), str(on))
    for tool, body in (("iptables-save", "echo 'cannot initialize' >&2; exit 3"),
                       ("iptables-restore", "exit 0")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    with pytest.raises(FirewallError, match=r"iptables-save -t filter failed \(exit 3\): "
                                            "cannot initialize"):
        check(_opts(), str(on))
    (bin_dir / "iptables-save").write_text("#!/bin/sh\nexit 0\n")
    check(_opts(), str(on))                                        # all there: passes
    with pytest.raises(FirewallError, match="nft not found on PATH: install the nftables"):
        check(dataclasses.replace(_opts(), enable_nftables=True), str(on))
