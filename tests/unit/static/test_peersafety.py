"""Where static peers may point: no loopback, unspecified, multicast or
broadcast address and not ours (literals refused in one line, names that
resolve to one wait, counted); files that decide the peer table must be
root's and not writable by others, regular files read without blocking; an
emptied peers file on SIGHUP is one WARNING; --ip-masq never over the
underlay."""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
import time

import pytest

from tests.support.asyncutil import run
from tests.support.requirements import require
from tests.unit.static.test_peers import _entry, _static
from udpoverlay.config import peersfile, textfile
from udpoverlay.config.options import build_config
from udpoverlay.config.peerspec import bad_peer_address
from udpoverlay.errors import ConfigError

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
UNDERLAY = N("198.18.0.0/24")
NOBODY = 65534
BAD = ("127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255")


@pytest.mark.parametrize("addr, why", [
    ("127.0.0.1", "loopback"), ("127.0.1.1", "loopback"), ("0.0.0.0", "0.0.0.0"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"), ("198.18.0.255", "broadcast address of the underlay"),
    ("198.18.0.1", "our own address"),
])
def test_addresses_no_peer_can_have(addr, why):
    assert why in bad_peer_address(A(addr), UNDERLAY, (A("198.18.0.1"), None))
    assert bad_peer_address(A("198.18.0.2"), UNDERLAY, (A("198.18.0.1"),)) is None
    assert bad_peer_address(A("198.18.0.255"), None) is None          # underlay unknown
    # a one-host set-up on loopback (the daemon's own tests) may use loopback peers
    assert bad_peer_address(A("127.0.0.2"), None, (A("127.0.0.1"),)) is None


@pytest.mark.parametrize("addr", BAD)
def test_a_literal_flag_at_such_an_address_is_one_config_error(addr):
    with pytest.raises(ConfigError) as ei:
        build_config(public_ip="198.18.0.1", subnet="198.19.1.0/24", network="198.19.0.0/16",
                     peers=[f"{addr}=198.19.2.0/24"])
    msg = str(ei.value)
    assert "\n" not in msg and addr in msg and "(--peer)" in msg and "not a peer's" in msg


def test_a_literal_in_the_peers_file_refused_at_start_and_on_reload(tmp_path, caplog):
    sp, path, _, _, applied = _static(tmp_path, [], _entry("127.0.0.1", "198.19.2.0/24"))
    with pytest.raises(ConfigError, match=r"peers.toml:1\): 127.0.0.1 is a loopback"):
        run(sp.start())
    sp, path, _, _, applied = _static(tmp_path, [], _entry("198.18.0.2", "198.19.2.0/24"))
    run(sp.start())
    for addr in BAD:
        path.write_text(_entry(addr, "198.19.2.0/24"))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="udpoverlay"):
            run(sp.reload())
        (err,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert err.levelno == logging.ERROR and addr in err.getMessage()
        assert "running peers kept" in err.getMessage()
    assert not applied and [str(p.public_ip) for p in sp.table] == ["198.18.0.2"]


def test_names_answering_such_addresses_wait_counted_and_are_dropped(tmp_path, caplog):
    sp, _, _, script, applied = _static(
        tmp_path, ["lo=198.19.2.0/24", "any=198.19.3.0/24", "mc=198.19.4.0/24",
                   "me=198.19.5.0/24", "mixed=198.19.6.0/24", "good=198.19.7.0/24"],
        lo=["127.0.0.1"], any=["0.0.0.0"], mc=["224.0.0.1"], me=["198.18.0.1"],
        mixed=["127.0.1.1", "198.18.0.6"], good=["198.18.0.7"])
    with caplog.at_level(logging.WARNING, logger="udpoverlay"):
        table = run(sp.start())
    assert [(p.host, str(p.public_ip)) for p in table] == [("mixed", "198.18.0.6"),
                                                          ("good", "198.18.0.7")]
    st = sp.status()
    assert st["refused_addresses"] == 4 and st["peers_waiting"] == 4
    reasons = {w["host"]: w["reason"] for w in st["waiting"]}
    assert "127.0.0.1, which is a loopback address" in reasons["lo"]
    assert "0.0.0.0" in reasons["any"] and "multicast" in reasons["mc"]
    assert "our own address" in reasons["me"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4 and all("waits" in m for m in warned)
    names = {n["host"]: n for n in st["names"]}
    assert names["lo"]["refused"] and names["lo"]["address"] is None
    # a working name that turns to loopback: the peer leaves the table
    script.answers["good"] = ["127.0.0.1"]
    run(sp.reload())
    assert [p.host for p in applied[-1]] == ["mixed"]
    assert sp.status()["refused_addresses"] == 9       # every refused answer counts


def test_strict_peers_refuse_a_name_answering_loopback(tmp_path):
    sp, *_ = _static(tmp_path, ["lo=198.19.2.0/24"], strict=True, lo=["127.0.0.1"])
    with pytest.raises(ConfigError, match="loopback.*--strict-peers"):
        run(sp.start())


def test_an_emptied_peers_file_on_reload_is_one_warning_naming_the_count(tmp_path, caplog):
    sp, path, _, _, applied = _static(
        tmp_path, ["198.18.0.9=198.19.9.0/24"],
        _entry("198.18.0.2", "198.19.2.0/24") + _entry("198.18.0.3", "198.19.3.0/24"))
    run(sp.start())
    path.write_text("# nobody\n")
    with caplog.at_level(logging.INFO, logger="udpoverlay"):
        run(sp.reload())
    (warn,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "lists no peers now: removing the 2 peers it had" in warn and str(path) in warn
    assert [str(p.subnet) for p in applied[-1]] == ["198.19.9.0/24"]     # the flag's stays
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="udpoverlay"):
        run(sp.reload())                                 # empty again: nothing to warn of
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- files that decide where traffic goes ---------------------------------------
def _file(tmp_path, text="[[peer]]\nhost = '198.18.0.2'\nsubnet = '198.19.2.0/24'\n",
          name="peers.toml"):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_a_root_file_not_writable_by_others_is_read(tmp_path):
    require(os.geteuid() == 0, "needs root (files owned by another user)")
    path = _file(tmp_path)
    assert [str(s.subnet) for s in peersfile.load(str(path), 8285)] == ["198.19.2.0/24"]
    link = tmp_path / "link.toml"
    link.symlink_to(path)
    os.lchown(link, NOBODY, NOBODY)      # who owns the link does not matter: the file does
    assert len(peersfile.load(str(link), 8285)) == 1
    assert textfile.read_text(os.devnull, 10) == ""


@pytest.mark.parametrize("case, needle", [
    ("mode 0666", "writable by group or others (mode 0666)"),
    ("mode 0620", "writable by group or others (mode 0620)"),
    ("owned by nobody", f"owned by uid {NOBODY}, not root"),
    ("symlink to nobody's", f"owned by uid {NOBODY}, not root"),
    ("directory 0777", "its directory"),
    ("directory owned by nobody", "its directory"),
    ("fifo", "not a regular file (a FIFO)"),
    ("directory", "not a regular file (a directory)"),
])
def test_files_others_could_change_are_refused_in_one_line(tmp_path, case, needle):
    require(os.geteuid() == 0, "needs root (files owned by another user)")
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    path = _file(d)
    if case.startswith("mode"):
        path.chmod(int(case.split()[1], 8))
    elif case == "owned by nobody":
        os.chown(path, NOBODY, NOBODY)
    elif case == "symlink to nobody's":
        target = _file(tmp_path, name="theirs.toml")
        os.chown(target, NOBODY, NOBODY)
        path.unlink()
        path.symlink_to(target)
    elif case == "directory 0777":
        d.chmod(0o777)
    elif case == "directory owned by nobody":
        os.chown(d, NOBODY, NOBODY)
    elif case == "fifo":
        path.unlink()
        os.mkfifo(path, 0o600)
    else:
        path.unlink()
        path.mkdir()
    started = time.monotonic()
    with pytest.raises(ConfigError) as ei:
        peersfile.load(str(path), 8285)
    assert time.monotonic() - started < 1.0               # a FIFO never blocks
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"--peers-file {path}: ") and needle in msg, msg


def test_a_sticky_world_writable_directory_is_accepted(tmp_path):
    require(os.geteuid() == 0, "needs root (files owned by another user)")
    d = tmp_path / "sticky"
    d.mkdir()
    d.chmod(0o1777)
    assert len(peersfile.load(str(_file(d)), 8285)) == 1


def test_a_refused_file_on_reload_keeps_the_running_table(tmp_path, caplog):
    require(os.geteuid() == 0, "needs root (files owned by another user)")
    sp, path, _, _, applied = _static(tmp_path, [], _entry("198.18.0.2", "198.19.2.0/24"))
    run(sp.start())
    path.write_text(_entry("198.18.0.66", "198.19.2.0/24"))     # "their" address
    os.chown(path, NOBODY, NOBODY)
    with caplog.at_level(logging.INFO, logger="udpoverlay"):
        run(sp.reload())
    (err,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"owned by uid {NOBODY}" in err and "running peers kept" in err
    path.unlink()
    os.mkfifo(path, 0o600)
    run(sp.reload())
    assert "FIFO" in sp.status()["reload_error"]
    assert not applied and [str(p.public_ip) for p in sp.table] == ["198.18.0.2"]


def test_off_loop_is_bounded_and_never_holds_up_the_exit():
    """A read that never returns: the caller gets an error after the time
    limit, and the process still exits at once (a default-executor thread
    would be joined at exit)."""
    code = ("import asyncio, time\n"
            "from udpoverlay.config.textfile import off_loop\n"
            "from udpoverlay.errors import ConfigError\n"
            "async def main():\n"
            "    try:\n"
            "        await off_loop(time.sleep, 60, what='x', timeout=0.2)\n"
            "    except ConfigError as e:\n"
            "        print(e)\n"
            "asyncio.run(main())\n")
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 10
    assert r.returncode == 0 and "x: not read within 0.2 s" in r.stdout, r.stderr


def test_off_loop_returns_results_and_raises_errors():
    assert run(textfile.off_loop(sum, [1, 2], what="x")) == 3
    with pytest.raises(ValueError, match="boom"):
        run(textfile.off_loop(lambda: (_ for _ in ()).throw(ValueError("boom")), what="x"))


# -- --ip-masq never over our own underlay address ------------------------------
def test_ip_masq_refuses_a_network_that_holds_the_underlay():
    kw = dict(subnet="198.18.1.0/24", network="198.18.0.0/16", peers=["198.18.2.5=198.18.2.0/24"])
    with pytest.raises(ConfigError, match=r"--network 198.18.0.0/16 contains our --public-ip "
                                          r"198.18.0.1: with --ip-masq"):
        build_config(public_ip="198.18.0.1", ip_masq=True, **kw)
    detected = build_config(ip_masq=True, **kw)           # the underlay not known yet
    with pytest.raises(ConfigError, match="contains our underlay address 198.18.0.9"):
        detected.with_underlay("198.18.0.9")
    assert build_config(public_ip="198.18.0.1", **kw).ip_masq is False   # no masquerade: fine
    assert build_config(public_ip="198.19.0.1", ip_masq=True, **kw).ip_masq
