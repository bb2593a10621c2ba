"""The decisions behind sharing flanneld's chains and table with others
(host/iptchains.py, host/nfttable.py), on text alone: which rules are
ours, when they count as in place, and the iptables-restore lines that
add or remove only ours. The real tools are exercised by
tests/integration/host/test_firewall*.py."""

from __future__ import annotations

from udpoverlay.host import iptchains, nfttable
from udpoverlay.host.firewall import FWD_COMMENT, MASQ_COMMENT, forward_specs, masquerade_specs

NET_A, SUB_A = "198.19.0.0/17", "198.19.1.0/24"
NET_B, SUB_B = "198.19.128.0/17", "198.19.129.0/24"
JUMP_FWD = '-m comment --comment "flanneld forward" -j FLANNEL-FWD'
JUMP_NAT = '-m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'
PORTMAP = '-m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ'


def fwd(net=NET_A, sub=SUB_A) -> iptchains.Chain:
    return iptchains.Chain("filter", "FORWARD", "FLANNEL-FWD", FWD_COMMENT,
                           forward_specs(net), (net, sub))


def nat(net=NET_A, sub=SUB_A) -> iptchains.Chain:
    return iptchains.Chain("nat", "POSTROUTING", "FLANNEL-POSTRTG", MASQ_COMMENT,
                           masquerade_specs(net, sub), (net, sub))


def seen(parent, rules, declared=True) -> iptchains.Seen:
    return iptchains.Seen(declared, list(parent), list(rules))


def test_own_and_common_rules():
    c = nat()
    assert c.common == (c.rules[0],) and "--mark 0x4000/0x4000" in c.common[0]
    assert c.own == c.rules[1:]
    assert fwd().common == () and fwd().own == fwd().rules


def test_in_place_wherever_others_put_theirs():
    c = fwd()
    others = ["-s 198.18.0.66/32 -j DROP", PORTMAP]
    assert iptchains.drift(c, seen([*others, JUMP_FWD], c.rules)) is None
    assert iptchains.drift(c, seen([JUMP_FWD, *others], c.rules)) is None
    # another instance's rules before, between (theirs), after ours
    b = fwd(NET_B, SUB_B)
    assert iptchains.drift(c, seen([JUMP_FWD], [*b.rules, *c.rules])) is None
    assert iptchains.drift(c, seen([JUMP_FWD], [c.rules[0], "-j RETURN", c.rules[1]])) is None
    assert iptchains.install_lines(c, seen([*others, JUMP_FWD], [*b.rules, *c.rules])) == []


def test_what_counts_as_a_change():
    c = nat()
    ok = seen([JUMP_NAT], c.rules)
    assert iptchains.drift(c, ok) is None
    assert "missing" in iptchains.drift(c, seen([JUMP_NAT], c.rules, declared=False))
    assert "jump" in iptchains.drift(c, seen([PORTMAP], c.rules))
    assert "1 of our 5 rules" in iptchains.drift(c, seen([JUMP_NAT], c.rules[:-1]))
    swapped = [c.rules[0], c.rules[2], c.rules[1], *c.rules[3:]]
    assert "out of order" in iptchains.drift(c, seen([JUMP_NAT], swapped))
    assert "duplicated" in iptchains.drift(c, seen([JUMP_NAT], [*c.rules, c.rules[-1]]))
    # the common mark RETURN must come ahead of our first own rule
    late = [*c.rules[1:], c.rules[0]]
    assert "ahead of ours" in iptchains.drift(c, seen([JUMP_NAT], late))


def test_install_appends_and_never_declares_an_existing_chain():
    c = fwd()
    lines = iptchains.install_lines(c, seen(["-s 198.18.0.66/32 -j DROP"], [], declared=False))
    assert lines == ["*filter", "-N FLANNEL-FWD", *(f"-A FLANNEL-FWD {r}" for r in c.rules),
                     f"-A FORWARD {JUMP_FWD}", "COMMIT"]
    # existing chain with another network's rules: no -N, no ':FLANNEL-FWD' (a flush)
    b = fwd(NET_B, SUB_B)
    lines = iptchains.install_lines(c, seen([JUMP_FWD], b.rules))
    assert lines == ["*filter", *(f"-A FLANNEL-FWD {r}" for r in c.rules), "COMMIT"]
    assert not any(line.startswith((":", "-F", "-I")) for line in lines)


