"""NAT keepalives: two hosts behind one masquerading router namespace.

    h1 (198.18.0.1) --switch-- r (198.18.0.254, nft masquerade) --lan0-- n1 198.18.1.2
                                                                   \\-- n2 198.18.1.3

The router's UDP conntrack timeouts (per network namespace) are set to
MAPPING s, so an idle NAT mapping goes away after MAPPING s. n1 and its
entry in h1's peers file have keepalives of 1 s; n2 has none. Both open
their mapping with a ping to h1, then everything is silent for 3 x MAPPING
s. Afterwards h1 still reaches n1, and no longer reaches n2. The
keepalives are counted on both sides (tx_keepalive, rx_keepalive) and
never written to a TUN (its rx counter does not move while they flow).
In udp mode h1 tells n1 and n2 apart by their source port behind the one
router address: they listen on different ports, which masquerade keeps.
"""

from __future__ import annotations

import time

from tests.integration.laptop.helpers import (
    counters,
    peer_entry,
    require_conntrack_sysctl,
    start_static,
    tun_rx_packets,
)
from tests.support.overlay import Overlay, pod_of, subnet_of

MAPPING = 2           # seconds: the router's UDP mapping timeout
ROUTER_WAN = "198.18.0.254"
LAN = {2: ("198.18.1.2", 8302, 1), 3: ("198.18.1.3", 8303, 0)}   # host: addr, port, keepalive
# As a home router: masquerade out of the WAN side, and unsolicited datagrams
# from it dropped (never confirmed, so they cannot take a mapping's port).
NFT = """table ip natlab {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth0" ip saddr 198.18.1.0/24 masquerade
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "eth0" ct state new drop
    }
}
"""


def _router(ov: Overlay) -> str:
    """Router r on the switch; h2/h3 moved from the switch to its lan0."""
    lab = ov.lab
    r = lab.add_host("r", f"{ROUTER_WAN}/24").netns
    lab.run(r, ["ip", "link", "add", "lan0", "type", "bridge"])
    lab.run(r, ["ip", "addr", "add", "198.18.1.1/24", "dev", "lan0"])
    lab.run(r, ["ip", "link", "set", "lan0", "up"])
    for i, (addr, _, _) in LAN.items():
        ns = ov.hosts[i].netns
        lab.run(ns, ["ip", "link", "del", "eth0"])            # off the switch
        lab.run(r, ["ip", "link", "add", f"lan{i}", "type", "veth", "peer", "name", "eth0",
                    "netns", ns])
        lab.run(r, ["ip", "link", "set", f"lan{i}", "master", "lan0", "up"])
        lab.run(ns, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
        lab.run(ns, ["ip", "link", "set", "eth0", "up"])
        lab.run(ns, ["ip", "route", "add", "default", "via", "198.18.1.1"])
    lab.run(r, ["nft", "-f", "-"], input=NFT)
    for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
        lab.sysctl(r, f"net.netfilter.{key}", str(MAPPING))
    return r


def test_keepalives_hold_a_nat_mapping_open_and_are_never_written(overlay3, tmp_path):
    require_conntrack_sysctl()
    ov = overlay3
    r = _router(ov)
    # the timeouts are the router namespace's own
    here = open("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").read().strip()
    got = ov.lab.run(r, ["cat", "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"]).stdout
    assert got.strip() == str(MAPPING) and here != str(MAPPING)

    peers = tmp_path / "peers.toml"
    peers.write_text("".join(
        f'[[peer]]\nhost = "{ROUTER_WAN}"\nport = {port}\nsubnet = "{subnet_of(i)}"\n'
        + (f"keepalive = {ka}\n" if ka else "")
        for i, (_, port, ka) in LAN.items()))
    d1 = start_static(ov, 1, [], ["--public-ip", "198.18.0.1", "--peers-file", str(peers)],
                      wait=False)
    others = [start_static(ov, i, [f"198.18.0.1:8285={subnet_of(1)}"],
                           ["--keepalive", str(ka)] if ka else [], port=port, wait=False)
              for i, (_, port, ka) in LAN.items()]
    for d in (d1, *others):
        ov.wait_ready(d)
    for i in LAN:       # each NAT'd host opens its mapping; through it h1 reaches it
        assert ov.ping(i, 1, count=2).returncode == 0, ov.dump_logs()
        assert ov.ping(1, i, count=1).returncode == 0, ov.dump_logs()

    time.sleep(1.5)     # the first keepalives have gone both ways
    tun_before = {i: tun_rx_packets(ov, i) for i in (1, 2)}
    c_before = {i: counters(ov, i) for i in (1, 2)}
    time.sleep(3 * MAPPING)         # silence, but for the keepalives
    tun_after = {i: tun_rx_packets(ov, i) for i in (1, 2)}
    c_after = {i: counters(ov, i) for i in (1, 2)}
    for i in (1, 2):
        for key in ("tx_keepalive", "rx_keepalive"):
            assert c_after[i][key] - c_before[i][key] >= 2 * MAPPING, (i, key, c_after[i])
        assert tun_after[i] == tun_before[i], f"keepalives reached h{i}'s TUN"
        assert c_after[i]["rx_packets"] == c_before[i]["rx_packets"]
    assert counters(ov, 3)["tx_keepalive"] == 0 and counters(ov, 3)["rx_keepalive"] == 0
    # heard only through keepalives for 3x the mapping timeout: still alive
    h2 = peer_entry(ov, 1, subnet_of(2))
    assert h2 is not None and h2["state"] == "active", h2
    assert h2["last_rx"] is not None and h2["last_rx"] <= 2.0, h2
    assert h2["rx_keepalive"] >= 2 * MAPPING, h2

    assert ov.ping(1, 2, count=2).returncode == 0, "the kept mapping let nothing through"
    lost = ov.run(ov.hosts[1], ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1",
                                "-I", pod_of(1), pod_of(3)])
    assert lost.returncode != 0 and " 0 received" in lost.stdout, lost.stdout
    n3 = peer_entry(ov, 3, subnet_of(1))
    assert n3 is not None and n3["state"] == "active" and n3["rx_packets"] == 3
    e2 = peer_entry(ov, 1, subnet_of(2))
    assert e2 is not None and e2["keepalive"] == 1 and e2["tx_keepalive"] >= 2 * MAPPING
