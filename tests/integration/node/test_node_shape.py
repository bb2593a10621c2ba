"""Two udpoverlay nodes shaped like Kubernetes/Docker nodes (issue 10):
pods behind a cni0 bridge built from subnet.env as the flannel CNI plugin
would, iptables FORWARD policy DROP on both nodes (as Docker sets it), an
outside host on the underlay switch. The daemons run as
`python -m udpoverlay run ... --ip-masq` (udp backend, static peers), in
flanneld's iptables mode and in its nftables mode.

- pod to pod across nodes passes both DROP hosts and keeps the pod's
  source address (seen by a listener in the destination pod);
- a pod reaches the outside host, which has no route to the pods, with its
  source masqueraded to its node's underlay address, and gets replies;
- after SIGTERM the rules are gone (and the DROP policy, which the daemon
  never touches, closes pod egress again)."""

from __future__ import annotations

import pytest

from lab.netns import wait_for
from tests.support.nodebed import OUTSIDE_IP, bed_fixture

MODES = ("iptables", "nftables")


@pytest.fixture
def bed(lab, tmp_path, request):
    yield from bed_fixture(lab, tmp_path, request)


def _installed(bed, node, mode) -> bool:
    text = bed.rules(node.netns)
    if mode == "iptables":
        return "-j FLANNEL-POSTRTG" in text and "-j FLANNEL-FWD" in text
    return "table ip flannel-ipv4" in text and "-j FLANNEL-FWD" in text


@pytest.mark.parametrize("mode", MODES)
def test_pods_across_drop_hosts_and_out_through_masquerade(bed, mode):
    nodes = [bed.add_node(1), bed.add_node(2)]
    outside = bed.add_outside()
    extra = ["--ip-masq", *(["--enable-nftables"] if mode == "nftables" else [])]
    daemons = [bed.start_static(node.index, extra) for node in nodes]
    for node in nodes:
        # static mode writes no subnet.env: its values for the subnet we gave
        mtu = bed.ov.status(node.host)["mtu"]
        bed.wire_pods(node, bed.node_env(node, None, mtu, ip_masq=True))
        wait_for(lambda node=node: _installed(bed, node, mode), 15, 0.2,
                 f"the firewall rules on {node.host.name}")
    (a1, a2), (b1, b2) = nodes[0].pods, nodes[1].pods

    # pod to pod across both DROP hosts, in both directions, sources kept
    for src, dst, port in ((a1, b1, 7101), (b2, a2, 7102)):
        r = bed.ping(src.netns, dst.address)
        assert r.returncode == 0 and "3 received" in r.stdout, r.stdout + bed.ov.dump_logs()
        assert bed.udp_source(src.netns, src.address, dst, dst.address, port) == src.address

    # out of the network: masqueraded to the node's address, replies come back
    for node, pod, port in ((nodes[0], a2, 7201), (nodes[1], b1, 7202)):
        r = bed.ping(pod.netns, OUTSIDE_IP)
        assert r.returncode == 0 and "3 received" in r.stdout, r.stdout + bed.ov.dump_logs()
        assert bed.udp_source(pod.netns, pod.address, outside, OUTSIDE_IP, port) == \
            node.public_ip

    # SIGTERM: a clean exit, and the rules are gone; nobody else's are touched
    for d in daemons:
        assert bed.ov.stop(d) == 0, d.stderr()
    for node in nodes:
        text = bed.rules(node.netns)
        assert "FLANNEL" not in text and "flannel" not in text, text
        assert ":FORWARD DROP" in text
    r = bed.ping(a1.netns, OUTSIDE_IP, count=1)
    assert r.returncode != 0, "pod egress still open after the rules were removed"


@pytest.mark.parametrize("mode", MODES)
def test_the_daemon_puts_flushed_rules_back(bed, mode):
    """Someone flushes the rules under a running daemon: within
    --iptables-resync seconds they are back, with one WARNING in its log."""
    node = bed.add_node(1)
    bed.add_node(2)
    extra = ["--ip-masq", "--iptables-resync", "1",
             *(["--enable-nftables"] if mode == "nftables" else [])]
    d = bed.start_static(1, extra)
    wait_for(lambda: _installed(bed, node, mode), 15, 0.2, "the firewall rules")
    whole = bed.rules(node.netns)
    damage = (["iptables", "-t", "nat", "-F"] if mode == "iptables"
              else ["nft", "delete", "table", "ip", "flannel-ipv4"])
    bed.lab.run(node.netns, damage)
    assert bed.rules(node.netns) != whole
    wait_for(lambda: bed.rules(node.netns) == whole, 15, 0.2, "the rules to come back")
    assert d.stderr().count("WARNING") == 1 and "re-applying" in d.stderr(), d.stderr()
    assert bed.ov.stop(d) == 0
