"""udpoverlay.host.firewall.Firewall alone, in a node namespace with real
iptables (iptables-nft here) and nft: flanneld's rules text for text in both
modes, atomic installs, repairs after someone flushes or edits them, a
removal that leaves the node as it was, clear one-line errors; and on a
node whose FORWARD policy is DROP, pod egress that works only while the
rules are in place and leaves with the node's address.

Every Firewall call runs on a thread inside the node namespace
(tests.support.nodebed.in_netns), as the daemon calls it from a thread."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.support.nodebed import OUTSIDE_IP, NodeBed, in_netns, static_env
from tests.support.probes import SENDER, start_listener
from udpoverlay.errors import FirewallError
from udpoverlay.host.firewall import Firewall

NET = ipaddress.IPv4Network("198.19.0.0/16")
SUB = ipaddress.IPv4Network("198.19.1.0/24")
MODES = ("iptables", "nftables")

NAT_RULES = [
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 198.19.1.0/24 -d 198.19.0.0/16 -m comment --comment "flanneld masq" '
    '-j RETURN',
    '-A FLANNEL-POSTRTG -s 198.19.0.0/16 -d 198.19.1.0/24 -m comment --comment "flanneld masq" '
    '-j RETURN',
    '-A FLANNEL-POSTRTG ! -s 198.19.0.0/16 -d 198.19.1.0/24 -m comment --comment "flanneld masq" '
    '-j RETURN',
    '-A FLANNEL-POSTRTG -s 198.19.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
    '-j MASQUERADE --random-fully',
    '-A FLANNEL-POSTRTG ! -s 198.19.0.0/16 -d 198.19.0.0/16 -m comment --comment "flanneld masq" '
    '-j MASQUERADE --random-fully',
]
FWD_RULES = [
    '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
    '-A FLANNEL-FWD -s 198.19.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    '-A FLANNEL-FWD -d 198.19.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
]
NFT_TABLE = """\
table ip flannel-ipv4 {
\tcomment "rules for flannel-ipv4"
\tchain forward {
\t\tcomment "chain to accept flannel traffic"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 198.19.0.0/16 accept
\t\tip daddr 198.19.0.0/16 accept
\t}

\tchain postrtg {
\t\tcomment "chain to manage traffic masquerading by flannel"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip saddr 198.19.1.0/24 ip daddr 198.19.0.0/16 return
\t\tip saddr 198.19.0.0/16 ip daddr 198.19.1.0/24 return
\t\tip saddr != 198.19.1.0/24 ip daddr 198.19.0.0/16 return
\t\tip saddr 198.19.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 198.19.0.0/16 ip daddr 198.19.0.0/16 masquerade fully-random
\t}
}
"""
# What a Docker host already has: FORWARD policy DROP, its own chains and NAT.
DOCKERISH = """\
*filter
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
COMMIT
*nat
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
"""


@pytest.fixture
def bed(lab, tmp_path):
    b = NodeBed(lab, tmp_path)
    b.add_node(1)
    return b


def _fw(mode: str, **kw) -> Firewall:
    kw.setdefault("masquerade", True)
    return Firewall(NET, SUB, nftables=(mode == "nftables"), **kw)


def _ns(bed) -> str:
    return bed.nodes[1].netns


def _sh(bed, *cmd: str, check: bool = True) -> str:
    return bed.lab.run(_ns(bed), list(cmd), check=check).stdout


def _chain_lines(bed, table: str, chains=("POSTROUTING", "FORWARD")) -> list[str]:
    """Our chains' and the parents' rules as iptables-save prints them."""
    names = {"FLANNEL-POSTRTG", "FLANNEL-FWD", *chains}
    return [line for line in _sh(bed, "iptables-save", "-t", table).splitlines()
            if line.startswith("-A ") and line.split()[1] in names]


def _nft_table(bed) -> str | None:
    r = bed.lab.run(_ns(bed), ["nft", "list", "table", "ip", "flannel-ipv4"], check=False)
    return r.stdout if r.returncode == 0 else None


def _nft_handle(bed, chain: str, starts: str) -> str:
    """The handle of the rule in our table's chain whose text starts so."""
    for line in _sh(bed, "nft", "-a", "list", "chain", "ip", "flannel-ipv4", chain).splitlines():
        if line.strip().startswith(starts):
            return line.rsplit("# handle ", 1)[1].strip()
    raise AssertionError(f"no rule starting {starts!r} in {chain}")


