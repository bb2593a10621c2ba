"""The etcd store and the meaning layer against a real etcd (started per module/test).

etcd listens on 127.0.0.1 only; public IPs are 198.18.0.x and the overlay
is 198.19.0.0/16. Every wait is bounded; every etcd is stopped by PID.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random

import grpc
import pytest
from aetcd import exceptions as aetcd_errors

from tests.support.asyncutil import run, wait_until
from tests.support.cluster import UDP_CONFIG, VXLAN_CONFIG, Cluster, peers_become
from tests.support.etcdserver import EtcdServer, free_port, make_tls_files, require_etcd
from udpoverlay.cluster.codec import config_key, subnet_key
from udpoverlay.cluster.store.etcd import EtcdStore, map_error, parse_endpoint
from udpoverlay.errors import ConfigError, LeaseStoreError, StoreCompacted, StoreDisconnected

N = ipaddress.IPv4Network


def test_three_members_distinct_subnets_in_flannels_bytes(shared_etcd):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            members = [c.member(n) for n in (1, 2, 3)]
            leases = await asyncio.gather(*(m.acquire() for m in members))
            assert len({lease.subnet for lease in leases}) == 3
            for n, lease in zip((1, 2, 3), leases):
                assert await c.raw(lease.subnet) == \
                    f'{{"PublicIP":"198.18.0.{n}","PublicIPv6":null}}'
            out = await asyncio.to_thread(shared_etcd.etcdctl, "get", "-w", "json",
                                          subnet_key(c.prefix, leases[0].subnet))
            lease_id = json.loads(out)["kvs"][0]["lease"]
            ttl = await asyncio.to_thread(shared_etcd.etcdctl, "lease", "timetolive",
                                          f"{lease_id:x}")
            assert "granted with TTL(86400s)" in ttl

        async with Cluster(shared_etcd) as c:
            await c.write_config(VXLAN_CONFIG)
            lease = await c.member(4, backend_data={"VtepMAC": "02:00:c6:12:00:04"}).acquire()
            assert await c.raw(lease.subnet) == (
                '{"PublicIP":"198.18.0.4","PublicIPv6":null,"BackendType":"vxlan",'
                '"BackendData":{"VNI":1,"VtepMAC":"02:00:c6:12:00:04"}}')
    run(main(), 20)


def test_two_members_racing_never_share_a_subnet(shared_etcd, caplog):
    async def main():
        for round_ in range(20):
            async with Cluster(shared_etcd) as c:
                await c.store().put(config_key(c.prefix), UDP_CONFIG.encode(), None)
                # Same wish and same dice: both go for one subnet at the same moment.
                a = c.member(1, rng=random.Random(round_), previous_subnet=N("198.19.9.0/24"))
                b = c.member(2, rng=random.Random(round_), previous_subnet=N("198.19.9.0/24"))
                await asyncio.gather(a.load_config(), b.load_config())
                la, lb = await asyncio.gather(a.acquire(), b.acquire())
                assert la.subnet != lb.subnet, f"round {round_}: both got {la.subnet}"
                listing = await c.stores[0].list_prefix(f"{c.prefix}/subnets/")
                assert len(listing.kvs) == 2
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main(), 40)
    assert "lost a race for a subnet" in caplog.text   # the guard was really exercised


def test_watch_sees_a_new_member_and_a_manual_delete(shared_etcd):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            members = [c.member(n) for n in (1, 2, 3)]
            recs = [await c.start(m) for m in members]
            subnets = [m.lease.subnet for m in members]
            for i, rec in enumerate(recs):
                await peers_become(rec, subnets[:i] + subnets[i + 1:])
            fourth = await c.member(4).acquire()
            for i, rec in enumerate(recs):
                await peers_become(rec, subnets[:i] + subnets[i + 1:] + [fourth.subnet], 2.0)
            await c.delete(fourth.subnet)
            for i, rec in enumerate(recs):
                await peers_become(rec, subnets[:i] + subnets[i + 1:], 2.0)
    run(main(), 30)


def test_etcd_restart_keeps_peers_then_catches_up(etcd_server):
    async def main():
        async with Cluster(etcd_server) as c:
            await c.write_config()
            a, b = c.member(1), c.member(2)
            rec = await c.start(a)
            await b.acquire()
            await peers_become(rec, [b.lease.subnet])
            calls = len(rec.calls)
            await asyncio.to_thread(etcd_server.stop)
            await wait_until(lambda: a.status()["store"].startswith("disconnected"), 5)
            await asyncio.sleep(0.5)
            assert len(rec.calls) == calls and rec.subnets() == [str(b.lease.subnet)]
            await asyncio.to_thread(etcd_server.start)
            third = await c.member(3).acquire()        # changes after the restart
            await c.delete(b.lease.subnet)
            await peers_become(rec, [third.subnet], 5.0)
            await wait_until(lambda: a.status()["store"] == "connected", 5)
            assert await c.raw(a.lease.subnet) == '{"PublicIP":"198.18.0.1","PublicIPv6":null}'
    run(main(), 40)


def test_restarted_member_gets_the_same_subnet(shared_etcd):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            first = await c.member(1).acquire()
            await c.stores[-1].close()               # the process "exits"; its lease stays
            again = await c.member(1).acquire()      # same public IP -> reuse
            assert again.subnet == first.subnet
            # Lease gone (e.g. expired while down): the subnet.env's subnet is reused if free.
            await c.delete(first.subnet)
            third = await c.member(1, previous_subnet=first.subnet).acquire()
            assert third.subnet == first.subnet
            other = await c.member(2, previous_subnet=first.subnet).acquire()
            assert other.subnet != first.subnet
    run(main(), 20)


class GatedStore(EtcdStore):
    """An EtcdStore whose watches wait for a gate: a watcher that fell behind."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.gate = asyncio.Event()

    async def watch_prefix(self, prefix, start_revision, with_ttl=True):
        await self.gate.wait()
        async for batch in super().watch_prefix(prefix, start_revision, with_ttl):
            yield batch


