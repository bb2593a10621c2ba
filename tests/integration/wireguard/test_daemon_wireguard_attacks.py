"""Attacks on the real daemon (the engine's own unit tests cover each rule;
here the whole path: socket, plane, counters, status). Topology:
tests/support/wgpeer.py, our daemon on h1, wireguard-go on h2.

Captured on our underlay (tcpdump on h1's eth0) while wireguard-go starts
a session and pings flow: its initiation and a data message. Then, from
wireguard-go's own address (another port: its port is its socket's), an
attacker sends us
- the data message again (a replay) -> dropped, rx_drop_replay;
- it with one bit flipped -> dropped, rx_drop_bad_auth;
- the old initiation again -> no response, rx_drop_stale_initiation;
- a stranger's valid initiation (a key we do not know) -> nothing at all,
  rx_drop_unknown_peer;
- noise shaped like each message type -> nothing, each counted;
and the attacker's socket receives nothing, the capture shows nothing
from us in that time, the peer's endpoint does not move, and the session
still carries traffic. Over the whole capture every handshake answer we
sent is no larger than the message it answered.
"""

from __future__ import annotations

import os
import select
import time

from lab.netns import wait_for
from tests.support.overlay import Overlay, pod_of, underlay_of
from tests.support.wgpeer import PORT, Capture, our_key, start_ours, udp_socket_in
from tests.support.wireguard import icmp_echo
from udpoverlay.wireguard import Engine, generate
from udpoverlay.wireguard.keys import parse_public_key

ATTACKER_PORT = 40404


def _counters(ov: Overlay) -> dict:
    return ov.status(ov.hosts[1])["counters"]


def _ping(ov: Overlay, src: int, dst: int, count: int = 3) -> None:
    r = ov.ping(src, dst, count)
    assert r.returncode == 0 and f" {count} received" in r.stdout, r.stdout + r.stderr


def test_replays_forgeries_and_strangers_get_nothing_and_are_counted(wgbed):
    ov, wg = wgbed
    key_file, our_public = our_key(ov)
    start_ours(ov, wg, key_file)
    us = (underlay_of(1), PORT)
    cap = Capture(ov, 1, "session")
    wg.add_peer(our_public)
    _ping(ov, 2, 1)                       # wireguard-go initiates
    frames = cap.frames()
    theirs = [f for f in frames if f[1] == underlay_of(2) and f[4] == PORT]
    initiation = next(p for *_, p in theirs if p[0] == 1 and len(p) == 148)
    data = [p for *_, p in theirs if p[0] == 4 and len(p) > 32]
    assert data, [(p[0], len(p)) for *_, p in theirs]
    datagram = data[-1]                   # a ping, on the current session
    answers = [f for f in frames if f[1] == underlay_of(1) and f[5][0] in (2, 3)]
    assert answers and all(len(f[5]) <= len(initiation) for f in answers), answers

    before = _counters(ov)
    endpoint = ov.status(ov.hosts[1])["peers"][0]["endpoint"]
    assert endpoint == f"{underlay_of(2)}:{PORT}"
    stranger = Engine(generate())
    speer = stranger.add_peer(parse_public_key(our_public), endpoint=us,
                              allowed_ips=["198.19.9.0/24"])
    (strange_init, _), = stranger.send(speer, icmp_echo("198.19.9.1", pod_of(1), 1, 1),
                                       time.monotonic())
    assert strange_init[0] == 1 and len(strange_init) == 148
    flipped = bytearray(datagram)
    flipped[16 + 5] ^= 0x10               # one bit of the ciphertext
    attacks = [
        ("replay", datagram),
        ("bad_auth", bytes(flipped)),
        ("stale_initiation", initiation),
        ("unknown_peer", strange_init),
        ("bad_mac", b"\x01\0\0\0" + os.urandom(144)),            # an initiation of noise
        ("bad_mac", b"\x02\0\0\0" + os.urandom(88)),             # a response of noise
        ("unknown_index", b"\x03\0\0\0" + os.urandom(60)),       # a cookie reply, no such index
        ("unknown_index", b"\x04\0\0\0" + os.urandom(28)),       # data, no such index
        ("malformed", b"\x01"),
    ]
    cap = Capture(ov, 1, "attacks")
    sock = udp_socket_in(ov.hosts[2].netns, (underlay_of(2), ATTACKER_PORT))
    try:
        for _, payload in attacks:
            sock.sendto(payload, us)
            time.sleep(0.05)
        expected: dict[str, int] = {}
        for verdict, _ in attacks:
            expected[f"rx_drop_{verdict}"] = expected.get(f"rx_drop_{verdict}", 0) + 1

        def counted() -> bool:
            c = _counters(ov)
            return all(c[k] - before[k] >= n for k, n in expected.items())
        wait_for(counted, 10, 0.2, "the attacks counted")
        readable, _, _ = select.select([sock], [], [], 1.0)
        assert not readable, sock.recvfrom(2048)            # nothing came back to the attacker
    finally:
        sock.close()
    frames = cap.frames()
    after = _counters(ov)
    assert {k: after[k] - before[k] for k in expected} == expected
    for k in ("rx_packets", "wg_rx_initiation", "wg_tx_response", "wg_rx_cookie_sent"):
        assert after[k] == before[k], (k, before[k], after[k])
    ours = [f for f in frames if f[1] == underlay_of(1)]
    assert ours == [], [(f[2], f[4], len(f[5])) for f in ours]   # not a byte from us
    to_us = [f for f in frames if f[2] == underlay_of(1) and f[3] == ATTACKER_PORT]
    assert len(to_us) == len(attacks)                    # the capture saw them all arrive
    p = ov.status(ov.hosts[1])["peers"][0]
    assert p["endpoint"] == endpoint                     # nothing unauthenticated moved it
    _ping(ov, 1, 2)                                      # the session is unharmed
    _ping(ov, 2, 1)

