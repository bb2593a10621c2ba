"""The control socket without root, in a temporary runtime directory: one
JSON document per connection, the document cache, the limits (busy
rejection, a client that does not read is dropped), the runtime directory
and stale-socket rules, and a client that trusts only its own user."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile

import pytest

from tests.support.asyncutil import FakeClock, run, wait_until
from udpoverlay.control import ControlServer, ControlSocketError, netns_inode, query_status, socket_path
from udpoverlay.errors import ControlError
from udpoverlay.status import format_status

IFACE = "uotest0"
BIG = 4_000_000            # far above a unix socket's buffer: a non-reader pins it


@pytest.fixture
def rundir():
    """A runtime dir that does not exist yet, under a short private path
    (unix socket paths are limited to 107 bytes)."""
    top = tempfile.mkdtemp(prefix="uoc", dir="/tmp")
    try:
        yield os.path.join(top, "run")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _query(rundir: str, timeout: float = 3.0, **kw) -> dict:
    return query_status(IFACE, timeout, runtime_dir=rundir, **kw)


def _raw(path: str) -> socket.socket:
    """A client that connects and never reads."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def _read_all(s: socket.socket) -> bytes:
    s.settimeout(5)
    chunks = []
    for _ in range(10_000):
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _big() -> dict:
    return {"blob": "x" * BIG}


def test_document_is_fresh_for_a_burst_then_rebuilt_once_per_interval(loop, rundir):
    clock = FakeClock()
    calls = []

    def status():
        calls.append(1)
        return {"iface": IFACE, "peers": [{"subnet": "198.19.2.0/24"}], "n": len(calls)}

    async def main():
        server = ControlServer(IFACE, status, runtime_dir=rundir, clock=clock,
                               rebuild_burst=2)
        await server.start()
        try:
            docs = [await asyncio.to_thread(_query, rundir) for _ in range(5)]
            clock.advance(0.49)
            docs.append(await asyncio.to_thread(_query, rundir))
            await wait_until(lambda: server.counters()["served"] == 6, 2, "six served")
            clock.advance(0.02)
            docs.append(await asyncio.to_thread(_query, rundir))
            await wait_until(lambda: server.counters()["served"] == 7, 2, "seven served")
            return docs, server.counters()
        finally:
            await server.close()

    docs, counters = run(main())
    assert docs[0]["peers"] == [{"subnet": "198.19.2.0/24"}] and docs[0]["iface"] == IFACE
    # 7 clients at 3 instants: a burst of 2 fresh ones, then the cache until
    # a whole rebuild interval's worth of budget has come back
    assert [d["n"] for d in docs] == [1, 2, 2, 2, 2, 2, 3]
    assert len(calls) == 3
    assert docs[0]["control"] == {"served": 0, "rejected_busy": 0, "timed_out": 0,
                                  "failed": 0, "builds": 1, "active": 1}
    assert docs[-1]["control"]["served"] == 6 and docs[-1]["control"]["builds"] == 3
    assert counters["served"] == 7 and counters["active"] == 0


def test_failing_status_becomes_error_document(loop, rundir):
    def status():
        raise RuntimeError("engine gone")

    async def main():
        server = ControlServer(IFACE, status, runtime_dir=rundir)
        await server.start()
        try:
            return await asyncio.to_thread(_query, rundir)
        finally:
            await server.close()

    assert run(main()) == {"error": "engine gone"}


def test_busy_server_closes_extra_connections_at_once(loop, rundir):
    async def main():
        server = ControlServer(IFACE, _big, runtime_dir=rundir, max_clients=2,
                               send_timeout=8)
        await server.start()
        hogs = []
        try:
            hogs = [_raw(server.path) for _ in range(2)]
            await wait_until(lambda: len(server.clients) == 2, 3, "two clients admitted")
            third = _raw(server.path)
            try:
                got = await asyncio.to_thread(_read_all, third)
            finally:
                third.close()
            return got, server.counters()
        finally:
            for h in hogs:
                h.close()
            await server.close()

    got, counters = run(main())
    assert got == b""                                   # closed, nothing sent
    assert counters["rejected_busy"] == 1
    assert counters["active"] == 2 and counters["served"] == 0


