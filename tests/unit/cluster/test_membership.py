"""ClusterMembership (the meaning layer) over the in-memory store.

Every case runs the real acquire/renew/watch logic; only the store is fake.
Addresses: public IPs in 198.18.0.0/24, the overlay in 198.19.0.0/16.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random

import pytest

from tests.support.asyncutil import LOOPS, FakeClock, Recorder, run, use_loop, wait_until
from tests.support.memstore import MemoryStore
from udpoverlay.cluster.allocate import pick_free
from udpoverlay.cluster.codec import encode_lease_value, subnet_key, vxlan_backend_data
from udpoverlay.cluster.membership import ClusterMembership
from udpoverlay.cluster.network import parse_network_config
from udpoverlay.errors import ConfigError, LeaseLostError, LeaseStoreError, NetworkConfigChanged

N = ipaddress.IPv4Network
PREFIX = "/coreos.com/network"
UDP_CONFIG = '{"Network":"198.19.0.0/16","Backend":{"Type":"udp"}}'
VXLAN_CONFIG = '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}'


@pytest.fixture(autouse=True, params=LOOPS)
def event_loop_kind(request):
    """Every case on stock asyncio and on uvloop (what the daemon runs)."""
    previous = use_loop(request.param)
    yield request.param
    use_loop(previous)


def ip(n: int) -> str:
    return f"198.18.0.{n}"


def key(subnet: str) -> str:
    return subnet_key(PREFIX, N(subnet))


async def new_store(config: str | None = UDP_CONFIG, **kw) -> MemoryStore:
    store = MemoryStore(**kw)
    if config is not None:
        await store.put(f"{PREFIX}/config", config.encode(), None)
    return store


def member(store: MemoryStore, n: int, seed: int | None = None, **kw) -> ClusterMembership:
    kw.setdefault("retry_initial", 0.01)
    kw.setdefault("retry_max", 0.05)
    return ClusterMembership(store, public_ip=ip(n), rng=random.Random(n if seed is None else seed),
                             clock=kw.pop("clock", store.clock), **kw)


async def put_lease(store: MemoryStore, subnet: str, value: str, ttl: int | None = 3600) -> None:
    await store.put(key(subnet), value.encode(), ttl)


class Running:
    """A member's run() task plus its recorder; cancelled on exit."""

    def __init__(self, m: ClusterMembership, **run_kw) -> None:
        self.m, self.rec, self.run_kw = m, Recorder(), run_kw
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Running":
        self.task = asyncio.create_task(self.m.run(self.rec, **self.run_kw))
        await wait_until(lambda: self.rec.calls or self.task.done(), what="first apply")
        if self.task.done():
            self.task.result()
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def peers_become(self, subnets: list[str], timeout: float = 2.0) -> None:
        await wait_until(lambda: self.rec.subnets() == sorted(subnets), timeout,
                         f"peers {subnets}, have {self.rec.subnets()}")


# -- load_config -------------------------------------------------------------------

def test_load_config_waits_for_missing_invalid_and_unreachable(caplog):
    async def main():
        store = await new_store(config=None)
        m = member(store, 1)
        task = asyncio.create_task(m.load_config())
        await asyncio.sleep(0.05)
        assert not task.done()
        await store.put(f"{PREFIX}/config", b'{"Network": "198.19.0.0/29"}', None)  # invalid
        await asyncio.sleep(0.05)
        store.disconnect("etcd down")
        await wait_until(lambda: m.status()["store"].startswith("disconnected"))
        assert not task.done()
        store.reconnect()
        await store.put(f"{PREFIX}/config", UDP_CONFIG.encode(), None)
        config = await asyncio.wait_for(task, 2)
        assert config.network == N("198.19.0.0/16") and m.status()["store"] == "connected"
    with caplog.at_level(logging.WARNING, "udpoverlay.cluster"):
        run(main())
    text = caplog.text
    assert "no network config" in text and "minimum useful prefix" in text and "etcd down" in text


# -- acquire ------------------------------------------------------------------------

def test_acquire_random_subnet_writes_flannel_value():
    async def main():
        store = await new_store()
        m = member(store, 1)
        lease = await m.acquire()
        assert m.config.contains_subnet(lease.subnet)
        kv = await store.get(key(str(lease.subnet)))
        assert kv.value == b'{"PublicIP":"198.18.0.1","PublicIPv6":null}'
        assert kv.lease_id and kv.ttl == pytest.approx(86400)
        assert lease.raw == kv.value.decode()
        assert lease.expires == pytest.approx(store.clock() + 86400)
    run(main())


