"""The other nodes' leases, turned into the peer list the data plane gets.

Why apart from membership.py: this is the consuming half of the watch. It
decodes lease values (one log line per bad value, not one per update),
keeps the LeaseTable (snapshot -> diff), applies the policy (policy.py), and
hands apply_peers the full desired list only when it changed, retrying a
failed apply later. Membership feeds it listings and events and owns our
own lease; the feed never touches the store.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from typing import Any, Callable

from udpoverlay.cluster.codec import Lease, decode_lease_value
from udpoverlay.cluster.network import NetworkConfig
from udpoverlay.cluster.policy import PeerView
from udpoverlay.cluster.store.base import KeyValue
from udpoverlay.cluster.table import LeaseTable
from udpoverlay.errors import LeaseDecodeError
from udpoverlay.peer import Peer, format_mac

__all__ = ["PeerFeed", "ApplyPeers", "Context"]

log = logging.getLogger(__name__)

ApplyPeers = Callable[[list[Peer]], Any]
# What the policy needs, read afresh at every publish: the network config,
# our backend, our public IP and our own subnet (None before we hold one).
Context = Callable[[], tuple[NetworkConfig, str, ipaddress.IPv4Address,
                             ipaddress.IPv4Network | None]]


async def call_back(callback: Callable[..., Any], *args: Any) -> None:
    """Call a sync or async callback."""
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class PeerFeed:
    """Known leases -> apply_peers(full peer list), only on change.

    Only the membership's tasks use it (one event loop)."""

    def __init__(self, context: Context, clock: Callable[[], float],
                 retry_after: float) -> None:
        self.context = context
        self.clock = clock
        self.retry_after = retry_after
        self.table = LeaseTable()
        self.view = PeerView(clock)
        self.peers: list[Peer] = []
        self.applied: list[tuple] | None = None
        self.apply: ApplyPeers | None = None
        self._bad_logged: dict[str, bytes] = {}
        self._republish: asyncio.Task | None = None

    def decode(self, subnet: ipaddress.IPv4Network, kv: KeyValue,
               quiet: bool = False) -> Lease | None:
        """The lease stored in kv, or None (logged once per bad value)."""
        expires = None if kv.ttl is None else self.clock() + kv.ttl
        try:
            return decode_lease_value(subnet, kv.value, expires)
        except LeaseDecodeError as e:
            if not quiet and self._bad_logged.get(kv.key) != kv.value:
                self._bad_logged[kv.key] = kv.value
                log.warning("ignoring %s: %s", kv.key, e)
            return None

    def keep_bad_only(self, present: set[str]) -> None:
        """Forget bad values of keys no longer in the store."""
        self._bad_logged = {k: v for k, v in self._bad_logged.items() if k in present}

    def forget_bad(self, key: str) -> None:
        self._bad_logged.pop(key, None)

    async def publish(self) -> None:
        """Hand the full desired peer list to apply_peers if it changed."""
        if self.apply is None:
            return
        config, backend, public_ip, own = self.context()
        self.peers = peers = self.view.build(self.table.leases, config, backend, public_ip, own)
        keys = [p.key() for p in peers]
        if keys == self.applied:
            return
        try:
            await call_back(self.apply, list(peers))
        except Exception:
            log.exception("apply_peers failed; retrying shortly")
            self.applied = None
            if self._republish is None or self._republish.done():
                self._republish = asyncio.create_task(self._publish_later())
            return
        self.applied = keys
        log.info("peers now %d: %s", len(peers),
                 ", ".join(f"{p.subnet}@{p.public_ip}" for p in peers) or "none")

    async def _publish_later(self) -> None:
        await asyncio.sleep(self.retry_after)
        await self.publish()

    def cancel(self) -> asyncio.Task | None:
        """Cancel a pending retry; the task (to be awaited) or None."""
        task, self._republish = self._republish, None
        if task is not None:
            task.cancel()
        return task

    def status(self, now: float) -> dict:
        """The peers and skipped leases, for `udpoverlay status`."""
        def remaining(expires: float | None) -> float | None:
            return None if expires is None else round(expires - now, 1)
        return {
            "revision": self.table.revision,
            "peers": [{"subnet": str(p.subnet), "public_ip": str(p.public_ip), "port": p.port,
                       "vtep_mac": format_mac(p.vtep_mac),
                       "age": None if p.since is None else round(now - p.since, 1),
                       "expires_in": remaining(p.expires)} for p in self.peers],
            "skipped": [{"subnet": str(sub), "reason": r}
                        for sub, r in sorted(self.view.skipped.items())],
        }
