"""Our rules in flanneld's nftables table `ip flannel-ipv4`, which others
share: the table and its base chains are created if missing and left to
whoever is still using them; the rules are ours by their handles.

Why: a second instance (another network on this host) or another tool
keeps its own chains and rules in the same table. Replacing the table
whole (or flushing a chain, as flanneld does) wipes theirs, and two
instances doing it take turns deleting each other's rules.

Design notes
- flanneld's rule text is kept exactly (`nft list chain` shows what
  flannel's own checks expect): no per-rule comment. Ownership is by
  handle: `nft --echo --handle -f` prints each rule we add with its handle;
  a listing right after gives nft's own spelling of each (0x4000 comes back
  as 0x00004000), so later listings compare equal without knowing how nft
  prints.
- In place = each of our handles is listed in its chain with the text it
  had when added, in our order. Others' rules, before, between or after
  ours, are theirs.
- A repair is one `nft -f` transaction: `add table`/`add chain` (no-ops if
  they exist), delete our surviving handles in that chain, add our rules
  again.
- Leftovers of an earlier run for the same network (a crash, or flanneld
  on this node before us) have our rule text but unknown handles: rules
  with our network-specific text are only ever ours, so after adding ours
  those copies are deleted, with a common rule (the kube-proxy mark
  RETURN) right before such a run.
- Removal deletes our handles; a chain with nobody's rules left goes, and
  the table goes only when nothing else is in it. (nft deletes a chain or
  table with everything in it: the emptiness is checked first.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["TABLE", "NftChain", "Listing", "parse_listing", "parse_echo", "header_lines",
           "forward_chain", "postrtg_chain"]

TABLE = "flannel-ipv4"
TABLE_COMMENT = f"rules for {TABLE}"
KUBE_PROXY_MARK = "0x4000"
MULTICAST = "224.0.0.0/4"
_HANDLE = re.compile(r"^(?P<text>.*?)\s+# handle (?P<handle>\d+)$")
_OBJECT = re.compile(r"^(chain|set|map|flowtable|counter|quota|limit|ct|secmark|synproxy)\s+(\S+)")


@dataclass(frozen=True)
class NftChain:
    """One base chain of our table as one instance wants it."""

    name: str
    comment: str
    hook: str                   # "type ... hook ... priority ...; policy accept;"
    rules: tuple[str, ...]      # as we write them
    own_marks: tuple[str, ...]  # texts that make a rule this instance's (network, subnet)

    def is_own_text(self, text: str) -> bool:
        words = text.split()
        return any(mark in words for mark in self.own_marks)


def forward_chain(network) -> NftChain:
    return NftChain("forward", "chain to accept flannel traffic",
                    "type filter hook forward priority filter; policy accept;",
                    (f"ip saddr {network} accept", f"ip daddr {network} accept"),
                    (str(network),))


def postrtg_chain(network, subnet, fully_random: bool = True) -> NftChain:
    masq = "masquerade fully-random" if fully_random else "masquerade"
    return NftChain("postrtg", "chain to manage traffic masquerading by flannel",
                    "type nat hook postrouting priority srcnat; policy accept;",
                    (f"meta mark {KUBE_PROXY_MARK} return",
                     f"ip saddr {subnet} ip daddr {network} return",
                     f"ip saddr {network} ip daddr {subnet} return",
                     f"ip saddr != {subnet} ip daddr {network} return",
                     f"ip saddr {network} ip daddr != {MULTICAST} {masq}",
                     f"ip saddr != {network} ip daddr {network} {masq}"),
                    (str(network), str(subnet)))


def header_lines(chains: tuple[NftChain, ...]) -> list[str]:
    """`add` the table and our chains: creates what is missing, changes
    nothing that exists."""
    lines = [f'add table ip {TABLE} {{ comment "{TABLE_COMMENT}"; }}']
    lines += [f'add chain ip {TABLE} {c.name} {{ comment "{c.comment}"; {c.hook} }}'
              for c in chains]
    return lines


@dataclass
class Listing:
    """`nft -a list table ip flannel-ipv4`: each chain's rules as (handle,
    text), in order, and every object in the table."""

    exists: bool = False
    rules: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)     # "chain forward", "set x", ...


def parse_listing(text: str | None) -> Listing:
    if text is None:
        return Listing()
    out = Listing(exists=True)
    chain: str | None = None
    for raw in text.splitlines():
        depth = len(raw) - len(raw.lstrip("\t"))
        line = raw.strip()
        if depth == 1:
            m = _OBJECT.match(line)
            if m:
                out.objects.append(f"{m.group(1)} {m.group(2)}")
                chain = m.group(2) if m.group(1) == "chain" else None
                if chain is not None:
                    out.rules[chain] = []
            continue
        if depth == 2 and chain is not None:
            m = _HANDLE.match(line)
            if m and not line.startswith(("type ", "comment ", "policy ")):
                out.rules[chain].append((int(m.group("handle")), m.group("text")))
    return out


def parse_echo(text: str) -> dict[str, list[tuple[int, str]]]:
    """The rules an `nft -e -a -f` run added, per chain, as (handle, text),
    in the order added. Use the handles: nft 1.0.6 sometimes echoes a
    rule's text with a stray `handle N` in front, so take the text from a
    listing."""
    prefix = f"add rule ip {TABLE} "
    added: dict[str, list[tuple[int, str]]] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        m = _HANDLE.match(line[len(prefix):])
        if m:
            name, _, rule = m.group("text").partition(" ")
            added.setdefault(name, []).append((int(m.group("handle")), rule))
    return added