def test_repair_touches_only_our_rules():
    c, b = nat(), nat(NET_B, SUB_B)
    # ours half gone between b's: delete what is left of ours, append ours again
    have = [c.rules[0], *b.own, c.rules[1], c.rules[3]]
    lines = iptchains.install_lines(c, seen([PORTMAP, JUMP_NAT], have))
    assert lines == ["*nat", f"-D FLANNEL-POSTRTG {c.rules[1]}", f"-D FLANNEL-POSTRTG {c.rules[3]}",
                     *(f"-A FLANNEL-POSTRTG {r}" for r in c.own), "COMMIT"]
    # the common rule missing: appended once, before ours
    lines = iptchains.install_lines(c, seen([JUMP_NAT], [*b.own, *c.own]))
    assert lines[-7:] == [f"-A FLANNEL-POSTRTG {c.rules[0]}",
                          *(f"-A FLANNEL-POSTRTG {r}" for r in c.own), "COMMIT"]
    assert not any(r in line for line in lines for r in b.own)


def test_remove_leaves_the_chain_to_its_other_users():
    c, b = nat(), nat(NET_B, SUB_B)
    shared = seen([PORTMAP, JUMP_NAT], [c.rules[0], *c.own, *b.own])
    assert iptchains.remove_lines(c, shared) == \
        ["*nat", *(f"-D FLANNEL-POSTRTG {r}" for r in c.own), "COMMIT"]
    alone = seen([PORTMAP, JUMP_NAT], list(c.rules))
    assert iptchains.remove_lines(c, alone) == \
        ["*nat", *(f"-D FLANNEL-POSTRTG {r}" for r in c.own), f"-D FLANNEL-POSTRTG {c.rules[0]}",
         f"-D POSTROUTING {JUMP_NAT}", "-X FLANNEL-POSTRTG", "COMMIT"]
    assert iptchains.remove_lines(c, seen([PORTMAP], [], declared=False)) == []


LISTING = """\
table ip flannel-ipv4 { # handle 7
\tcomment "rules for flannel-ipv4"
\tchain forward { # handle 1
\t\tcomment "chain to accept flannel traffic"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 198.19.0.0/17 accept # handle 3
\t\tip daddr 198.19.0.0/17 accept # handle 4
\t}

\tchain theirs { # handle 2
\t\tip saddr 198.18.0.70 counter packets 0 bytes 0 # handle 5
\t}

\tset blocked { # handle 6
\t\ttype ipv4_addr
\t}
}
"""


def test_nft_listing_and_echo():
    got = nfttable.parse_listing(LISTING)
    assert got.exists and got.objects == ["chain forward", "chain theirs", "set blocked"]
    assert got.rules["forward"] == [(3, "ip saddr 198.19.0.0/17 accept"),
                                    (4, "ip daddr 198.19.0.0/17 accept")]
    assert got.rules["theirs"] == [(5, "ip saddr 198.18.0.70 counter packets 0 bytes 0")]
    assert not nfttable.parse_listing(None).exists
    echo = ("add table ip flannel-ipv4 # handle 7\n"
            "add rule ip flannel-ipv4 postrtg meta mark 0x00004000 return # handle 8\n"
            "add rule ip flannel-ipv4 postrtg handle 8 ip saddr != 198.19.0.0/17 "
            "ip daddr 198.19.0.0/17 masquerade # handle 9\n"
            "# new generation 2 by process 1 (nft)\n")
    assert [h for h, _ in nfttable.parse_echo(echo)["postrtg"]] == [8, 9]


def test_nft_own_text():
    c = nfttable.postrtg_chain(NET_A, SUB_A)
    assert [c.is_own_text(r) for r in c.rules] == [False] + [True] * 5
    assert nfttable.header_lines((nfttable.forward_chain(NET_A),)) == [
        'add table ip flannel-ipv4 { comment "rules for flannel-ipv4"; }',
        'add chain ip flannel-ipv4 forward { comment "chain to accept flannel traffic"; '
        'type filter hook forward priority filter; policy accept; }']