def test_compaction_store_error_and_relist(shared_etcd, caplog):
    async def main():
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            store = c.store()
            old = (await store.list_prefix(c.prefix)).revision
            await store.put(f"{c.prefix}/subnets/junk", b"x", None)
            await store.delete(f"{c.prefix}/subnets/junk")
            await asyncio.to_thread(shared_etcd.compact)    # at old + 2
            with pytest.raises(StoreCompacted):
                async for _ in store.watch_prefix(c.prefix, old + 1):
                    break

            b = c.member(2)
            await b.acquire()
            gated = GatedStore([shared_etcd.endpoint], timeout=2.0)
            c.stores.append(gated)
            a = c.member(1, store=gated)
            rec = await c.start(a)                       # listed: sees b; watch is held
            await peers_become(rec, [b.lease.subnet])
            third = await c.member(3).acquire()
            await c.delete(b.lease.subnet)
            await asyncio.to_thread(shared_etcd.compact)  # a's watch revision is now gone
            gated.gate.set()
            await peers_become(rec, [third.subnet], 3.0)  # re-listed and diffed
            fourth = await c.member(4).acquire()          # and the new watch works
            await peers_become(rec, [third.subnet, fourth.subnet], 2.0)
    with caplog.at_level(logging.WARNING, "udpoverlay.cluster"):
        run(main(), 30)
    assert "fell behind compaction" in caplog.text


def test_tls_like_flannels_etcd_flags(tmp_path):
    require_etcd(tls=True)
    tls = make_tls_files(tmp_path / "tls")
    server = EtcdServer(tmp_path / "etcd", tls=tls)
    files = dict(ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key))

    async def main():
        async with Cluster(server) as c:
            await c.write_config()
            a, b = c.member(1, store=c.store(**files)), c.member(2, store=c.store(**files))
            rec = await c.start(a)
            await b.acquire()
            await peers_become(rec, [b.lease.subnet])
            with pytest.raises(StoreDisconnected):         # no client certificate
                await c.store(ca_file=str(tls.ca)).get(config_key(c.prefix))

    try:
        server.start()
        run(main(), 20)
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="both a certificate file and a key file"):
        EtcdStore([server.endpoint], ca_file=str(tls.ca), cert_file=str(tls.client_cert))
    with pytest.raises(ConfigError, match="cannot read"):
        EtcdStore([server.endpoint], ca_file=str(tmp_path / "missing.crt"))


