"""Offloads across implementations and settings: hosts with and without
offloads, and the pure-Python reference's offload I/O (GSO sends through
sendmsg, GRO receives through recvmsg, coalesced TUN writes), exchange
checked TCP transfers: the wire stays flannel's one-packet-per-datagram
format whatever each end does internally."""

from __future__ import annotations

import time

import pytest


@pytest.mark.parametrize("h1, h2", [
    (["--no-offload"], []),
    ([], ["--no-offload"]),
], ids=["off-to-on", "on-to-off"])
def test_offload_and_no_offload_hosts_interoperate(overlay2, h1, h2):
    ov = overlay2
    ov.start(1, extra=h1)
    ov.start(2, extra=h2)
    ov.transfer(1, 2, 16 * 1024 * 1024, 5401)
    ov.transfer(2, 1, 16 * 1024 * 1024, 5402)


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_python_reference_offload_path_talks_to_compiled(overlay2, backend):
    ov = overlay2
    extra = ["--backend", "vxlan"] if backend == "vxlan" else []
    ov.start(1, python_ref=True, extra=extra)
    ov.start(2, extra=extra)
    st = ov.status(ov.hosts[1])
    assert st["implementation"] == "python" and st["offload"]["enabled"]
    nbytes = 6 * 1024 * 1024
    ov.transfer(1, 2, nbytes, 5403)
    ov.transfer(2, 1, nbytes, 5404)
    c = ov.status(ov.hosts[1])["counters"]
    assert c["tx_super_packets"] > 0 and c["rx_coalesced"] > 0, c
    assert c["rx_csum_bad"] == 0


@pytest.mark.parametrize("extra", [["--threads"], ["--threads", "--no-offload"]],
                         ids=["threads", "threads-no-offload"])
def test_worker_threads_carry_traffic_and_stop_cleanly(overlay2, extra):
    ov = overlay2
    d1 = ov.start(1, extra=extra)
    ov.start(2)
    assert ov.status(ov.hosts[1])["dataplane"] == "threads"
    assert ov.status(ov.hosts[2])["dataplane"] == "loop"
    ov.transfer(1, 2, 16 * 1024 * 1024, 5405)
    ov.transfer(2, 1, 16 * 1024 * 1024, 5406)
    started = time.monotonic()
    assert ov.stop(d1) == 0, d1.stderr()
    assert time.monotonic() - started < 5
    assert not ov.link_exists(ov.hosts[1])
