"""A handshake flood against the real daemon (our daemon on h1,
wireguard-go on h2, the session between them carrying a TCP transfer;
tests/support/wgpeer.py).

The flood: valid initiations of strangers (keys we do not know; each with
a correct MAC1, since an attacker knows our public key), from SOURCES
addresses on h2's underlay interface at RATE a second. Under it:
- the daemon goes under load and answers handshakes with 64-byte cookie
  replies only (no answer larger than what it answers; the attack test
  shows noise gets none), so the expensive part (the Diffie-Hellman) runs
  only for the initiations before the load was noticed;
- the established session keeps at least half its throughput;
- the daemon's CPU and memory stay bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from lab.netns import wait_for
from tests.support.overlay import Overlay, pod_of, underlay_of
from tests.support.wgpeer import PORT, Capture, our_key, start_ours
from tests.support.wireguard import icmp_echo
from udpoverlay.wgplane.plane import UNDER_LOAD_HANDSHAKES
from udpoverlay.wireguard import Engine, generate
from udpoverlay.wireguard.keys import parse_public_key

SOURCES = [f"198.18.0.{n}" for n in range(100, 132)]
RATE = 10000                # initiations a second
STRANGERS = 32
MIB = 1 << 20
TRANSFER = 96 * MIB


def _status(ov: Overlay) -> dict:
    st = ov.status(ov.hosts[1])
    assert st is not None
    return st


def _counters(ov: Overlay) -> dict:
    return _status(ov)["counters"]


def _cpu_and_rss(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, resident KiB) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return (int(fields[11]) + int(fields[12])) / ticks, rss


def _timed_transfer(ov: Overlay, port: int) -> float:
    """MiB/s of one checked TCP transfer from h2's pod to h1's (through
    wireguard-go and our daemon)."""
    t0 = time.monotonic()
    ov.transfer(2, 1, TRANSFER, port)
    return TRANSFER / MIB / (time.monotonic() - t0)


def _initiations(our_public: str) -> bytes:
    out = []
    for _ in range(STRANGERS):
        stranger = Engine(generate())
        peer = stranger.add_peer(parse_public_key(our_public), endpoint=(underlay_of(1), PORT),
                                 allowed_ips=["198.19.9.0/24"])
        (init, _), = stranger.send(peer, icmp_echo("198.19.9.1", pod_of(1), 1, 1), time.monotonic())
        assert init[0] == 1 and len(init) == 148
        out.append(init)
    return b"".join(out)


def test_a_handshake_flood_gets_cookies_and_the_session_keeps_its_throughput(wgbed):
    ov, wg = wgbed
    key_file, our_public = our_key(ov)
    d = start_ours(ov, wg, key_file)
    wg.add_peer(our_public)
    r = ov.ping(2, 1, 3)
    assert r.returncode == 0, r.stdout + r.stderr
    for src in SOURCES:
        ov.run(ov.hosts[2], ["ip", "addr", "add", f"{src}/32", "dev", "eth0"], check=True)
    messages = ov.tmp / "initiations.bin"
    messages.write_bytes(_initiations(our_public))

    before_rate = max(_timed_transfer(ov, 9201), _timed_transfer(ov, 9202))
    before = _counters(ov)
    _, rss0 = _cpu_and_rss(d.proc.pid)
    flood_out = ov.tmp / "flood.out"
    with open(flood_out, "w") as out:
        flood = ov.lab.popen(ov.hosts[2].netns,
                             [sys.executable, "-m", "tests.support.wgflood", underlay_of(1),
                              str(PORT), str(messages), str(RATE), "60", *SOURCES],
                             stdout=out, stderr=subprocess.STDOUT, env=ov.env())
    try:
        wait_for(lambda: _status(ov)["wireguard"]["under_load"], 10, 0.1,
                 "the daemon under load")
        cap = Capture(ov, 1, "flood")
        time.sleep(1.0)
        frames = cap.frames()
        t0 = time.monotonic()
        cpu1, _ = _cpu_and_rss(d.proc.pid)
        time.sleep(3.0)                                   # the flood alone
        cpu2, rss2 = _cpu_and_rss(d.proc.pid)
        flood_cpu = (cpu2 - cpu1) / (time.monotonic() - t0)
        during_rate = max(_timed_transfer(ov, 9203), _timed_transfer(ov, 9204))
        assert _status(ov)["wireguard"]["under_load"] is True
    finally:
        ov.lab.stop(flood)
    sent = int(flood_out.read_text().split()[-1])
    after = _counters(ov)
    delta = {k: after[k] - before[k] for k in after}
    _, rss3 = _cpu_and_rss(d.proc.pid)

    # cookies, not handshakes: the Diffie-Hellman ran only before the load was noticed
    assert delta["wg_rx_cookie_sent"] >= sent // 2, (sent, delta)
    assert delta["rx_drop_unknown_peer"] <= 2 * UNDER_LOAD_HANDSHAKES, delta
    assert delta["wg_tx_response"] == 0, delta
    # no amplification: every answer we sent to the flood's sources is a
    # 64-byte cookie reply to a 148-byte initiation
    to_sources = [f for f in frames if f[1] == underlay_of(1) and f[2] in SOURCES]
    from_sources = [f for f in frames if f[2] == underlay_of(1) and f[1] in SOURCES]
    assert to_sources and from_sources
    assert {(f[5][0], len(f[5])) for f in to_sources} == {(3, 64)}
    assert {len(f[5]) for f in from_sources} == {148}
    assert len(to_sources) <= len(from_sources)
    # the session keeps at least half its throughput
    assert during_rate >= before_rate / 2, (before_rate, during_rate)
    # the daemon's CPU and memory stay bounded
    assert flood_cpu < 0.8, flood_cpu                     # cores, the flood alone
    assert rss3 - rss0 < 32 * 1024, (rss0, rss2, rss3)    # KiB
    print(f"flood {sent} initiations at {RATE}/s from {len(SOURCES)} sources: "
          f"cookies {delta['wg_rx_cookie_sent']}, DH for {delta['rx_drop_unknown_peer']}; "
          f"transfer {before_rate:.0f} -> {during_rate:.0f} MiB/s; daemon CPU "
          f"{flood_cpu:.2f} cores under the flood alone; "
          f"RSS {rss0} -> {rss3} KiB")
