"""Self-check of udpoverlay.kernel_vxlan against the real kernel vxlan device.

Two Lab hosts configured the way flannel's vxlan backend does; pods on
port-less bridges ping each other over flannel.1, and a capture on the
underlay shows VXLAN VNI 1 carrying the right inner MACs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess

import pytest

from lab import kernel_vxlan as kv
from lab.netns import Lab, wait_for
from tests.support.requirements import require

SUBNET1, SUBNET2 = "198.19.1.0/24", "198.19.2.0/24"
POD1, POD2 = "198.19.1.1", "198.19.2.1"
MAC1, MAC2 = "02:00:c6:13:01:00", "02:00:c6:13:02:00"


@pytest.fixture
def lab():
    require(os.geteuid() == 0, "needs root (network namespaces)")
    for tool in ("ip", "bridge", "ping", "tcpdump"):
        require(shutil.which(tool) is not None, f"needs {tool} on PATH")
    require(importlib.util.find_spec("scapy") is not None, "needs scapy")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def pair(lab):
    """Two hosts, each with flannel.1 and the other as a peer."""
    h1 = lab.add_host("h1", "198.18.0.1/24")
    h2 = lab.add_host("h2", "198.18.0.2/24")
    lab.add_pod_address(h1, f"{POD1}/24")
    lab.add_pod_address(h2, f"{POD2}/24")
    assert kv.setup_flannel_vxlan(lab, h1, SUBNET1, mac=MAC1) == MAC1
    assert kv.setup_flannel_vxlan(lab, h2, SUBNET2, mac=MAC2) == MAC2
    kv.add_flannel_vxlan_peer(lab, h1, SUBNET2, MAC2, h2.underlay_ip)
    kv.add_flannel_vxlan_peer(lab, h2, SUBNET1, MAC1, h1.underlay_ip)
    return h1, h2


def _ping(lab, host, src, dst, count=2):
    return lab.run(host.netns, ["ping", "-n", "-c", str(count), "-W", "2",
                                "-I", src, dst], check=False, timeout=15)


def test_device_is_configured_like_flannel(lab, pair):
    h1, _ = pair
    link = json.loads(lab.run(h1.netns, ["ip", "-d", "-j", "link", "show",
                                         "flannel.1"]).stdout)[0]
    info = link["linkinfo"]["info_data"]
    assert link["linkinfo"]["info_kind"] == "vxlan"
    assert (info["id"], info["port"], info["local"]) == (1, 8472, "198.18.0.1")
    assert info["learning"] is False
    assert info["link"] == "eth0"
    assert link["mtu"] == 1450
    assert link["address"] == MAC1
    assert "UP" in link["flags"]

    addrs = json.loads(lab.run(h1.netns, ["ip", "-j", "addr", "show",
                                          "flannel.1"]).stdout)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs
            if a["family"] == "inet"] == [("198.19.1.0", 32)]

    routes = json.loads(lab.run(h1.netns, ["ip", "-j", "route", "show",
                                           "dev", "flannel.1"]).stdout)
    assert [(r["dst"], r["gateway"], r.get("flags")) for r in routes] == [
        (SUBNET2, "198.19.2.0", ["onlink"])]
    neigh = json.loads(lab.run(h1.netns, ["ip", "-j", "neigh", "show",
                                          "dev", "flannel.1"]).stdout)
    assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [
        ("198.19.2.0", MAC2, ["PERMANENT"])]
    fdb = lab.run(h1.netns, ["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
    assert f"{MAC2} dst 198.18.0.2 self permanent" in fdb


def test_pods_ping_over_vxlan_and_wire_is_vxlan(lab, pair, tmp_path):
    from scapy.all import IP, UDP, VXLAN, Ether, rdpcap  # slow import: tests only

    h1, h2 = pair
    pcap, log = tmp_path / "underlay.pcap", tmp_path / "tcpdump.log"
    with open(log, "w") as err:
        # 2 requests + 2 replies; --immediate-mode: no buffering in blocks
        dump = lab.popen(h1.netns, ["tcpdump", "-Z", "root", "-U", "-n",
                                    "--immediate-mode", "-c", "4", "-i", "eth0",
                                    "-w", str(pcap), "udp port 8472"],
                         stdout=subprocess.DEVNULL, stderr=err)
    wait_for(lambda: "listening on" in log.read_text() or dump.poll() is not None,
             timeout=10, what="tcpdump to listen")
    assert dump.poll() is None, log.read_text()

    ping = _ping(lab, h1, POD1, POD2)
    try:
        dump.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    lab.stop(dump)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    frames = [p for p in rdpcap(str(pcap)) if p.haslayer(VXLAN)]
    requests = [p for p in frames if p[VXLAN][IP].src == POD1]
    replies = [p for p in frames if p[VXLAN][IP].src == POD2]
    assert len(requests) >= 2 and len(replies) >= 2, [p.summary() for p in frames]
    for pkt, (src, dst) in [(requests[0], (h1, h2)), (replies[0], (h2, h1))]:
        assert (pkt[IP].src, pkt[IP].dst) == (src.underlay_ip, dst.underlay_ip)
        assert pkt[UDP].dport == 8472
        assert pkt[VXLAN].vni == 1
        assert int(pkt[VXLAN].flags) == 0x08
        inner = pkt[VXLAN][Ether]
        assert inner.src == (MAC1 if src is h1 else MAC2)
        assert inner.dst == (MAC2 if dst is h2 else MAC1)
        assert inner.type == 0x0800


def test_remove_peer_deletes_all_three_entries(lab, pair):
    h1, h2 = pair
    assert _ping(lab, h1, POD1, POD2, count=1).returncode == 0
    kv.remove_flannel_vxlan_peer(lab, h1, SUBNET2, MAC2, h2.underlay_ip)
    assert lab.run(h1.netns, ["ip", "route", "show", "dev", "flannel.1"]).stdout == ""
    assert lab.run(h1.netns, ["ip", "neigh", "show", "dev", "flannel.1"]).stdout == ""
    assert MAC2 not in lab.run(h1.netns, ["bridge", "fdb", "show", "dev",
                                          "flannel.1"]).stdout
    assert _ping(lab, h1, POD1, POD2, count=1).returncode != 0
    with pytest.raises(Exception):  # already gone: every step fails, all reported
        kv.remove_flannel_vxlan_peer(lab, h1, SUBNET2, MAC2, h2.underlay_ip)
