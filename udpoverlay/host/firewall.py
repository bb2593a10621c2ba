"""flanneld's node rules, installed and kept: masquerade for pod egress
(--ip-masq) and FORWARD accepts for the overlay network
(--iptables-forward-rules, default on).

Why: the flannel CNI plugin reads FLANNEL_IPMASQ=true as "flanneld
masquerades, so the bridge plugin must not"; with --ip-masq nothing else
masquerades pod traffic leaving the network, so we must. And on a host
whose FORWARD policy is DROP (Docker sets it) pod traffic through the node
is dropped unless something accepts it.

Design notes
- The rules are flanneld's, text for text, in its two modes. iptables
  (default): chain FLANNEL-POSTRTG in `nat` jumped to from POSTROUTING
  (comment "flanneld masq"), chain FLANNEL-FWD in `filter` jumped to from
  FORWARD (comment "flanneld forward"). nftables (EnableNFTables): table
  `ip flannel-ipv4` with base chains `postrtg` and `forward`. An operator
  who knows flanneld finds what they expect, and a node switched between
  flanneld and udpoverlay converges on one set. flanneld's two modes differ
  in one masquerade rule (iptables `! -s NETWORK -d SUBNET -j RETURN`,
  nftables `ip saddr != SUBNET ip daddr NETWORK return`); each is copied.
- One deliberate difference: our jumps go FIRST in POSTROUTING and FORWARD
  (flanneld appends), so a DROP, ACCEPT or RETURN someone put earlier
  cannot shadow them; check() puts them back on top if they lose the place.
- Atomic: per iptables table one `iptables-restore --noflush` (declaring
  the chain flushes it; old jumps are deleted and the new one inserted in
  the same commit); in nftables mode one `nft -f` transaction replacing our
  whole table. Anyone looking sees the old rules or the new, never half.
- DROP hosts in nftables mode: an accept in our table only ends our own
  base chain; iptables' FORWARD chain (Docker's DROP policy) still drops
  the packet. So nftables mode ALSO installs the iptables FLANNEL-FWD chain
  and its jump when iptables is installed (flanneld does not, and its pods
  lose their traffic on Docker hosts). Without iptables there is no
  iptables DROP to beat: that part is skipped with one INFO line.
- check() compares what is there with what apply() left (read back right
  after installing, so formatting differences between iptables and nft
  versions cannot cause endless repairs) and re-applies, with one WARNING,
  if someone flushed or changed it.
- remove() deletes only what this object installed: the jumps to our
  chains carrying flanneld's comment, our chains, our table.
- Everything here blocks (subprocesses): call it from a thread
  (asyncio.to_thread) or before the loop starts. A lock serialises callers.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

from udpoverlay.errors import ConfigError, FirewallError

__all__ = ["Firewall", "NAT_CHAIN", "FWD_CHAIN", "NFT_TABLE", "MASQ_COMMENT", "FWD_COMMENT",
           "masquerade_specs", "forward_specs", "nft_ruleset"]

log = logging.getLogger(__name__)

NAT_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"
NFT_TABLE = "flannel-ipv4"
KUBE_PROXY_MARK = "0x4000"      # kube-proxy masquerades what it marks: no double NAT
MULTICAST = "224.0.0.0/4"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
COMMAND_TIMEOUT = 30.0
_PACKAGE = {"iptables-restore": "iptables", "iptables-save": "iptables", "nft": "nftables"}


# -- the rules (flanneld's) ---------------------------------------------------------
def masquerade_specs(network, subnet, fully_random: bool = True) -> tuple[str, ...]:
    """FLANNEL-POSTRTG's rules in iptables-save syntax, in flanneld's order."""
    c = f'-m comment --comment "{MASQ_COMMENT}"'
    masq = "-j MASQUERADE --random-fully" if fully_random else "-j MASQUERADE"
    return (f"-m mark --mark {KUBE_PROXY_MARK}/{KUBE_PROXY_MARK} {c} -j RETURN",
            f"-s {subnet} -d {network} {c} -j RETURN",         # pod to pod: keep the source
            f"-s {network} -d {subnet} {c} -j RETURN",
            f"! -s {network} -d {subnet} {c} -j RETURN",       # outside to our pods
            f"-s {network} ! -d {MULTICAST} {c} {masq}",       # pods leaving the network
            f"! -s {network} -d {network} {c} {masq}")         # the host to pods


def forward_specs(network) -> tuple[str, ...]:
    """FLANNEL-FWD's rules in iptables-save syntax."""
    c = f'-m comment --comment "{FWD_COMMENT}"'
    return (f"-s {network} {c} -j ACCEPT", f"-d {network} {c} -j ACCEPT")


