"""Our wireguard daemon's sessions against wireguard-go over time, with
real timers and real processes (topology: tests/support/wgpeer.py):

- a transfer of about 250 s spans two rekeys at REKEY_AFTER_TIME (120 s)
  with every byte intact and no stall beyond TCP's own recovery; the status
  shows a new session each time (marked `realtime`: it runs in `./dev test`,
  `-m 'not realtime'` leaves it out);
- either side restarted mid-transfer: pings both ways are back within
  REKEY_TIMEOUT (5 s) plus one retry, and the transfer completes intact;
- wireguard-go's underlay address changes mid-transfer (roaming): the
  transfer completes and our status shows its new endpoint.
"""

from __future__ import annotations

import time

import pytest

from tests.support.overlay import Overlay, underlay_of
from tests.support.wgpeer import PORT, PacedTransfer, Pinger, WgGo, our_key, start_ours
from udpoverlay.wireguard.constants import REKEY_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX

RATE = 1_000_000          # bytes/s: ~700 packets/s, little CPU on shared cores
# A receive pause longer than this is a stall: TCP's recovery from a loss
# (RTO ≥ 200 ms, a doubling) fits well inside it, a lost session does not.
STALL = 2.0
# A restarted side: traffic back within REKEY_TIMEOUT and one retry's
# jitter (a first initiation lost), plus a second of scheduling slack.
BACK_WITHIN = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 1.0


def _peer(ov: Overlay) -> dict:
    (p,) = ov.status(ov.hosts[1])["peers"]
    return p


def _up(ov: Overlay, wg: WgGo, src: int = 1, dst: int = 2):
    """Our daemon and wireguard-go know each other; src's ping makes the
    first session (src's side initiates)."""
    key_file, our_public = our_key(ov)
    d = start_ours(ov, wg, key_file)
    wg.add_peer(our_public)
    r = ov.ping(src, dst, count=2)
    assert r.returncode == 0, r.stdout + r.stderr
    return d, key_file


@pytest.mark.realtime
def test_a_long_transfer_spans_two_rekeys_at_the_real_timer(wgbed):
    ov, wg = wgbed
    _up(ov, wg)                          # we initiate: the rekeys at 120 s are ours
    first = _peer(ov)
    assert first["session"] and first["session_age"] < 5, first
    hs_wg = wg.latest_handshake()
    seconds = 2 * REKEY_AFTER_TIME + 12  # the second rekey, then a margin
    xfer = PacedTransfer(ov, 1, 2, RATE, seconds, 9201)
    ages, resets = [], []
    deadline = time.monotonic() + seconds + 60
    for _ in range(int((seconds + 60) / 4) + 1):     # one look every 4 s
        if not xfer.running() or time.monotonic() > deadline:
            break
        p = _peer(ov)
        if ages and p["session_age"] < ages[-1][1]:
            resets.append((round(time.monotonic(), 1), ages[-1][1], p["session_age"]))
        ages.append((time.monotonic(), p["session_age"]))
        time.sleep(4)
    got = xfer.result()
    assert got["bytes"] == int(RATE * seconds)
    assert got["max_gap"] < STALL, got["gaps"]
    # two new sessions, each when the one before was REKEY_AFTER_TIME old
    assert len(resets) >= 2, ages
    # (the age is looked at every 4 s or so: the last look before a rekey is up to ~6 s early)
    assert all(REKEY_AFTER_TIME - 10 <= old <= REKEY_AFTER_TIME + 10 for _, old, _ in resets), resets
    c = ov.status(ov.hosts[1])["counters"]
    assert c["wg_tx_initiation"] >= 3 and c["wg_rx_response"] >= 3, c
    for drop in ("bad_auth", "replay", "expired_session", "unknown_index", "stale_response"):
        assert c[f"rx_drop_{drop}"] == 0, (drop, c)
    assert c["tx_drop_queue_full"] == 0 and c["tx_drop_handshake_timeout"] == 0, c
    assert wg.latest_handshake() >= hs_wg + 2 * REKEY_AFTER_TIME - 5
    print(f"rekeys: session age before/after each reset {[(o, n) for _, o, n in resets]}; "
          f"longest receive pause {got['max_gap']} s; handshakes we sent {c['wg_tx_initiation']}")


def _first_after(times: list[float], t: float) -> float | None:
    later = [x for x in times if x > t]
    return min(later) if later else None


@pytest.mark.parametrize("side", ["ours", "wireguard-go"])
def test_a_restart_mid_transfer_is_repaired_within_rekey_timeout(wgbed, side):
    ov, wg = wgbed
    d, key_file = _up(ov, wg, src=2 if side == "ours" else 1, dst=1 if side == "ours" else 2)
    seconds = 24
    xfer = PacedTransfer(ov, 1, 2, RATE, seconds, 9202)
    pings = [Pinger(ov, 1, 2, 0.1, seconds + 5), Pinger(ov, 2, 1, 0.1, seconds + 5)]
    time.sleep(6)
    down = time.time()
    if side == "ours":
        assert ov.stop(d) == 0
        start_ours(ov, wg, key_file)     # waits until it answers on its control socket
    else:
        wg.restart()
    up = time.time()
    got = xfer.result()
    for p in pings:
        p.proc.wait(timeout=30)
    backs = []
    for p in pings:
        replies = p.replies()
        assert [t for t in replies if t < down], "no reply before the restart"
        back = _first_after(replies, up)
        assert back is not None, p.path.read_text()[-2000:]
        backs.append(round(back - up, 2))
    assert max(backs) <= BACK_WITHIN, (backs, up - down)
    assert got["bytes"] == int(RATE * seconds)
    # the transfer's only pause is the restart (and TCP's backoff after it)
    assert all(down - 1 <= start <= up + BACK_WITHIN for start, _ in got["gaps"]), (got, down, up)
    c = ov.status(ov.hosts[1])["counters"]
    # a new session: the restarted daemon's first, or our second with the new wireguard-go
    assert c["wg_rx_response"] + c["wg_rx_initiation"] >= (1 if side == "ours" else 2), c
    print(f"restart of {side}: down {up - down:.2f} s; pings back {backs} s after it was up; "
          f"transfer gaps {got['gaps']}")


def test_the_peer_roams_to_another_underlay_address_mid_transfer(wgbed):
    ov, wg = wgbed
    _up(ov, wg, src=2, dst=1)
    assert _peer(ov)["endpoint"] == f"{underlay_of(2)}:{PORT}"
    new = "198.18.0.42"
    seconds = 16
    # wireguard-go sends the data: its packets from the new address move us
    xfer = PacedTransfer(ov, 2, 1, RATE, seconds, 9203)
    time.sleep(5)
    h2 = ov.hosts[2].netns
    ov.lab.run(h2, ["ip", "addr", "del", f"{underlay_of(2)}/24", "dev", "eth0"])
    ov.lab.run(h2, ["ip", "addr", "add", f"{new}/24", "dev", "eth0"])
    got = xfer.result()
    assert got["bytes"] == int(RATE * seconds)
    p = _peer(ov)
    assert p["endpoint"] == f"{new}:{PORT}", p
    assert p["public_ip"] == underlay_of(2)          # the configured address stays as it was
    # our side now reaches it only at the new address: a ping from us works
    r = ov.ping(1, 2, count=3)
    assert r.returncode == 0, r.stdout + r.stderr
    out = ov.lab.run(h2, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert new in out and underlay_of(2) + "/" not in out
    c = ov.status(ov.hosts[1])["counters"]
    assert c["rx_drop_bad_auth"] == 0 and c["rx_drop_replay"] == 0, c
