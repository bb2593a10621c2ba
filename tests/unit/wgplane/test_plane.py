"""WgPlane without I/O: two planes handing datagrams to each other in
memory, the route choice, the counters and the status (no secret in it)."""

from __future__ import annotations

import ipaddress
import json
import os
import random

import pytest

from tests.support.wireguard import icmp_echo
from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer
from udpoverlay.wgplane import COUNTERS, WgPlane
from udpoverlay.wgplane.routes import Routes
from udpoverlay.wireguard import PresharedKey, generate

A_NET, B_NET, C_NET = (ipaddress.IPv4Network(n) for n in
                       ("198.19.1.0/24", "198.19.2.0/24", "198.19.3.0/24"))
A_ADDR, B_ADDR = ("198.18.0.1", 51820), ("198.18.0.2", 51820)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def peer(addr, net, key, **kw) -> Peer:
    return Peer(ipaddress.IPv4Address(addr[0]), addr[1], net,
                public_key=key.public.to_base64(), **kw)


def pair(psk=None, keepalive=None):
    clock = Clock()
    ka, kb = generate(), generate()
    psks = {}
    if psk is not None:
        psks = {"/psk": psk}
    a = WgPlane(ka, A_NET, clock=clock, load_psk=psks.__getitem__)
    b = WgPlane(kb, B_NET, clock=clock, load_psk=psks.__getitem__)
    f = "/psk" if psk is not None else None
    a.set_peers([peer(B_ADDR, B_NET, kb, preshared_key_file=f, keepalive=keepalive)], strict=True)
    b.set_peers([peer(A_ADDR, A_NET, ka, preshared_key_file=f)], strict=True)
    return clock, ka, kb, a, b


def carry(datagrams, a, b, clock, rounds=8):
    """Deliver datagrams between a and b until quiet; the packets each got."""
    got = {"a": [], "b": []}
    pending = list(datagrams)
    for _ in range(rounds):
        nxt = []
        for data, addr in pending:
            to, name, src = (b, "b", A_ADDR) if addr == B_ADDR else (a, "a", B_ADDR)
            packet, out = to.incoming(data, src, clock.now)
            if packet is not None:
                got[name].append(packet)
            nxt += out
        pending = nxt
        if not pending:
            break
    assert not pending
    return got


@pytest.mark.parametrize("psk", [None, PresharedKey(os.urandom(32))], ids=["no-psk", "psk"])
def test_a_packet_waits_for_the_handshake_then_arrives_encrypted(psk):
    clock, ka, kb, a, b = pair(psk)
    ping = icmp_echo("198.19.1.5", "198.19.2.7", 1, 1, b"secret payload")
    out = a.outgoing(ping, clock.now)
    assert len(out) == 1 and out[0][0][0] == 1 and out[0][1] == B_ADDR     # an initiation
    assert b"secret payload" not in out[0][0] and bytes([198, 19, 2, 7]) not in out[0][0]
    got = carry(out, a, b, clock)
    assert got == {"a": [], "b": [ping]}
    ca, cb = a.counters(), b.counters()
    assert ca["tx_packets"] == 1 and ca["tx_bytes"] == len(ping) and ca["wg_rx_response"] == 1
    assert cb["rx_packets"] == 1 and cb["rx_bytes"] == len(ping) and cb["wg_rx_initiation"] == 1
    # the session is up: the answer goes straight out, encrypted
    pong = icmp_echo("198.19.2.7", "198.19.1.5", 1, 1, b"secret payload", reply=True)
    out = b.outgoing(pong, clock.now)
    assert len(out) == 1 and out[0][0][0] == 4 and b"secret payload" not in out[0][0]
    assert carry(out, a, b, clock)["a"] == [pong]
    (st,) = a.peer_status()
    assert st["public_key"] == kb.public.to_base64() and st["endpoint"] == "198.18.0.2:51820"
    assert st["session"] and st["session_age"] == 0 and st["latest_handshake"] is not None
    assert st["preshared_key"] is (psk is not None) and st["tx_packets"] == st["rx_packets"] == 1
    assert st["transfer_tx"] > 0 and st["transfer_rx"] > 0