def _everything(bed) -> str:
    """The namespace's whole ruleset, without timestamps or counters."""
    return bed.rules(_ns(bed))


# -- the rules, text for text ---------------------------------------------------------------
def test_iptables_mode_writes_flanneld_rules(bed):
    fw = _fw("iptables")
    in_netns(_ns(bed), fw.apply)
    assert _chain_lines(bed, "nat") == NAT_RULES
    assert _chain_lines(bed, "filter") == FWD_RULES
    assert ":FORWARD DROP" in _sh(bed, "iptables-save", "-t", "filter")   # policy untouched
    assert _nft_table(bed) is None


def test_nftables_mode_writes_flanneld_table_and_iptables_forward_accepts(bed):
    fw = _fw("nftables")
    in_netns(_ns(bed), fw.apply)
    assert _nft_table(bed) == NFT_TABLE
    # the DROP policy lives in iptables' FORWARD: the accepts must be there too
    assert _chain_lines(bed, "filter") == FWD_RULES
    assert _chain_lines(bed, "nat") == []                 # masquerade only in our table


@pytest.mark.parametrize("mode", MODES)
def test_fully_random_flag_is_honoured(bed, mode):
    fw = _fw(mode, fully_random=False)
    in_netns(_ns(bed), fw.apply)
    if mode == "iptables":
        want = [line.replace(" --random-fully", "") for line in NAT_RULES]
        assert _chain_lines(bed, "nat") == want
        assert sum("-j MASQUERADE" in line for line in want) == 2
    else:
        assert _nft_table(bed) == NFT_TABLE.replace(" fully-random", "")
    assert "random-fully" not in _everything(bed) and "fully-random" not in _everything(bed)


@pytest.mark.parametrize("mode", MODES)
def test_only_what_is_asked_for(bed, mode):
    fw = _fw(mode, masquerade=False)           # forward accepts only
    in_netns(_ns(bed), fw.apply)
    assert "FLANNEL-POSTRTG" not in _everything(bed) and "postrtg" not in _everything(bed)
    assert _chain_lines(bed, "filter") == FWD_RULES
    in_netns(_ns(bed), fw.remove)
    fw = _fw(mode, forward_rules=False)        # masquerade only
    in_netns(_ns(bed), fw.apply)
    assert "FLANNEL-FWD" not in _everything(bed) and "chain forward" not in _everything(bed)
    if mode == "iptables":
        assert _chain_lines(bed, "nat") == NAT_RULES
    else:
        assert "chain postrtg" in _nft_table(bed)


def test_applying_twice_appends_one_jump_after_others(bed):
    """flanneld's placement: the jump is appended after what is there, and
    applying again changes nothing."""
    _sh(bed, "iptables", "-I", "FORWARD", "-j", "ACCEPT", "-s", "198.18.0.9")
    fw = _fw("iptables")
    in_netns(_ns(bed), fw.apply)
    first = _chain_lines(bed, "filter")
    in_netns(_ns(bed), fw.apply)
    assert _chain_lines(bed, "filter") == first == \
        ["-A FORWARD -s 198.18.0.9/32 -j ACCEPT", *FWD_RULES]


