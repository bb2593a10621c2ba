"""test_io.py's differential tests of the real TX loops once more, with the
compiled twin's TUN reads on io_uring (Core.set_io("io_uring"): a round's
reads in one kernel entry) while the reference twin reads with os.read as
always (it has no ring): sent datagrams, TUN writes, counters and peer
status must still be byte-identical. test_io.py itself runs both twins on
read(). The RX direction does not use the ring (TUN writes stay write()).

io_uring refused here (not built in, seccomp, io_uring_disabled) skips, or
fails under UDPOVERLAY_REQUIRE_ALL=1. Plus the loop's busy-poll entry
(Core.serve) over the same rig."""

from __future__ import annotations

import errno

import pytest

from tests.support import iorig as base
from tests.support.requirements import require
from tests.support.twins import both, engine


def io_uring_usable() -> str:
    """"" if the compiled twin can read the TUN through io_uring here, else why."""
    cy = both()[1]
    e = engine(cy, "udp")
    try:
        e.core.set_io("io_uring")
        return ""
    except OSError as exc:
        return str(exc)
    finally:
        e.close()


@pytest.fixture
def on_io_uring(monkeypatch):
    """test_io's engine() with the compiled twin on io_uring; yields the
    compiled cores made, to check the ring was used and never failed."""
    reason = io_uring_usable()
    require(not reason, f"io_uring path not usable: {reason}")
    cy = both()[1]
    made = []

    def io_engine(twin, *args, **kw):
        e = engine(twin, *args, **kw)
        if twin is cy:
            assert e.core.set_io("io_uring") == "io_uring"
            made.append(e.core)
        return e

    monkeypatch.setattr(base, "engine", io_engine)
    yield made
    assert made, "no compiled core was made"
    for core in made:
        assert core.io_note == "", core.io_note      # no fallback to read() on the way
        assert core.io_batches > 0, "the TUN was not read through the ring"


@pytest.mark.parametrize("offload", list(base.OFFLOADS))
@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_tun_to_udp_identical_on_io_uring(on_io_uring, backend, offload):
    base.check_tun_to_udp(backend, offload)


@pytest.mark.parametrize("offload", ["plain", "vnet"])
def test_full_socket_buffer_same_waits_and_drops_on_io_uring(offload):
    reason = io_uring_usable()
    require(not reason, f"io_uring path not usable: {reason}")
    assert "started = time.monotonic()" in base.FULL_BUFFER
    base.check_full_buffer(offload, base.FULL_BUFFER.replace(
        "started = time.monotonic()",
        "assert twin.IMPLEMENTATION == 'python' or e.core.set_io('io_uring') == 'io_uring'\n"
        "started = time.monotonic()"))


def test_forced_io_uring_fails_clearly_where_it_cannot_work():
    """The reference twin has no ring: asking it for io_uring is an
    OSError with one clear line; auto is epoll in both twins."""
    py, cy = (engine(t, "udp") for t in both())
    with pytest.raises(OSError) as caught:
        py.core.set_io("io_uring")
    assert caught.value.errno == errno.ENOSYS and "io_uring unavailable" in str(caught.value)
    assert py.core.set_io("auto") == cy.core.set_io("auto") == "epoll"
    assert py.core.io_note == cy.core.io_note == ""
    with pytest.raises(ValueError, match="unknown I/O mode"):
        py.core.set_io("uring")


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_busy_poll_serve_identical(backend):
    """Core.serve (loop mode with busy poll): one call drains the TUN that
    woke it and then the socket that was ready too; both twins send, write
    and count the same."""
    reads = base.tun_reads(False)
    dgrams = base.rx_datagrams(backend)

    def run(twin, r):
        e = base.make(twin, r, backend, None)
        e.core.set_busy_poll(20000)
        try:
            for b in reads:
                r.tun_app.send(b)
            base.send_all(r.a, dgrams, r.sock.getsockname())
            base.drain_udp(r.b, r.a)            # all of them are queued now
            done = e.core.serve(r.tun_dev.fileno(), r.sock.fileno(), False)
            got = [d for d, _ in base.drain_udp(r.b, r.sock)]
            return done, got, base.drain_now(r.tun_app), e.counters(), e.peer_status()
        finally:
            e.close()

    with base.rig(3 if backend == "vxlan" else 0) as r:
        py, cy = (run(t, r) for t in both())
    base.same(py, cy)
    assert py[0] > len(reads), "serve() did not go on to the socket"
    assert py[3]["rx_packets"] > 0 and py[3]["tx_packets"] > 0