def test_acquire_reuses_lease_with_our_public_ip():
    async def main():
        store = await new_store()
        await put_lease(store, "198.19.7.0/24", '{"PublicIP":"198.18.0.1","BackendType":"old"}')
        before = await store.get(key("198.19.7.0/24"))
        # previous subnet taken by another host: our public IP's lease is reused
        await put_lease(store, "198.19.9.0/24", encode_lease_value(ip(2)))
        m = member(store, 1, previous_subnet=N("198.19.9.0/24"))
        lease = await m.acquire()
        assert lease.subnet == N("198.19.7.0/24")
        kv = await store.get(key("198.19.7.0/24"))
        assert kv.value == b'{"PublicIP":"198.18.0.1","PublicIPv6":null}'
        assert kv.mod_revision > before.mod_revision
        assert kv.create_revision == before.create_revision     # re-attached, not re-created
        assert before.lease_id not in store.lease_ids()          # the old etcd lease is revoked
    run(main())


def test_acquire_deletes_our_lease_outside_the_range():
    async def main():
        store = await new_store('{"Network":"198.19.0.0/16","SubnetMin":"198.19.10.0"}')
        await put_lease(store, "198.19.3.0/24", encode_lease_value(ip(1)))
        lease = await member(store, 1).acquire()
        assert lease.subnet.network_address >= ipaddress.IPv4Address("198.19.10.0")
        assert await store.get(key("198.19.3.0/24")) is None
    run(main())


def test_acquire_previous_subnet_if_free_else_random():
    async def main():
        store = await new_store()
        lease = await member(store, 1, previous_subnet=N("198.19.42.0/24")).acquire()
        assert lease.subnet == N("198.19.42.0/24")
        lease2 = await member(store, 2, previous_subnet=N("198.19.42.0/24")).acquire()
        assert lease2.subnet != lease.subnet
        # Out of range (the first subnet is never allocated) -> ignored.
        lease3 = await member(store, 3, previous_subnet=N("198.19.0.0/24")).acquire()
        assert lease3.subnet not in (N("198.19.0.0/24"), lease.subnet, lease2.subnet)
    run(main())


def test_acquire_skips_subnets_with_unreadable_values():
    async def main():
        # /28 network: subnets are /30 and only 198.19.0.4, .8, .12 are allocatable.
        store = await new_store('{"Network":"198.19.0.0/28"}')
        await put_lease(store, "198.19.0.4/30", "garbage")
        await put_lease(store, "198.19.0.8/30", encode_lease_value(ip(2)))
        lease = await member(store, 1).acquire()
        assert lease.subnet == N("198.19.0.12/30")
    run(main())


def test_acquire_out_of_subnets():
    async def main():
        store = await new_store('{"Network":"198.19.0.0/28"}')
        for n, subnet in enumerate(["198.19.0.4/30", "198.19.0.8/30", "198.19.0.12/30"], 2):
            await put_lease(store, subnet, encode_lease_value(ip(n)))
        with pytest.raises(LeaseStoreError, match="out of subnets") as err:
            await member(store, 1).acquire()
        assert not err.value.retryable
    run(main())


def test_acquire_backend_mismatch_is_a_config_error():
    async def main():
        store = await new_store(VXLAN_CONFIG)
        with pytest.raises(ConfigError, match="udp backend but the network config says vxlan"):
            await member(store, 1, backend_type="udp").acquire()
        with pytest.raises(ConfigError, match="VtepMAC"):
            await member(store, 1).acquire()
    run(main())


def test_two_members_racing_for_the_same_subnet():
    async def main():
        store = await new_store()
        # Same previous subnet and same random choices: they must collide, one must retry.
        a = member(store, 1, seed=7, previous_subnet=N("198.19.5.0/24"))
        b = member(store, 2, seed=7, previous_subnet=N("198.19.5.0/24"))
        la, lb = await asyncio.gather(a.acquire(), b.acquire())
        assert la.subnet != lb.subnet and store.create_conflicts >= 1
        listing = await store.list_prefix(f"{PREFIX}/subnets/")
        assert len(listing.kvs) == 2
    run(main())