def nft_ruleset(network, subnet, *, masquerade: bool, forward: bool,
                fully_random: bool = True) -> str:
    """One `nft -f` transaction: (re)create table ip flannel-ipv4 whole.
    `add` + `delete` first makes the delete succeed whether or not it exists."""
    masq = "masquerade fully-random" if fully_random else "masquerade"
    lines = [f"add table ip {NFT_TABLE}", f"delete table ip {NFT_TABLE}",
             f"table ip {NFT_TABLE} {{", f'\tcomment "rules for {NFT_TABLE}"']
    if forward:
        lines += ["\tchain forward {", '\t\tcomment "chain to accept flannel traffic"',
                  "\t\ttype filter hook forward priority filter; policy accept;",
                  f"\t\tip saddr {network} accept", f"\t\tip daddr {network} accept", "\t}"]
    if masquerade:
        lines += ["\tchain postrtg {",
                  '\t\tcomment "chain to manage traffic masquerading by flannel"',
                  "\t\ttype nat hook postrouting priority srcnat; policy accept;",
                  f"\t\tmeta mark {KUBE_PROXY_MARK} return",
                  f"\t\tip saddr {subnet} ip daddr {network} return",
                  f"\t\tip saddr {network} ip daddr {subnet} return",
                  f"\t\tip saddr != {subnet} ip daddr {network} return",
                  f"\t\tip saddr {network} ip daddr != {MULTICAST} {masq}",
                  f"\t\tip saddr != {network} ip daddr {network} {masq}", "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Chain:
    """One of our iptables chains: its table, who jumps to it, its rules."""

    table: str
    parent: str
    name: str
    comment: str
    rules: tuple[str, ...]

    @property
    def jump(self) -> str:
        return f'-m comment --comment "{self.comment}" -j {self.name}'

    def is_jump(self, spec: str) -> bool:
        """A jump to this chain that carries flanneld's comment: ours (or
        flanneld's, which is the same rule)."""
        return spec.split()[-2:] == ["-j", self.name] and f'"{self.comment}"' in spec


@dataclass
class _Seen:
    """What iptables-save shows of one chain and its parent."""

    declared: bool = False
    parent: list[str] = field(default_factory=list)   # the parent chain's specs, in order
    rules: list[str] = field(default_factory=list)    # our chain's specs

    def jumps(self, chain: _Chain) -> list[str]:
        return [spec for spec in self.parent if chain.is_jump(spec)]


def _parse_save(text: str, chain: _Chain) -> _Seen:
    seen = _Seen()
    for line in text.splitlines():
        if line.startswith(f":{chain.name} "):
            seen.declared = True
        elif line.startswith("-A "):
            parts = line.split(" ", 2)
            spec = parts[2] if len(parts) == 3 else ""
            if parts[1] == chain.parent:
                seen.parent.append(spec)
            elif parts[1] == chain.name:
                seen.rules.append(spec)
    return seen


def _drift(chain: _Chain, seen: _Seen, installed: list[str] | None) -> str | None:
    """Why `seen` is not what we installed, or None."""
    where = f"{chain.name} ({chain.table})"
    if not seen.declared:
        return f"chain {where} is missing"
    if installed is not None and seen.rules != installed:
        return f"the rules in {where} changed"
    jumps = seen.jumps(chain)
    if not jumps:
        return f"the jump from {chain.parent} to {chain.name} is missing"
    if len(jumps) > 1 or not chain.is_jump(seen.parent[0]):
        return f"the jump to {chain.name} is not alone first in {chain.parent}"
    return None


def _install_lines(chain: _Chain, seen: _Seen) -> list[str]:
    # In --noflush mode declaring an existing chain flushes it.
    return [f"*{chain.table}", f":{chain.name} - [0:0]",
            *(f"-D {chain.parent} {spec}" for spec in seen.jumps(chain)),
            f"-I {chain.parent} 1 {chain.jump}",
            *(f"-A {chain.name} {rule}" for rule in chain.rules), "COMMIT"]


def _remove_lines(chain: _Chain, seen: _Seen) -> list[str]:
    body = [f"-D {chain.parent} {spec}" for spec in seen.jumps(chain)]
    if seen.declared:
        body += [f"-F {chain.name}", f"-X {chain.name}"]
    return [f"*{chain.table}", *body, "COMMIT"] if body else []


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines() if line.strip()) or "no output"