def test_client_that_does_not_read_is_dropped(loop, rundir):
    async def main():
        server = ControlServer(IFACE, _big, runtime_dir=rundir, send_timeout=0.3)
        await server.start()
        idle = _raw(server.path)
        try:
            await wait_until(lambda: server.counters()["timed_out"] == 1, 5, "drop")
            await wait_until(lambda: not server.clients, 2, "slot freed")
            partial = await asyncio.to_thread(_read_all, idle)
            after = await asyncio.to_thread(_query, rundir, 5.0)
            await wait_until(lambda: server.counters()["served"] == 1, 2, "served")
            return partial, after, server.counters()
        finally:
            idle.close()
            await server.close()

    partial, after, counters = run(main(), timeout=20)
    assert 0 < len(partial) < BIG                     # cut short, not pinned
    assert len(after["blob"]) == BIG                  # a reader still gets it all
    assert counters["timed_out"] == 1 and counters["served"] == 1


def test_busy_client_asks_again_within_its_timeout(loop, rundir):
    async def main():
        server = ControlServer(IFACE, _big, runtime_dir=rundir, max_clients=1,
                               send_timeout=8)
        await server.start()
        hog = _raw(server.path)
        try:
            await wait_until(lambda: len(server.clients) == 1, 3, "hog admitted")
            asking = asyncio.create_task(asyncio.to_thread(_query, rundir, 6.0))
            await wait_until(lambda: server.counters()["rejected_busy"] >= 1, 3, "rejection")
            hog.close()                                  # frees the slot
            doc = await asyncio.wait_for(asking, 8)
            await wait_until(lambda: server.counters()["served"] == 1, 2, "served")
            return doc, server.counters()
        finally:
            hog.close()
            await server.close()

    doc, counters = run(main(), timeout=20)
    assert len(doc["blob"]) == BIG
    assert counters["rejected_busy"] >= 1 and counters["failed"] == 1   # the hog


def test_socket_is_private_per_namespace_and_removed_on_close(loop, rundir):
    async def main():
        server = ControlServer(IFACE, dict, runtime_dir=rundir)
        await server.start()
        try:
            return (server.path, os.stat(rundir), os.stat(server.path),
                    await asyncio.to_thread(_query, rundir))
        finally:
            await server.close()
            await server.close()                        # idempotent

    path, dir_st, sock_st, doc = run(main())
    assert path == os.path.join(rundir, f"net{netns_inode()}-{IFACE}.sock")
    assert socket_path(IFACE, rundir) == path != socket_path(IFACE, rundir, netns=1)
    assert stat.S_IMODE(dir_st.st_mode) == 0o700 and dir_st.st_uid == os.geteuid()
    assert stat.S_ISSOCK(sock_st.st_mode) and stat.S_IMODE(sock_st.st_mode) == 0o600
    assert set(doc) == {"control"}
    assert not os.path.exists(path)
    with pytest.raises(ControlError, match="no udpoverlay daemon"):
        _query(rundir, 1.0)


def _bad_dir(rundir: str, kind: str) -> None:
    good = rundir + ".real"
    os.mkdir(good, 0o700)
    if kind == "world-writable":
        os.mkdir(rundir)
        os.chmod(rundir, 0o777)
    elif kind == "group-writable":
        os.mkdir(rundir)
        os.chmod(rundir, 0o770)
    elif kind == "symlink":
        os.symlink(good, rundir)
    elif kind == "file":
        open(rundir, "w").close()


@pytest.mark.parametrize("kind,message", [
    ("world-writable", "group/world-writable"), ("group-writable", "group/world-writable"),
    ("symlink", "not a directory"), ("file", "not a directory")])
def test_unsafe_runtime_dir_is_refused(rundir, kind, message):
    _bad_dir(rundir, kind)
    server = ControlServer(IFACE, dict, runtime_dir=rundir)
    with pytest.raises(ControlSocketError, match=message) as err:
        run(server.start())
    assert isinstance(err.value, OSError) and "\n" not in str(err.value)
    assert not os.path.exists(socket_path(IFACE, rundir + ".real"))


def test_runtime_dir_of_another_owner_is_refused(rundir):
    os.mkdir(rundir, 0o700)
    server = ControlServer(IFACE, dict, runtime_dir=rundir, owner=os.geteuid() + 1)
    with pytest.raises(ControlSocketError, match="owned by uid"):
        run(server.start())
    assert os.listdir(rundir) == []


def test_stale_socket_is_replaced_and_a_live_one_is_not(loop, rundir):
    os.mkdir(rundir, 0o700)
    path = socket_path(IFACE, rundir)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(1)
    dead.close()                       # as a SIGKILLed daemon leaves it

    async def main():
        first = ControlServer(IFACE, lambda: {"who": "first"}, runtime_dir=rundir)
        await first.start()
        second = ControlServer(IFACE, lambda: {"who": "second"}, runtime_dir=rundir)
        try:
            with pytest.raises(ControlSocketError, match="another udpoverlay daemon"):
                await second.start()
            return await asyncio.to_thread(_query, rundir)
        finally:
            await second.close()
            await first.close()

    assert run(main())["who"] == "first"
    assert not os.path.exists(path)