def test_many_members_racing_get_distinct_subnets():
    async def main():
        store = await new_store('{"Network":"198.19.0.0/24","SubnetLen":28}')  # 15 subnets
        members = [member(store, n) for n in range(1, 13)]
        leases = await asyncio.gather(*(m.acquire() for m in members))
        assert len({lease.subnet for lease in leases}) == 12
    run(main())


def test_pick_free_avoids_odd_sized_leases():
    config = parse_network_config('{"Network":"198.19.0.0/22"}')   # /24s: .1, .2, .3
    rng = random.Random(0)
    assert {pick_free(config, [N("198.19.2.0/23")], rng) for _ in range(20)} == {N("198.19.1.0/24")}
    with pytest.raises(LeaseStoreError, match="out of subnets"):
        pick_free(config, [N("198.19.0.0/22")], rng)


# -- run: watch ---------------------------------------------------------------------

def test_watch_add_renew_remove():
    async def main():
        store = await new_store()
        a = member(store, 1)
        async with Running(a) as ra:
            assert ra.rec.last == []
            b = member(store, 2, previous_subnet=N("198.19.2.0/24"))
            await b.acquire()
            await ra.peers_become(["198.19.2.0/24"])
            peer = ra.rec.last[0]
            assert (str(peer.public_ip), peer.port, peer.source) == (ip(2), 8285, "etcd")
            assert peer.vtep_mac is None and peer.since is not None
            calls = len(ra.rec.calls)
            # flannel-style renewal (same value re-put): nothing to apply, `since` kept.
            await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(2)))
            await asyncio.sleep(0.05)
            assert len(ra.rec.calls) == calls
            # The peer moves to another public IP: a changed route.
            await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(22)))
            await wait_until(lambda: str(ra.rec.last[0].public_ip) == ip(22))
            await put_lease(store, "198.19.2.0/24", "garbage")       # unreadable: no peer
            await ra.peers_become([])
            await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(2)))
            await ra.peers_become(["198.19.2.0/24"])
            await store.delete(key("198.19.2.0/24"))
            await ra.peers_become([])
    run(main())


def test_peer_lease_expiry_removes_it():
    async def main():
        clock = FakeClock()
        store = await new_store(clock=clock)
        async with Running(member(store, 1)) as ra:
            await member(store, 2, lease_ttl=100).acquire()   # never renewed
            await wait_until(lambda: len(ra.rec.last) == 1)
            assert ra.m.status()["peers"][0]["expires_in"] == pytest.approx(100)
            clock.advance(101)
            assert store.expire_due() == 1
            await ra.peers_become([])
            assert ra.m.lease is not None   # ours (24 h) still there
    run(main())


def test_compacted_watch_relists_and_diffs():
    async def main():
        store = await new_store()
        await member(store, 2, previous_subnet=N("198.19.2.0/24")).acquire()
        async with Running(member(store, 1)) as ra:
            await ra.peers_become(["198.19.2.0/24"])
            store.hold_events(True)           # a watcher that fell behind ...
            await member(store, 3, previous_subnet=N("198.19.3.0/24")).acquire()
            await store.delete(key("198.19.2.0/24"))
            store.compact()                   # ... and its revision was compacted away
            store.hold_events(False)
            await ra.peers_become(["198.19.3.0/24"])
            assert all(sorted(str(p.subnet) for p in c) in ([], ["198.19.2.0/24"],
                                                            ["198.19.3.0/24"])
                       for c in ra.rec.calls)
            assert ra.m.status()["store"] == "connected"
    run(main())


def test_disconnect_keeps_last_peers_and_catches_up():
    async def main():
        store = await new_store()
        await member(store, 2, previous_subnet=N("198.19.2.0/24")).acquire()
        async with Running(member(store, 1, retry_initial=0.2, retry_max=0.2)) as ra:
            await ra.peers_become(["198.19.2.0/24"])
            calls = len(ra.rec.calls)
            store.disconnect("connection refused")
            await wait_until(lambda: ra.m.status()["store"].startswith("disconnected"))
            assert "connection refused" in ra.m.status()["store"]
            await asyncio.sleep(0.1)
            assert len(ra.rec.calls) == calls     # nothing withdrawn while down
            assert [p["subnet"] for p in ra.m.status()["peers"]] == ["198.19.2.0/24"]
            store.reconnect()
            # Changes the member missed: it must see them after re-listing.
            await store.delete(key("198.19.2.0/24"))
            await member(store, 4, previous_subnet=N("198.19.4.0/24")).acquire()
            await ra.peers_become(["198.19.4.0/24"])
            assert ra.m.status()["store"] == "connected"
    run(main())


