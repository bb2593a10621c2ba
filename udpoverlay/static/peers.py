"""Static mode's peer table: the --peer flags merged with the peers file,
names resolved (names.py), the result handed to the daemon as one whole
table (Daemon.apply_peers swaps it in one step; unchanged peers keep their
entries, so their traffic is not interrupted).

When the table changes: at start; when a name's address changes (periodic
re-resolution); on SIGHUP (the peers file re-read, every name re-resolved).
A peer waits, out of the table (so traffic to its subnet is answered with
ICMP net unreachable by the data plane), while its name has never
resolved, while it resolves only to an address no peer can have (names.py:
loopback, 0.0.0.0, multicast, broadcast, ours), or while its address is
another peer's. A literal address of that kind is a ConfigError, as is bad
peers-file content: at start the daemon exits 2, on a reload it is one
ERROR line and the running table stays.

The file is read off the event loop on a daemon thread, bounded in time
(config/textfile.off_loop): a FIFO or a hung file system never stalls the
traffic, /healthz or a stop. A reload that finds the file empty of peers
while it had some applies it (emptying the file is how all its peers are
removed without a restart) with one WARNING naming how many go.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Awaitable, Callable

from udpoverlay.config import peersfile
from udpoverlay.config.options import Options
from udpoverlay.config.peerspec import bad_peer_address, check_literal, check_peer_specs
from udpoverlay.config.textfile import off_loop
from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer, PeerSpec
from udpoverlay.static.names import Names

__all__ = ["StaticPeers"]

log = logging.getLogger(__name__)

Apply = Callable[[list[Peer]], Awaitable[None]]


class StaticPeers:
    """Configured peers -> the resolved table, kept current."""

    def __init__(self, opts: Options, names: Names | None = None,
                 underlay: ipaddress.IPv4Network | None = None) -> None:
        """underlay: our underlay network, when known (its broadcast
        address is then no peer's either)."""
        assert opts.subnet is not None and opts.network is not None
        self.opts = opts
        self.underlay = underlay
        self.names = names or Names(opts.resolve_interval)
        self.names.check = self.bad_address
        self.flag_specs: tuple[PeerSpec, ...] = opts.peer_specs
        self.specs: tuple[PeerSpec, ...] = opts.peer_specs
        self.table: list[Peer] = []
        self.waiting: dict[PeerSpec, str] = {}          # spec -> why
        self.apply: Apply | None = None                 # Daemon.apply_peers once serving
        self.reloads = 0
        self.reload_error: str | None = None
        self._made: dict[tuple, Peer] = {}              # (spec, ip) -> the Peer made for it
        self._lock = asyncio.Lock()

    # -- building the table --------------------------------------------------
    def bad_address(self, addr: ipaddress.IPv4Address) -> str | None:
        """Why no peer can be at `addr` (None: one can)."""
        return bad_peer_address(addr, self.underlay, (self.opts.public_ip, self.opts.bind_ip))

    def _merged(self, file_specs: list[PeerSpec]) -> tuple[PeerSpec, ...]:
        specs = (*self.flag_specs, *file_specs)
        o = self.opts
        assert o.subnet is not None and o.network is not None
        check_peer_specs(specs, o.subnet, o.network, o.backend)
        for spec in specs:
            check_literal(spec, self.underlay, (o.public_ip, o.bind_ip))
        return specs

    async def _read_file(self) -> list[PeerSpec]:
        """The peers file's specs, read off the loop and bounded in time."""
        path = self.opts.peers_file
        if path is None:
            return []
        return await off_loop(peersfile.load, path, self.opts.port, what=f"--peers-file {path}")

    def build(self) -> list[Peer]:
        """The table from the specs and the names' addresses now; the specs
        that cannot be in it go to self.waiting with the reason."""
        table: list[Peer] = []
        waiting: dict[PeerSpec, str] = {}
        seen: dict[tuple, PeerSpec] = {}
        made: dict[tuple, Peer] = {}
        udp = self.opts.backend in ("udp", "wireguard")     # peers told apart by port too
        for spec in self.specs:
            ip = spec.literal or self.names.address(spec.host)
            if ip is None:
                state = self.names.states.get(spec.host)
                waiting[spec] = (str(state.error) if state and state.refused
                                 else f"does not resolve: {state.error}" if state and state.error
                                 else "not resolved yet")
                continue
            key = (ip, spec.port) if udp else (ip,)
            if ip == self.opts.public_ip:
                waiting[spec] = f"resolves to our own address {ip}"
            elif key in seen:
                waiting[spec] = f"same address as peer {seen[key].host} ({ip})"
            else:
                seen[key] = spec
                # the same Peer object again for an unchanged peer: the
                # engine's conversion cache is keyed by identity
                peer = made[(spec, ip)] = self._made.get((spec, ip)) or spec.resolved(ip)
                table.append(peer)
        self._made = made
        for spec, why in waiting.items():
            if self.waiting.get(spec) != why:
                log.warning("peer %s waits: %s", spec.label(), why)
        self.waiting = waiting
        return table

    async def _push(self) -> None:
        """Rebuild; hand the table over if it differs from the one in use."""
        table = self.build()
        if [p.key() for p in table] == [p.key() for p in self.table]:
            self.table = table
            return
        if self.apply is not None:
            await self.apply(table)
        self.table = table

    # -- start, reload, re-resolution --------------------------------------
    async def start(self) -> list[Peer]:
        """At start: read the peers file, resolve every name once; the first
        table (ConfigError for a bad file, or with --strict-peers an
        unresolved name)."""
        self.specs = self._merged(await self._read_file())
        self.names.track(s.host for s in self.specs if s.literal is None)
        await self.names.resolve(every=True)
        self.table = self.build()
        if self.opts.strict_peers:
            for spec, why in self.waiting.items():
                raise ConfigError(f"peer {spec.label()} ({spec.origin}): {why} (--strict-peers)")
        return self.table

    async def reload(self) -> None:
        """SIGHUP: re-read the peers file and re-resolve every name; bad
        content keeps the running table (one ERROR line)."""
        async with self._lock:
            self.reloads += 1
            try:
                file_specs = await self._read_file()
                specs = self._merged(file_specs)
            except ConfigError as exc:
                self.reload_error = str(exc)
                log.error("reload: %s; running peers kept", exc)
                return
            self.reload_error = None
            had = len(self.specs) - len(self.flag_specs)
            if not file_specs and had:
                log.warning("reload: %s lists no peers now: removing the %d peer%s it had",
                            self.opts.peers_file, had, "" if had == 1 else "s")
            before = {s.label() for s in self.specs}
            self.specs = specs
            self.names.track(s.host for s in specs if s.literal is None)
            await self.names.resolve(every=True)
            await self._push()
            after = {s.label() for s in specs}
            log.info("reload: %d peers (%d added, %d removed), %d in the table, %d waiting",
                     len(specs), len(after - before), len(before - after), len(self.table),
                     len(self.waiting))

    async def run(self) -> None:
        """Re-resolve each name when due; push the table on a change."""
        while True:
            await asyncio.sleep(max(0.05, self.names.delay()))
            async with self._lock:
                await self.names.resolve()
                await self._push()

    # -- status -----------------------------------------------------------
    def status(self) -> dict:
        names = {n["host"]: n for n in self.names.status()}
        return {
            "peers_file": self.opts.peers_file,
            "resolve_interval": self.names.interval,
            "reloads": self.reloads,
            "reload_error": self.reload_error,
            "lookups": self.names.lookups,
            "lookup_failures": self.names.lookup_failures,
            "refused_addresses": self.names.refused,
            "names": list(names.values()),
            "peers_waiting": len(self.waiting),
            "waiting": [{"host": s.host, "port": s.port, "subnet": str(s.subnet),
                         "origin": s.origin, "reason": why,
                         "last_resolution": names.get(s.host)}
                        for s, why in self.waiting.items()],
        }

    def peer_details(self) -> dict[str, dict]:
        """Per subnet in the table: the name and its last resolution, for
        the daemon's per-peer status entries."""
        names = {n["host"]: n for n in self.names.status()}
        out: dict[str, dict] = {}
        for spec in self.specs:
            if spec in self.waiting:
                continue
            name = names.get(spec.host)
            out[str(spec.subnet)] = {
                "host": spec.host if spec.literal is None else None,
                "origin": spec.origin,
                "keepalive": spec.keepalive,
                "resolved_ago": None if name is None else name["resolved_ago"],
                "resolve_error": None if name is None else name["error"]}
        return out