# -- atomic ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_repair_is_atomic_to_an_onlooker(bed, mode):
    """Our last masquerade rule is deleted and check() puts our set back,
    again and again: someone listing the rules sees them whole or with just
    that rule missing, never an empty or half-filled chain (a repair deletes
    our rules and appends them again in one commit)."""
    fw = _fw(mode)
    in_netns(_ns(bed), fw.apply)
    if mode == "iptables":
        def look():
            return _chain_lines(bed, "nat") + _chain_lines(bed, "filter")

        def damage():
            _sh(bed, "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "6")
        whole, damaged = NAT_RULES + FWD_RULES, NAT_RULES[:-1] + FWD_RULES
    else:
        def look():
            return _nft_table(bed)

        def damage():
            _sh(bed, "nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle",
                _nft_handle(bed, "postrtg", "ip saddr != 198.19.0.0/16"))
        whole = NFT_TABLE
        damaged = "".join(line for line in NFT_TABLE.splitlines(keepends=True)
                          if not line.strip().startswith("ip saddr != 198.19.0.0/16"))
    stop, seen = threading.Event(), []

    def onlooker():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and len(seen) < 400:
            seen.append(look())

    t = threading.Thread(target=onlooker, daemon=True)
    t.start()
    try:
        for n in range(200):       # at least 25 repairs and 20 looks, bounded
            damage()
            assert in_netns(_ns(bed), fw.check) is True
            if n >= 25 and len(seen) >= 20:
                break
    finally:
        stop.set()
        t.join(70)
    assert fw.repairs >= 25
    assert look() == whole
    assert len(seen) >= 20, "the onlooker hardly looked"
    bad = [s for s in seen if s not in (whole, damaged)]
    assert not bad, f"{len(bad)} of {len(seen)} looks saw partial rules, e.g. {bad[0]!r}"


# -- check(): repairs ------------------------------------------------------------------------
IPT_DAMAGE = {
    "flushed chain": ["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"],
    "deleted jump": ["iptables", "-D", "FORWARD", "-m", "comment", "--comment",
                     "flanneld forward", "-j", "FLANNEL-FWD"],
    "changed rule": ["iptables", "-t", "nat", "-R", "FLANNEL-POSTRTG", "5", "-s", "198.19.0.0/16",
                     "-j", "ACCEPT"],
    "flushed table": ["iptables", "-t", "nat", "-F"],
}


@pytest.mark.parametrize("damage", sorted(IPT_DAMAGE))
def test_check_repairs_iptables(bed, damage, caplog):
    fw = _fw("iptables")
    in_netns(_ns(bed), fw.apply)
    assert in_netns(_ns(bed), fw.check) is False       # nothing to do: no log, no change
    _sh(bed, *IPT_DAMAGE[damage])
    assert _chain_lines(bed, "nat") + _chain_lines(bed, "filter") != NAT_RULES + FWD_RULES
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="udpoverlay.host.firewall"):
        assert in_netns(_ns(bed), fw.check) is True
        assert in_netns(_ns(bed), fw.check) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert fw.repairs == 1
    nat, filt = _chain_lines(bed, "nat"), _chain_lines(bed, "filter")
    assert [line for line in nat if "flanneld" in line] == NAT_RULES
    assert [line for line in filt if "flanneld" in line] == FWD_RULES
    if damage == "changed rule":      # the stranger's rule stays where it was put
        assert '-A FLANNEL-POSTRTG -s 198.19.0.0/16 -j ACCEPT' in nat


NFT_DAMAGE = {
    "flushed chain": ["nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg"],
    "deleted table": ["nft", "delete", "table", "ip", "flannel-ipv4"],
    "deleted rule": ["nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", "HANDLE"],
    "flushed iptables forward": ["iptables", "-F", "FLANNEL-FWD"],
}


@pytest.mark.parametrize("damage", sorted(NFT_DAMAGE))
def test_check_repairs_nftables(bed, damage, caplog):
    fw = _fw("nftables")
    in_netns(_ns(bed), fw.apply)
    handle = _nft_handle(bed, "postrtg", "ip saddr 198.19.0.0/16 ip daddr != 224.0.0.0/4")
    _sh(bed, *(word.replace("HANDLE", handle) for word in NFT_DAMAGE[damage]))
    assert (_nft_table(bed), _chain_lines(bed, "filter")) != (NFT_TABLE, FWD_RULES)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="udpoverlay.host.firewall"):
        assert in_netns(_ns(bed), fw.check) is True
        assert in_netns(_ns(bed), fw.check) is False
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert fw.repairs == 1
    assert _nft_table(bed) == NFT_TABLE
    assert _chain_lines(bed, "filter") == FWD_RULES


# -- remove() ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_remove_leaves_the_node_as_it_was(bed, mode):
    subprocess.run(["ip", "netns", "exec", _ns(bed), "iptables-restore", "--noflush"],
                   input=DOCKERISH, text=True, check=True, timeout=30)
    before = _everything(bed)
    fw = _fw(mode)
    in_netns(_ns(bed), fw.apply)
    assert _everything(bed) != before
    in_netns(_ns(bed), fw.remove)
    assert _everything(bed) == before
    in_netns(_ns(bed), fw.remove)                 # idempotent
    assert in_netns(_ns(bed), fw.check) is False  # a late resync puts nothing back
    assert _everything(bed) == before
    assert "flannel" not in before.lower()


