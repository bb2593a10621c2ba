"""systemd notification: READY=1 then STOPPING=1 on a real unix datagram
socket (a path and an abstract '@' name), driven by the Lifecycle; a
missing or broken socket never stops the daemon."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from udpoverlay.lifecycle import Lifecycle
from udpoverlay.ops.sdnotify import Notifier, socket_address


@pytest.fixture
def listener(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(2)
    yield s, str(tmp_path / "notify")
    s.close()


def test_ready_then_stopping_in_order(listener):
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "OTHER": "x"}
    n = Notifier(env)
    assert "NOTIFY_SOCKET" not in env and env["OTHER"] == "x"   # not passed to children
    lc = Lifecycle()
    lc.subscribe(n.on_phase)
    lc.waiting("etcd")
    lc.set_ready()
    lc.set_ready()                     # a repeat sends nothing
    lc.set_stopping()
    got = [sock.recv(1024).decode(), sock.recv(1024).decode()]
    assert [m.splitlines()[0] for m in got] == ["READY=1", "STOPPING=1"]
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(1024)


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