def test_incompatible_and_unusable_leases_skipped_once(caplog):
    async def main():
        store = await new_store()
        vx = encode_lease_value(ip(3), "vxlan", vxlan_backend_data(1, "02:00:00:00:00:03"))
        await put_lease(store, "198.19.3.0/24", vx)
        await put_lease(store, "198.19.4.0/24", "{not json")
        await put_lease(store, "198.19.5.0/24", encode_lease_value(ip(1)))  # our IP, stale
        await put_lease(store, "198.19.6.0/24", '{"PublicIP":"198.18.0.6","BackendType":"udp"}')
        a = member(store, 1)
        await a.acquire()     # reuses 198.19.5.0 (our public IP)
        assert a.lease.subnet == N("198.19.5.0/24")
        await put_lease(store, "198.19.8.0/24", encode_lease_value(ip(8)))
        async with Running(a) as ra:
            await ra.peers_become(["198.19.6.0/24", "198.19.8.0/24"])
            await put_lease(store, "198.19.7.0/24", encode_lease_value(ip(7)))
            await ra.peers_become(["198.19.6.0/24", "198.19.7.0/24", "198.19.8.0/24"])
            skipped = {s["subnet"]: s["reason"] for s in ra.m.status()["skipped"]}
            assert skipped == {"198.19.3.0/24": "backend vxlan (this node runs udp)"}
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main())
    assert caplog.text.count("skipping lease 198.19.3.0/24") == 1
    assert caplog.text.count("ignoring lease key /coreos.com/network/subnets/198.19.4.0-24") == 1


def test_vxlan_member_peers_and_value():
    async def main():
        store = await new_store('{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan","VNI":4}}')
        a = member(store, 1, backend_data={"VtepMAC": "02:00:00:00:00:01"})
        lease = await a.acquire()
        kv = await store.get(key(str(lease.subnet)))
        assert kv.value == (b'{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan",'
                            b'"BackendData":{"VNI":4,"VtepMAC":"02:00:00:00:00:01"}}')
        await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(2)))   # udp: skipped
        await put_lease(store, "198.19.3.0/24", encode_lease_value(
            ip(3), "vxlan", vxlan_backend_data(4, "02:00:00:00:00:03")))
        await put_lease(store, "198.19.4.0/24", encode_lease_value(
            ip(4), "vxlan", vxlan_backend_data(5, "02:00:00:00:00:04")))        # other VNI
        await put_lease(store, "198.19.5.0/24", encode_lease_value(ip(5), "vxlan", {"VNI": 4}))
        async with Running(a) as ra:
            await ra.peers_become(["198.19.3.0/24"])
            peer = ra.rec.last[0]
            assert peer.vtep_mac == bytes.fromhex("020000000003") and peer.port == 8472
            reasons = {s["subnet"]: s["reason"] for s in ra.m.status()["skipped"]}
            assert reasons == {"198.19.2.0/24": "backend udp (this node runs vxlan)",
                               "198.19.4.0/24": "VNI 5 (this network uses 4)",
                               "198.19.5.0/24": "no VtepMAC in BackendData"}
    run(main())


def test_port_comes_from_the_config():
    async def main():
        store = await new_store('{"Network":"198.19.0.0/16","Backend":{"Type":"udp","Port":9999}}')
        await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(2)))
        async with Running(member(store, 1)) as ra:
            await ra.peers_become(["198.19.2.0/24"])
            assert ra.rec.last[0].port == 9999
    run(main())


