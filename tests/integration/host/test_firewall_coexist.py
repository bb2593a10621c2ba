"""udpoverlay.host.firewall beside other users of the same chains (issue 21),
with real iptables (iptables-nft) and nft in a node namespace:

- kube-proxy's FORWARD rules installed first keep their say: our jump is
  appended (flannel's own e2e rule-order check), packets conntrack marks
  INVALID are dropped by kube-proxy's rule before our accept (0 of 20
  reach the pod, 20 counted on kube-proxy's DROP), while valid traffic
  crosses Docker's `-P FORWARD DROP`; and, as the control, with our jump
  moved first (the old placement) all 20 reach the pod;
- a portmap (hostPort) jump before or after ours in POSTROUTING, a DROP
  above ours, a stranger's rule inside our chain or table: not a change,
  no WARNING, nothing moved;
- two instances for two networks share FLANNEL-FWD/FLANNEL-POSTRTG (and
  table ip flannel-ipv4): both sets present, no repairs, ten concurrent
  starts in a row all succeed, and removing one leaves the other's rules
  exactly as that one alone would have them;
- nftables: another tool's chain in our table survives us; rules left by
  an earlier run for our network are taken over, not doubled.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys
import threading

import pytest

from lab.netns import wait_for
from tests.integration.host.test_firewall import FWD_RULES, NAT_RULES, NFT_TABLE
from tests.support.nodebed import OUTSIDE_IP, NodeBed, in_netns, static_env
from udpoverlay.host.firewall import Firewall

MODES = ("iptables", "nftables")
NET_A, SUB_A = ipaddress.IPv4Network("198.19.0.0/17"), ipaddress.IPv4Network("198.19.1.0/24")
NET_B, SUB_B = (ipaddress.IPv4Network("198.19.128.0/17"),
                ipaddress.IPv4Network("198.19.129.0/24"))

# flannel's e2e golden FORWARD (e2e/rules.go expectedIptablesForward), with Docker's DROP
FLANNEL_E2E_FORWARD = [
    "-P FORWARD DROP",
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer '
    'firewall" -j KUBE-PROXY-FIREWALL',
    '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" '
    '-j KUBE-SERVICES',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible '
    'service portals" -j KUBE-EXTERNAL-SERVICES',
    '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
]
# kube-proxy (iptables mode) as it writes FORWARD, in front of anything we add
KUBE_PROXY = "\n".join([
    "*filter",
    ":KUBE-PROXY-FIREWALL - [0:0]", ":KUBE-FORWARD - [0:0]", ":KUBE-SERVICES - [0:0]",
    ":KUBE-EXTERNAL-SERVICES - [0:0]",
    *FLANNEL_E2E_FORWARD[1:-1],
    "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
    "-m mark --mark 0x4000/0x4000 -j ACCEPT",
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "COMMIT", ""])
PORTMAP_JUMP = ["-m", "comment", "--comment", "CNI portfwd requiring masquerade",
                "-j", "CNI-HOSTPORT-MASQ"]
PORTMAP_LINE = '-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" ' \
               '-j CNI-HOSTPORT-MASQ'

# Raw TCP segments with chosen flags from src to dst:port (the kernel adds
# the IP header): argv = src dst port count flags(hex) gap_s
RAW_TCP_SENDER = r"""
import socket, struct, sys, time
src, dst, port, count, flags, gap = sys.argv[1:7]
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.bind((src, 0))
for n in range(int(count)):
    hdr = struct.pack("!HHIIBBHHH", 40000 + n, int(port), 1000 + n, 777, 5 << 4,
                      int(flags, 16), 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    hdr = hdr[:16] + struct.pack("!H", csum(pseudo + hdr)) + hdr[18:]
    s.sendto(hdr, (dst, 0))
    time.sleep(float(gap))
"""
# Counts TCP segments to `port` arriving in this namespace until 0.5 s after
# the file `done` appears (the sender finished), at most `secs` seconds;
# prints "ready" first, the count last.
RAW_TCP_COUNTER = r"""
import os, socket, struct, sys, time
port, done, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.settimeout(0.1)
print("ready", flush=True)
n, end, stop = 0, time.monotonic() + secs, None
while time.monotonic() < (stop or end):
    if stop is None and os.path.exists(done):
        stop = time.monotonic() + 0.5
    try:
        pkt = s.recv(2048)
    except socket.timeout:
        continue
    ihl = (pkt[0] & 15) * 4
    if struct.unpack("!H", pkt[ihl + 2:ihl + 4])[0] == port:
        n += 1
print(n, flush=True)
"""
ACK, SYN_FIN = "10", "03"


@pytest.fixture
def bed(lab, tmp_path):
    b = NodeBed(lab, tmp_path)
    b.add_node(1)
    return b


def _ns(bed) -> str:
    return bed.nodes[1].netns


def _sh(bed, *cmd: str, ns: str | None = None) -> str:
    return bed.lab.run(ns or _ns(bed), list(cmd)).stdout


def _restore(bed, text: str) -> None:
    subprocess.run(["ip", "netns", "exec", _ns(bed), "iptables-restore", "--noflush"],
                   input=text, text=True, check=True, timeout=30)


def _fw(mode: str, net=NET_A, sub=SUB_A, **kw) -> Firewall:
    kw.setdefault("masquerade", True)
    return Firewall(net, sub, nftables=(mode == "nftables"), **kw)


def _lines(bed, table: str) -> list[str]:
    return [line for line in _sh(bed, "iptables-save", "-t", table).splitlines()
            if line.startswith("-A ")]


def _flannel_lines(bed, table: str) -> list[str]:
    return [line for line in _lines(bed, table) if "FLANNEL" in line]


def _for(net, sub, lines):
    """The single-network expectations of test_firewall, for net/sub."""
    out = []
    for line in lines:
        out.append(line.replace("198.19.0.0/16", str(net)).replace("198.19.1.0/24", str(sub)))
    return out


def _nft(bed, what: str = "table", chain: str = "") -> str | None:
    cmd = ["nft", "list", what, "ip", "flannel-ipv4", *([chain] if chain else [])]
    r = bed.lab.run(_ns(bed), cmd, check=False)
    return r.stdout if r.returncode == 0 else None


def _strangers(bed) -> str:
    """Someone else's rules in nat and filter (they must outlive us); the
    node's whole ruleset after adding them."""
    _sh(bed, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "198.18.0.99", "-j", "RETURN")
    _sh(bed, "iptables", "-A", "FORWARD", "-s", "198.18.0.99", "-j", "ACCEPT")
    return bed.rules(_ns(bed))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- kube-proxy in front of us --------------------------------------------------------------
def _count_at_pod(bed, pod, port: int, flags: str, count: int = 20) -> int:
    """Send `count` raw TCP segments with `flags` from the outside host to
    pod:port; how many reached the pod's namespace."""
    out, done = bed.tmp / f"counter-{port}-{flags}.out", bed.tmp / f"sent-{port}-{flags}"
    with open(out, "w") as f:
        proc = bed.lab.popen(pod.netns, [sys.executable, "-c", RAW_TCP_COUNTER, str(port),
                                         str(done), "30"],
                             stdout=f, stderr=subprocess.STDOUT)
    wait_for(lambda: "ready" in out.read_text() or proc.poll() is not None, 10, 0.05,
             "the counter in the pod")
    r = bed.run(bed.outside.netns, [sys.executable, "-c", RAW_TCP_SENDER, OUTSIDE_IP,
                                    pod.address, str(port), str(count), flags, "0.01"])
    assert r.returncode == 0, r.stderr
    done.touch()
    proc.wait(timeout=40)
    return int(out.read_text().split()[-1])


def _invalid_drops(bed) -> int:
    """Packets kube-proxy's `ctstate INVALID -j DROP` dropped so far."""
    out = _sh(bed, "iptables", "-t", "filter", "-L", "KUBE-FORWARD", "-v", "-x", "-n")
    for line in out.splitlines():
        if "DROP" in line and "INVALID" in line:
            return int(line.split()[0])
    raise AssertionError(f"kube-proxy's INVALID drop is gone:\n{out}")


@pytest.mark.parametrize("mode", MODES)
def test_kube_proxy_invalid_drop_keeps_its_say(bed, mode):
    node = bed.nodes[1]
    outside = bed.add_outside()
    pod = bed.wire_pods(node, static_env(node.subnet, 1472, ip_masq=True), count=1)[0]
    # the outside host reaches the pods through the node (a router upstream would)
    bed.lab.run(outside.netns, ["ip", "route", "add", str(node.subnet), "via", node.public_ip])
    # loose pickup off: a lone ACK with no connection is INVALID (SYN+FIN always is)
    bed.lab.sysctl(node.netns, "net.netfilter.nf_conntrack_tcp_loose", "0")
    _restore(bed, KUBE_PROXY)
    fw = Firewall(NET_A.supernet(new_prefix=16), node.subnet, masquerade=True,
                  nftables=(mode == "nftables"))
    in_netns(node.netns, fw.apply)
    assert _sh(bed, "iptables", "-S", "FORWARD").splitlines() == FLANNEL_E2E_FORWARD

    # valid traffic crosses the DROP host both ways
    for src, dst in ((outside.netns, pod.address), (pod.netns, OUTSIDE_IP)):
        r = bed.ping(src, dst)
        assert r.returncode == 0 and "3 received" in r.stdout, r.stdout + r.stderr

    # INVALID: kube-proxy drops it before our accept
    before = _invalid_drops(bed)
    assert _count_at_pod(bed, pod, 7301, ACK, 10) == 0
    assert _count_at_pod(bed, pod, 7302, SYN_FIN, 10) == 0
    assert _invalid_drops(bed) - before == 20
    assert in_netns(node.netns, fw.check) is False

    # the control: our jump first (the old placement) lets them all through
    jump = ["-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"]
    _sh(bed, "iptables", "-I", "FORWARD", "1", *jump)
    try:
        got = _count_at_pod(bed, pod, 7303, ACK, 10) + _count_at_pod(bed, pod, 7304, SYN_FIN, 10)
    finally:
        _sh(bed, "iptables", "-D", "FORWARD", "1")
    assert got == 20
    assert _sh(bed, "iptables", "-S", "FORWARD").splitlines() == FLANNEL_E2E_FORWARD
    in_netns(node.netns, fw.remove)
    assert "FLANNEL" not in _sh(bed, "iptables-save")


# -- others' rules around ours ----------------------------------------------------------------
def test_portmap_jump_before_and_after_ours_is_left_alone(bed, caplog):
    fw = _fw("iptables")
    in_netns(_ns(bed), fw.apply)
    _sh(bed, "iptables", "-t", "nat", "-N", "CNI-HOSTPORT-MASQ")
    _sh(bed, "iptables", "-t", "nat", "-A", "POSTROUTING", *PORTMAP_JUMP)     # after ours
    ours = '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'
    with caplog.at_level(logging.INFO, logger="udpoverlay.host.firewall"):
        assert in_netns(_ns(bed), fw.check) is False
        assert [x for x in _lines(bed, "nat") if "POSTROUTING" in x.split()[1]] == \
            [ours, PORTMAP_LINE]
        _sh(bed, "iptables", "-t", "nat", "-D", "POSTROUTING", *PORTMAP_JUMP)
        _sh(bed, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", *PORTMAP_JUMP)  # before
        for _ in range(3):                         # resync after resync: nothing moves
            assert in_netns(_ns(bed), fw.check) is False
        assert [x for x in _lines(bed, "nat") if "POSTROUTING" in x.split()[1]] == \
            [PORTMAP_LINE, ours]
    assert _warnings(caplog) == [] and fw.repairs == 0
    in_netns(_ns(bed), fw.remove)
    assert [x for x in _lines(bed, "nat") if "POSTROUTING" in x.split()[1]] == [PORTMAP_LINE]


@pytest.mark.parametrize("mode", MODES)
def test_strangers_rules_are_not_a_change(bed, mode, caplog):
    """A DROP above our jump, a stranger's rule inside FLANNEL-FWD (and in
    nftables mode one in our forward chain): theirs, left where they are."""
    fw = _fw(mode)
    in_netns(_ns(bed), fw.apply)
    _sh(bed, "iptables", "-I", "FORWARD", "1", "-s", "198.18.0.66", "-j", "DROP")
    _sh(bed, "iptables", "-I", "FLANNEL-FWD", "1", "-s", "198.18.0.67", "-j", "RETURN")
    if mode == "nftables":
        _sh(bed, "nft", "insert", "rule", "ip", "flannel-ipv4", "forward", "ip", "saddr",
            "198.18.0.68", "drop")
    before = (_lines(bed, "filter"), _nft(bed))
    with caplog.at_level(logging.INFO, logger="udpoverlay.host.firewall"):
        for _ in range(3):
            assert in_netns(_ns(bed), fw.check) is False
    assert (_lines(bed, "filter"), _nft(bed)) == before
    assert _warnings(caplog) == [] and fw.repairs == 0
    # removal: ours go, theirs stay (so do the chain that still holds one and its jump)
    in_netns(_ns(bed), fw.remove)
    assert _lines(bed, "filter") == ["-A FORWARD -s 198.18.0.66/32 -j DROP", FWD_RULES[0],
                                     "-A FLANNEL-FWD -s 198.18.0.67/32 -j RETURN"]
    if mode == "nftables":
        assert "198.18.0.68" in _nft(bed) and str(NET_A) not in _nft(bed)


# -- two networks, two instances --------------------------------------------------------------
def _expect_iptables(bed, *nets) -> None:
    """Exactly the rules of these (net, sub) instances, in install order."""
    nat = [NAT_RULES[0], NAT_RULES[1]]
    filt = [FWD_RULES[0]]
    for net, sub in nets:
        nat += _for(net, sub, NAT_RULES[2:])
        filt += _for(net, sub, FWD_RULES[1:])
    assert _flannel_lines(bed, "nat") == nat
    assert _flannel_lines(bed, "filter") == filt


def _expect_nft(bed, *nets) -> None:
    fwd, post = [], []
    for net, sub in nets:
        text = _for(net, sub, NFT_TABLE.splitlines())
        fwd += [line.strip() for line in text if line.strip().startswith("ip ")
                and line.strip().endswith(" accept")]
        post += [line.strip() for line in text if line.strip().startswith(("meta ", "ip "))
                 and not line.strip().endswith(" accept")]
    for chain, want in (("forward", fwd), ("postrtg", post)):
        text = _nft(bed, "chain", chain)
        got = [line.strip() for line in (text or "").splitlines()
               if line.strip().startswith(("meta ", "ip "))]
        assert got == want, f"{chain}: {text}"


@pytest.mark.parametrize("mode", MODES)
def test_two_networks_share_the_chains(bed, mode, caplog):
    before = _strangers(bed)
    a, b = _fw(mode, NET_A, SUB_A), _fw(mode, NET_B, SUB_B)
    with caplog.at_level(logging.INFO, logger="udpoverlay.host.firewall"):
        in_netns(_ns(bed), a.apply)
        in_netns(_ns(bed), b.apply)
        for _ in range(5):
            assert in_netns(_ns(bed), a.check) is False
            assert in_netns(_ns(bed), b.check) is False
    assert _warnings(caplog) == [] and a.repairs == b.repairs == 0
    if mode == "iptables":
        _expect_iptables(bed, (NET_A, SUB_A), (NET_B, SUB_B))
    else:
        _expect_nft(bed, (NET_A, SUB_A), (NET_B, SUB_B))
        assert _flannel_lines(bed, "filter") == \
            [FWD_RULES[0], *_for(NET_A, SUB_A, FWD_RULES[1:]), *_for(NET_B, SUB_B, FWD_RULES[1:])]

    in_netns(_ns(bed), a.remove)           # b's rules stay exactly as b alone has them
    if mode == "iptables":
        _expect_iptables(bed, (NET_B, SUB_B))
    else:
        assert _nft(bed) == "\n".join(_for(NET_B, SUB_B, NFT_TABLE.splitlines())) + "\n"
        assert _flannel_lines(bed, "filter") == _for(NET_B, SUB_B, FWD_RULES)
    assert in_netns(_ns(bed), b.check) is False
    in_netns(_ns(bed), b.remove)
    assert bed.rules(_ns(bed)) == before


@pytest.mark.parametrize("mode", MODES)
def test_ten_concurrent_starts_in_a_row(bed, mode, caplog):
    """Two instances start at the same moment, check, and stop, ten times:
    every start succeeds, neither ever sees the other's rules as a change."""
    before = _strangers(bed)
    with caplog.at_level(logging.INFO, logger="udpoverlay.host.firewall"):
        for n in range(10):
            fws = [_fw(mode, NET_A, SUB_A), _fw(mode, NET_B, SUB_B)]
            go = threading.Barrier(2)
            errors: list[BaseException] = []

            def start(fw):
                try:
                    go.wait(10)
                    in_netns(_ns(bed), fw.apply)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=start, args=(fw,)) for fw in fws]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, f"start {n + 1}: {errors}"
            for fw in fws:
                assert in_netns(_ns(bed), fw.check) is False, f"start {n + 1}"
            first, second = (fws[n % 2], fws[1 - n % 2])      # stop in either order
            in_netns(_ns(bed), first.remove)
            assert in_netns(_ns(bed), second.check) is False, f"start {n + 1}"
            in_netns(_ns(bed), second.remove)
            assert bed.rules(_ns(bed)) == before, f"start {n + 1}"
    assert _warnings(caplog) == []


