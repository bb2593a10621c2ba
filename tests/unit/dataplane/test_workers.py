"""Worker threads (Core.run_tx / run_rx) and route tables swapped under
them: a retired table is freed only once both workers passed a quiescent
point, and workers stop promptly. Real threads, pipes as idle devices."""

from __future__ import annotations

import os
import threading
import time

from tests.support import pktgen as g
from tests.support.twins import both, engine


def wait_until(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_tables_swapped_under_running_workers(impl):
    eng = engine(impl)
    e = eng.core
    fds = [os.pipe() for _ in range(3)]         # idle "TUN", idle "socket", stop
    (tun_r, tun_w), (sock_r, sock_w), (stop_r, stop_w) = fds
    e.set_threaded(True)
    workers = [threading.Thread(target=e.run_tx, args=(tun_r, sock_w, stop_r)),
               threading.Thread(target=e.run_rx, args=(sock_r, tun_w, stop_r))]
    try:
        for t in workers:
            t.start()
        for i in range(20):                     # churn: every swap retires a table
            eng.set_peers(g.PEERS[: 1 + i % 3])
        assert e.lookup(int.from_bytes(g.a("198.19.2.9"), "big")) == 0
        # idle workers pass a quiescent point at least every 100 ms
        assert wait_until(lambda: e.reclaim() == 0), "retired tables never freed"
        e.stop_workers()
        os.write(stop_w, b"x")
        for t in workers:
            t.join(timeout=2)
        assert not any(t.is_alive() for t in workers)
    finally:
        e.stop_workers()
        for t in workers:
            t.join(timeout=2)
        for r, w in fds:
            os.close(r)
            os.close(w)
    e.set_threaded(False)


def test_retired_table_waits_for_both_workers():
    """Declared threaded but no worker has moved: the old table must stay."""
    eng = engine(both()[1])     # the reference frees tables by GC: nothing to wait for
    e = eng.core
    e.set_threaded(True)
    eng.set_peers(g.PEERS[:1])
    eng.set_peers(g.PEERS[:2])
    assert e.reclaim() == 2
    e.set_threaded(False)                       # workers joined: free them now
    assert e.reclaim() == 0
