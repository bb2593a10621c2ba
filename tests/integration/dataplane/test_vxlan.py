"""VXLAN interop: udpoverlay hosts and hosts running only the kernel's vxlan
device configured exactly as flannel's vxlan backend does (flannel.1, VNI 1,
port 8472, nolearning, permanent neighbour + fdb entries, onlink routes).

Addresses: underlay 198.18.0.N/24, host N owns 198.19.N.0/24, pod 198.19.N.1.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lab import kernel_vxlan
from lab.netns import wait_for
from tests.support.overlay import pod_of, subnet_of, underlay_of
from tests.support.probes import LISTENER, SENDER, assert_pings, start_capture
from tests.support.requirements import require

VX_PORT = 8472
MAC = {1: "02:00:5e:00:01:01", 2: "02:00:5e:00:01:02", 3: "02:00:5e:00:01:03"}


def start_vx(ov, i, peers: dict[int, str | None], extra=()):
    """udpoverlay --backend vxlan on host i; peers: host -> MAC (None: learn)."""
    args = ["--backend", "vxlan", "--vtep-mac", MAC[i], *extra]
    for j, mac in peers.items():
        args += ["--peer", f"{underlay_of(j)}={subnet_of(j)}" + (f",vtep-mac={mac}" if mac else "")]
    return ov.start(i, peers=[], extra=args)


def kernel_host(ov, i, peers: list[int], tx_csum: bool = False):
    """Host i runs no udpoverlay: only flannel.1 with entries for each peer.
    tx_csum=False turns the underlay's tx checksumming off; True leaves it
    on, as in kind/Docker and VMs (see test_kernel_peer_with_tx_checksum_offload)."""
    h = ov.hosts[i]
    if not tx_csum:
        require(shutil.which("ethtool") is not None, "needs ethtool on PATH")
        # On a veth underlay the kernel leaves the inner TCP/UDP checksum of
        # its vxlan frames for the "NIC" to fill in, and veth never does: a
        # real NIC (or this setting) puts the finished checksum on the wire.
        ov.run(h, ["ethtool", "-K", "eth0", "tx", "off"], check=True)
    kernel_vxlan.setup_flannel_vxlan(ov.lab, h, subnet_of(i), mac=MAC[i])
    for j in peers:
        kernel_vxlan.add_flannel_vxlan_peer(ov.lab, h, subnet_of(j), MAC[j], underlay_of(j))


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
@pytest.mark.parametrize("learn", [False, True], ids=["mac-given", "mac-by-arp"])
def test_udpoverlay_and_kernel_vxlan_ping_and_transfer(overlay2, learn, offload):
    ov = overlay2
    kernel_host(ov, 2, peers=[1])
    start_vx(ov, 1, {2: None if learn else MAC[2]}, extra=[] if offload else ["--no-offload"])
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)
    st = ov.status(ov.hosts[1])
    assert (st["backend"], st["vni"], st["vtep_mac"], st["port"]) == ("vxlan", 1, MAC[1], VX_PORT)
    assert st["mtu"] == 1500 - 50
    assert st["peers"][0]["vtep_mac"] == MAC[2]
    if learn:
        assert st["counters"]["rx_arp"] >= 1
    nbytes = 20 * 1024 * 1024 + 12345
    ov.transfer(1, 2, nbytes, 5301)
    ov.transfer(2, 1, nbytes, 5302)
    assert st["offload"]["enabled"] is offload
    c = ov.status(ov.hosts[1])["counters"]
    # TSO super-packets split towards the kernel host; its segments coalesced
    assert (c["tx_super_packets"] > 0, c["rx_coalesced"] > 0) == (offload, offload), c


def test_three_hosts_two_udpoverlay_one_kernel(overlay3):
    ov = overlay3
    kernel_host(ov, 3, peers=[1, 2])
    start_vx(ov, 1, {2: None, 3: MAC[3]})
    start_vx(ov, 2, {1: None, 3: None})
    for i, j in [(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)]:
        assert_pings(ov, i, j, count=2)


def test_wire_is_vxlan_with_vni_and_macs(overlay2):
    require(importlib.util.find_spec("scapy") is not None, "needs scapy")
    from scapy.all import ICMP, IP, UDP, VXLAN, Ether, rdpcap

    ov = overlay2
    kernel_host(ov, 2, peers=[1])
    start_vx(ov, 1, {2: MAC[2]})
    pcap = ov.tmp / "vx.pcap"
    cap = start_capture(ov, ov.hosts[2], pcap, f"udp port {VX_PORT}")
    assert_pings(ov, 1, 2, count=3)
    # 16 more inner flows (UDP from 16 source ports) to spread over ports
    r = ov.run(ov.hosts[1], [sys.executable, "-c", FLOWS, pod_of(1), pod_of(2)], timeout=20)
    assert r.returncode == 0, r.stderr
    time.sleep(1.5)
    ov.lab.stop(cap, signal.SIGINT, timeout=10)
    captured = rdpcap(str(pcap))
    flows: dict[int, set] = {}
    for p in captured:
        # parsed by hand: scapy picks its dissector by port and may take an
        # ephemeral source port for another protocol
        if UDP in p and p[IP].src == underlay_of(1) and p[UDP].dport == VX_PORT:
            vx = bytes(p[UDP].payload)
            if len(vx) >= 50 and vx[20:22] == b"\x08\x00" and vx[31] == 17 \
                    and int.from_bytes(vx[44:46], "big") == 9:
                flows.setdefault(int.from_bytes(vx[42:44], "big"), set()).add(p[UDP].sport)
    frames = [p for p in captured if VXLAN in p]
    # UDP may lose a datagram on the way; most of the 16 flows must be seen
    assert len(flows) >= 8, sorted(flows.items())
    assert all(len(ports) == 1 for ports in flows.values()), flows   # a flow keeps its port
    assert len({next(iter(ports)) for ports in flows.values()}) >= 2, flows  # flows spread
    ours = [p for p in frames if p[IP].src == underlay_of(1) and ICMP in p[VXLAN][Ether]]
    theirs = [p for p in frames if p[IP].src == underlay_of(2)]
    assert len(ours) >= 3 and len(theirs) >= 3
    for p in ours:
        assert p[UDP].dport == VX_PORT and p[VXLAN].vni == 1 and p[VXLAN].flags & 0x08
        inner = p[VXLAN][Ether]
        assert (inner.dst, inner.src, inner.type) == (MAC[2], MAC[1], 0x0800)
        assert (inner[IP].src, inner[IP].dst) == (pod_of(1), pod_of(2))
        assert inner[ICMP].type == 8
    # one inner flow -> one (ephemeral) source port, RFC 7348 section 5
    assert len({p[UDP].sport for p in ours}) == 1 and ours[0][UDP].sport != VX_PORT
    for p in theirs:      # the kernel's frames to us, for comparison
        assert p[VXLAN].vni == 1 and p[VXLAN][Ether].dst == MAC[1]


FLOWS = r"""
import socket, sys
for port in range(40000, 40016):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], port))
    for _ in range(2):
        s.sendto(b"flow", (sys.argv[2], 9))
    s.close()
