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
- Placed as flanneld places them: our jumps are appended to POSTROUTING
  and FORWARD, and stay wherever they are. A DROP policy applies only after
  every rule, so an appended ACCEPT already beats Docker's `-P FORWARD
  DROP`; going first would jump over what others put in front (kube-proxy's
  ctstate INVALID drop) and fails flannel's rule-order check. A portmap
  jump above ours is portmap's business.
- Shared chains, our rules: another instance (another network on this
  host) or flanneld uses the same chains and table. Each instance adds,
  checks, repairs and deletes only its own rules (iptchains.py: by text;
  nfttable.py: by handle), so both sets live side by side and each exit
  removes only its own; the chains, jumps and table go with the last user.
- Atomic: per iptables table one `iptables-restore --noflush`, in nftables
  mode one `nft -f` transaction. Anyone looking sees the old rules or the
  new, never half. Instances on one host take turns through a lock per
  network namespace (netnslock.py); a commit that fails because the chains
  changed under it (a tool that does not take the lock) is retried.
- DROP hosts in nftables mode: an accept in our table only ends our own
  base chain; iptables' FORWARD chain (Docker's DROP policy) still drops
  the packet. So nftables mode ALSO installs the iptables FLANNEL-FWD chain
  and its jump when iptables is installed (flanneld does not, and its pods
  lose their traffic on Docker hosts). Without iptables there is no
  iptables DROP to beat: that part is skipped with one INFO line.
- check() re-reads and, if our own rules are missing, changed or out of
  their order, puts them back with one WARNING and counts it (`repairs`).
- Everything here blocks (subprocesses): call it from a thread
  (asyncio.to_thread) or before the loop starts. A lock serialises callers.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
import threading
import time

from udpoverlay.errors import ConfigError, FirewallError
from udpoverlay.host import iptchains, nfttable
from udpoverlay.host.iptchains import Chain
from udpoverlay.host.netnslock import netns_lock
from udpoverlay.host.nfttable import NftChain

__all__ = ["Firewall", "require_forwarding", "IP_FORWARD", "NAT_CHAIN", "FWD_CHAIN",
           "NFT_TABLE", "MASQ_COMMENT", "FWD_COMMENT", "masquerade_specs", "forward_specs"]

log = logging.getLogger(__name__)

NAT_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"
NFT_TABLE = nfttable.TABLE
KUBE_PROXY_MARK = "0x4000"      # kube-proxy masquerades what it marks: no double NAT
MULTICAST = "224.0.0.0/4"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
COMMAND_TIMEOUT = 30.0
ATTEMPTS = 3            # a commit that lost a race with another tool is retried
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


def require_forwarding(path: str = IP_FORWARD) -> None:
    """FirewallError naming the fix when this host does not forward."""
    try:
        with open(path, encoding="ascii") as f:
            value = f.read().strip()
    except OSError as e:
        raise FirewallError(f"cannot read {path}: {e.strerror or e}") from None
    if value == "0":
        raise FirewallError("net.ipv4.ip_forward is 0, so this node would not forward pod "
                            "traffic: enable it (sysctl -w net.ipv4.ip_forward=1)")


class Firewall:
    """flanneld's masquerade and forward rules for one node and network (see
    the module notes). apply() installs, check() re-asserts, remove() undoes
    this instance's part; all blocking, callable from any thread (a lock
    serialises them)."""

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
        self.repairs = 0                 # check() found our rules changed and put them back
        marks = (str(self.network), str(self.subnet))
        chains = []
        if self.masquerade and not self.nftables:
            chains.append(Chain("nat", "POSTROUTING", NAT_CHAIN, MASQ_COMMENT,
                                masquerade_specs(self.network, self.subnet, self.fully_random),
                                marks))
        if self.forward_rules:   # in nftables mode too: see "DROP hosts" above
            chains.append(Chain("filter", "FORWARD", FWD_CHAIN, FWD_COMMENT,
                                forward_specs(self.network), marks))
        self._chains: tuple[Chain, ...] = tuple(chains)
        nft: list[NftChain] = []
        if self.nftables and self.forward_rules:
            nft.append(nfttable.forward_chain(self.network))
        if self.nftables and self.masquerade:
            nft.append(nfttable.postrtg_chain(self.network, self.subnet, self.fully_random))
        self._nft_chains: tuple[NftChain, ...] = tuple(nft)
        self._lock = threading.Lock()
        self._applied = False
        self._ipt_installed: set[str] = set()                 # tables we put rules in
        self._nft_owned: dict[str, list[tuple[int, str]]] = {}   # chain -> our (handle, text)
        self._skipped_iptables_logged = False

    @property
    def mode(self) -> str:
        return "nftables" if self.nftables else "iptables"

    def apply(self) -> None:
        """Put our rules in place (atomically per table / nft transaction),
        leaving everybody else's; FirewallError if ip_forward is off or a
        tool is missing or fails."""
        with self._lock, netns_lock():
            self._apply()
        if self._chains or self._nft_chains:
            log.info("firewall (%s): %s for %s on %s", self.mode, self._describe(),
                     self.network, self.subnet)

    def check(self) -> bool:
        """Put our rules back if someone flushed, deleted or changed them (one
        WARNING naming what changed, `repairs` + 1); True if it had to.
        Others' rules around ours are not a change. Before apply() or after
        remove() it does nothing: a resync still in flight at shutdown must
        not put the rules back."""
        with self._lock, netns_lock():
            if not self._applied:
                return False
            problems = self._problems()
            if not problems:
                return False
            self.repairs += 1
            log.warning("firewall rules were changed (%s): re-applying ours", "; ".join(problems))
            self._apply()
            return True

    def remove(self) -> None:
        """Remove our rules (and a chain, jump or table nobody else uses any
        more); idempotent; other rules are never touched."""
        with self._lock, netns_lock():
            if self._nft_owned:
                self._retry(self._remove_nft)
                self._nft_owned = {}
            for chain in self._chains:
                if chain.table not in self._ipt_installed:
                    continue
                self._retry(lambda chain=chain: self._remove_chain(chain))
                self._ipt_installed.discard(chain.table)
            self._applied = False

    # -- internals (called with both locks held) ---------------------------------------
    def _describe(self) -> str:
        parts = (["masquerade"] if self.masquerade else []) + \
            (["forward accepts"] if self.forward_rules else [])
        return " + ".join(parts)

    @staticmethod
    def _retry(step) -> None:
        """step() re-reads and commits; a commit refused because the chains
        changed in between (another tool) is tried again, a few times."""
        for attempt in range(ATTEMPTS):
            try:
                step()
                return
            except FirewallError:
                if attempt == ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _iptables_chains(self) -> tuple[Chain, ...]:
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
        if self._chains or self._nft_chains:
            require_forwarding()
        if self._nft_chains:
            self._retry(self._install_nft)
        for chain in self._iptables_chains():
            self._retry(lambda chain=chain: self._install_chain(chain))
        self._applied = True

    def _problems(self) -> list[str]:
        problems = []
        if self._nft_chains:
            problems += self._nft_drift(self._nft_listing())
        for chain in self._iptables_chains():
            reason = iptchains.drift(chain, self._read(chain))
            if reason:
                problems.append(reason)
        return problems

    # iptables
    def _read(self, chain: Chain) -> iptchains.Seen:
        return iptchains.parse_save(_run(["iptables-save", "-t", chain.table]), chain)

    def _restore(self, lines: list[str], table: str) -> None:
        _run(["iptables-restore", "--noflush", "-w", "5"], stdin="\n".join(lines) + "\n",
             what=f"table {table}")

    def _install_chain(self, chain: Chain) -> None:
        lines = iptchains.install_lines(chain, self._read(chain))
        if lines:
            self._restore(lines, chain.table)
        self._ipt_installed.add(chain.table)
        reason = iptchains.drift(chain, self._read(chain))
        if reason:
            raise FirewallError(f"{chain.name} ({chain.table}) is not as installed right "
                                f"after iptables-restore ({reason}): is another tool "
                                "rewriting it?")

    def _remove_chain(self, chain: Chain) -> None:
        lines = iptchains.remove_lines(chain, self._read(chain))
        if lines:
            self._restore(lines, chain.table)

    # nftables
    def _nft_listing(self) -> nfttable.Listing:
        out = _run(["nft", "list", "tables", "ip"])
        if f"table ip {NFT_TABLE}" not in (line.strip() for line in out.splitlines()):
            return nfttable.Listing()
        return nfttable.parse_listing(_run(["nft", "-a", "list", "table", "ip", NFT_TABLE]))

    def _nft_drift(self, listing: nfttable.Listing) -> list[str]:
        if not listing.exists:
            return [f"table ip {NFT_TABLE} is missing"]
        problems = []
        for chain in self._nft_chains:
            if chain.name not in listing.rules:
                problems.append(f"chain {chain.name} of table ip {NFT_TABLE} is missing")
                continue
            ours = self._nft_owned.get(chain.name, [])
            handles = {h for h, _ in ours}
            if [r for r in listing.rules[chain.name] if r[0] in handles] != ours or not ours:
                problems.append(f"our rules in chain {chain.name} of table ip {NFT_TABLE} "
                                "changed")
        return problems

    def _install_nft(self) -> None:
        listing = self._nft_listing()
        lines = nfttable.header_lines(self._nft_chains)
        redo = []
        for chain in self._nft_chains:
            ours = self._nft_owned.get(chain.name, [])
            present = listing.rules.get(chain.name, [])
            handles = {h for h, _ in ours}
            if ours and [r for r in present if r[0] in handles] == ours:
                continue          # in place: not touched
            # a handle is ours only with our text (a table recreated by
            # someone else numbers its rules from 1 again)
            lines += [f"delete rule ip {NFT_TABLE} {chain.name} handle {h}"
                      for h, t in present if (h, t) in ours]
            lines += [f"add rule ip {NFT_TABLE} {chain.name} {rule}" for rule in chain.rules]
            redo.append(chain)
        if not redo and listing.exists:
            return
        echo = _run(["nft", "-e", "-a", "-f", "-"], stdin="\n".join(lines) + "\n",
                    what=f"table ip {NFT_TABLE}")
        added = nfttable.parse_echo(echo)
        listed = self._nft_listing().rules     # the text as listings show it (see parse_echo)
        for chain in redo:
            new = [h for h, _ in added.get(chain.name, [])]
            text = dict(listed.get(chain.name, []))
            if len(new) != len(chain.rules) or not all(h in text for h in new):
                raise FirewallError(f"our rules in chain {chain.name} of table ip {NFT_TABLE} "
                                    "are not as added right after nft -f: is another tool "
                                    "rewriting it?")
            self._nft_owned[chain.name] = [(h, text[h]) for h in new]
        self._drop_nft_leftovers(redo)

    def _drop_nft_leftovers(self, chains: list[NftChain]) -> None:
        """Delete copies of our network's rules that are not ours by handle
        (an earlier run's), with the common rule heading each such run."""
        listing = self._nft_listing()
        lines = []
        for chain in chains:
            ours = {h for h, _ in self._nft_owned.get(chain.name, [])}
            texts = {t for _, t in self._nft_owned.get(chain.name, [])}
            common = {t for t in texts if not chain.is_own_text(t)}
            rules = listing.rules.get(chain.name, [])
            stale: set[int] = set()
            for i, (h, t) in enumerate(rules):
                if h in ours or t not in texts or not chain.is_own_text(t):
                    continue
                stale.add(h)
                k = i - 1       # the common rules right before this stale run
                while k >= 0 and rules[k][0] not in ours and rules[k][1] in common:
                    stale.add(rules[k][0])
                    k -= 1
            lines += [f"delete rule ip {NFT_TABLE} {chain.name} handle {h}" for h in sorted(stale)]
        if lines:
            log.info("firewall: deleting %d leftover rules of %s in table ip %s",
                     len(lines), self.network, NFT_TABLE)
            _run(["nft", "-f", "-"], stdin="\n".join(lines) + "\n", what=f"table ip {NFT_TABLE}")

    def _remove_nft(self) -> None:
        listing = self._nft_listing()
        if not listing.exists:
            return
        lines, gone = [], set()
        for name, ours in self._nft_owned.items():
            present = listing.rules.get(name)
            if present is None:
                continue
            lines += [f"delete rule ip {NFT_TABLE} {name} handle {h}"
                      for h, t in present if (h, t) in ours]
            if all((h, t) in ours for h, t in present):
                lines.append(f"delete chain ip {NFT_TABLE} {name}")
                gone.add(f"chain {name}")
        if lines and set(listing.objects) <= gone:
            lines.append(f"delete table ip {NFT_TABLE}")
        if lines:
            _run(["nft", "-f", "-"], stdin="\n".join(lines) + "\n", what=f"table ip {NFT_TABLE}")