# -- nftables: our table is shared too --------------------------------------------------------
def test_another_tools_chain_in_our_table_survives(bed):
    _sh(bed, "nft", "add", "table", "ip", "flannel-ipv4")
    _sh(bed, "nft", "add", "chain", "ip", "flannel-ipv4", "theirs")
    _sh(bed, "nft", "add", "rule", "ip", "flannel-ipv4", "theirs", "ip", "saddr",
        "198.18.0.70", "counter")
    fw = _fw("nftables")
    in_netns(_ns(bed), fw.apply)
    assert in_netns(_ns(bed), fw.check) is False
    text = _nft(bed)
    assert "chain theirs" in text and "198.18.0.70" in text and "chain postrtg" in text
    in_netns(_ns(bed), fw.remove)
    text = _nft(bed)
    assert text is not None and "chain theirs" in text and "198.18.0.70" in text
    assert "chain postrtg" not in text and "chain forward" not in text


@pytest.mark.parametrize("mode", MODES)
def test_an_earlier_runs_leftovers_are_taken_over(bed, mode, caplog):
    """A crashed run (or flanneld for the same network) left our rules: the
    next start ends with one set, not two, and a clean node after removal."""
    before = _strangers(bed)
    in_netns(_ns(bed), _fw(mode).apply)        # never removed: a crash
    fw = _fw(mode)
    with caplog.at_level(logging.INFO, logger="udpoverlay.host.firewall"):
        in_netns(_ns(bed), fw.apply)
        assert in_netns(_ns(bed), fw.check) is False
    assert _warnings(caplog) == []
    if mode == "iptables":
        _expect_iptables(bed, (NET_A, SUB_A))
    else:
        assert _nft(bed) == "\n".join(_for(NET_A, SUB_A, NFT_TABLE.splitlines())) + "\n"
    in_netns(_ns(bed), fw.remove)
    assert bed.rules(_ns(bed)) == before