def test_non_socket_in_the_way_is_refused(rundir):
    os.mkdir(rundir, 0o700)
    path = socket_path(IFACE, rundir)
    open(path, "w").close()
    with pytest.raises(ControlSocketError, match="not a socket"):
        run(ControlServer(IFACE, dict, runtime_dir=rundir).start())
    assert stat.S_ISREG(os.stat(path).st_mode)


def test_close_leaves_a_socket_that_replaced_ours(loop, rundir):
    async def main():
        server = ControlServer(IFACE, dict, runtime_dir=rundir)
        await server.start()
        os.unlink(server.path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(server.path)
        try:
            await server.close()
            return os.path.exists(server.path)
        finally:
            other.close()
            os.unlink(server.path)

    assert run(main()) is True


def test_client_refuses_a_server_of_another_user(loop, rundir):
    async def main():
        server = ControlServer(IFACE, lambda: {"peers": ["secret"]}, runtime_dir=rundir)
        await server.start()
        try:
            with pytest.raises(ControlError, match=f"served by uid {os.geteuid()}"):
                await asyncio.to_thread(_query, rundir, 2.0, trusted_uid=os.geteuid() + 1)
        finally:
            await server.close()

    run(main())


def test_no_daemon_and_bad_arguments_are_control_errors(rundir):
    with pytest.raises(ControlError, match="no udpoverlay daemon"):
        _query(rundir, 1.0)
    for name in ("", "..", "a/b", "x" * 16, "a b", "a\0b"):
        with pytest.raises(ControlError, match="bad interface name"):
            query_status(name, 1.0, runtime_dir=rundir)
    for timeout in (0.0, -1.0, float("nan")):
        with pytest.raises(ControlError, match="timeout"):
            _query(rundir, timeout)


def test_status_text_shows_the_control_counters():
    text = format_status({"control": {"served": 7, "rejected_busy": 3, "timed_out": 2,
                                      "failed": 0, "builds": 4, "active": 0}})
    assert ("control socket: served 7, rejected busy 3, timed out 2, documents built 4"
            in text)


def test_status_text_shows_liveness_names_keepalives_and_waiting_peers():
    peer = {"subnet": "198.19.2.0/24", "public_ip": "198.18.0.2", "port": 8285,
            "tx_packets": 5, "tx_bytes": 500, "rx_packets": 4, "rx_bytes": 400,
            "state": "active", "last_rx": 0.42, "last_tx": 12.3, "host": "bob.example.net",
            "resolved_ago": 3.0, "resolve_error": "Temporary failure in name resolution",
            "keepalive": 25, "tx_keepalive": 7}
    never = {"subnet": "198.19.3.0/24", "public_ip": "198.18.0.3", "port": 8285,
             "tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
             "state": "never", "last_rx": None, "last_tx": None, "host": None}
    text = format_status({
        "peers": [peer, never], "bind_ip": "0.0.0.0", "underlay_ip": "198.18.0.1",
        "counters": {"tx_keepalive": 7, "rx_keepalive": 9},
        "static": {"resolve_interval": 60.0, "lookups": 3, "lookup_failures": 1,
                   "peers_file": "/etc/udpoverlay/peers.toml", "reloads": 2,
                   "reload_error": "peers.toml:4: peer 1 (b!b): bad host name",
                   "waiting": [{"subnet": "198.19.4.0/24", "host": "carol", "port": 8285,
                                "reason": "does not resolve: Name or service not known"}]}})
    lines = text.splitlines()
    row = next(line for line in lines if line.lstrip().startswith("198.19.2.0/24"))
    assert row.split()[:5] == ["198.19.2.0/24", "198.18.0.2:8285", "active", "0.4s", "12s"]
    assert ("name bob.example.net, resolved 3.0s ago (last lookup failed: Temporary failure "
            "in name resolution); keepalive every 25s, 7 sent") in text
    row = next(line for line in lines if line.lstrip().startswith("198.19.3.0/24"))
    assert row.split()[2:5] == ["never", "-", "-"]
    assert "underlay: bound to 0.0.0.0, source now 198.18.0.1" in text
    gone = format_status({"bind_ip": "198.18.0.1", "underlay_address_gone": True})
    assert "address 198.18.0.1 is GONE from this host: restart needed" in gone
    assert "waiting 198.19.4.0/24" in text and "carol:8285: does not resolve" in text
    assert "reloaded 2 times; last reload refused: peers.toml:4" in text
    assert "tx_keepalive                 7" in text and "rx_keepalive                 9" in text
    assert "drops: none" in text          # keepalives are not drops