def test_no_secret_in_status_or_counters():
    clock, ka, kb, a, b = pair(PresharedKey(os.urandom(32)))
    carry(a.outgoing(icmp_echo("198.19.1.5", "198.19.2.7", 1, 1), clock.now), a, b, clock)
    text = json.dumps([a.status(), a.peer_status(), a.counters(), repr(a.engine)])
    assert ka.secret_base64() not in text and kb.public.to_base64() in text
    assert ka.public.to_base64() == a.status()["public_key"]


def test_routes_drops_and_counter_names():
    clock, ka, kb, a, b = pair()
    assert a.outgoing(b"\x45" * 10, clock.now) == []
    assert a.outgoing(b"\x60" + bytes(39), clock.now) == []                  # IPv6
    assert a.outgoing(icmp_echo("198.19.1.5", "198.19.9.9", 1, 1), clock.now) == []
    c = a.counters()
    assert (c["tx_drop_too_short"], c["tx_drop_not_ipv4"], c["tx_drop_no_route"]) == (1, 1, 1)
    assert set(c) == set(COUNTERS), set(c) ^ set(COUNTERS)
    # garbage and strangers on the wire: counted by verdict, nothing for the TUN
    assert a.incoming(b"\x04" + bytes(40), B_ADDR, clock.now) == (None, [])
    assert a.incoming(b"hello", B_ADDR, clock.now) == (None, [])
    c = a.counters()
    assert c["rx_drop_unknown_index"] == 1 and c["rx_drop_malformed"] == 1


def test_inner_destination_must_be_ours():
    """An authenticated peer cannot route through us to another network."""
    clock, ka, kb, a, b = pair()
    carry(a.outgoing(icmp_echo("198.19.1.5", "198.19.2.7", 1, 1), clock.now), a, b, clock)
    elsewhere = icmp_echo("198.19.2.7", "203.0.113.1", 1, 1)
    # b routes it to a only if a's subnet held it: hand it to b's engine directly
    out = b.engine.send(b.engine.peer(ka.public), elsewhere, clock.now)
    assert carry(out, a, b, clock)["a"] == []
    assert a.counters()["rx_drop_not_local"] == 1 and a.counters()["rx_packets"] == 0


def test_set_peers_keeps_sessions_and_follows_changes():
    clock, ka, kb, a, b = pair()
    carry(a.outgoing(icmp_echo("198.19.1.5", "198.19.2.7", 1, 1), clock.now), a, b, clock)
    wg = a.engine.peer(kb.public)
    moved = peer(("198.18.0.9", 51821), B_NET, kb, keepalive=25)
    a.set_peers([moved])
    assert a.engine.peer(kb.public) is wg and wg.keypairs.current is not None
    assert wg.endpoint == ("198.18.0.9", 51821) and wg.persistent_keepalive == 25
    assert a.peers == (moved,)
    kc = generate()
    a.set_peers([moved, peer(("198.18.0.3", 51820), C_NET, kc)])
    assert len(a.peer_status()) == 2
    assert a.outgoing(icmp_echo("198.19.1.5", "198.19.3.1", 1, 1), clock.now)  # an initiation
    a.set_peers([])
    assert a.engine.peers == {} and a.peers == ()
    assert a.counters()["tx_packets"] == 2          # totals survive a removal


def test_bad_peers_strict_at_start_left_out_on_reload(tmp_path, caplog):
    clock, ka, kb, a, b = pair()
    ours = Peer(ipaddress.IPv4Address("198.18.0.3"), 51820, C_NET,
                public_key=ka.public.to_base64())
    with pytest.raises(ConfigError, match="our own public key"):
        a.set_peers([ours], strict=True)
    psk = tmp_path / "psk"
    psk.write_text(PresharedKey(os.urandom(32)).raw.hex())
    os.chmod(psk, 0o644)
    real = WgPlane(ka, A_NET, clock=clock, owner_uid=os.geteuid())
    leaky = peer(B_ADDR, B_NET, kb, preshared_key_file=str(psk))
    with pytest.raises(ConfigError, match="gives group or others access") as ei:
        real.set_peers([leaky], strict=True)
    assert psk.read_text() not in str(ei.value)
    real.set_peers([leaky, peer(("198.18.0.3", 51820), C_NET, generate())])     # a reload
    assert len(real.peers) == 1 and real.status()["refused"][0]["peer"].endswith(str(B_NET))
    assert "peer left out" in caplog.text and psk.read_text() not in caplog.text


