"""Learned VTEP MACs cannot be pinned (issue 11 item 2), both twins
(`impl`): a peer's own ARP (request or reply, sender = its VTEP address)
and the inner source MAC of its valid data frames replace a learned MAC,
counted as arp_mac_changed; configured MACs are never overwritten; nobody
else's frames teach anything. Plus the resolver's policy (arp.Resolver) on
a fake clock: whom it asks again, when, and what it logs."""

from __future__ import annotations

import logging

from tests.support import pktgen as g
from tests.support.twins import engine
from udpoverlay.dataplane import arp, wire

FORGED = bytes.fromhex("02ee00000bad")
REAL = bytes.fromhex("02bb00000002")
NEWER = bytes.fromhex("02bb000000ff")
VTEP_B = bytes([198, 19, 2, 0])
LEARNED = g.peer("198.18.0.2", 8472, "198.19.2.0/24")
CONFIGURED = g.peer("198.18.0.3", 8472, "198.19.3.0/24", REAL)


def arp_frame(sha: bytes, spa: bytes, op: int = 2, dst: bytes = g.MAC) -> bytes:
    body = (b"\0\x01\x08\x00\x06\x04\0" + bytes([op]) + sha + spa
            + (g.MAC if op == 2 else bytes(6)) + bytes([198, 19, 1, 0]))
    return g.vxlan(b"")[:8] + dst + sha + b"\x08\x06" + body


def data_frame(src_mac: bytes, inner_src: str = "198.19.2.7", dst_mac: bytes = g.MAC,
               vni: int = 1) -> bytes:
    inner = bytes(g.udp(inner_src, "198.19.1.5", 1, 2, b"x"))
    return (b"\x08\0\0\0" + vni.to_bytes(3, "big") + b"\0" + dst_mac + src_mac
            + b"\x08\x00" + inner)


def macs(e) -> list:
    return [p["vtep_mac"] for p in e.peer_status()]


def test_forged_reply_first_then_the_real_peer_corrects_it(impl):
    e = engine(impl, "vxlan", [LEARNED])
    assert e.t.inbound(arp_frame(FORGED, VTEP_B), g.ip("198.18.0.2"), 40000)[0] == wire.ARP
    assert macs(e) == ["02:ee:00:00:0b:ad"] and e.counters()["arp_mac_changed"] == 0
    # the real peer's ARP request for our VTEP (broadcast) both corrects and is answered
    v, _, _, reply = e.t.inbound(arp_frame(REAL, VTEP_B, op=1, dst=b"\xff" * 6),
                                 g.ip("198.18.0.2"), 8472)
    assert v == wire.ARP and reply[8:14] == REAL
    assert macs(e) == ["02:bb:00:00:00:02"] and e.counters()["arp_mac_changed"] == 1
    # the same MAC again is no change
    e.t.inbound(arp_frame(REAL, VTEP_B), g.ip("198.18.0.2"))
    assert e.counters()["arp_mac_changed"] == 1


def test_data_frames_relearn_the_inner_source_mac(impl):
    e = engine(impl, "vxlan", [LEARNED])
    e.t.inbound(arp_frame(FORGED, VTEP_B), g.ip("198.18.0.2"))
    assert e.t.inbound(data_frame(NEWER), g.ip("198.18.0.2"))[0] == wire.OK
    assert macs(e) == ["02:bb:00:00:00:ff"] and e.counters()["arp_mac_changed"] == 1
    # frames that are not accepted teach nothing
    e.t.inbound(data_frame(FORGED, inner_src="198.19.9.9"), g.ip("198.18.0.2"))  # spoofed
    e.t.inbound(data_frame(FORGED, vni=5), g.ip("198.18.0.2"))                   # bad VNI
    e.t.inbound(data_frame(FORGED, dst_mac=b"\xff" * 6), g.ip("198.18.0.2"))    # not to us
    e.t.inbound(data_frame(FORGED), g.ip("198.18.0.9"))                          # a stranger
    e.t.inbound(data_frame(b"\x03" + FORGED[1:]), g.ip("198.18.0.2"))          # multicast
    assert macs(e) == ["02:bb:00:00:00:ff"] and e.counters()["arp_mac_changed"] == 1


def test_unresolved_peer_learns_from_its_data_frames(impl):
    e = engine(impl, "vxlan", [LEARNED])
    assert e.unresolved() == [LEARNED]
    assert e.t.inbound(data_frame(REAL), g.ip("198.18.0.2"))[0] == wire.OK
    assert e.unresolved() == [] and e.counters()["arp_mac_changed"] == 0


