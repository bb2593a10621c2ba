"""--queues on real hosts: a multi-queue TUN and a steered socket group on
each side, checked TCP transfers over many flows, and every queue used in
both directions; forged datagrams are dropped whichever queue takes them;
a second instance cannot join the port group; the reference twin refuses
more than one queue with one line."""

from __future__ import annotations

import sys

import pytest

from lab.netns import wait_for
from tests.integration.ops.httpget import HEALTHZ_PORT, sample, scrape
from tests.support import pktgen as g
from tests.support.overlay import PORT, pod_of, underlay_of
from tests.support.probes import SENDER
from tests.support.requirements import require, require_io_uring
from udpoverlay import dataplane

FLOWS = 12      # 12 flows over 2 queues: all on one queue has odds 2 ** -11


@pytest.mark.parametrize("backend, more", [("udp", []), ("vxlan", []), ("udp", ["--no-offload"]),
                                           ("udp", ["--io", "io_uring"])],
                         ids=["udp", "vxlan", "udp-no-offload", "udp-io_uring"])
def test_flows_spread_over_queues_and_arrive_whole(overlay2, backend, more):
    require(dataplane.IMPLEMENTATION == "cython", "--queues needs the compiled data plane")
    io = "io_uring" if "io_uring" in more else "epoll"
    if io == "io_uring":
        require_io_uring()      # every queue gets its own ring
    ov = overlay2
    extra = ["--queues", "2", "--backend", backend, *more]
    d1 = ov.start(1, extra=[*extra, "--healthz-ip", underlay_of(1),
                            "--healthz-port", str(HEALTHZ_PORT)])
    ov.start(2, extra=extra)
    for i in (1, 2):
        st = ov.status(ov.hosts[i])
        assert st["dataplane"] == f"threads+{io}+2 queues", st["dataplane"]
        assert len(st["queues"]) == 2
    for k in range(FLOWS):      # each transfer is a new flow (new client port)
        src, dst = (1, 2) if k % 2 == 0 else (2, 1)
        ov.transfer(src, dst, 1024 * 1024, 5600 + k)
    for i in (1, 2):
        st = ov.status(ov.hosts[i])
        assert st["dataplane"] == f"threads+{io}+2 queues", st["dataplane"]   # no ring failed
        qs, c = st["queues"], st["counters"]
        for key in ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes"):
            assert sum(q[key] for q in qs) == c[key], (key, qs, c)
        assert all(q["tx_packets"] > 0 and q["rx_packets"] > 0 for q in qs), qs
        # per-peer counters are added from two workers at once: none lost
        [peer] = st["peers"]
        assert peer["tx_packets"] == c["tx_packets"] and peer["rx_packets"] == c["rx_packets"]
        drops = {k: v for k, v in c.items() if "_drop_" in k and v}
        assert not drops, drops
    metrics = scrape(ov, ov.hosts[1], underlay_of(1))
    qs = ov.status(ov.hosts[1])["queues"]        # quiet now: the same numbers
    for q in (0, 1):
        for d in ("tx", "rx"):
            assert sample(metrics, "udpoverlay_queue_packets_total", queue=str(q),
                          direction=d) == qs[q][f"{d}_packets"]
    text = ov.run(ov.hosts[1], [sys.executable, "-m", "udpoverlay", "status"]).stdout
    assert f"queue 1: tx {qs[1]['tx_packets']} packets" in text, text
    assert ov.stop(d1) == 0, d1.stderr()
    assert not ov.link_exists(ov.hosts[1])


def test_a_second_instance_cannot_join_the_port(overlay2):
    require(dataplane.IMPLEMENTATION == "cython", "--queues needs the compiled data plane")
    ov = overlay2
    ov.start(1, extra=["--queues", "2"])
    ov.start(2)
    # another network (one that overlaps ours is refused before the port is tried)
    intruder = ov.launch(1, [sys.executable, "-m", "udpoverlay", "run", "--public-ip",
                             "198.18.0.1", "--subnet", "198.18.200.0/24", "--network",
                             "198.18.128.0/17", "--queues", "2", "--tun", "udpov9"], wait=False)
    assert intruder.proc.wait(timeout=30) == 1, intruder.stderr()   # as with one queue
    assert "cannot bind UDP 198.18.0.1:8285" in intruder.stderr()
    assert not ov.link_exists(ov.hosts[1], "udpov9")
    ov.transfer(2, 1, 2 * 1024 * 1024, 5650)


def test_the_reference_refuses_queues_in_one_line(overlay2):
    ov = overlay2
    d = ov.start(1, extra=["--queues", "2"], python_ref=True, wait=False)
    assert d.proc.wait(timeout=30) == 2
    lines = [ln for ln in d.stderr().splitlines() if ln.strip()]
    assert lines[-1].endswith("--queues 2: the pure-Python data plane runs one queue"), lines
    assert not ov.link_exists(ov.hosts[1])


def test_forged_datagrams_are_dropped_on_every_queue(overlay2):
    """From the peer's address but not its port, with 16 different inner
    flows (so the steering spreads them over both sockets): every one is
    counted, none reaches the TUN, traffic goes on."""
    require(dataplane.IMPLEMENTATION == "cython", "--queues needs the compiled data plane")
    ov = overlay2
    ov.start(1, extra=["--queues", "2"])
    ov.start(2)
    ov.transfer(2, 1, 512 * 1024, 5660)
    before = ov.status(ov.hosts[1])["counters"]
    for k in range(16):
        forged = bytes(g.udp(pod_of(2), pod_of(1), 4000 + k, 9000 + 7 * k, b"injected"))
        r = ov.run(ov.hosts[2], [sys.executable, "-c", SENDER, underlay_of(2),
                                 str(41000 + k), underlay_of(1), str(PORT), forged.hex()])
        assert r.returncode == 0, r.stderr
    wait_for(lambda: ov.status(ov.hosts[1])["counters"]["rx_drop_bad_port"]
             == before["rx_drop_bad_port"] + 16, 10, 0.1, "16 bad_port drops")
    after = ov.status(ov.hosts[1])["counters"]
    assert after["rx_packets"] == before["rx_packets"]
    ov.transfer(2, 1, 512 * 1024, 5661)