def test_persistent_keepalive_goes_out_at_its_interval():
    clock, ka, kb, a, b = pair(keepalive=5)
    first = a.tick(clock.now)          # configured: a keepalive is due at once -> handshake
    assert len(first) == 1 and first[0][0][0] == 1
    carry(first, a, b, clock)
    sent = []
    for _ in range(30):
        clock.now += 1
        for data, _addr in a.tick(clock.now):
            if data[0] == 4 and len(data) == 32:       # an empty transport message
                sent.append(clock.now)
                carry([(data, B_ADDR)], a, b, clock)
    gaps = [y - x for x, y in zip(sent, sent[1:])]
    assert len(sent) >= 5 and all(g == 5 for g in gaps), sent
    # plus the one that confirmed the session after the handshake
    assert b.counters()["rx_keepalive"] == len(sent) + 1


def test_routes_against_a_naive_scan():
    rng = random.Random(7)
    nets = set()
    for _ in range(60):
        plen = rng.choice([8, 16, 20, 24, 28, 32])
        nets.add(ipaddress.IPv4Network((rng.getrandbits(32), plen), strict=False))
    table = Routes((n, n) for n in nets)
    for _ in range(3000):
        addr = rng.getrandbits(32) if rng.random() < 0.5 else \
            int(rng.choice(sorted(nets)).network_address) + rng.getrandbits(4)
        addr &= 0xFFFFFFFF
        hits = [n for n in nets if int(n.network_address) == addr & int(n.netmask)]
        want = max(hits, key=lambda n: n.prefixlen) if hits else None
        assert table.lookup(addr) == want


def test_a_handshake_flood_puts_the_plane_under_load_cookie_first():
    """More than UNDER_LOAD_HANDSHAKES handshake messages in a second (a
    flood of initiations from spoofed sources): the plane is under load for
    a second, a genuine peer's initiation then earns a 64-byte cookie reply,
    never more bytes than it sent, and its retry with the cookie's MAC2
    completes the handshake; a quiet second later the load is over."""
    from udpoverlay.wgplane.plane import UNDER_LOAD_HANDSHAKES
    clock, ka, kb, a, b = pair()
    junk = bytes([1, 0, 0, 0]) + os.urandom(144)
    for n in range(UNDER_LOAD_HANDSHAKES + 10):
        packet, out = b.incoming(junk, (f"198.18.7.{n % 250}", 40000 + n), clock.now)
        assert packet is None and out == []          # strangers: no answer at all
    assert b.status()["under_load"] is True and b.status()["under_load_periods"] == 1
    ping = icmp_echo("198.19.1.5", "198.19.2.7", 1, 1, b"x")
    [(init, to)] = a.outgoing(ping, clock.now)
    packet, answer = b.incoming(init, A_ADDR, clock.now)
    assert packet is None and len(answer) == 1
    cookie = answer[0][0]
    assert cookie[0] == 3 and len(cookie) == 64 <= len(init)
    assert a.incoming(cookie, B_ADDR, clock.now) == (None, [])
    clock.now += 5.5                                 # REKEY_TIMEOUT: a retry, now with MAC2
    retry = a.tick(clock.now)
    assert retry and retry[0][0][0] == 1
    got = carry(retry, a, b, clock)
    assert got["b"] == [ping]
    clock.now += 2
    b.incoming(junk, ("198.18.7.1", 40000), clock.now)
    assert b.status()["under_load"] is False
