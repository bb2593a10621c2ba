"""--no-offload keeps the underlay's batching: real namespaces, real plain
TUN devices (one packet per read and write, no vnet header), real daemons.
A checked TCP transfer crosses, and the sender's counters prove its packets
left packed into UDP_SEGMENT messages (fewer kernel sends than packets);
with --no-udp-offload as well, the fully plain path: one send per packet.
status (JSON and text) tells which is in use."""

from __future__ import annotations

import sys

import pytest

NBYTES = 4 * 1024 * 1024


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_no_offload_still_batches_udp_gso_and_gro(overlay2, backend):
    ov = overlay2
    extra = ["--no-offload"] + (["--backend", "vxlan"] if backend == "vxlan" else [])
    ov.start(1, extra=extra)
    ov.start(2, extra=extra)
    ov.transfer(1, 2, NBYTES, 5501)

    sender, receiver = ov.status(ov.hosts[1]), ov.status(ov.hosts[2])
    for st in (sender, receiver):
        off = st["offload"]
        assert (off["enabled"], off["tun"], off["tun_uso"]) == (False, [], False), off
        assert off["udp_offload"] and off["udp_gso"] and off["udp_gro"], off
    c = sender["counters"]
    assert sender["peers"][0]["tx_bytes"] >= NBYTES
    # batching happened: each GSO message carried at least two packets
    assert 0 < c["tx_gso_messages"] < c["tx_packets"] // 2, c
    assert c["tx_super_packets"] == 0, "a plain TUN reads no super-packets"
    r = receiver["counters"]
    assert r["rx_coalesced"] == 0 and r["rx_csum_bad"] == 0, r
    human = ov.run(ov.hosts[1], [sys.executable, "-m", "udpoverlay", "status"]).stdout
    assert "TUN offloads off (--no-offload)" in human, human
    assert "underlay UDP GSO on, GRO on" in human, human


def test_no_offload_no_udp_offload_is_fully_plain(overlay2):
    ov = overlay2
    extra = ["--no-offload", "--no-udp-offload"]
    ov.start(1, extra=extra)
    ov.start(2, extra=extra)
    ov.transfer(1, 2, NBYTES, 5502)

    sender = ov.status(ov.hosts[1])
    off = sender["offload"]
    assert (off["enabled"], off["udp_offload"], off["udp_gso"], off["udp_gro"]) == \
        (False, False, False, False), off
    c = sender["counters"]
    assert c["tx_gso_messages"] == 0 and c["tx_packets"] > NBYTES // 1500, c
    human = ov.run(ov.hosts[1], [sys.executable, "-m", "udpoverlay", "status"]).stdout
    assert "underlay UDP GSO/GRO off (--no-udp-offload)" in human, human
