"""Worker threads (Core.run_tx / run_rx) and route tables swapped under
them: a retired table is freed only once both workers passed a quiescent
point, and workers stop promptly. Real threads, pipes as idle devices."""

from __future__ import annotations

import os
import threading
import time

from tests.support import pktgen as g
from tests.support.twins import both, engine
from udpoverlay import dataplane


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


def test_with_queues_a_table_waits_for_every_queues_workers():
    """Three queues: while only queue 0's workers run, a retired table must
    stay (queue 1 and 2's workers could still hold it); once all run, it goes."""
    eng = engine(both()[1])
    e = eng.core
    e.set_queues(3)
    assert e.queues == 3 and len(e.queue_counts()) == 3
    pipes = [os.pipe() for _ in range(7)]       # per queue: idle TUN, idle socket; stop
    stop_r, stop_w = pipes[-1]
    e.set_threaded(True)
    workers: list[threading.Thread] = []

    def start(q):
        (tun_r, tun_w), (sock_r, sock_w) = pipes[2 * q], pipes[2 * q + 1]
        for body, args in ((e.run_tx, (tun_r, sock_w, stop_r, q)),
                           (e.run_rx, (sock_r, tun_w, stop_r, q))):
            t = threading.Thread(target=body, args=args)
            t.start()
            workers.append(t)
    try:
        start(0)
        eng.set_peers(g.PEERS[:1])
        eng.set_peers(g.PEERS[:2])
        time.sleep(0.3)                         # queue 0's workers pass quiescent points
        assert e.reclaim() == 2, "freed while queues 1 and 2 could hold the table"
        start(1)
        start(2)
        assert wait_until(lambda: e.reclaim() == 0), "retired tables never freed"
        try:
            e.run_tx(pipes[0][0], pipes[1][1], stop_r, 3)
        except IndexError:
            pass
        else:
            raise AssertionError("queue 3 of 3 accepted")
    finally:
        e.stop_workers()
        os.write(stop_w, b"x")
        for t in workers:
            t.join(timeout=2)
        assert not any(t.is_alive() for t in workers)
        for r, w in pipes:
            os.close(r)
            os.close(w)
    e.set_threaded(False)
    e.set_queues(1)
    assert e.queues == 1


def test_the_reference_runs_one_queue():
    e = engine(dataplane.twin("python")).core
    e.set_queues(1)
    try:
        e.set_queues(2)
    except OSError as exc:
        assert "one queue" in str(exc)
    else:
        raise AssertionError("the reference accepted 2 queues")