def test_apply_peers_failure_is_retried():
    async def main():
        store = await new_store()
        await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(2)))
        seen = []

        def flaky(peers):
            seen.append(peers)
            if len(seen) == 1:
                raise RuntimeError("netlink said no")
        task = asyncio.create_task(member(store, 1).run(flaky))
        try:
            await wait_until(lambda: len(seen) >= 2, what="a retried apply")
            assert [str(p.subnet) for p in seen[1]] == ["198.19.2.0/24"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(main())


# -- run: our own lease ------------------------------------------------------------

def test_renewal_keeps_a_short_lease_alive():
    async def main():
        store = await new_store()
        a = member(store, 1, lease_ttl=1, renew_margin=3600)   # margin clamps to TTL/2
        async with Running(a):
            await asyncio.sleep(1.25)   # unrenewed, the lease would have expired at 1.0 s
            store.expire_due()
            assert await store.get(key(str(a.lease.subnet))) is not None
            assert 0 < a.status()["lease"]["expires_in"] <= 1
    run(main())


def test_own_key_deleted_is_reacquired_same_subnet():
    async def main():
        store = await new_store()
        a = member(store, 1)
        async with Running(a) as ra:
            subnet = a.lease.subnet
            await store.delete(key(str(subnet)))
            await wait_until(lambda: store.value(key(str(subnet))) is not None, what="re-create")
            assert store.value(key(str(subnet))) == b'{"PublicIP":"198.18.0.1","PublicIPv6":null}'
            assert a.lease.subnet == subnet and not ra.task.done()
    run(main())


def test_own_etcd_lease_revoked_is_reacquired():
    async def main():
        store = await new_store()
        a = member(store, 1, lease_ttl=1)
        async with Running(a) as ra:
            subnet, old_id = a.lease.subnet, a.status()["lease"]["etcd_lease"]
            store.hold_events(True)    # only the renewal can notice
            store.revoke(int(old_id, 16))
            await wait_until(lambda: a.status()["lease"]["etcd_lease"] != old_id, 10)
            store.hold_events(False)
            await wait_until(lambda: store.value(key(str(subnet))) is not None)
            assert a.lease.subnet == subnet and not ra.task.done()
    run(main())


def test_own_key_deleted_on_lost_exit_raises():
    async def main():
        store = await new_store()
        a = member(store, 1, on_lost="exit")
        task = asyncio.create_task(a.run(Recorder()))
        await wait_until(lambda: a.lease is not None and a.feed.applied is not None)
        await store.delete(key(str(a.lease.subnet)))
        with pytest.raises(LeaseLostError, match="on_lost=exit"):
            await asyncio.wait_for(task, 2)
    run(main())


def test_own_subnet_taken_over_raises_without_callback():
    async def main():
        store = await new_store()
        a = member(store, 1)
        task = asyncio.create_task(a.run(Recorder()))
        await wait_until(lambda: a.feed.applied is not None)
        subnet = str(a.lease.subnet)
        store.hold_events(True)
        await store.delete(key(subnet))
        await put_lease(store, subnet, encode_lease_value(ip(9)))
        store.hold_events(False)
        with pytest.raises(LeaseLostError, match="leased by another host"):
            await asyncio.wait_for(task, 2)
    run(main())


def test_own_subnet_taken_over_moves_with_callback():
    async def main():
        store = await new_store()
        a = member(store, 1)
        moved = []
        async with Running(a, on_lease_changed=moved.append) as ra:
            subnet = str(a.lease.subnet)
            store.hold_events(True)
            await store.delete(key(subnet))
            await put_lease(store, subnet, encode_lease_value(ip(9)))
            store.hold_events(False)
            await wait_until(lambda: moved, what="on_lease_changed")
            assert str(moved[0].subnet) != subnet and a.lease == moved[0]
            await ra.peers_become([subnet])    # the usurper is now a peer
    run(main())


def test_status_is_json():
    async def main():
        store = await new_store()
        await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(2)))
        a = member(store, 1)
        assert a.status()["lease"] is None
        async with Running(a) as ra:
            await ra.peers_become(["198.19.2.0/24"])
            status = json.loads(json.dumps(a.status()))
            assert status["lease"]["subnet"] == str(a.lease.subnet)
            assert status["lease"]["expires_in"] == pytest.approx(86400, abs=1)
            assert status["network"] == "198.19.0.0/16" and status["store"] == "connected"
            (peer,) = status["peers"]
            assert peer["public_ip"] == ip(2) and peer["port"] == 8285 and peer["age"] >= 0
            assert peer["expires_in"] == pytest.approx(3600, abs=1)
    run(main())


def test_constructor_validates():
    store = MemoryStore()
    with pytest.raises(ConfigError):
        ClusterMembership(store, public_ip=ip(1), on_lost="panic")
    with pytest.raises(ConfigError):
        ClusterMembership(store, public_ip=ip(1), backend_type="host-gw")
    with pytest.raises(ConfigError):
        ClusterMembership(store, public_ip=ip(1), lease_ttl=0)


