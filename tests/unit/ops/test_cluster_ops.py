"""What the cluster side gives operators: the store-down WARNING repeated
about once a minute while etcd is down at start (not once and then only
DEBUG), one INFO line when it is back, the store/lease values /metrics
reads, and one log line per peer added/removed/moved."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time

from tests.support.asyncutil import FakeClock, run
from tests.support.memstore import MemoryStore
from udpoverlay.cluster.membership import ClusterMembership
from udpoverlay.cluster.mode import peer_events
from udpoverlay.peer import Peer

CONFIG = b'{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}}'
PREFIX = "/coreos.com/network"


def test_outage_at_start_warns_each_minute_then_one_info(caplog):
    async def main():
        clock = FakeClock()
        store = MemoryStore(clock=clock)
        await store.put(f"{PREFIX}/config", CONFIG, None)
        m = ClusterMembership(store, public_ip="198.18.0.1", clock=clock, rng=random.Random(1),
                              retry_initial=0.01, retry_max=0.02)
        assert not m.store_connected and m.last_contact is None and m.lease_expiry is None
        store.disconnect("etcd down")
        task = asyncio.create_task(m.load_config())
        await asyncio.sleep(0.2)                   # many retries within one minute
        clock.advance(61)
        await asyncio.sleep(0.1)
        clock.advance(61)
        await asyncio.sleep(0.1)
        store.reconnect()
        await asyncio.wait_for(task, 5)
        assert m.store_connected
        assert abs(m.last_contact - time.time()) < 2
        lease = await m.acquire()
        assert lease.subnet.prefixlen == 24
        assert 86000 < m.lease_expiry - time.time() <= 86400     # flannel's 24 h TTL
        clock.advance(100)
        assert abs(m.last_contact - (time.time() - 100)) < 2      # wall time of the contact
    with caplog.at_level(logging.DEBUG, "udpoverlay.cluster"):
        run(main())
    down = [r for r in caplog.records if "etcd down" in r.getMessage()]
    warnings = [r for r in down if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and len(down) > 3, [r.getMessage() for r in down]
    back = [r for r in caplog.records if "lease store reachable again" in r.getMessage()]
    assert len(back) == 1 and back[0].levelno == logging.INFO


def _peer(ip: str, subnet: str, port: int = 8285) -> Peer:
    return Peer(ipaddress.IPv4Address(ip), port, ipaddress.IPv4Network(subnet), None)


def test_one_line_per_peer_event():
    known: dict = {}
    a, b = _peer("198.18.0.2", "198.19.2.0/24"), _peer("198.18.0.3", "198.19.3.0/24")
    assert peer_events(known, [a, b]) == ["peer added: 198.19.2.0/24 via 198.18.0.2:8285",
                                          "peer added: 198.19.3.0/24 via 198.18.0.3:8285"]
    assert peer_events(known, [a, b]) == []
    moved = _peer("198.18.0.9", "198.19.3.0/24")
    assert peer_events(known, [moved]) == [
        "peer removed: 198.19.2.0/24 (was via 198.18.0.2:8285)",
        "peer changed: 198.19.3.0/24 via 198.18.0.9:8285 (was via 198.18.0.3:8285)"]
    many = [_peer(f"198.18.1.{i}", f"198.19.{i}.0/24") for i in range(10, 70)]
    lines = peer_events(known, many, limit=5)
    assert len(lines) == 6 and lines[-1].startswith("... and 56 more peer changes")

