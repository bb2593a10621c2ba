"""The control socket against local users who are not root, with real
daemons in namespaces: they cannot read status (neither through the command
line nor by connecting themselves) and cannot squat its name; namespace hosts
on one machine keep apart; the socket goes away on a clean exit, and a stale
one left by SIGKILL does not stop the next start."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

from lab.netns import wait_for
from tests.integration.control.conftest import HOSTILE, NOBODY, SYSTEM_PYTHON, as_nobody, daemon_socket
from tests.support.overlay import ROOT, underlay_of
from udpoverlay.control import DEFAULT_RUNTIME_DIR


def _assert_real(doc: dict, i: int) -> None:
    assert "impostor" not in doc
    assert doc["public_ip"] == underlay_of(i) and doc["iface"] == "udpov0"
    assert [p["subnet"] for p in doc["peers"]] == [f"198.19.{3 - i}.0/24"]


def test_non_root_user_cannot_read_status(ov):
    ov.start(1)
    h1 = ov.hosts[1]
    path = daemon_socket(h1)
    assert ov.status(h1)["public_ip"] == underlay_of(1)     # root can

    cli = ov.run(h1, as_nobody([SYSTEM_PYTHON, "-B", "-m", "udpoverlay", "status", "--json"]),
                 cwd=str(ROOT), timeout=30)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert cli.stdout == ""
    assert cli.stderr.startswith("udpoverlay: error: status needs root")
    assert cli.stderr.count("\n") == 1 and "Traceback" not in cli.stderr

    raw = ov.run(h1, as_nobody([SYSTEM_PYTHON, "-B", HOSTILE, "read", path]), timeout=30)
    assert raw.returncode == 0, raw.stderr
    got = json.loads(raw.stdout)
    assert got["listdir"] == "PermissionError" and got["socket"] == "PermissionError"
    assert got["abstract"] != "ok"              # the old name is not served any more
    assert got["bytes"] == 0 and "198.19" not in raw.stdout


def test_squatter_cannot_stop_the_daemon_or_answer_for_it(ov):
    h1 = ov.hosts[1]
    tmp = tempfile.mkdtemp(prefix="uosq", dir="/tmp")
    os.chown(tmp, NOBODY, NOBODY)
    squatter = ov.lab.popen(h1.netns, as_nobody([SYSTEM_PYTHON, "-B", HOSTILE, "squat",
                                                 tmp, "udpov0"]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/")
    try:
        ready, _, _ = select.select([squatter.stdout], [], [], 20)
        assert ready, "the squatter said nothing within 20 s"
        line = squatter.stdout.readline()
        assert line, squatter.stderr.read()
        report = json.loads(line)
        # it took what an unprivileged user can take, and nothing of ours
        assert report["abstract"] == "ok" and report["tmpfile"] == "ok"
        assert report["rundir"] != "ok" and report["mkdir_rundir"] != "ok"

        ov.start(1)                              # starts although squatted
        _assert_real(ov.status(h1), 1)
        st = os.stat(daemon_socket(h1))
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
        assert squatter.poll() is None           # the squatter was there all along
        # pointed at the squatter's own socket, root's client refuses its answer
        probe = ("import sys; from udpoverlay.control import query_status\n"
                 "try: query_status('udpov0', 3, runtime_dir=sys.argv[1])\n"
                 "except Exception as e: print(e)")
        r = ov.run(h1, [sys.executable, "-c", probe, tmp], timeout=30)
        assert f"served by uid {NOBODY}" in r.stdout and "impostor" not in r.stdout, r
    finally:
        squatter.stdin.close()
        ov.lab.stop(squatter)
        squatter.stdout.close()
        squatter.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_namespace_hosts_keep_apart_and_sockets_follow_the_daemons(ov):
    d1, d2 = ov.start(1), ov.start(2)            # the same TUN name in both
    h1, h2 = ov.hosts[1], ov.hosts[2]
    p1, p2 = daemon_socket(h1), daemon_socket(h2)
    assert p1 != p2
    run_st = os.lstat(DEFAULT_RUNTIME_DIR)
    assert stat.S_ISDIR(run_st.st_mode) and run_st.st_uid == 0
    assert stat.S_IMODE(run_st.st_mode) == 0o700
    for p in (p1, p2):
        st = os.stat(p)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    _assert_real(ov.status(h1), 1)
    _assert_real(ov.status(h2), 2)

    assert ov.stop(d1) == 0                      # clean exit: the socket goes
    assert not os.path.exists(p1) and os.path.exists(p2)

    ov.stop(d2, signal.SIGKILL)                  # killed: the socket stays ...
    assert os.path.exists(p2)
    r = ov.run(h2, [sys.executable, "-m", "udpoverlay", "status", "--timeout", "2"])
    assert r.returncode == 1 and "gone" in r.stderr, r.stderr
    wait_for(lambda: not ov.link_exists(h2), 10, 0.1, "TUN of the killed daemon gone")
    again = ov.start(2)                          # ... and does not stop a restart
    _assert_real(ov.status(h2), 2)
    assert "left by a daemon that is gone: replacing it" in again.stderr()