def test_hostile_keys_rejected_counted_and_logged_once(caplog):
    bad = {
        "198.19.86.0-25": (encode_lease_value(ip(66)), "subnet_len"),
        "evil/198.19.88.0-24": (encode_lease_value(ip(66)), "nested_key"),
        "not-a-subnet": (encode_lease_value(ip(66)), "not_a_subnet"),
        "198.19.77.5-24": (encode_lease_value(ip(66)), "not_a_subnet"),
        "198.19.77.0-33": (encode_lease_value(ip(66)), "not_a_subnet"),
        "198.19.200.0-24": (encode_lease_value(ip(66)), "outside_network"),
        "198.19.0.0-24": (encode_lease_value(ip(66)), "outside_range"),
        "198.19.90.0-24": ('{"PublicIP":"127.0.0.1"}', "bad_public_ip"),
        "198.19.91.0-24": ('{"PublicIP":"0.0.0.0"}', "bad_public_ip"),
        "198.19.92.0-24": ('{"PublicIP":"224.0.0.5"}', "bad_public_ip"),
        "198.19.93.0-24": ('{"PublicIP":"255.255.255.255"}', "bad_public_ip"),
        "198.19.94.0-24": ('{"PublicIP":"198.18.0.255"}', "bad_public_ip"),   # underlay bcast
        "198.19.95.0-24": ("garbage", "bad_value"),
    }

    async def main():
        store = await new_store('{"Network":"198.19.0.0/17","Backend":{"Type":"udp"}}')
        await put_lease(store, "198.19.86.0/24", encode_lease_value(ip(2)))
        a = member(store, 1, underlay_network=N("198.18.0.0/24"),
                   previous_subnet=N("198.19.10.0/24"))
        async with Running(a) as ra:
            await ra.peers_become(["198.19.86.0/24"])
            for _ in range(2):     # a writer that repeats itself is logged once
                for name, (value, _) in bad.items():
                    await store.put(f"{PREFIX}/subnets/{name}", value.encode(), 60)
            await put_lease(store, "198.19.60.0/24", encode_lease_value(ip(6)))
            await ra.peers_become(["198.19.60.0/24", "198.19.86.0/24"])
            status = a.status()
            assert {r["key"].rsplit("subnets/", 1)[1]: r["reason"]
                    for r in status["rejected_keys"]} == {k: r for k, (_, r) in bad.items()}
            counts: dict[str, int] = {}
            for _, reason in bad.values():
                counts[reason] = counts.get(reason, 0) + 1
            assert status["rejected"] == counts
            for call in ra.rec.calls:
                assert {str(p.subnet) for p in call} <= {"198.19.60.0/24", "198.19.86.0/24"}
            # A rejected key removed: it leaves the list; the counters stay.
            await store.delete(f"{PREFIX}/subnets/not-a-subnet")
            await wait_until(lambda: len(a.status()["rejected_keys"]) == len(bad) - 1)
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main())
    for name in bad:
        assert caplog.text.count(f"ignoring lease key {PREFIX}/subnets/{name}:") == 1, name


def test_two_keys_for_one_subnet_the_older_wins():
    async def main():
        store = await new_store()
        await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(2)))
        dup = f"{PREFIX}/subnets/198.19.2.0-024"
        a = member(store, 1)
        async with Running(a) as ra:
            await ra.peers_become(["198.19.2.0/24"])
            await store.put(dup, encode_lease_value(ip(66)).encode(), 60)
            await wait_until(lambda: a.status()["rejected"].get("overlap") == 1)
            assert [str(p.public_ip) for p in ra.rec.last] == [ip(2)]
            assert all(str(p.public_ip) != ip(66) for call in ra.rec.calls for p in call)
            # The older key goes: the next one in creation order takes over, on every node.
            await store.delete(key("198.19.2.0/24"))
            await wait_until(lambda: [str(p.public_ip) for p in ra.rec.last] == [ip(66)])
            # A second key for OUR subnet is never a peer, however old.
            ours = a.lease.subnet
            await store.put(f"{PREFIX}/subnets/{ours.network_address}-024",
                            encode_lease_value(ip(77)).encode(), 60)
            await wait_until(lambda: any(s["subnet"] == str(ours)
                                         for s in a.status()["skipped"]))
            assert str(ours) not in ra.rec.subnets()
    run(main())


