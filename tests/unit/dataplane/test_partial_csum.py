"""Partial inner checksums (issue 10 item 4), both twins (`impl`): a kernel
vxlan sender whose underlay does checksum offload leaves the inner TCP/UDP
checksum as the folded pseudo-header sum. Such packets are finished and
counted (rx_csum_partial); good ones pass untouched, truly bad ones are not
"repaired" (the kernel drops them, the coalescer counts rx_csum_bad)."""

from __future__ import annotations

import pytest

from tests.support import pktgen as g
from tests.support.twins import engine
from udpoverlay.dataplane import wire
from udpoverlay.dataplane._py.checksum import l4_ok

PEER = g.peer("198.18.0.2", 8472, "198.19.2.0/24", g.PEER_MAC)
OFFLOADS = [None, (True, False, False), (True, True, True)]
BODY = bytes(range(256)) * 5


def packets(**kw):
    return [g.tcp("198.19.2.7", "198.19.1.5", 40000, 5201, 77, BODY[:1000], **kw),
            g.udp("198.19.2.7", "198.19.1.5", 40000, 5201, BODY[:333], **kw)]


def delivered(e, data: bytes) -> bytes:
    """What reaches the TUN for one datagram (vnet: the packet behind the header)."""
    if not e.vnet_hdr:
        v, _, pkt, _ = e.t.inbound(data, g.ip("198.18.0.2"))
        assert v == wire.OK
        return pkt
    writes, _ = e.t.inbound_batch([(data, g.ip("198.18.0.2"), 0)])
    assert len(writes) == 1
    return writes[0][wire.VNET_HDR_LEN:]


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_partial_checksums_are_finished_and_counted(impl, backend, offload):
    peer = PEER if backend == "vxlan" else g.peer("198.18.0.2", 8285, "198.19.2.0/24")
    e = engine(impl, backend, [peer], offload=offload)
    wrap = g.vxlan if backend == "vxlan" else bytes
    for partial, good in zip(packets(partial=True), packets()):
        assert not l4_ok(partial, 20, partial[9])
        out = delivered(e, wrap(partial))
        assert out == bytes(good) and l4_ok(out, 20, out[9])
    assert e.counters()["rx_csum_partial"] == 2
    for good in packets():                              # untouched, not counted
        assert delivered(e, wrap(good)) == bytes(good)
    for bad in packets(bad_csum=True):                  # not a partial sum: left alone
        assert delivered(e, wrap(bad)) == bytes(bad)
    c = e.counters()
    assert c["rx_csum_partial"] == 2
    if offload is not None and backend == "vxlan":      # the coalescer saw them bad
        assert c["rx_csum_bad"] >= 1
    elif offload is not None:       # udp: the outer checksum covered them, not verified
        assert c["rx_csum_bad"] == 0


def test_udp_without_checksum_and_fragments_are_left_alone(impl):
    e = engine(impl, "vxlan", [PEER])
    nocsum = g.udp("198.19.2.7", "198.19.1.5", 1, 2, BODY[:50], no_csum=True)
    assert delivered(e, g.vxlan(nocsum)) == bytes(nocsum)
    frag = g.udp("198.19.2.7", "198.19.1.5", 1, 2, BODY[:50], partial=True, mf=True)
    assert delivered(e, g.vxlan(frag)) == bytes(frag)
    short = bytearray(g.tcp("198.19.2.7", "198.19.1.5", 1, 2, 0, b""))[:30]
    short[2:4] = (30).to_bytes(2, "big")
    e.t.inbound(g.vxlan(bytes(short)), g.ip("198.18.0.2"))    # too short a TCP header: no crash
    assert e.counters()["rx_csum_partial"] == 0


def test_udp_checksum_that_finishes_as_zero_is_sent_as_ffff(impl):
    e = engine(impl, "vxlan", [PEER])
    # find a payload whose finished UDP checksum is 0 (transmitted as 0xFFFF)
    for i in range(70000):
        pkt = g.udp("198.19.2.7", "198.19.1.5", 1, 2, i.to_bytes(4, "big"))
        if pkt[26:28] == b"\xff\xff":
            break
    else:
        pytest.fail("no payload with a zero UDP checksum found")
    partial = g.udp("198.19.2.7", "198.19.1.5", 1, 2, i.to_bytes(4, "big"), partial=True)
    assert delivered(e, g.vxlan(partial)) == bytes(pkt)
    assert e.counters()["rx_csum_partial"] == 1