def test_tls_files_with_an_http_endpoint_as_flanneld(shared_etcd, tmp_path, caplog):
    """flanneld accepts TLS files with http:// endpoints (flannel's own
    functional test starts it so): the files apply to https endpoints only,
    the http one is used in plain, and we say so once."""
    tls = make_tls_files(tmp_path / "tls")
    files = dict(ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key))
    caplog.set_level(logging.WARNING, logger="udpoverlay.cluster.store")

    async def main():
        store = EtcdStore([shared_etcd.endpoint], **files)
        try:
            await store.put("/udpoverlay-test/tls-http", b"v", None)
            return await store.get("/udpoverlay-test/tls-http")
        finally:
            await store.close()
    kv = run(main(), 20)
    assert kv is not None and kv.value == b"v"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "https:// endpoints only" in warnings[0]
    assert shared_etcd.endpoint in warnings[0]


def test_endpoint_failover_and_unreachable_store(shared_etcd):
    async def main():
        dead = f"http://127.0.0.1:{free_port()}"
        async with Cluster(shared_etcd) as c:
            await c.write_config()
            store = EtcdStore([dead, shared_etcd.endpoint], timeout=2.0)
            c.stores.append(store)
            kv = await store.get(config_key(c.prefix))
            assert kv.value == UDP_CONFIG.encode() and str(store.endpoint) == shared_etcd.endpoint
            lonely = EtcdStore([dead], timeout=2.0)
            c.stores.append(lonely)
            with pytest.raises(StoreDisconnected) as err:
                await lonely.list_prefix(c.prefix)
            assert err.value.retryable and dead in str(err.value)
    run(main(), 20)
    for bad in ("ftp://127.0.0.1:2379", "http://127.0.0.1:notaport", "http://127.0.0.1:2379/x"):
        with pytest.raises(ConfigError):
            EtcdStore([bad])


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _wrapped(error_type: type, cause: BaseException) -> BaseException:
    try:
        raise error_type(str(cause)) from cause
    except error_type as e:
        return e


@pytest.mark.parametrize("exc, kind, retryable", [
    (aetcd_errors.ConnectionFailedError("refused"), StoreDisconnected, True),
    (aetcd_errors.ConnectionTimeoutError("deadline"), StoreDisconnected, True),
    (asyncio.TimeoutError(), StoreDisconnected, True),
    (aetcd_errors.RevisionCompactedError(7), StoreCompacted, True),
    (aetcd_errors.UnauthenticatedError("bad token"), LeaseStoreError, False),
    (_wrapped(aetcd_errors.ClientError, _rpc_error(grpc.StatusCode.PERMISSION_DENIED,
                                                   "etcdserver: permission denied")),
     LeaseStoreError, False),
    (_rpc_error(grpc.StatusCode.UNAVAILABLE, "gone"), StoreDisconnected, True),
    (aetcd_errors.InternalError("raft"), LeaseStoreError, True),
    (RuntimeError("surprise\nsecond line"), LeaseStoreError, True),
])
def test_every_failure_becomes_a_lease_store_error(exc, kind, retryable):
    error = map_error("get", "http://127.0.0.1:2379", exc)
    assert type(error) is kind and error.retryable is retryable
    assert str(error).startswith("etcd get via http://127.0.0.1:2379: ") and "\n" not in str(error)
    if kind is StoreCompacted:
        assert error.compact_revision == 7


def test_parse_endpoint():
    assert str(parse_endpoint("127.0.0.1:2379")) == "http://127.0.0.1:2379"
    assert str(parse_endpoint("https://127.0.0.1")) == "https://127.0.0.1:2379"
    with pytest.raises(ConfigError):
        EtcdStore([])
    with pytest.raises(ConfigError, match="username and a password"):
        EtcdStore(["http://127.0.0.1:2379"], username="root")