def test_remove_never_touches_rules_it_did_not_make(bed):
    """Someone else's rule jumping to FLANNEL-FWD: remove() must not delete
    it, so it cannot delete the chain either: one clear error, and the
    table is left as it was (the removal is one transaction)."""
    fw = _fw("iptables")
    in_netns(_ns(bed), fw.apply)
    _sh(bed, "iptables", "-A", "FORWARD", "-s", "198.18.0.7", "-j", "FLANNEL-FWD")
    before = _chain_lines(bed, "filter")
    with pytest.raises(FirewallError) as e:
        in_netns(_ns(bed), fw.remove)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("iptables-restore --noflush")
    assert "filter" in msg and "FLANNEL-FWD" in msg, msg       # the command and its stderr
    assert _chain_lines(bed, "filter") == before


def test_remove_without_apply_changes_nothing(bed):
    _sh(bed, "iptables", "-N", "FLANNEL-FWD")       # e.g. an old flanneld's leftover
    before = _everything(bed)
    for mode in MODES:
        in_netns(_ns(bed), _fw(mode).remove)
    assert _everything(bed) == before


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_ip_forward_off_is_one_clear_error(bed, mode):
    bed.lab.sysctl(_ns(bed), "net.ipv4.ip_forward", "0")
    with pytest.raises(FirewallError) as e:
        in_netns(_ns(bed), _fw(mode).apply)
    assert str(e.value).startswith("net.ipv4.ip_forward is 0") and "\n" not in str(e.value)
    assert "flannel" not in _everything(bed).lower()          # nothing installed


@pytest.mark.parametrize("mode, missing", [("iptables", "iptables-save"), ("nftables", "nft")])
def test_missing_tool_is_named(bed, tmp_path, monkeypatch, mode, missing):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(FirewallError) as e:
        in_netns(_ns(bed), _fw(mode).apply)
    pkg = "nftables" if missing == "nft" else "iptables"
    assert str(e.value) == f"{missing} not found on PATH: install the {pkg} package"


def test_nftables_mode_without_iptables_installs_the_table(bed, tmp_path, monkeypatch):
    only_nft = tmp_path / "only-nft"
    only_nft.mkdir()
    os.symlink(shutil.which("nft"), only_nft / "nft")
    monkeypatch.setenv("PATH", str(only_nft))
    fw = _fw("nftables")
    in_netns(_ns(bed), fw.apply)
    monkeypatch.undo()
    assert _nft_table(bed) == NFT_TABLE
    assert "FLANNEL" not in _sh(bed, "iptables-save")


def test_bad_construction_is_a_config_error():
    from udpoverlay.errors import ConfigError
    with pytest.raises(ConfigError):
        Firewall(NET, ipaddress.IPv4Network("198.20.1.0/24"), masquerade=True)
    with pytest.raises(ConfigError):
        Firewall(NET, SUB, masquerade=True, resync=0)


# -- traffic on a DROP host --------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_pod_egress_through_a_drop_host(bed, mode):
    """Pods behind cni0 on a node with FORWARD policy DROP reach a host
    outside the network only while the rules are in place, with the node's
    address as source (the outside host has no route back to the pods)."""
    node = bed.nodes[1]
    out = bed.add_outside()
    pod = bed.wire_pods(node, static_env(node.subnet, 1472, ip_masq=True))[0]
    assert bed.ping(pod.netns, OUTSIDE_IP, count=1).returncode != 0     # DROP holds
    fw = _fw(mode)
    in_netns(node.netns, fw.apply)
    r = bed.ping(pod.netns, OUTSIDE_IP)
    assert r.returncode == 0 and "3 received" in r.stdout, r.stdout + r.stderr
    proc, log = start_listener(bed.ov, out, OUTSIDE_IP, 7001)
    bed.run(pod.netns, [sys.executable, "-c", SENDER, pod.address, "0", OUTSIDE_IP, "7001",
                        b"legit".hex()])
    proc.wait(timeout=20)
    assert log.read_text().split()[-2:] == [node.public_ip, "legit"], log.read_text()
    in_netns(node.netns, fw.remove)
    assert bed.ping(pod.netns, OUTSIDE_IP, count=1).returncode != 0     # closed again