def test_nested_key_is_never_our_lease():
    async def main():
        store = await new_store()
        nested = f"{PREFIX}/subnets/evil/198.19.88.0-24"
        await store.put(nested, encode_lease_value(ip(1)).encode(), None)
        a = member(store, 1, previous_subnet=N("198.19.88.0/24"))
        lease = await a.acquire()
        assert lease.subnet == N("198.19.88.0/24")
        assert store.value(key("198.19.88.0/24")) == encode_lease_value(ip(1)).encode()
        async with Running(a) as ra:
            await store.put(nested, encode_lease_value(ip(66)).encode(), None)
            await asyncio.sleep(0.1)
            assert not ra.task.done() and ra.rec.last == []
        # A restart without a subnet file finds our real key, not the nested one.
        again = await member(store, 1).acquire()
        assert again.subnet == N("198.19.88.0/24")
        assert store.value(nested) == encode_lease_value(ip(66)).encode()
    run(main())


def test_rewritten_own_key_is_restored_not_fatal(caplog):
    async def main():
        store = await new_store()
        a = member(store, 1)
        async with Running(a) as ra:
            k, ours = key(str(a.lease.subnet)), encode_lease_value(ip(1)).encode()
            first = int(a.status()["lease"]["etcd_lease"], 16)
            for _ in range(2):
                await store.put(k, encode_lease_value(ip(66)).encode(), None)
                await wait_until(lambda: store.value(k) == ours, what="restored value")
            assert not ra.task.done()
            kv = await store.get(k)
            assert kv.lease_id == int(a.status()["lease"]["etcd_lease"], 16) != first
            assert first not in store.lease_ids()
            assert ra.rec.last == []     # the hostile value never became a peer
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main())
    assert caplog.text.count("was rewritten by another writer (now PublicIP 198.18.0.66)") == 1


def test_restart_prefers_subnet_file_and_keeps_one_key(caplog):
    async def main():
        store = await new_store()
        first = await member(store, 1, previous_subnet=N("198.19.5.0/24")).acquire()
        old = await store.get(key("198.19.5.0/24"))
        # Forged while we were down: our exact value on a second subnet, and our
        # address with another value on a third.
        await put_lease(store, "198.19.7.0/24", encode_lease_value(ip(1)))
        forged = await store.get(key("198.19.7.0/24"))
        await put_lease(store, "198.19.8.0/24", '{"PublicIP":"198.18.0.1","Extra":1}')
        a = member(store, 1, previous_subnet=first.subnet)
        lease = await a.acquire()
        assert lease.subnet == first.subnet
        assert store.value(key("198.19.7.0/24")) is None            # never two keys
        assert old.lease_id not in store.lease_ids() and forged.lease_id not in store.lease_ids()
        assert (await store.get(key("198.19.5.0/24"))).create_revision == old.create_revision
        async with Running(a) as ra:
            await wait_until(lambda: a.status()["skipped"])
            assert a.status()["skipped"] == [{"subnet": "198.19.8.0/24",
                                              "reason": "carries our own public IP"}]
            await put_lease(store, "198.19.8.0/24", '{"PublicIP":"198.18.0.1","Extra":1}')
            await asyncio.sleep(0.05)
            assert ra.rec.last == []
    with caplog.at_level(logging.WARNING, "udpoverlay.cluster"):
        run(main())
    assert caplog.text.count("lease 198.19.8.0/24 advertises our public IP 198.18.0.1") == 1


def test_second_instance_with_our_public_ip_is_warned_not_fought(caplog):
    async def main():
        store = await new_store()
        a = member(store, 1)
        async with Running(a) as ra:
            k = key(str(a.lease.subnet))
            b = member(store, 1)            # same public IP, no subnet file
            lease_b = await b.acquire()
            assert lease_b.subnet == a.lease.subnet
            await wait_until(lambda: a.status()["lease"]["etcd_lease"]
                             == b.status()["lease"]["etcd_lease"], what="adopted")
            revision = store.revision
            await asyncio.sleep(0.1)
            assert store.revision == revision      # nobody rewrites the key back and forth
            assert not ra.task.done() and store.value(k) is not None
    with caplog.at_level(logging.WARNING, "udpoverlay.cluster"):
        run(main())
    assert caplog.text.count("is another host or instance using public IP 198.18.0.1") == 1


