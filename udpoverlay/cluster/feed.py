"""The other nodes' lease keys, turned into the peer list the data plane gets.

Why apart from membership.py: this is the consuming half of the watch. It
validates every key (validate.py: rejected keys logged and counted once),
keeps the LeaseTable (snapshot -> diff; the oldest of two keys for one
subnet wins), applies the policy (policy.py) and hands apply_peers the full
desired list only when it changed, retrying a failed apply later.
Membership feeds it listings and events and owns our own key; the feed
never touches the store.

Why it scales (one change must not cost a pass over thousands of leases):
events only mark subnets dirty; publish() re-evaluates the dirty subnets
alone and keeps the Peer objects of the others, so the cost of a change is
O(changed) plus one list() of the peers for apply_peers. schedule()
coalesces a burst (events arriving within `coalesce` seconds) into one
publish. The log gets a summary per publish (counts and a few subnets),
never the whole set. wireguard adds one pass over the peers per publish
(policy.PeerView.settle: a key is one peer, so leases are judged together;
the ones refused for their key are rejected here as `duplicate_key`).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from typing import Any, Callable, Iterable

from udpoverlay.cluster.policy import Context, PeerView
from udpoverlay.cluster.store.base import DELETE, KeyValue, StoreEvent
from udpoverlay.cluster.table import LeaseTable
from udpoverlay.cluster.validate import Entry, LeaseValidator, Rejection, RejectLog
from udpoverlay.peer import Peer, format_mac

__all__ = ["PeerFeed", "ApplyPeers", "call_back", "SHOWN_CHANGES", "COALESCE"]

log = logging.getLogger(__name__)

ApplyPeers = Callable[[list[Peer]], Any]
SHOWN_CHANGES = 4      # subnets named in a peer-change log line
COALESCE = 0.005       # s: events this close together become one publish
Net = ipaddress.IPv4Network


async def call_back(callback: Callable[..., Any], *args: Any) -> None:
    """Call a sync or async callback."""
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class PeerFeed:
    """Lease keys -> apply_peers(full peer list), only on change.

    Only the membership's tasks use it (one event loop)."""

    def __init__(self, context: Callable[[], Context], validator: Callable[[], LeaseValidator],
                 clock: Callable[[], float], retry_after: float,
                 coalesce: float = COALESCE) -> None:
        self.context, self.validator = context, validator
        self.clock, self.retry_after, self.coalesce = clock, retry_after, coalesce
        self.table = LeaseTable()
        self.view = PeerView(clock)
        self.rejects = RejectLog()
        self.apply: ApplyPeers | None = None
        self.applied: int | None = None     # peers in the last successful apply
        self.publishes = 0                  # successful applies, for benchmarks and tests
        self._dirty: set[Net] = set()
        self._context: Context | None = None
        self._timer: asyncio.Task | None = None

    # -- input ---------------------------------------------------------------
    def absorb_listing(self, kvs: Iterable[KeyValue], revision: int) -> None:
        """A full listing (our own key left out): replace and diff."""
        check = self.validator().check
        entries, present = [], set()
        for kv in kvs:
            present.add(kv.key)
            if (verdict := self._judge(check, kv)) is not None:
                entries.append(verdict)
        self.rejects.keep_only(present)
        self._dirty |= self.table.reset(entries)
        self.table.revision = max(self.table.revision, revision)

    def absorb_events(self, events: Iterable[StoreEvent]) -> None:
        """Watch events (our own key left out), in order."""
        check = self.validator().check
        revision = self.table.revision
        for event in events:
            revision = max(revision, event.revision)
            verdict = None if event.kind == DELETE else self._judge(check, event.kv)
            if event.kind == DELETE:
                self.rejects.clear(event.kv.key)
            if verdict is None:
                subnet = self.table.remove(event.kv.key)
            else:
                subnet = self.table.put(verdict)
            if subnet is not None:
                self._dirty.add(subnet)
        self.table.revision = revision

    def forget(self, key: str) -> None:
        """`key` is ours now: never a peer, never rejected."""
        self.rejects.clear(key)
        if (subnet := self.table.remove(key)) is not None:
            self._dirty.add(subnet)

    def _judge(self, check: Callable[[KeyValue], Entry | Rejection],
               kv: KeyValue) -> Entry | None:
        verdict = check(kv)
        if isinstance(verdict, Rejection):
            self.rejects.reject(verdict, kv.value)
            return None
        self.rejects.clear(kv.key, keep_overlap=True)
        return verdict

    # -- output --------------------------------------------------------------
    def schedule(self, delay: float | None = None) -> None:
        """Publish soon (after `coalesce`), once for everything until then."""
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(
                self._later(self.coalesce if delay is None else delay),
                name="udpoverlay-peer-publish")

    async def _later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timer = None
        await self.publish()

    async def publish(self) -> None:
        """Hand the full desired peer list to apply_peers if it changed."""
        if self.apply is None:
            return
        context = self.context()
        if context != self._context:      # our subnet or config moved: judge all again
            self._context = context
            self._dirty |= self.table.subnets() | self.view.subnets()
        changes = [(kind, subnet) for subnet in self._dirty
                   if (kind := self._resolve(subnet, context)) is not None]
        self._dirty.clear()
        changes += self.view.settle(context)
        self._reject_held()
        if not changes and self.applied is not None:
            return
        peers = list(self.view.peers.values())
        try:
            await call_back(self.apply, peers)
        except Exception:
            log.exception("apply_peers failed; retrying shortly")
            self.applied = None
            self.schedule(self.retry_after)
            return
        self.applied = len(peers)
        self.publishes += 1
        # DEBUG: cluster/mode.py logs each change on its own line at INFO
        log.debug("peers now %d%s", len(peers), _summary(changes, self.view.peers))

    def _resolve(self, subnet: Net, context: Context) -> str | None:
        """Pick the subnet's winning key, reject the others, update the view."""
        win = self.table.winner(subnet)
        if win is not None:
            self.rejects.clear(win.key)
            for loser in self.table.losers(subnet):
                self.rejects.reject(Rejection(
                    loser.key, "overlap", f"{subnet} is already leased by the older key "
                    f"{win.key}", subnet), loser.lease.raw.encode())
        return self.view.update(subnet, None if win is None else win.lease, context,
                                0 if win is None else win.create_revision)

    def _reject_held(self) -> None:
        """wireguard: the leases settle() refused for their key are rejected
        (`duplicate_key`, logged and counted once); the ones let in again
        are cleared."""
        refused = {}
        for subnet, (_, reason, detail) in self.view.held.items():
            win = self.table.winner(subnet)
            if reason == "duplicate_key" and win is not None:
                refused[win.key] = win
                self.rejects.reject(Rejection(win.key, reason, detail, subnet),
                                    win.lease.raw.encode())
        for key, rejection in list(self.rejects.current.items()):
            if rejection.reason == "duplicate_key" and key not in refused:
                self.rejects.clear(key)

    def cancel(self) -> asyncio.Task | None:
        """Cancel a pending publish; the task (to be awaited) or None."""
        task, self._timer = self._timer, None
        if task is not None:
            task.cancel()
        return task

    def status(self, now: float) -> dict:
        """Peers, skipped and rejected leases, for `udpoverlay status`."""
        def remaining(expires: float | None) -> float | None:
            return None if expires is None else round(expires - now, 1)
        counts, rejected = self.rejects.status()
        peers = sorted(self.view.peers.values(), key=lambda p: int(p.subnet.network_address))
        return {
            "revision": self.table.revision,
            "peers": [{"subnet": str(p.subnet), "public_ip": str(p.public_ip), "port": p.port,
                       "vtep_mac": format_mac(p.vtep_mac),
                       "age": None if p.since is None else round(now - p.since, 1),
                       "expires_in": remaining(p.expires),
                       **({"public_key": p.public_key} if p.public_key else {})}
                      for p in peers],
            "skipped": [{"subnet": str(sub), "reason": r}
                        for sub, r in sorted(self.view.skipped.items())],
            "rejected": counts,
            "rejected_keys": rejected,
        }


def _summary(changes: list[tuple[str, Net]], peers: dict[Net, Peer]) -> str:
    """' (+2 -1 ~0): +198.19.1.0/24@198.18.0.1, -198.19.2.0/24 and 1 more'."""
    if not changes:
        return ""
    counts = {k: sum(1 for kind, _ in changes if kind == k)
              for k in ("added", "removed", "changed")}
    sign = {"added": "+", "removed": "-", "changed": "~"}
    shown = []
    for kind, subnet in sorted(changes, key=lambda c: int(c[1].network_address))[:SHOWN_CHANGES]:
        peer = peers.get(subnet)
        shown.append(f"{sign[kind]}{subnet}" + (f"@{peer.public_ip}" if peer else ""))
    more = len(changes) - len(shown)
    return (f" (+{counts['added']} -{counts['removed']} ~{counts['changed']}): "
            + ", ".join(shown) + (f" and {more} more" if more else ""))
