"""Helpers for the WireGuard engine's tests: a fake clock, a pair of engines
that know each other, and hand-built IPv4 packets (ICMP echo)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from udpoverlay.wireguard import Engine, Peer, generate

A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)
A_NET = "198.19.1.0/24"
B_NET = "198.19.2.0/24"
WALL_BASE = 1_800_000_000.0


class Clock:
    """Monotonic `now` for the engines, and a wall clock that follows it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def wall(self) -> float:
        return WALL_BASE + self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Pair:
    clock: Clock
    a: Engine
    b: Engine
    a_peer_b: Peer  # B as seen by A
    b_peer_a: Peer  # A as seen by B

    def deliver(self, datagrams, to: str, rounds: int = 8):
        """Carry datagrams to engine `to` ("a" or "b"), and whatever the
        receivers answer back and forth (at most `rounds` hops). Returns every
        Received in order."""
        results = []
        pending = [(to, d) for d in datagrams]
        for _ in range(rounds):
            if not pending:
                break
            nxt = []
            for dest, (data, _addr) in pending:
                engine, src = (self.a, B_ADDR) if dest == "a" else (self.b, A_ADDR)
                r = engine.receive(data, src, self.clock.now)
                results.append((dest, r))
                back = "b" if dest == "a" else "a"
                nxt += [(back, d) for d in r.datagrams]
            pending = nxt
        assert not pending, "datagrams still flying after the round limit"
        return results

    def packets(self, results, at: str) -> list[bytes]:
        return [r.packet for dest, r in results if dest == at and r.verdict == "data"]


def make_pair(psk=None, clock: Clock | None = None, persistent_keepalive: float = 0,
              endpoints: bool = True) -> Pair:
    clock = clock or Clock()
    ka, kb = generate(), generate()
    a = Engine(ka, wallclock=clock.wall)
    b = Engine(kb, wallclock=clock.wall)
    pab = a.add_peer(kb.public, endpoint=B_ADDR if endpoints else None, allowed_ips=[B_NET],
                     preshared_key=psk, persistent_keepalive=persistent_keepalive, now=clock.now)
    pba = b.add_peer(ka.public, endpoint=A_ADDR if endpoints else None, allowed_ips=[A_NET],
                     preshared_key=psk, now=clock.now)
    return Pair(clock, a, b, pab, pba)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64, ident: int = 1) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, ttl, proto, 0,
                         _ip(src), _ip(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def icmp_echo(src: str, dst: str, ident: int, seq: int, data: bytes = b"udpoverlay-wg",
              reply: bool = False) -> bytes:
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + data
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    return ipv4(src, dst, 1, body)


def parse_icmp_echo(packet: bytes) -> dict | None:
    """{'type', 'id', 'seq', 'src', 'dst', 'data'} of an IPv4 ICMP echo, else None."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    kind, _code, _ck, ident, seq = struct.unpack("!BBHHH", icmp[:8])
    return {"type": kind, "id": ident, "seq": seq, "data": icmp[8:],
            "src": ".".join(map(str, packet[12:16])), "dst": ".".join(map(str, packet[16:20]))}
