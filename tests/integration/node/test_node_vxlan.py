"""A udpoverlay vxlan node and a kernel flannel.1 node, shaped like
Kubernetes/Docker nodes (issue 10): pods behind cni0 built from subnet.env
values as the flannel CNI plugin would, iptables FORWARD policy DROP on
both (as Docker sets it), an outside host on the underlay switch.

n1 runs `python -m udpoverlay run --backend vxlan --ip-masq` (static
peers); n2 runs no udpoverlay, only the kernel's flannel.1 as flannel's
vxlan backend configures it, with flanneld's rules applied in its
namespace by udpoverlay.host.firewall (as flanneld would). n2's underlay
keeps tx checksumming ON (no ethtool): its inner checksums leave partial.

- pod to pod both ways passes both DROP hosts and keeps the pod's source
  address (seen by a listener in the destination pod); TCP from a pod on
  n1 to a pod on the kernel node arrives whole;
- a pod on n1 reaches the outside host (which has no route to the pods)
  with its source masqueraded to n1's underlay address, and gets replies;
- after SIGTERM n1's rules are gone, its FORWARD DROP is untouched and
  closes pod egress again.

TCP from a kernel-node pod to a pod behind n1's cni0: over a veth underlay
the kernel sends UDP-tunnel GSO super-frames (one outer datagram of ~7 KB
holding an inner TCP packet longer than the MTU, checksum partial); the
daemon finishes the checksum and writes it to the TUN as a GSO packet the
kernel segments when it forwards it to cni0 (MTU 1450, DF set); without
offloads it splits it itself. Counted in rx_resegmented."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lab.netns import Host, wait_for
from tests.support.nodebed import OUTSIDE_IP, VXLAN_OVERHEAD, Node, bed_fixture, in_netns, static_env
from tests.support.overlay import Daemon
from udpoverlay.host.firewall import Firewall


@pytest.fixture
def bed(lab, tmp_path, request):
    yield from bed_fixture(lab, tmp_path, request)


@dataclass
class Pair:
    """n1 (udpoverlay vxlan, --ip-masq) and n2 (kernel flannel.1 + flanneld's
    rules), each with two pods; `before`: each node's rules before anything."""

    ours: Node
    kernel: Node
    daemon: Daemon
    firewall: Firewall
    outside: Host
    before: dict[int, str]


@pytest.fixture
def pair(bed):
    ours, kernel = bed.add_node(1), bed.add_node(2)
    outside = bed.add_outside()
    before = {n.index: bed.rules(n.netns) for n in (ours, kernel)}
    assert all(":FORWARD DROP" in text for text in before.values()), before
    d = bed.start_vxlan(ours.index, ["--ip-masq"])
    wait_for(lambda: _installed(bed, ours), 15, 0.2, "the firewall rules on n1")
    st = bed.ov.status(ours.host)
    assert (st["backend"], st["mtu"]) == ("vxlan", bed.lab.mtu - VXLAN_OVERHEAD), st
    bed.kernel_vxlan_node(kernel.index, peers=[ours.index])
    fw = bed.node_firewall(kernel)
    try:
        # static mode writes no subnet.env: its values for the subnets we gave
        for node in (ours, kernel):
            bed.wire_pods(node, static_env(node.subnet, st["mtu"], ip_masq=True))
        yield Pair(ours, kernel, d, fw, outside, before)
    finally:
        in_netns(kernel.netns, fw.remove)          # idempotent


def _installed(bed, node) -> bool:
    text = bed.rules(node.netns)
    return "-j FLANNEL-POSTRTG" in text and "-j FLANNEL-FWD" in text


def _same_rules(bed, node, before: str) -> bool:
    """node's iptables rules (the -A lines) equal those in `before`, and its
    FORWARD policy is still DROP (iptables-save lists a table once loaded,
    empty or not, so whole listings differ)."""
    def rules(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("-A ")]
    now = bed.rules(node.netns)
    return ":FORWARD DROP" in now and rules(now) == rules(before)


def _sent_everything(bed, pod, dst: str) -> None:
    r = bed.ping(pod.netns, dst)
    assert r.returncode == 0 and "3 received" in r.stdout, \
        f"{pod.name} -> {dst}: {r.stdout}{r.stderr}{bed.ov.dump_logs()}"


def test_udpoverlay_vxlan_node_and_kernel_flannel_node(bed, pair):
    ours, kernel = pair.ours, pair.kernel
    (a1, a2), (k1, k2) = ours.pods, kernel.pods

    # pod to pod across both DROP hosts, both ways, sources kept
    for src, dst, port in ((a1, k1, 7301), (k2, a2, 7302), (k1, a1, 7303)):
        _sent_everything(bed, src, dst.address)
        assert bed.udp_source(src.netns, src.address, dst, dst.address, port) == src.address
    bed.transfer(a2, k1, 8 * 1024 * 1024 + 4321, 5402)

    # out of the network from n1: masqueraded to n1's address, replies back
    for pod, port in ((a1, 7401), (a2, 7402)):
        _sent_everything(bed, pod, OUTSIDE_IP)
        assert bed.udp_source(pod.netns, pod.address, pair.outside, OUTSIDE_IP, port) == \
            ours.public_ip

    # SIGTERM: a clean exit; n1's rules are gone, its DROP policy untouched
    assert bed.ov.stop(pair.daemon) == 0, pair.daemon.stderr()
    text = bed.rules(ours.netns)
    assert "FLANNEL" not in text and "flannel" not in text, text
    assert _same_rules(bed, ours, pair.before[ours.index]), text
    r = bed.ping(a1.netns, OUTSIDE_IP, count=1)
    assert r.returncode != 0, "pod egress on n1 still open after the rules were removed"
    # n2's rules (flanneld's there) were not touched by n1's exit; then removed
    assert _installed(bed, kernel)
    in_netns(kernel.netns, pair.firewall.remove)
    assert _same_rules(bed, kernel, pair.before[kernel.index]), bed.rules(kernel.netns)


def test_tcp_from_kernel_node_pod_through_udpoverlay_node(bed, pair):
    """Kernel node tx checksumming on: TCP k2 -> a1 completes, content
    checked, and n1 counts the partial checksums it finished."""
    a1, k2 = pair.ours.pods[0], pair.kernel.pods[1]
    _sent_everything(bed, k2, a1.address)
    bed.transfer(k2, a1, 8 * 1024 * 1024 + 4321, 5401, timeout=20)
    c = bed.ov.status(pair.ours.host)["counters"]
    assert c["rx_csum_partial"] > 0 and c["rx_csum_bad"] == 0, c
    assert c["rx_resegmented"] > 0, c
