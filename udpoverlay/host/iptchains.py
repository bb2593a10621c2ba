"""Our rules in iptables chains that others share: what is ours, whether it
is in place, and the iptables-restore lines that add or remove only ours.

Why: FLANNEL-FWD and FLANNEL-POSTRTG are flanneld's chain names, so a
second instance (another network on the same host, or flanneld itself)
puts its rules into the same chains, and POSTROUTING/FORWARD belong to
everybody (kube-proxy, portmap, Docker). flanneld appends its jumps and
adds or deletes only its own rules; doing the same lets all of them live
side by side.

Design notes
- A rule is ours by its exact text (flanneld's text; no extra comment, so
  flannel's rule checks still match). A rule whose text names our network
  or subnet can only be ours ("own"); a rule that does not (the jump, the
  kube-proxy mark RETURN) is the same for every instance ("common"): it
  must exist, one copy serves all, and it goes only with the chain.
- In place = the chain exists, some jump to it from the parent exists
  (anywhere: a policy applies only after every rule, so an appended ACCEPT
  already beats `-P FORWARD DROP`, and rules others put in front, e.g.
  kube-proxy's ctstate INVALID drop, must keep their say), our own rules
  appear in our order and exactly once, and every common rule appears
  ahead of the first of them. Where others' rules sit is theirs.
- A repair deletes our own rules and appends them again (after any
  missing common rule); one iptables-restore --noflush commit, so nobody
  sees half. A chain is created with -N, never declared (declaring an
  existing chain in --noflush mode flushes it: everybody's rules).
- Removal deletes our own rules; only when nothing but common rules is
  left does it delete those, the jumps carrying flanneld's comment and
  the chain (-X fails, and with it the whole commit, if anyone else still
  jumps there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Chain", "Seen", "parse_save", "drift", "install_lines", "remove_lines"]


@dataclass(frozen=True)
class Chain:
    """One of flanneld's chains as one instance wants it: its table, who
    jumps to it, and this instance's rules (iptables-save syntax, in order)."""

    table: str
    parent: str
    name: str
    comment: str
    rules: tuple[str, ...]
    own_marks: tuple[str, ...]     # texts that make a rule this instance's (network, subnet)

    @property
    def jump(self) -> str:
        return f'-m comment --comment "{self.comment}" -j {self.name}'

    def is_jump(self, spec: str) -> bool:
        """A jump to this chain that carries flanneld's comment (ours, another
        instance's or flanneld's: the same rule)."""
        return spec.split()[-2:] == ["-j", self.name] and f'"{self.comment}"' in spec

    @property
    def own(self) -> tuple[str, ...]:
        return tuple(r for r in self.rules if self._is_own(r))

    @property
    def common(self) -> tuple[str, ...]:
        return tuple(r for r in self.rules if not self._is_own(r))

    def _is_own(self, rule: str) -> bool:
        words = rule.split()
        return any(mark in words for mark in self.own_marks)


@dataclass
class Seen:
    """What iptables-save shows of one chain and its parent."""

    declared: bool = False
    parent: list[str] = field(default_factory=list)   # the parent chain's specs, in order
    rules: list[str] = field(default_factory=list)    # the chain's specs, everybody's

    def jumps(self, chain: Chain) -> list[str]:
        return [spec for spec in self.parent if chain.is_jump(spec)]


def parse_save(text: str, chain: Chain) -> Seen:
    seen = Seen()
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


def _rules_drift(chain: Chain, seen: Seen) -> str | None:
    own = set(chain.own)
    mine = [r for r in seen.rules if r in own]
    where = f"{chain.name} ({chain.table})"
    if mine != list(chain.own):
        missing = len([r for r in chain.own if r not in mine])
        if missing:
            return f"{missing} of our {len(chain.own)} rules in {where} missing"
        return f"our rules in {where} are duplicated or out of order"
    first = seen.rules.index(chain.own[0]) if chain.own else len(seen.rules)
    for rule in chain.common:
        if rule not in seen.rules[:first]:
            return f"rule '{rule}' is missing ahead of ours in {where}"
    return None


def drift(chain: Chain, seen: Seen) -> str | None:
    """Why our part of `seen` is not in place, or None."""
    if not seen.declared:
        return f"chain {chain.name} ({chain.table}) is missing"
    reason = _rules_drift(chain, seen)
    if reason:
        return reason
    if not seen.jumps(chain):
        return f"the jump from {chain.parent} to {chain.name} is missing"
    return None


def install_lines(chain: Chain, seen: Seen) -> list[str]:
    """iptables-restore --noflush input putting our part in place (empty
    when it already is); nobody else's rules are touched."""
    body = [] if seen.declared else [f"-N {chain.name}"]
    if not seen.declared or _rules_drift(chain, seen):
        own = set(chain.own)
        body += [f"-D {chain.name} {r}" for r in seen.rules if r in own]
        left = [r for r in seen.rules if r not in own]
        body += [f"-A {chain.name} {r}" for r in chain.common if r not in left]
        body += [f"-A {chain.name} {r}" for r in chain.own]
    if not seen.jumps(chain):
        body.append(f"-A {chain.parent} {chain.jump}")
    return [f"*{chain.table}", *body, "COMMIT"] if body else []


def remove_lines(chain: Chain, seen: Seen) -> list[str]:
    """iptables-restore --noflush input removing our part (empty if none is
    there): our own rules; the common ones, the jumps and the chain only
    when no other instance's (or anyone's) rule is left in it."""
    if not seen.declared:
        return []
    own, common = set(chain.own), set(chain.common)
    body = [f"-D {chain.name} {r}" for r in seen.rules if r in own]
    left = [r for r in seen.rules if r not in own]
    if all(r in common for r in left):
        body += [f"-D {chain.name} {r}" for r in left]
        body += [f"-D {chain.parent} {spec}" for spec in seen.jumps(chain)]
        body.append(f"-X {chain.name}")
    return [f"*{chain.table}", *body, "COMMIT"] if body else []
