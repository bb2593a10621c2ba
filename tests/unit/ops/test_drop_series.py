"""The drop series /metrics exports are exactly the counters both data-plane
twins can increment (issue 20 item 9: 10 of 30 could never move).

Two halves: every exported (direction, reason) moves, in both twins, for a
concrete input (reachable); and no direction's code, in either twin,
names a drop verdict outside its exported list (nothing else can move).
Every verdict is classified, so a new one forces a decision."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import pktgen as g
from tests.support.twins import both, engine
from udpoverlay.dataplane import wire
from udpoverlay.ops.metrics import DROP_REASONS, NEVER_COUNTED, OpsCollector
from udpoverlay.peer import Peer

ROOT = Path(__file__).resolve().parents[3]
DROPS = {n for i, n in enumerate(wire.VERDICT_NAMES) if i not in (wire.OK, wire.ARP,
                                                                   wire.KEEPALIVE)}
# each direction's code, per twin (frames: the IPv4 check both directions use)
SOURCES = {
    "tx": ("udpoverlay/dataplane/_py/outgoing.py", "udpoverlay/dataplane/_py/frames.py",
           "_fastpath/outgoing.pxi", "_fastpath/frames.pxi"),
    "rx": ("udpoverlay/dataplane/_py/incoming.py", "udpoverlay/dataplane/_py/frames.py",
           "_fastpath/incoming.pxi", "_fastpath/frames.pxi"),
}
OTHER = ("udpoverlay/dataplane/_py/offload.py", "udpoverlay/dataplane/_py/routes.py",
         "udpoverlay/dataplane/_py/checksum.py", "udpoverlay/dataplane/_py/core.py",
         "udpoverlay/dataplane/_py/__init__.py",
         "_fastpath/offload.pxi", "_fastpath/routes.pxi", "_fastpath/checksum.pxi",
         "_fastpath/syscalls.pxi", "_fastpath/core.pyx",
         # the WireGuard transport AEAD: its own verdicts, none of the drop list's
         "_fastpath/wgcrypto.pxi", "udpoverlay/dataplane/_py/wgcrypto.py")
# WgIo, the WireGuard plane's I/O: counters of its own (WGIO_COUNTERS), none
# of these series; udp mode's send loop it reuses counts a failed send in
# WgIo's private tx_t, in the TX_ERROR slot, which is its tx_send_error
WGIO = ("udpoverlay/dataplane/_py/wgio.py", "_fastpath/wgio.pxi")
SRC, DST = "198.19.2.5", "198.19.1.5"          # a peer's pod -> ours


def _named(path: str) -> set[str]:
    """Drop verdicts a file's code names (comments and docstrings dropped)."""
    text = (ROOT / path).read_text()
    text = re.sub(r'"""[\s\S]*?"""', "", text)
    text = re.sub(r"#[^\n]*", "", text)
    return {n for n in DROPS if re.search(rf"\b{n.upper()}\b", text)}


def test_every_verdict_is_classified_once():
    for d in ("tx", "rx"):
        assert not set(DROP_REASONS[d]) & set(NEVER_COUNTED[d]), d
        assert set(DROP_REASONS[d]) | set(NEVER_COUNTED[d]) == DROPS, d
    assert len(DROP_REASONS["tx"]) + len(DROP_REASONS["rx"]) == 20


def test_no_code_names_a_drop_outside_its_direction_list():
    for d, files in SOURCES.items():
        for path in files:
            assert _named(path) <= set(DROP_REASONS[d]), (d, path)
        # together the direction's code names every exported reason, in each twin
        py = set().union(*(_named(p) for p in files if p.startswith("udpoverlay/")))
        cy = set().union(*(_named(p) for p in files if p.startswith("_fastpath/")))
        assert py == cy == set(DROP_REASONS[d]), d
    for path in OTHER:                        # the rest counts no verdict at all
        assert not _named(path), path
    for path in WGIO:
        assert _named(path) <= {"tx_error"}, path
    # every twin file is looked at (test-only entry points and the constants aside)
    files = {str(p.relative_to(ROOT)) for p in [*(ROOT / "_fastpath").glob("*.p*"),
                                                 *(ROOT / "udpoverlay/dataplane/_py").glob("*.py")]}
    seen = set(SOURCES["tx"]) | set(SOURCES["rx"]) | set(OTHER) | set(WGIO)
    assert files - seen == {"_fastpath/testing.pxi", "_fastpath/wire.pxd",
                            "udpoverlay/dataplane/_py/testing.py"}


def _short(ttl: int = 64, src: str = SRC, dst: str = DST) -> bytes:
    return bytes(g.udp(src, dst, 4000, 5000, b"x" * 10, ttl=ttl))


def _bad_len() -> bytes:
    p = bytearray(_short())
    p[3] += 1                                 # total length says one byte more
    return bytes(p)


def _v6() -> bytes:
    return b"\x60" + bytes(39)