"""

def test_wrong_vni_and_foreign_mac_not_delivered(overlay2):
    """Frames from the (known) kernel peer's address with a wrong VNI or a
    foreign inner MAC are dropped and counted; a correct one gets through."""
    require(importlib.util.find_spec("scapy") is not None, "needs scapy")
    from scapy.all import IP, UDP, VXLAN, Ether, raw

    ov = overlay2
    start_vx(ov, 1, {2: MAC[2]})
    h1, h2 = ov.hosts[1], ov.hosts[2]
    ls = ov.lab.popen(h1.netns, [sys.executable, "-c", LISTENER, pod_of(1), "7777", "15"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert ls.stdout.readline().strip() == b"ready"

    def frame(vni, dst_mac, tag):
        inner = IP(src=pod_of(2), dst=pod_of(1), ttl=63) / UDP(sport=1000, dport=7777) / tag
        return raw(VXLAN(vni=vni, flags=0x08) / Ether(src=MAC[2], dst=dst_mac) / inner).hex()

    for vni, mac, tag in [(2, MAC[1], b"wrongvni"), (1, "02:11:22:33:44:55", b"foreignmac"),
                          (1, MAC[1], b"legit")]:
        r = ov.run(h2, [sys.executable, "-c", SENDER, underlay_of(2), str(VX_PORT),
                        underlay_of(1), str(VX_PORT), frame(vni, mac, tag)], timeout=20)
        assert r.returncode == 0, r.stderr
    out, _ = ls.communicate(timeout=20)
    assert out.decode().splitlines() == [f"{pod_of(2)} legit"]
    c = ov.status(h1)["counters"]
    assert c["rx_drop_bad_vni"] == 1 and c["rx_drop_wrong_mac"] == 1


# -- issue 10 item 4: partial inner checksums from a kernel peer -----------------
@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_kernel_peer_with_tx_checksum_offload(overlay2, offload):
    """The kernel host keeps tx checksumming ON (veth: inner TCP checksums
    leave as pseudo-header partial sums): TCP kernel -> udpoverlay still
    completes, content checked, and the finished checksums are counted."""
    ov = overlay2
    kernel_host(ov, 2, peers=[1], tx_csum=True)
    start_vx(ov, 1, {2: MAC[2]}, extra=[] if offload else ["--no-offload"])
    assert_pings(ov, 2, 1)
    ov.transfer(2, 1, 20 * 1024 * 1024, 5311)
    c = ov.status(ov.hosts[1])["counters"]
    # not every segment: the kernel finishes the checksums of the frames it
    # segments in software on the way; the rest would stall TCP unfinished
    assert c["rx_csum_partial"] > 0, c
    assert c["rx_csum_bad"] == 0, c
    ov.transfer(1, 2, 1024 * 1024, 5312)          # and the other way round


# -- issue 11 item 2: learned MACs cannot be pinned ---------------------------------
FORGED = "02:ee:00:00:0b:ad"


def vxlan_arp_reply(sha: str, spa: str, tha: str, tpa: str) -> str:
    """A VXLAN datagram (VNI 1) holding an ARP reply, as hex for SENDER."""
    mac = lambda m: bytes.fromhex(m.replace(":", ""))        # noqa: E731
    ip = lambda a: bytes(int(x) for x in a.split("."))       # noqa: E731
    return (b"\x08\0\0\0\0\0\x01\0" + mac(tha) + mac(sha) + b"\x08\x06"
            + b"\0\x01\x08\x00\x06\x04\0\x02" + mac(sha) + ip(spa) + mac(tha) + ip(tpa)).hex()


def peer_mac(ov, i: int) -> str | None:
    return ov.status(ov.hosts[i])["peers"][0]["vtep_mac"]


def test_forged_arp_before_the_peer_starts_is_corrected(overlay2):
    """An unprivileged process on the peer host answers our ARP with a bogus
    MAC before the peer's daemon is up; once the peer runs, the learned MAC
    is corrected within 5 s (the peer does not ARP us: ours is configured
    there, so the correction comes from our re-validation)."""
    ov = overlay2
    d1 = start_vx(ov, 1, {2: None})
    forged = vxlan_arp_reply(FORGED, "198.19.2.0", MAC[1], "198.19.1.0")
    python = "/usr/bin/python3"         # a uid-65534 process can run it (not a pyenv shim)
    require(os.access(python, os.X_OK) and shutil.which("setpriv") is not None,
            "needs /usr/bin/python3 and setpriv")
    r = ov.run(ov.hosts[2], ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             str(python), "-I", "-c", SENDER, underlay_of(2), "40000",
                             underlay_of(1), str(VX_PORT), forged], timeout=20)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: peer_mac(ov, 1) == FORGED, 10, 0.1, "the forged MAC taken")
    start_vx(ov, 2, {1: MAC[1]})
    t0 = time.monotonic()
    pinger = ov.lab.popen(ov.hosts[1].netns, ["ping", "-n", "-c", "40", "-i", "0.2", "-W", "1",
                                              "-I", pod_of(1), pod_of(2)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: peer_mac(ov, 1) == MAC[2], 5, 0.1, "the real MAC within 5 s")
        took = time.monotonic() - t0
    finally:
        ov.lab.stop(pinger, signal.SIGTERM, timeout=10)
    print(f"forged MAC corrected {took:.2f} s after the peer came up")
    assert took <= 5.0
    assert_pings(ov, 1, 2)
    st = ov.status(ov.hosts[1])
    assert st["counters"]["arp_mac_changed"] == 1
    assert f"VTEP MAC changed {FORGED} -> {MAC[2]}" in d1.stderr()


def test_kernel_peer_that_changes_its_mac_is_relearned(overlay2):
    ov = overlay2
    kernel_host(ov, 2, peers=[1])
    start_vx(ov, 1, {2: None})
    assert_pings(ov, 1, 2)
    assert peer_mac(ov, 1) == MAC[2]
    new = "02:00:5e:00:02:22"
    ov.run(ov.hosts[2], ["ip", "link", "set", kernel_vxlan.vtep_device(), "address", new],
           check=True)
    # traffic resumes once the new MAC is learned (a few seconds of re-ARP)
    wait_for(lambda: ov.ping(1, 2, 1).returncode == 0, 15, 0.2, "ping after the MAC change")
    assert peer_mac(ov, 1) == new
    assert ov.status(ov.hosts[1])["counters"]["arp_mac_changed"] >= 1
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)
