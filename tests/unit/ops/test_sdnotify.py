"""systemd notification: STATUS= while waiting, READY=1, then STOPPING=1 on
a real unix datagram socket (a path and an abstract '@' name), driven by
the Lifecycle; WATCHDOG=1 at half of $WATCHDOG_USEC from the running event
loop (none when the loop is blocked); a missing or broken socket never
stops the daemon."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from udpoverlay.lifecycle import Lifecycle
from udpoverlay.ops.sdnotify import Notifier, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(2)
    yield s, str(tmp_path / "notify")
    s.close()


def test_status_while_waiting_then_ready_then_stopping_in_order(listener):
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "OTHER": "x"}
    n = Notifier(env)
    assert env == {"OTHER": "x"}       # not passed to children
    lc = Lifecycle()
    lc.subscribe(n.listener(lc))
    lc.waiting("etcd")
    lc.waiting("etcd")                 # unchanged: nothing sent
    lc.waiting("a subnet lease from etcd")
    lc.set_ready()
    lc.set_ready()                     # a repeat sends nothing
    lc.waiting("late")                 # past starting: ignored
    lc.set_stopping()
    got = [sock.recv(1024).decode() for _ in range(5)]
    assert got[:3] == ["STATUS=waiting for start-up", "STATUS=waiting for etcd",
                       "STATUS=waiting for a subnet lease from etcd"]
    assert [m.splitlines()[0] for m in got[3:]] == ["READY=1", "STOPPING=1"]
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(1024)


def test_watchdog_interval_is_half_and_only_for_us():
    assert watchdog_interval("3000000", "", 42) == 1.5
    assert watchdog_interval("3000000", "42", 42) == 1.5
    assert watchdog_interval("3000000", "43", 42) is None      # another process's
    for bad in ("", "0", "-5", "soon"):
        assert watchdog_interval(bad, "", 42) is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000"}).watchdog == 0.5
    assert Notifier({"WATCHDOG_USEC": "1000000"}).watchdog is None    # nowhere to send


def test_watchdog_pings_come_from_the_running_loop(listener, monkeypatch):
    """Ops sends WATCHDOG=1 every WATCHDOG_USEC/2 while the loop runs; a
    blocked loop sends none, so systemd would see the hang."""
    import asyncio
    import time

    from tests.support.asyncutil import run
    from udpoverlay.config.options import build_config
    from udpoverlay.control import ControlServer
    from udpoverlay.ops.service import Ops

    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")        # 0.2 s: a ping every 0.1 s
    monkeypatch.setattr(ControlServer, "start", _no_control_start)
    opts = build_config(subnet="198.19.1.0/24", network="198.19.0.0/16", peers=())

    async def main():
        ops = Ops(opts, Lifecycle(), argv=[])
        await ops.start()
        await asyncio.sleep(0.55)
        time.sleep(0.6)              # the loop hangs: no pings during this
        await ops.close()
    run(main())
    sock.setblocking(False)
    got = []
    while True:
        try:
            got.append(sock.recv(1024).decode())
        except BlockingIOError:
            break
    pings = got.count("WATCHDOG=1")
    # 6 in 0.55 s (t = 0, 0.1, ... 0.5), one late after the hang; a sender
    # that kept going while the loop hung would have sent ~12
    assert 3 <= pings <= 8, got
    assert "WATCHDOG_USEC" not in os.environ and "NOTIFY_SOCKET" not in os.environ


async def _no_control_start(self):
    """Unit tests need no real control socket under /run."""
    self.path = "(none)"


def test_abstract_socket():
    name = f"udpoverlay-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert s.recv(100) == b"READY=1"


def test_subscribing_late_still_sends_ready(listener):
    sock, path = listener
    lc = Lifecycle()
    lc.set_ready()
    lc.subscribe(Notifier({"NOTIFY_SOCKET": path}).on_phase)
    assert sock.recv(1024).startswith(b"READY=1")


def test_no_socket_or_a_broken_one_is_harmless(tmp_path, caplog):
    assert socket_address("") is None and socket_address("vsock:2:1") is None
    assert socket_address("@x") == "\0x" and socket_address("/run/n") == "/run/n"
    assert not Notifier({}).enabled and not Notifier({}).notify("READY=1")
    with caplog.at_level(logging.WARNING):
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
        assert n.notify("READY=1") is False and n.notify("STOPPING=1") is False
        vs = Notifier({"NOTIFY_SOCKET": "vsock:2:1"})
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("cannot notify systemd" in w for w in warnings) == 1, warnings   # once
    assert not vs.enabled and any("not a unix socket" in w for w in warnings)