def _tx_moves(twin) -> dict[str, int]:
    """Per tx reason: the counter after its input (one engine per reason)."""
    out = {}
    cases = {
        "too_short": ("udp", lambda e: e.t.outbound(b"\x45" + bytes(9))),
        "not_ipv4": ("udp", lambda e: e.t.outbound(_v6())),
        "bad_header": ("udp", lambda e: e.t.outbound(_bad_len())),
        "no_route": ("udp", lambda e: e.t.outbound(_short(src=DST, dst="198.19.5.5"))),
        "ttl_expired": ("udp", lambda e: e.t.outbound(_short(ttl=1, src=DST, dst=SRC))),
    }
    for reason, (backend, act) in cases.items():
        e = engine(twin, backend)
        act(e)
        out[reason] = e.counters()["tx_drop_" + reason]
    e = engine(twin, "vxlan", [g.peer("198.18.0.2", 8472, "198.19.2.0/24")])   # MAC unknown
    e.t.outbound(_short(src=DST, dst=SRC))
    out["unresolved"] = e.counters()["tx_drop_unresolved"]
    e = engine(twin, "udp", offload=(True, False, False))
    pkt = g.tcp(DST, SRC, 40000, 5201, 1, bytes(3000), partial=True)
    e.t.outbound_batch([g.tun_read(pkt, 1, 0)])              # TSO with gso_size 0
    out["bad_gso"] = e.counters()["tx_drop_bad_gso"]
    # tx_error: the TUN read fails (a directory is no TUN): counted, not raised
    e = engine(twin, "udp")
    tun = os.open(str(ROOT), os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        e.core.tun_to_udp(tun, sock.fileno())
    finally:
        os.close(tun)
        sock.close()
    out["tx_error"] = e.counters()["tx_drop_tx_error"]
    return out


def _rx_moves(twin) -> dict[str, int]:
    peer_ip = g.ip("198.18.0.2")
    vx = [g.peer("198.18.0.2", 8472, "198.19.2.0/24", g.PEER_MAC)]
    cases = {
        "too_short": ("vxlan", g.vxlan(b"")[:21], peer_ip, 8472),
        "not_ipv4": ("udp", _v6(), peer_ip, 8285),
        "bad_header": ("udp", _bad_len(), peer_ip, 8285),
        "unknown_peer": ("udp", _short(), g.ip("198.18.0.99"), 8285),
        "bad_port": ("udp", _short(), peer_ip, 8286),
        "spoofed_src": ("udp", _short(src="198.19.3.5"), peer_ip, 8285),
        "not_local": ("udp", _short(dst="198.19.3.5"), peer_ip, 8285),
        "ttl_expired": ("udp", _short(ttl=0), peer_ip, 8285),
        "bad_vxlan": ("vxlan", b"\0" + g.vxlan(_short())[1:], peer_ip, 8472),
        "bad_vni": ("vxlan", g.vxlan(_short(), vni=2), peer_ip, 8472),
        "wrong_mac": ("vxlan", g.vxlan(_short(), dst_mac=b"\x02" * 6), peer_ip, 8472),
    }
    out = {}
    for reason, (backend, data, src, sport) in cases.items():
        e = engine(twin, backend, vx if backend == "vxlan" else None)
        e.t.inbound(data, src, sport)
        out[reason] = e.counters()["rx_drop_" + reason]
    out["tx_error"] = _rx_tun_write_fails(twin)
    return out


def _rx_tun_write_fails(twin) -> int:
    """A good datagram on loopback whose TUN write fails (the "TUN" is a
    read-only fd): rx tx_error."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tun = os.open(os.devnull, os.O_RDONLY)
    try:
        rx.bind(("127.0.0.1", 0))
        tx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        e = engine(twin, "udp", [Peer(ipaddress.IPv4Address("127.0.0.1"), tx.getsockname()[1],
                                      ipaddress.IPv4Network("198.19.2.0/24"))])
        tx.sendto(_short(), rx.getsockname())
        for _ in range(100):                # bounded: the datagram is there at once
            if e.core.udp_to_tun(rx.fileno(), tun):
                break
        return e.counters()["rx_drop_tx_error"]
    finally:
        os.close(tun)
        rx.close()
        tx.close()


@pytest.mark.parametrize("direction", ["tx", "rx"])
def test_every_exported_drop_moves_in_both_twins(direction):
    for twin in both():
        moves = (_tx_moves if direction == "tx" else _rx_moves)(twin)
        assert set(moves) == set(DROP_REASONS[direction]), twin
        assert all(v >= 1 for v in moves.values()), (twin, moves)


def test_exported_drop_series_are_exactly_the_lists():
    from prometheus_client.parser import text_string_to_metric_families

    from udpoverlay.lifecycle import Lifecycle
    from udpoverlay.ops.metrics import make_registry, render
    e = engine(both()[0], "vxlan")
    c = OpsCollector(Lifecycle(), lambda: "python", lambda: "asyncio")
    c.daemon = SimpleNamespace(engine=e, offload_status=lambda: {})
    text = render(make_registry(c)).decode()
    [fam] = [f for f in text_string_to_metric_families(text) if f.name == "udpoverlay_drops"]
    got = {(s.labels["direction"], s.labels["reason"]) for s in fam.samples}
    assert got == {(d, r) for d in ("tx", "rx") for r in DROP_REASONS[d]}
    assert len(got) == 20 and len(e.counters()) - len(got) > 10    # status keeps all 30