def _run(argv: list[str], stdin: str | None = None, what: str = "") -> str:
    """Run a firewall tool; its stdout, or FirewallError naming the command
    and its stderr in one line."""
    name = " ".join(argv) + (f" ({what})" if what else "")
    exe = shutil.which(argv[0])
    if exe is None:
        raise FirewallError(f"{argv[0]} not found on PATH: install the "
                            f"{_PACKAGE.get(argv[0], argv[0])} package")
    try:
        proc = subprocess.run([exe, *argv[1:]], input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{name} timed out after {COMMAND_TIMEOUT:.0f}s") from None
    except OSError as e:
        raise FirewallError(f"{name}: {e.strerror or e}") from None
    if proc.returncode != 0:
        raise FirewallError(f"{name} failed (exit {proc.returncode}): "
                            f"{_one_line(proc.stderr or proc.stdout)}")
    return proc.stdout


def _require_forwarding() -> None:
    try:
        with open(IP_FORWARD, encoding="ascii") as f:
            value = f.read().strip()
    except OSError as e:
        raise FirewallError(f"cannot read {IP_FORWARD}: {e.strerror or e}") from None
    if value == "0":
        raise FirewallError("net.ipv4.ip_forward is 0, so this node would not forward pod "
                            "traffic: enable it (sysctl -w net.ipv4.ip_forward=1)")


class Firewall:
    """flanneld's masquerade and forward rules for one node (see the module
    notes). apply() installs, check() re-asserts, remove() undoes; all
    blocking, callable from any thread (a lock serialises them)."""

    def __init__(self, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, *,
                 masquerade: bool, forward_rules: bool = True, fully_random: bool = True,
                 nftables: bool = False, resync: float = 5.0) -> None:
        self.network = ipaddress.IPv4Network(network)
        self.subnet = ipaddress.IPv4Network(subnet)
        if not self.subnet.subnet_of(self.network):
            raise ConfigError(f"firewall: subnet {self.subnet} is not inside {self.network}")
        if not resync > 0:
            raise ConfigError(f"firewall: resync period must be > 0 seconds, got {resync}")
        self.masquerade = bool(masquerade)
        self.forward_rules = bool(forward_rules)
        self.fully_random = bool(fully_random)
        self.nftables = bool(nftables)
        self.resync = float(resync)
        chains = []
        if self.masquerade and not self.nftables:
            chains.append(_Chain("nat", "POSTROUTING", NAT_CHAIN, MASQ_COMMENT,
                                 masquerade_specs(self.network, self.subnet, self.fully_random)))
        if self.forward_rules:   # in nftables mode too: see "DROP hosts" above
            chains.append(_Chain("filter", "FORWARD", FWD_CHAIN, FWD_COMMENT,
                                 forward_specs(self.network)))
        self._chains: tuple[_Chain, ...] = tuple(chains)
        self._nft: str | None = None
        if self.nftables and (self.masquerade or self.forward_rules):
            self._nft = nft_ruleset(self.network, self.subnet, masquerade=self.masquerade,
                                    forward=self.forward_rules, fully_random=self.fully_random)
        self._lock = threading.Lock()
        self._applied = False
        self._installed: dict[str, list[str]] = {}   # table -> our chain's rules as read back
        self._nft_listing: str | None = None          # our table as listed after installing
        self._skipped_iptables_logged = False

    @property
    def mode(self) -> str:
        return "nftables" if self.nftables else "iptables"

    def apply(self) -> None:
        """Install the rules atomically (per table / one nft transaction);
        FirewallError if ip_forward is off or a tool is missing or fails."""
        with self._lock:
            self._apply()
        if self._chains or self._nft:
            log.info("firewall (%s): %s for %s on %s", self.mode, self._describe(),
                     self.network, self.subnet)

    def check(self) -> bool:
        """Re-assert the rules if someone flushed or changed them (one
        WARNING naming what changed); True if it had to repair. Before
        apply() or after remove() it does nothing: a resync still in flight
        at shutdown must not put the rules back."""
        with self._lock:
            if not self._applied:
                return False
            problems = self._problems()
            if not problems:
                return False
            log.warning("firewall rules were changed (%s): re-applying them", "; ".join(problems))
            self._apply()
            return True

    def remove(self) -> None:
        """Remove exactly what this object installed; idempotent; other
        rules are never touched."""
        with self._lock:
            if self._nft_listing is not None:
                if self._nft_table_exists():
                    _run(["nft", "delete", "table", "ip", NFT_TABLE])
                self._nft_listing = None
            for chain in self._chains:
                if chain.table not in self._installed:
                    continue
                lines = _remove_lines(chain, self._read(chain))
                if lines:
                    self._restore(lines, chain.table)
                del self._installed[chain.table]
            self._applied = False

    # -- internals (called with the lock held) ---------------------------------------
    def _describe(self) -> str:
        parts = (["masquerade"] if self.masquerade else []) + \
            (["forward accepts"] if self.forward_rules else [])
        return " + ".join(parts)

    def _iptables_chains(self) -> tuple[_Chain, ...]:
        """The iptables chains to manage now; in nftables mode only when
        iptables is installed (no iptables, no iptables DROP to beat)."""
        if not self.nftables or (shutil.which("iptables-restore") and shutil.which("iptables-save")):
            return self._chains
        if self._chains and not self._skipped_iptables_logged:
            log.info("firewall: iptables is not installed; FORWARD accepts only in "
                     "table ip %s", NFT_TABLE)
            self._skipped_iptables_logged = True
        return ()

    def _apply(self) -> None:
        if not self._chains and self._nft is None:
            self._applied = True
            return
        _require_forwarding()
        if self._nft is not None:
            _run(["nft", "-f", "-"], stdin=self._nft, what=f"table ip {NFT_TABLE}")
            self._nft_listing = self._list_nft()
        for chain in self._iptables_chains():
            self._restore(_install_lines(chain, self._read(chain)), chain.table)
            seen = self._read(chain)
            self._installed[chain.table] = seen.rules
            if len(seen.rules) != len(chain.rules) or _drift(chain, seen, None):
                raise FirewallError(f"{chain.name} ({chain.table}) is not as installed right "
                                    "after iptables-restore: is another tool rewriting it?")
        self._applied = True

    def _problems(self) -> list[str]:
        problems = []
        if self._nft is not None:
            listing = self._list_nft() if self._nft_table_exists() else None
            if listing is None:
                problems.append(f"table ip {NFT_TABLE} is missing")
            elif listing != self._nft_listing:
                problems.append(f"table ip {NFT_TABLE} changed")
        for chain in self._iptables_chains():
            reason = _drift(chain, self._read(chain), self._installed.get(chain.table))
            if reason:
                problems.append(reason)
        return problems

    def _read(self, chain: _Chain) -> _Seen:
        return _parse_save(_run(["iptables-save", "-t", chain.table]), chain)

    def _restore(self, lines: list[str], table: str) -> None:
        _run(["iptables-restore", "--noflush", "-w", "5"], stdin="\n".join(lines) + "\n",
             what=f"table {table}")

    def _nft_table_exists(self) -> bool:
        out = _run(["nft", "list", "tables", "ip"])
        return f"table ip {NFT_TABLE}" in (line.strip() for line in out.splitlines())

    def _list_nft(self) -> str:
        return _run(["nft", "list", "table", "ip", NFT_TABLE])