def test_configured_macs_are_never_overwritten(impl):
    e = engine(impl, "vxlan", [CONFIGURED])
    e.t.inbound(arp_frame(FORGED, bytes([198, 19, 3, 0])), g.ip("198.18.0.3"))
    e.t.inbound(data_frame(FORGED, inner_src="198.19.3.7"), g.ip("198.18.0.3"))
    assert macs(e) == ["02:bb:00:00:00:02"] and e.counters()["arp_mac_changed"] == 0


def test_arp_only_teaches_the_peer_whose_vtep_address_it_names(impl):
    other = g.peer("198.18.0.2", 8472, "198.19.20.0/24")     # same host, second subnet
    e = engine(impl, "vxlan", [LEARNED, other])
    e.t.inbound(arp_frame(FORGED, bytes([198, 19, 20, 0])), g.ip("198.18.0.2"))
    assert macs(e) == [None, "02:ee:00:00:0b:ad"]
    e.t.inbound(arp_frame(FORGED, bytes([198, 19, 9, 0])), g.ip("198.18.0.2"))
    assert macs(e) == [None, "02:ee:00:00:0b:ad"]


def test_a_learned_mac_survives_a_swap_and_stays_learnable(impl):
    e = engine(impl, "vxlan", [LEARNED])
    e.t.inbound(arp_frame(FORGED, VTEP_B), g.ip("198.18.0.2"))
    e.set_peers([LEARNED, CONFIGURED])
    assert macs(e) == ["02:ee:00:00:0b:ad", "02:bb:00:00:00:02"]
    e.t.inbound(arp_frame(REAL, VTEP_B), g.ip("198.18.0.2"))
    assert macs(e)[0] == "02:bb:00:00:00:02" and e.counters()["arp_mac_changed"] == 1


# -- the resolver's policy ------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def asked(r) -> list:
    return [p for _, p in r.tick()]


def test_resolver_backs_off_then_refreshes_and_chases_one_way_peers(impl, caplog):
    e = engine(impl, "vxlan", [LEARNED, CONFIGURED])
    clock = Clock()                              # steps are exact binary fractions
    r = arp.Resolver(e, clock)
    to_b = bytes(g.udp("198.19.1.5", "198.19.2.7", 1, 2, b"x"))
    assert asked(r) == [LEARNED]                 # unresolved: at once; configured: never
    assert asked(r) == []                        # backoff 0.2 s
    clock.now += 0.25
    assert asked(r) == [LEARNED]                 # backoff 0.4 s
    clock.now += 0.25
    assert asked(r) == []
    with caplog.at_level(logging.INFO, logger="udpoverlay"):
        e.t.inbound(arp_frame(FORGED, VTEP_B), g.ip("198.18.0.2"))
        assert asked(r) == []                    # learned: quiet
        clock.now += 1.0
        assert asked(r) == []                    # and nothing sent: still quiet
        # we send, nothing comes back (what a wrong MAC looks like): asked
        # once 2 s of silence have passed, then every 2 s
        got = []
        for _ in range(6):
            assert e.t.outbound(to_b)[0] == wire.OK
            clock.now += 0.5
            got += asked(r)
        assert got == [LEARNED, LEARNED]
        e.t.inbound(arp_frame(REAL, VTEP_B), g.ip("198.18.0.2"))
        e.t.inbound(data_frame(REAL), g.ip("198.18.0.2"))
        assert asked(r) == []
    lines = [m.getMessage() for m in caplog.records if "VTEP MAC" in m.getMessage()]
    assert lines == ["peer 198.18.0.2 (198.19.2.0/24): VTEP MAC 02:ee:00:00:0b:ad",
                     "peer 198.18.0.2 (198.19.2.0/24): VTEP MAC changed "
                     "02:ee:00:00:0b:ad -> 02:bb:00:00:00:02"]
    # two-way traffic: only the slow refresh
    for _ in range(10):
        clock.now += 2.5
        e.t.outbound(to_b)
        e.t.inbound(data_frame(REAL), g.ip("198.18.0.2"))
        assert asked(r) == []
    clock.now += arp.REFRESH
    assert asked(r) == [LEARNED]


def test_resolver_has_nothing_to_do_in_udp_mode(impl):
    e = engine(impl, "udp", [g.peer("198.18.0.2", 8285, "198.19.2.0/24")])
    assert arp.Resolver(e, Clock()).tick() == []