def test_network_config_change_raises_a_clear_error(caplog):
    async def main():
        store = await new_store()
        a = member(store, 1)
        task = asyncio.create_task(a.run(Recorder()))
        try:
            await wait_until(lambda: a.feed.applied is not None)
            # The same config written differently, then an invalid one: no exit.
            await store.put(f"{PREFIX}/config",
                            b'{"Backend": {"Type": "udp"}, "Network": "198.19.0.0/16"}', None)
            await store.put(f"{PREFIX}/config", b'{"Network": 7}', None)
            await asyncio.sleep(0.1)
            assert not task.done()
            await store.put(f"{PREFIX}/config", b'{"Network":"198.19.0.0/17"}', None)
            with pytest.raises(NetworkConfigChanged,
                               match=r"Network 198.19.0.0/16 -> 198.19.0.0/17.*SubnetMax"):
                await asyncio.wait_for(task, 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    with caplog.at_level(logging.WARNING, "udpoverlay.cluster"):
        run(main())
    assert caplog.text.count("is now invalid") == 1


def test_one_public_ip_with_two_subnets_gives_two_peers():
    async def main():
        store = await new_store()
        await put_lease(store, "198.19.2.0/24", encode_lease_value(ip(2)))
        await put_lease(store, "198.19.3.0/24", encode_lease_value(ip(2)))
        async with Running(member(store, 1)) as ra:
            await ra.peers_become(["198.19.2.0/24", "198.19.3.0/24"])
            assert {str(p.public_ip) for p in ra.rec.last} == {ip(2)}
    run(main())


def test_a_burst_is_one_publish_with_a_short_log_line(caplog):
    async def main():
        store = await new_store()
        a = member(store, 1, previous_subnet=N("198.19.250.0/24"))
        async with Running(a) as ra:
            store.hold_events(True)
            for n in range(2, 202):
                await put_lease(store, f"198.19.{n}.0/24", encode_lease_value(f"198.18.1.{n}"))
            before = a.feed.publishes
            store.hold_events(False)
            await wait_until(lambda: len(ra.rec.last) == 200)
            assert a.feed.publishes == before + 1
            for n in range(2, 202):               # deletes arrive one by one: coalesced too
                await store.delete(key(f"198.19.{n}.0/24"))
            await ra.peers_become([])
            assert a.feed.publishes <= before + 1 + 20
    with caplog.at_level(logging.DEBUG, "udpoverlay.cluster"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("peers now")]
    assert "peers now 200 (+200 -0 ~0): +198.19.2.0/24@198.18.1.2" in "\n".join(lines)
    assert max(len(line) for line in lines) < 300 and "and 196 more" in lines[1]
    # INFO has one line per peer change (cluster/mode.py): this summary is DEBUG
    assert {r.levelno for r in caplog.records if r.getMessage().startswith("peers now")} == \
        {logging.DEBUG}


def test_store_outage_warns_about_once_a_minute(caplog):
    async def main():
        clock = FakeClock()
        store = await new_store(clock=clock)
        a = member(store, 1, retry_initial=0.01, retry_max=0.02)
        async with Running(a):
            store.disconnect("etcd down")
            await asyncio.sleep(0.3)               # ~15 failed retries
            clock.advance(61)
            await asyncio.sleep(0.1)
            store.reconnect()
            await wait_until(lambda: a.status()["store"] == "connected")
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "etcd down" in r.getMessage()]
    assert len(warnings) == 2
    assert caplog.text.count("lease store reachable again") == 1


def test_status_and_readiness_say_stale_when_the_store_view_is_stale():
    """A store that reports its watched view stale (the etcd store does when
    no event or progress answer came for longer than its bound) makes the
    membership's status say "stale", not "connected"; metrics read the age
    and the fail-over count through the same properties."""
    async def main():
        store = await new_store()
        m = member(store, 1)
        m.link.set_connected()
        assert m.status()["store"] == "connected" and not m.view_stale
        store.view_stale, store.view_age, store.failovers = True, lambda: 42.0, 2
        doc = m.status()
        assert doc["store"].startswith("stale") and "42s" in doc["store"]
        assert (m.view_stale, m.view_age, doc["store_failovers"]) == (True, 42.0, 2)
    run(main())
