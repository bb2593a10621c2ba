"""Cluster mode with flannel's wireguard backend, without root: the network
config's wireguard fields, our lease in flanneld's bytes, leases -> peers
(keys, endpoint, PSK, keepalive) and the hostile cases (a malformed key, a
key reused from another node or from us, a node that comes back with a new
key), over the in-memory store with the real membership logic."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import random
import stat

import pytest

from tests.support.asyncutil import Recorder, run, wait_until
from tests.support.memstore import MemoryStore
from udpoverlay.cluster.allocate import own_lease_value
from udpoverlay.cluster.codec import (
    encode_lease_value,
    subnet_key,
    vxlan_backend_data,
    wireguard_backend_data,
)
from udpoverlay.cluster.membership import ClusterMembership
from udpoverlay.cluster.mode import WG_KEY_FILE, wg_key_file, with_network_config
from udpoverlay.cluster.network import parse_network_config
from udpoverlay.config.options import build_cluster_options
from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer
from udpoverlay.wgplane import WgPlane
from udpoverlay.wireguard import PresharedKey, generate

N = ipaddress.IPv4Network
PREFIX = "/coreos.com/network"
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
WG = '{"Network":"198.19.0.0/16","Backend":{"Type":"wireguard"}}'


def cfg(**backend):
    return parse_network_config(json.dumps({"Network": "198.19.0.0/16",
                                            "Backend": {"Type": "wireguard", **backend}}))


def pub() -> str:
    return generate().public.to_base64()


def ip(n: int) -> str:
    return f"198.18.0.{n}"


def key(subnet: str) -> str:
    return subnet_key(PREFIX, N(subnet))


def wg_value(n: int, public_key: str) -> str:
    return encode_lease_value(ip(n), "wireguard", wireguard_backend_data(public_key))


# -- the network config -------------------------------------------------------------

def test_wireguard_defaults_as_flannel():
    c = cfg()
    assert (c.backend_type, c.backend_port, c.wg_listen_port_v6) == ("wireguard", 51820, 51821)
    assert (c.wg_psk, c.wg_keepalive, c.wg_mode) == (None, 0, "separate")


def test_wireguard_fields():
    c = cfg(ListenPort=51000, ListenPortV6=51001, PSK=PSK, PersistentKeepaliveInterval=25,
            Mode="auto", MTU=1300)
    assert (c.backend_port, c.wg_listen_port_v6, c.wg_keepalive, c.wg_mode, c.mtu) == \
        (51000, 51001, 25, "auto", 1300)
    assert isinstance(c.wg_psk, PresharedKey) and c.wg_psk == PresharedKey(
        __import__("base64").b64decode(PSK))
    assert PSK not in repr(c) and PSK not in str(c)
    assert cfg(Mode="ipv4").wg_mode == "ipv4" and cfg(PSK="").wg_psk is None
    assert cfg(PSK=PSK) == cfg(PSK=PSK) and cfg(PSK=PSK) != cfg()


@pytest.mark.parametrize("config, needle", [
    ({"Backend": {"Type": "wireguard", "Mode": "ipv6"}}, 'Mode "ipv6" needs an IPv6 overlay'),
    ({"Backend": {"Type": "wireguard"}, "EnableIPv6": True, "IPv6Network": "fd00::/56"},
     "EnableIPv6 with the wireguard backend needs an IPv6 overlay"),
    ({"Backend": {"Type": "wireguard", "Mode": "both"}}, "Backend.Mode must be one of"),
    ({"Backend": {"Type": "wireguard", "ListenPort": 70000}}, "Backend.ListenPort must be"),
    ({"Backend": {"Type": "wireguard", "ListenPortV6": -1}}, "Backend.ListenPortV6 must be"),
    ({"Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": 99999}},
     "PersistentKeepaliveInterval must be 0..3600"),
    ({"Backend": {"Type": "wireguard", "PSK": 5}}, "Backend.PSK must be a base64 key"),
])
def test_wireguard_config_refused_in_one_line(config, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        parse_network_config(json.dumps({"Network": "198.19.0.0/16", **config}))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [PSK[:-4], PSK + "AAAA", "not base64 at all!!", PSK[:-2] + "é="])
def test_malformed_psk_is_one_error_without_the_key(bad):
    with pytest.raises(ConfigError, match="Backend.PSK") as e:
        cfg(PSK=bad)
    assert bad not in str(e.value) and bad[:12] not in str(e.value)


def test_a_psk_or_keepalive_change_needs_a_restart_and_never_prints_the_key():
    from udpoverlay.cluster.guard import config_changes
    changes = config_changes(cfg(), cfg(PSK=PSK, PersistentKeepaliveInterval=5))
    assert changes == ["Backend.PSK None -> PresharedKey(<hidden>)",
                       "Backend.PersistentKeepaliveInterval 0 -> 5"]
    assert config_changes(cfg(PSK=PSK), cfg(PSK=PSK)) == []
    assert config_changes(cfg(ListenPort=1), cfg())[0].startswith("Backend.Port 1 -> 51820")


def test_other_backends_unchanged():
    c = parse_network_config('{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan","VNI":3}}')
    assert (c.backend_type, c.backend_port, c.vni, c.wg_psk) == ("vxlan", 8472, 3, None)
    with pytest.raises(ConfigError, match="supported: udp, vxlan, wireguard"):
        parse_network_config('{"Network":"198.19.0.0/16","Backend":{"Type":"host-gw"}}')


# -- our lease ---------------------------------------------------------------------

def test_own_lease_value_is_flanneld_bytes():
    k = pub()
    assert own_lease_value(cfg(), ipaddress.IPv4Address(ip(1)), "wireguard",
                           {"PublicKey": k}) == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"wireguard",'
        '"BackendData":{"PublicKey":"' + k + '"}}')
    for data in (None, {}, {"PublicKey": "short"}, {"PublicKey": k, "VtepMAC": "x"}):
        with pytest.raises(ConfigError):
            own_lease_value(cfg(), ipaddress.IPv4Address(ip(1)), "wireguard", data)


# -- the mode's settings -------------------------------------------------------------

def test_key_file_flanneld_rule():
    assert wg_key_file({}) == WG_KEY_FILE == "/run/flannel/wgkey"
    assert wg_key_file({"WIREGUARD_KEY_FILE": "/tmp/k"}) == "/tmp/k"


def test_with_network_config_wireguard(monkeypatch, tmp_path):
    monkeypatch.setenv("WIREGUARD_KEY_FILE", str(tmp_path / "k"))
    opts = build_cluster_options(endpoints="http://198.18.0.254:2379")
    o = with_network_config(opts, cfg(ListenPort=51000))
    assert (o.backend, o.port, o.private_key_file) == ("wireguard", 51000, str(tmp_path / "k"))
    o2 = o.for_lease(public_ip=ip(1), subnet="198.19.5.0/24", network="198.19.0.0/16",
                     backend="wireguard", port=51000, vni=1, vtep_mac=None)
    assert o2.backend == "wireguard" and str(o2.subnet) == "198.19.5.0/24"
    for flag in ({"threads": True}, {"queues": 2}, {"busy_poll_us": 5}):
        with pytest.raises(ConfigError, match="does not apply to the wireguard backend"):
            with_network_config(build_cluster_options(endpoints="http://198.18.0.254:2379",
                                                      **flag), cfg())


def test_key_file_created_0600_kept_across_restarts_refused_when_readable(tmp_path):
    from udpoverlay.planes import load_wireguard
    path = tmp_path / "wgkey"
    opts = dataclasses.replace(build_cluster_options(endpoints="http://198.18.0.254:2379"),
                               backend="wireguard", private_key_file=str(path))
    first = load_wireguard(opts)            # no subnet yet: cluster mode
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert len(text.strip()) == 44 and text.endswith("\n")    # `wg genkey` format
    assert load_wireguard(opts).public_key == first.public_key
    os.chmod(path, 0o400)                   # flanneld's mode
    assert load_wireguard(opts).public_key == first.public_key
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="gives group or others access") as e:
        load_wireguard(opts)
    assert text.strip() not in str(e.value)


# -- the plane: the cluster PSK, a subnet known late ---------------------------------

def test_plane_cluster_psk_and_late_subnet():
    psk = PresharedKey(os.urandom(32))
    kb = generate()
    a = WgPlane(generate(), None)
    a.psk = psk
    p = Peer(ipaddress.IPv4Address(ip(2)), 51820, N("198.19.2.0/24"),
             public_key=kb.public.to_base64(), keepalive=25, source="etcd")
    a.set_peers([p])
    (st,) = a.peer_status()
    assert st["preshared_key"] and st["persistent_keepalive"] == 25
    a.set_subnet(N("198.19.1.0/24"))
    assert a._local == (int(ipaddress.IPv4Address("198.19.1.0")), 0xFFFFFF00)
    # a new key for the same subnet: the old peer (and its session) goes
    kc = generate()
    a.set_peers([dataclasses.replace(p, public_key=kc.public.to_base64())])
    assert [s["public_key"] for s in a.peer_status()] == [kc.public.to_base64()]
    assert len(a.engine.peers) == 1


# -- leases -> peers (the membership over the in-memory store) ------------------------

async def new_store(config: str = WG) -> MemoryStore:
    store = MemoryStore()
    await store.put(f"{PREFIX}/config", config.encode(), None)
    return store


def member(store: MemoryStore, n: int, public_key: str, **kw) -> ClusterMembership:
    m = ClusterMembership(store, public_ip=ip(n), rng=random.Random(n), clock=store.clock,
                          retry_initial=0.01, retry_max=0.05, **kw)
    m.backend_data = {"PublicKey": public_key}
    return m


async def put(store: MemoryStore, subnet: str, value: str) -> None:
    await store.put(key(subnet), value.encode(), 3600)


class Running:
    def __init__(self, m: ClusterMembership) -> None:
        self.m, self.rec = m, Recorder()

    async def __aenter__(self) -> "Running":
        self.task = asyncio.create_task(self.m.run(self.rec))
        await wait_until(lambda: self.rec.calls or self.task.done(), what="first apply")
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def peers(self) -> dict[str, Peer]:
        return {str(p.subnet): p for p in self.rec.last or []}

    async def become(self, want: dict[str, str], timeout: float = 2.0) -> None:
        """want: subnet -> public key."""
        await wait_until(lambda: {s: p.public_key for s, p in self.peers().items()} == want,
                         timeout, f"peers {want}, have {self.peers()}")


def test_leases_become_peers_and_follow_changes(caplog):
    ours, kb, kc, kb2 = pub(), pub(), pub(), pub()

    async def main():
        store = await new_store('{"Network":"198.19.0.0/16","Backend":{"Type":"wireguard",'
                                '"ListenPort":51000,"PSK":"' + PSK + '",'
                                '"PersistentKeepaliveInterval":25}}')
        a = member(store, 1, ours)
        lease = await a.acquire()
        kv = await store.get(key(str(lease.subnet)))
        assert kv.value.decode() == wg_value(1, ours)
        await put(store, "198.19.2.0/24", wg_value(2, kb))
        await put(store, "198.19.3.0/24", wg_value(3, kc))
        await put(store, "198.19.4.0/24", encode_lease_value(ip(4)))                   # udp
        await put(store, "198.19.5.0/24", encode_lease_value(
            ip(5), "vxlan", vxlan_backend_data(1, "02:00:00:00:00:05")))               # vxlan
        async with Running(a) as ra:
            await ra.become({"198.19.2.0/24": kb, "198.19.3.0/24": kc})
            p = ra.peers()["198.19.2.0/24"]
            assert (str(p.public_ip), p.port, p.keepalive, p.preshared_key_file) == \
                (ip(2), 51000, 25, None)      # endpoint = PublicIP:our ListenPort
            # a key change on the same lease: the peer changes key
            await put(store, "198.19.2.0/24", wg_value(2, kb2))
            await ra.become({"198.19.2.0/24": kb2, "198.19.3.0/24": kc})
            # a removed lease: its peer goes
            await store.delete(key("198.19.3.0/24"))
            await ra.become({"198.19.2.0/24": kb2})
            # a renewal changes nothing
            calls = len(ra.rec.calls)
            await put(store, "198.19.2.0/24", wg_value(2, kb2))
            await asyncio.sleep(0.05)
            assert len(ra.rec.calls) == calls
            skipped = {s["subnet"]: s["reason"] for s in a.status()["skipped"]}
            assert skipped == {"198.19.4.0/24": "backend udp (this node runs wireguard)",
                               "198.19.5.0/24": "backend vxlan (this node runs wireguard)"}
            assert PSK not in json.dumps(a.status())
            assert {p["subnet"]: p["public_key"] for p in a.status()["peers"]} == \
                {"198.19.2.0/24": kb2}
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("198.19.4.0/24" in w and "backend udp" in w for w in warnings) == 1
    assert sum("198.19.5.0/24" in w and "backend vxlan" in w for w in warnings) == 1


def test_same_endpoint_ip_new_key_replaces_the_old_peer():
    ours, old, new = pub(), pub(), pub()

    async def main():
        store = await new_store()
        a = member(store, 1, ours)
        await a.acquire()
        await put(store, "198.19.2.0/24", wg_value(2, old))
        async with Running(a) as ra:
            await ra.become({"198.19.2.0/24": old})
            # node 2 comes back with a new key and a new subnet while its old
            # lease still lives: the old key's peer goes
            await put(store, "198.19.7.0/24", wg_value(2, new))
            await ra.become({"198.19.7.0/24": new})
            skipped = {s["subnet"]: s["reason"] for s in a.status()["skipped"]}
            assert "newer lease with another PublicKey" in skipped["198.19.2.0/24"]
            assert a.status()["rejected"].get("duplicate_key", 0) == 0
            # the new lease expires / is deleted: the old one is a peer again
            await store.delete(key("198.19.7.0/24"))
            await ra.become({"198.19.2.0/24": old})
    run(main())


def test_hostile_wireguard_leases_rejected_and_counted_once(caplog):
    ours, kb, kc = pub(), pub(), pub()
    bad_keys = {"198.19.40.0/24": "A" * 43 + "=",            # the all-zero key
                "198.19.41.0/24": "bm90IGEga2V5",             # 9 bytes
                "198.19.42.0/24": "%%%not base64%%%",
                "198.19.43.0/24": "A" * 42 + "==" + "x"}

    async def main():
        store = await new_store()
        a = member(store, 1, ours, underlay_network=N("198.18.0.0/24"))
        await a.acquire()
        await put(store, "198.19.2.0/24", wg_value(2, kb))
        async with Running(a) as ra:
            await ra.become({"198.19.2.0/24": kb})
            for _ in range(2):        # a writer that repeats itself is logged once
                for subnet, k in bad_keys.items():
                    await put(store, subnet, wg_value(40, k))
                await put(store, "198.19.44.0/24", encode_lease_value(ip(44), "wireguard"))
                await put(store, "198.19.45.0/24", encode_lease_value(
                    ip(45), "wireguard", {"PublicKey": 7}))
                await put(store, "198.19.50.0/24", wg_value(50, ours))    # our key
                await put(store, "198.19.51.0/24", wg_value(51, kb))      # node 2's key
            await put(store, "198.19.3.0/24", wg_value(3, kc))
            await ra.become({"198.19.2.0/24": kb, "198.19.3.0/24": kc})
            status = a.status()
            reasons = {r["subnet"]: r["reason"] for r in status["rejected_keys"]}
            assert reasons == {**{s: "bad_public_key" for s in bad_keys},
                               "198.19.44.0/24": "bad_public_key",
                               "198.19.45.0/24": "bad_public_key",
                               "198.19.50.0/24": "duplicate_key",
                               "198.19.51.0/24": "duplicate_key"}
            assert status["rejected"] == {"bad_public_key": 6, "duplicate_key": 2}
            assert a.rejected_counts["duplicate_key"] == 2
            for call in ra.rec.calls:
                assert {str(p.subnet) for p in call} <= {"198.19.2.0/24", "198.19.3.0/24"}
            # the older holder of a key leaves: the other lease with that key
            # is the key's only one now and becomes a peer
            await store.delete(key("198.19.2.0/24"))
            await ra.become({"198.19.51.0/24": kb, "198.19.3.0/24": kc})
            await wait_until(lambda: "198.19.51.0/24" not in
                             {r["subnet"] for r in a.status()["rejected_keys"]})
    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main())
    for subnet in [*bad_keys, "198.19.44.0/24", "198.19.45.0/24", "198.19.50.0/24",
                   "198.19.51.0/24"]:
        name = subnet.replace("/", "-")
        assert caplog.text.count(f"ignoring lease key {PREFIX}/subnets/{name}:") == 1, subnet
    for k in bad_keys.values():
        assert f"{k}" not in caplog.text


# -- settle(): the same decision on every node, whatever the event order --------------

def test_settle_is_independent_of_event_order():
    from udpoverlay.cluster.codec import Lease
    from udpoverlay.cluster.policy import PeerView
    config = cfg()
    own_key = pub()
    keys = [pub() for _ in range(4)] + [own_key]
    rng = random.Random(7)
    for _ in range(40):
        leases = []
        for n in rng.sample(range(2, 40), 8):
            subnet = N(f"198.19.{n}.0/24")
            raw = wg_value(rng.randrange(2, 6), rng.choice(keys))
            leases.append((Lease(subnet, ipaddress.IPv4Address(json.loads(raw)["PublicIP"]),
                                 "wireguard", json.loads(raw)["BackendData"], raw=raw),
                           rng.randrange(1, 1000)))
        context = (config, "wireguard", ipaddress.IPv4Address(ip(1)), N("198.19.1.0/24"),
                   own_key)
        results = []
        for _ in range(3):
            view = PeerView(lambda: 0.0)
            order = leases[:]
            rng.shuffle(order)
            for lease, rev in order:      # one publish per event, as a slow watch would
                view.update(lease.subnet, lease, context, rev)
                view.settle(context)
            results.append(({s: p.public_key for s, p in view.peers.items()},
                            {s: h[1] for s, h in view.held.items()}))
        assert results[0] == results[1] == results[2]
        peers, held = results[0]
        assert own_key not in peers.values()
        assert len(set(peers.values())) == len(peers)            # one subnet per key
        by_ip: dict = {}
        for s, k in peers.items():                               # one key per PublicIP
            by_ip.setdefault(next(le.public_ip for le, _ in leases if le.subnet == s),
                             set()).add(k)
        assert all(len(k) == 1 for k in by_ip.values())
        assert set(peers) | set(held) == {le.subnet for le, _ in leases}
