"""A broken or hostile writer in a real etcd (issue 11, item 5): every case is
written the way such a writer would (etcdctl, or a second store client),
and ClusterMembership over EtcdStore must reject or correct it and log it
once.

etcd listens on 127.0.0.1 only; public IPs are 198.18.0.x, the underlay is
198.18.0.0/24 and the overlay 198.19.0.0/16 (198.19.0.0/17 where a key
outside the Network is needed). Every wait is bounded; every etcd is
stopped by PID.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time

import pytest

from tests.support.asyncutil import run, wait_until
from tests.support.cluster import Cluster, ip, peers_become
from udpoverlay.cluster.codec import config_key, encode_lease_value, subnet_key
from udpoverlay.errors import NetworkConfigChanged

N = ipaddress.IPv4Network
UNDERLAY = N("198.18.0.0/24")
SMALL_CONFIG = '{"Network": "198.19.0.0/17", "Backend": {"Type": "udp"}}'


def value(n: int) -> str:
    return encode_lease_value(ip(n))


def log_count(caplog, text: str) -> int:
    return sum(r.getMessage().count(text) for r in caplog.records)


async def key_lease(c: Cluster, key: str) -> int:
    out = await c.etcdctl("get", key, "-w", "json")
    return int(json.loads(out)["kvs"][0].get("lease", 0))


async def a_watching_b(c: Cluster):
    """Config written; member 2 holds 198.19.2.0/24; member 1 (198.19.1.0/24) runs
    and routes to it. Returns member 1 and its apply_peers recorder."""
    await c.write_config()
    await c.member(2, previous_subnet=N("198.19.2.0/24")).acquire()
    a = c.member(1, previous_subnet=N("198.19.1.0/24"))
    rec = await c.start(a)
    await peers_become(rec, ["198.19.2.0/24"])
    return a, rec


def test_each_hostile_key_is_rejected_and_logged_once(shared_etcd, caplog):
    bad = {
        "198.19.86.0-25": (value(66), "subnet_len"),        # more specific than a /24 peer
        "evil/198.19.88.0-24": (value(66), "nested_key"),
        "not-a-subnet": (value(66), "not_a_subnet"),
        "198.19.77.5-24": (value(66), "not_a_subnet"),
        "198.19.77.0-33": (value(66), "not_a_subnet"),
        "198.19.100.0-24": ("{not json", "bad_value"),
        "198.19.200.0-24": (value(66), "outside_network"),   # beyond 198.19.0.0/17
        "198.19.0.0-24": (value(66), "outside_range"),       # below SubnetMin
        "198.19.90.0-24": ('{"PublicIP":"127.0.0.1","PublicIPv6":null}', "bad_public_ip"),
        "198.19.91.0-24": ('{"PublicIP":"0.0.0.0","PublicIPv6":null}', "bad_public_ip"),
        "198.19.92.0-24": ('{"PublicIP":"224.0.0.5","PublicIPv6":null}', "bad_public_ip"),
        "198.19.93.0-24": ('{"PublicIP":"255.255.255.255","PublicIPv6":null}', "bad_public_ip"),
        "198.19.94.0-24": ('{"PublicIP":"198.18.0.255","PublicIPv6":null}', "bad_public_ip"),
    }

    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config(SMALL_CONFIG)
            b = c.member(2, previous_subnet=N("198.19.86.0/24"))
            await b.acquire()
            a = c.member(1, underlay_network=UNDERLAY, previous_subnet=N("198.19.10.0/24"))
            rec = await c.start(a)
            await peers_become(rec, ["198.19.86.0/24"])
            for _ in range(2):                  # a writer repeating itself: logged once
                for name, (text, _) in bad.items():
                    await c.put_raw(name, text)
            third = await c.member(3, previous_subnet=N("198.19.60.0/24")).acquire()
            await peers_become(rec, ["198.19.86.0/24", third.subnet], 5)
            await wait_until(lambda: len(a.status()["rejected_keys"]) == len(bad), 5,
                             "every hostile key listed")
            status = a.status()
            assert {r["key"].rsplit("/subnets/", 1)[1]: r["reason"]
                    for r in status["rejected_keys"]} == {k: r for k, (_, r) in bad.items()}
            counts: dict[str, int] = {}
            for _, reason in bad.values():
                counts[reason] = counts.get(reason, 0) + 1
            assert status["rejected"] == counts
            allowed = {"198.19.86.0/24", str(third.subnet)}
            for call in rec.calls:
                assert {str(p.subnet) for p in call} <= allowed
                assert all(str(p.public_ip) in (ip(2), ip(3)) for p in call)
            # b's real /24 is still routed to b, not cut off by the /25.
            assert [str(p.public_ip) for p in rec.last if str(p.subnet) == "198.19.86.0/24"] \
                == [ip(2)]
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main(), 40)
    for name in bad:
        assert log_count(caplog, f"/subnets/{name}: ") == 1, name


def test_two_keys_for_one_subnet_older_wins_and_ours_is_never_a_peer(shared_etcd, caplog):
    async def main():
        async with Cluster(shared_etcd) as c:
            a, rec = await a_watching_b(c)
            await c.put_raw("198.19.2.0-024", value(66))
            await c.put_raw("198.19.2.0-24&fd00::-64", value(67))
            await c.put_raw("198.19.1.0-024", value(77))          # a second key for OUR subnet
            await wait_until(lambda: a.status()["rejected"].get("overlap") == 2, 5)
            await wait_until(lambda: a.status()["skipped"], 5)
            assert a.status()["skipped"] == [{"subnet": "198.19.1.0/24",
                                              "reason": "overlaps our subnet 198.19.1.0/24"}]
            for call in rec.calls:
                assert [(str(p.subnet), str(p.public_ip)) for p in call] in (
                    [], [("198.19.2.0/24", ip(2))])
            await c.put_raw("198.19.2.0-024", value(66))          # repeated: not logged again
            # The oldest key goes: the next oldest wins (the same on every node).
            await c.delete(N("198.19.2.0/24"))
            await wait_until(lambda: [str(p.public_ip) for p in rec.last] == [ip(66)], 5)
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main(), 30)
    assert log_count(caplog, "/subnets/198.19.2.0-024: 198.19.2.0/24 is already leased") == 1
    assert log_count(caplog, "/subnets/198.19.2.0-24&fd00::-64: ") == 1


def test_a_second_subnet_under_another_hosts_ip_keeps_both_peers(shared_etcd):
    async def main():
        async with Cluster(shared_etcd) as c:
            _, rec = await a_watching_b(c)
            # Written before and after b's own key in sort order: neither may
            # replace b's subnet; the control plane hands both over.
            await c.put_raw("198.19.3.0-24", value(2))
            await c.put_raw("198.19.0.128-25", value(2))      # and a rejected one
            await peers_become(rec, ["198.19.2.0/24", "198.19.3.0/24"], 5)
            assert sorted((str(p.subnet), str(p.public_ip)) for p in rec.last) == [
                ("198.19.2.0/24", ip(2)), ("198.19.3.0/24", ip(2))]
    run(main(), 30)


def test_nested_key_is_neither_a_peer_nor_our_lease(shared_etcd):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            nested = f"{c.prefix}/subnets/evil/198.19.88.0-24"
            await c.etcdctl("put", nested, value(1))           # carries OUR public IP
            a = c.member(1, previous_subnet=N("198.19.88.0/24"))
            lease = await a.acquire()
            assert lease.subnet == N("198.19.88.0/24")
            assert await c.raw(lease.subnet) == value(1)
            rec = await c.start(a)
            await c.etcdctl("put", nested, value(66))
            await asyncio.sleep(0.5)
            assert rec.last == [] and not c.tasks[-1].done()
            assert await c.raw(lease.subnet) == value(1)
            # Re-acquiring (a restart without subnet file) takes the real key.
            again = await c.member(1).acquire()
            assert again.subnet == lease.subnet
            out = await c.etcdctl("get", nested, "--print-value-only")
            assert out.strip() == value(66)                       # never written by us
    run(main(), 30)


def test_rewritten_own_key_is_restored_and_logged_once(shared_etcd, caplog):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            a = c.member(1)
            rec = await c.start(a)
            k = subnet_key(c.prefix, a.lease.subnet)
            first = int(a.status()["lease"]["etcd_lease"], 16)
            for _ in range(2):
                await c.etcdctl("put", k, value(66))           # no etcd lease: would live forever
                deadline = time.monotonic() + 5
                while await c.raw(a.lease.subnet) != value(1):
                    assert time.monotonic() < deadline, "our value was not restored"
                    await asyncio.sleep(0.05)
            assert not c.tasks[-1].done() and rec.last == []
            now = int(a.status()["lease"]["etcd_lease"], 16)
            assert now != first and await key_lease(c, k) == now
            assert first not in await c.lease_ids()             # the replaced lease is revoked
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main(), 30)
    assert log_count(caplog, "was rewritten by another writer (now PublicIP 198.18.0.66)") == 1


def test_restart_prefers_the_subnet_file_holds_one_key_and_leaks_no_lease(shared_etcd, caplog):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            first = await c.member(1, previous_subnet=N("198.19.5.0/24")).acquire()
            old_lease = await key_lease(c, subnet_key(c.prefix, first.subnet))
            await c.stores[-1].close()                    # the process "exits"
            # While it is down, a writer puts our exact value into a second key
            # (on its own etcd lease) and our address into a third.
            granted = await c.etcdctl("lease", "grant", "600")
            forged_lease = int(granted.split()[1], 16)
            await c.put_raw("198.19.7.0-24", value(1), f"--lease={forged_lease:x}")
            await c.put_raw("198.19.8.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null,'
                                             '"BackendType":"udp"}')
            a = c.member(1, previous_subnet=first.subnet)
            rec = await c.start(a)
            assert a.lease.subnet == first.subnet
            keys = (await c.etcdctl("get", f"{c.prefix}/subnets/", "--prefix",
                                    "--keys-only")).split()
            assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["198.19.5.0-24",
                                                                 "198.19.8.0-24"]
            leases = await c.lease_ids()
            assert old_lease not in leases and forged_lease not in leases
            assert await key_lease(c, subnet_key(c.prefix, first.subnet)) == \
                int(a.status()["lease"]["etcd_lease"], 16)
            await wait_until(lambda: a.status()["skipped"], 5)
            assert a.status()["skipped"] == [{"subnet": "198.19.8.0/24",
                                              "reason": "carries our own public IP"}]
            assert all(call == [] for call in rec.calls)
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main(), 30)
    assert log_count(caplog, "lease 198.19.8.0/24 advertises our public IP 198.18.0.1") == 1


def test_a_second_host_with_our_public_ip_is_warned_once(shared_etcd, caplog):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            a = c.member(1)
            await c.start(a)
            # Same public IP, no subnet file: it takes over our key's etcd lease.
            b = c.member(1)
            await b.acquire()
            await wait_until(lambda: a.status()["lease"]["etcd_lease"]
                             == b.status()["lease"]["etcd_lease"], 5, "a follows b's lease")
            assert not c.tasks[-1].done()
            k = subnet_key(c.prefix, a.lease.subnet)
            revision = shared_etcd.revision()
            await asyncio.sleep(0.5)
            assert shared_etcd.revision() == revision     # no rewrite war
            assert await key_lease(c, k) == int(b.status()["lease"]["etcd_lease"], 16)
            # A third instance with our address and its own subnet file: at its start
            # it deletes our key (a leftover with its exact value); a re-creates it
            # and warns that a second key carries its address. No war follows.
            third = await c.member(1, previous_subnet=N("198.19.99.0/24")).acquire()
            await wait_until(lambda: any(s["subnet"] == str(third.subnet)
                                         for s in a.status()["skipped"]), 5)
            assert await c.raw(a.lease.subnet) == value(1) and not c.tasks[-1].done()
            await asyncio.sleep(0.5)
            assert await c.raw(a.lease.subnet) == value(1) == await c.raw(third.subnet)
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main(), 30)
    assert log_count(caplog, "is another host or instance using public IP 198.18.0.1") == 1
    assert log_count(caplog, "lease 198.19.99.0/24 advertises our public IP 198.18.0.1") == 1


def test_network_config_change_stops_run_with_a_clear_error(shared_etcd, caplog):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            a = c.member(1)
            await c.start(a)
            task = c.tasks[-1]
            await c.write_config('{"Backend": {"Type": "udp"}, "Network": "198.19.0.0/16"}')
            await c.write_config('{"Network": "198.19.0.0/33"}')
            await asyncio.sleep(0.5)
            assert not task.done()                 # same config; then an invalid one: kept
            await c.write_config(SMALL_CONFIG)
            await wait_until(task.done, 5, "run() to stop")
            with pytest.raises(NetworkConfigChanged) as err:
                task.result()
            assert str(err.value).startswith(
                f"network config {config_key(c.prefix)} changed while running "
                f"(Network 198.19.0.0/16 -> 198.19.0.0/17; SubnetMax 198.19.255.0 -> "
                f"198.19.127.0)")
            assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING, "udpoverlay.cluster"):
        run(main(), 30)
    assert log_count(caplog, "is now invalid") == 1


def test_store_outage_quiet_logs_and_reconnect_within_two_seconds(etcd_server, caplog):
    async def main():
        async with Cluster(etcd_server) as c:
            await c.write_config()
            a = c.member(1, retry_max=2.0)                # what mode.py passes
            rec = await c.start(a)
            b = await c.member(2).acquire()
            await peers_become(rec, [b.subnet], 5)
            await asyncio.to_thread(etcd_server.stop)
            await asyncio.sleep(12)                       # gRPC alone would back off ~10 s
            await asyncio.to_thread(etcd_server.start)
            await wait_until(lambda: a.status()["store"] == "connected", 2.5,
                             "reconnected within ~2 s of etcd's return")
            third = await c.member(3).acquire()
            await peers_become(rec, [b.subnet, third.subnet], 3)
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main(), 60)
    down = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(down) <= 2, [r.getMessage() for r in down]
    assert log_count(caplog, "lease store reachable again") == 1
