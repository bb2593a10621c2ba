"""WgPlane: the WireGuard engine between the TUN and the underlay socket,
one packet at a time, with the static peer table and the counters.

    outgoing(packet, now) -> datagrams     TUN -> wire
    incoming(data, addr, now) -> (packet or None, datagrams)   wire -> TUN
    tick(now) -> datagrams; next_deadline()   the engine's timers

Buffer ownership: outgoing/incoming keep nothing of their arguments beyond
what the engine queues (a packet waiting for a handshake); what they return
is the caller's.

Design notes:
- Shaped like dataplane.Engine where the daemon reads an engine (peers,
  peer_status(), counters(), set_peers(), the offload properties), so
  status, liveness and /metrics need no WireGuard case of their own.
- Counters: the engine counts every receive verdict and every event by
  name; counters() maps them onto the daemon's conventions at snapshot
  time (rx_drop_<verdict> for what was refused, rx_keepalive, wg_* for the
  handshake traffic), so the per-packet cost here is only the per-peer
  packet and byte counts.
- Nothing leaves in plain text: a packet for a peer without a session waits
  in the engine's per-peer queue (bounded) while a handshake runs.
- Inbound, the engine already checked the inner source against the peer's
  subnet (cryptokey routing); here the inner destination must be in our
  own subnet too, as in udp mode (rx_drop_not_local): an authenticated peer
  cannot use this host as a router into other networks.
- Key material: the private key is read once (config error at start when
  its file is unsafe) and lives only in the engine; preshared keys are read
  from their files when a peer is added or its file name changes. Neither
  appears in status, counters, logs or error messages (keys.py's types
  print only public parts).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from udpoverlay.dataplane import wgaead
from udpoverlay.dataplane.wgio import WGIO_COUNTERS
from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer
from udpoverlay.wgplane.cipher import IMPLEMENTATION as CIPHER_IMPLEMENTATION
from udpoverlay.wgplane.cipher import DataPlaneCipher
from udpoverlay.wgplane.routes import Routes
from udpoverlay.wireguard import engine as wgengine
from udpoverlay.wireguard.keys import (
    BadKeyError,
    PresharedKey,
    PrivateKey,
    PublicKey,
    load_preshared_key,
    load_private_key,
    parse_public_key,
)

__all__ = ["WgPlane", "COUNTERS", "Datagram"]

log = logging.getLogger(__name__)

# More handshake messages than this in one second: under load (a node's own
# peers rekey every 2 minutes each; wireguard-go judges by its queue instead).
UNDER_LOAD_HANDSHAKES = 64
UNDER_LOAD_HOLD = 1.0       # s under load after the last second over the rate

Datagram = wgengine.Datagram

# Receive verdicts that are not drops -> the daemon's counter name.
_ACCEPTED = {"keepalive": "rx_keepalive",
             "initiation": "wg_rx_initiation", "response": "wg_rx_response",
             "cookie_reply": "wg_rx_cookie_reply", "cookie_sent": "wg_rx_cookie_sent"}
# Engine events that are drops of outgoing packets -> tx_drop_<reason>.
_TX_DROPS = {"queue_full": "tx_drop_queue_full", "queue_dropped": "tx_drop_handshake_timeout",
             "no_endpoint": "tx_drop_no_endpoint"}

# The batch path's own counts (dataplane.wgio) -> the daemon's names (summed).
_IO_COUNTERS = {"tx_too_short": "tx_drop_too_short", "tx_not_ipv4": "tx_drop_not_ipv4",
                "tx_bad_gso": "tx_drop_bad_gso", "tx_too_big": "tx_drop_too_big",
                "tx_read_error": "tx_drop_tx_error", "tx_send_error": "tx_drop_tx_error",
                "tx_super_packets": "tx_super_packets", "tx_gso_messages": "tx_gso_messages",
                "rx_recv_error": "rx_recv_error", "rx_write_error": "rx_drop_tx_error",
                "rx_merged": "rx_coalesced", "rx_csum_bad": "rx_csum_bad"}

# Every counter counters() gives, with its one-line meaning (README, /metrics).
COUNTERS: dict[str, str] = {
    "tx_packets": "IP packets read from the TUN and handed to a peer's session",
    "tx_bytes": "their bytes (inner packets)",
    "rx_packets": "authenticated IP packets written to the TUN",
    "rx_bytes": "their bytes (inner packets)",
    "rx_keepalive": "authenticated empty packets (keepalives) received",
    "tx_drop_too_short": "TUN reads shorter than an IPv4 header",
    "tx_drop_not_ipv4": "TUN packets that are not IPv4 (IPv6 router solicitations, ...)",
    "tx_drop_no_route": "TUN packets for a destination in no peer's subnet",
    "tx_drop_queue_full": "packets waiting for a handshake dropped (the peer's queue was full)",
    "tx_drop_handshake_timeout": "waiting packets dropped when a handshake gave up",
    "tx_drop_no_endpoint": "packets or handshakes for a peer without an endpoint",
    "tx_drop_tx_error": "TUN reads or underlay sends that failed",
    "tx_drop_bad_gso": "TUN super-packets whose vnet header does not fit them",
    "tx_drop_too_big": "TUN packets longer than the TUN's MTU",
    "tx_super_packets": "TUN super-packets (TSO/USO) split into wire segments",
    "tx_gso_messages": "UDP_SEGMENT sends (each 2 to 64 datagrams)",
    "rx_drop_not_local": "authenticated packets for an address outside our subnet",
    "rx_drop_tx_error": "TUN writes that failed",
    "rx_recv_error": "underlay receives that failed (an ICMP error queued on the socket)",
    "rx_coalesced": "received packets merged into a larger TUN write (GRO)",
    "rx_csum_bad": "received packets not merged: their TCP/UDP checksum is wrong",
    "wg_rx_initiation": "handshake initiations received and answered",
    "wg_rx_response": "handshake responses received (our initiation completed)",
    "wg_rx_cookie_reply": "cookie replies received (a peer under load)",
    "wg_rx_cookie_sent": "handshake messages answered with a cookie reply only (under load)",
    **{f"rx_drop_{v}": "received: " + doc for v, doc in wgengine.RECEIVE_VERDICTS.items()
       if v not in _ACCEPTED and v != "data"},
    **{f"wg_{e}": doc for e, doc in wgengine.EVENT_COUNTERS.items() if e not in _TX_DROPS},
}


class PeerRoute:
    """One configured peer in the plane: the control plane's Peer, the
    engine's peer, and the per-peer counts status and liveness read."""

    __slots__ = ("peer", "wg", "tx_packets", "tx_bytes", "rx_packets", "rx_bytes",
                 "rx_keepalive")

    def __init__(self, peer: Peer, wg: wgengine.Peer) -> None:
        self.peer, self.wg = peer, wg
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self.rx_keepalive = 0


@dataclass
class _Plan:
    """A peer as set_peers() will install it (keys parsed and read)."""
    peer: Peer
    public: PublicKey
    psk: PresharedKey | None
    keepalive: int


def _endpoint(p: Peer) -> tuple[str, int]:
    return (str(p.public_ip), int(p.port))


class WgPlane:
    """The engine, the peers and the counters (see the module notes)."""

    backend = "wireguard"
    implementation = CIPHER_IMPLEMENTATION   # the AEAD's twin (wgplane/cipher.py)
    queues = 1
    # the batch path's WgIo (set by planes.wireguard_plane): its offloads
    # and counters show in status and /metrics
    io: Any = None

    def __init__(self, private_key: PrivateKey, subnet: ipaddress.IPv4Network | None, *,
                 keepalive: int = 0, mtu: int = 0, clock: Callable[[], float] = time.monotonic,
                 load_psk: Callable[[str], PresharedKey] | None = None,
                 owner_uid: int = 0, engine: wgengine.Engine | None = None) -> None:
        self.engine = engine or wgengine.Engine(private_key, mtu=mtu, cipher=DataPlaneCipher)
        self.public_key = self.engine.public_key
        self.keepalive = keepalive          # the default persistent keepalive (--keepalive)
        self.clock = clock
        self._load_psk = load_psk or (lambda path: load_preshared_key(path, owner_uid))
        # our subnet (cluster mode: set_subnet() once the lease is ours; until
        # then nothing is written to the TUN: 0.0.0.0/32 matches no packet)
        self._local = (0xFFFFFFFF, 0xFFFFFFFF)
        if subnet is not None:
            self.set_subnet(subnet)
        # cluster mode: the network config's PSK, for every peer without a
        # preshared-key-file of its own (never printed)
        self.psk: PresharedKey | None = None
        self._hs_window, self._hs_count, self._under_load_until = 0.0, 0, 0.0
        self.under_load_periods = 0     # times we went under load (status)
        self._routes: Routes[PeerRoute] = Routes()
        self._table: list[PeerRoute] = []
        self._by_key: dict[str, PeerRoute] = {}
        self._by_wg: dict[wgengine.Peer, PeerRoute] = {}
        self.refused: dict[str, str] = {}     # peer label -> why it is not in the table
        # totals (monotonic: they survive a peer's removal)
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self.tx_too_short = self.tx_not_ipv4 = self.tx_no_route = self.tx_error = 0
        self.rx_not_local = self.rx_error = 0

    def set_subnet(self, subnet: ipaddress.IPv4Network) -> None:
        """Our own subnet: where authenticated packets may be headed."""
        self._local = (int(subnet.network_address), int(subnet.netmask))

    @classmethod
    def load(cls, key_file: str, subnet: ipaddress.IPv4Network | None, keepalive: int = 0,
             owner_uid: int = 0, **kw) -> "WgPlane":
        """Our private key from key_file (created 0600 when missing; refused,
        one ConfigError line without key material, when unsafe)."""
        return cls(load_private_key(key_file, create=True, owner_uid=owner_uid), subnet,
                   keepalive=keepalive, owner_uid=owner_uid, **kw)

    def set_mtu(self, mtu: int) -> None:
        """Padding never takes a packet past the TUN's MTU (the batch
        path's slots follow it)."""
        self.engine.mtu = int(mtu)
        if self.io is not None:
            self.io.set_mtu(int(mtu))

    # -- peers -----------------------------------------------------------
    def _plan(self, p: Peer, old: PeerRoute | None) -> _Plan:
        label = f"peer {p.host or p.public_ip}={p.subnet}"
        if not p.public_key:
            raise ConfigError(f"{label}: no public-key (--backend wireguard needs one per peer)")
        try:
            public = parse_public_key(p.public_key, f"{label}: public-key")
        except BadKeyError as exc:
            raise ConfigError(str(exc)) from None
        if old is not None and old.peer.preshared_key_file == p.preshared_key_file:
            psk = old.wg.preshared_key
        elif p.preshared_key_file:
            try:
                psk = self._load_psk(p.preshared_key_file)
            except ConfigError as exc:
                raise ConfigError(f"{label}: preshared-key-file: {exc}") from None
        else:
            psk = self.psk
        keepalive = p.keepalive if p.keepalive is not None else self.keepalive
        return _Plan(p, public, psk, int(keepalive))

    def set_peers(self, peers: Iterable[Peer], strict: bool = False) -> None:
        """Replace the peer table. Kept peers keep their sessions (only what
        changed is updated: endpoint, subnet, preshared key, keepalive).
        A peer that cannot be installed (bad key, unsafe preshared key file,
        our own key) is a ConfigError with strict (at start), else one ERROR
        line and the peer is left out (a reload: the others go on)."""
        now = self.clock()
        plans: list[_Plan] = []
        refused: dict[str, str] = {}
        for p in peers:
            try:
                plans.append(self._plan(p, self._by_key.get(p.public_key or "")))
            except ConfigError as exc:
                if strict:
                    raise
                refused[f"{p.public_ip}:{p.port}={p.subnet}"] = str(exc)
        table: list[PeerRoute] = []
        by_key: dict[str, PeerRoute] = {}
        for plan in plans:
            p, key = plan.peer, plan.peer.public_key or ""
            route = self._by_key.get(key)
            try:
                route = self._update(route, plan, now) if route is not None \
                    else self._add(plan, now)
            except wgengine.PeerConfigError as exc:
                why = f"peer {p.host or p.public_ip}={p.subnet}: {exc}"
                if strict:
                    raise ConfigError(why) from None
                refused[f"{p.public_ip}:{p.port}={p.subnet}"] = why
                continue
            table.append(route)
            by_key[key] = route
        for key, route in self._by_key.items():
            if key not in by_key:
                self.engine.remove_peer(route.wg.public_key)
        for label, why in refused.items():
            if self.refused.get(label) != why:
                log.error("wireguard: %s; peer left out", why)
        self.refused = refused
        self._table, self._by_key = table, by_key
        self._by_wg = {r.wg: r for r in table}
        self._routes = Routes((r.peer.subnet, r) for r in table)

    def _add(self, plan: _Plan, now: float) -> PeerRoute:
        p = plan.peer
        wg = self.engine.add_peer(plan.public, endpoint=_endpoint(p), allowed_ips=[p.subnet],
                                  preshared_key=plan.psk, persistent_keepalive=plan.keepalive,
                                  now=now)
        return PeerRoute(p, wg)

    def _update(self, route: PeerRoute, plan: _Plan, now: float) -> PeerRoute:
        old, p, wg = route.peer, plan.peer, route.wg
        if _endpoint(old) != _endpoint(p):
            wg.endpoint = _endpoint(p)    # configured anew (roaming may move it again)
        if old.subnet != p.subnet:
            wg.set_allowed_ips([p.subnet])
        wg.preshared_key = plan.psk
        if wg.persistent_keepalive != plan.keepalive:
            wg.persistent_keepalive = float(plan.keepalive)
            wg.persistent_at = now if plan.keepalive > 0 else None
        route.peer = p
        return route

    @property
    def peers(self) -> tuple[Peer, ...]:
        """The peers in the table, in table order."""
        return tuple(r.peer for r in self._table)

    # -- offloads in use (the batch path's; none one packet at a time) -----------
    @property
    def vnet_hdr(self) -> bool:
        return bool(self.io is not None and self.io.vnet_hdr)

    @property
    def udp_gso(self) -> bool:
        return bool(self.io is not None and self.io.udp_gso)

    @property
    def udp_gro(self) -> bool:
        return bool(self.io is not None and self.io.udp_gro)

    @property
    def tun_uso(self) -> bool:
        return bool(self.io is not None and self.io.tun_uso)

    # -- lookups for the batch path (batched.py) ---------------------------------
    def route_to(self, dst: int) -> PeerRoute | None:
        """The peer whose subnet holds inner destination dst (an int)."""
        return self._routes.lookup(dst)

    def route_of(self, wg: wgengine.Peer) -> PeerRoute | None:
        return self._by_wg.get(wg)

    @property
    def local(self) -> tuple[int, int]:
        """Our subnet as (network, mask) ints: where received packets may go."""
        return self._local

    # -- one packet each way ------------------------------------------------
    def outgoing(self, packet: bytes, now: float) -> list[Datagram]:
        """An IP packet read from the TUN -> the datagrams to send (none
        while its peer's handshake runs, or when it has no peer)."""
        if len(packet) < 20:
            self.tx_too_short += 1
            return []
        if packet[0] >> 4 != 4:
            self.tx_not_ipv4 += 1
            return []
        route = self._routes.lookup(int.from_bytes(packet[16:20], "big"))
        if route is None:
            self.tx_no_route += 1
            return []
        route.tx_packets += 1
        route.tx_bytes += len(packet)
        self.tx_packets += 1
        self.tx_bytes += len(packet)
        return self.engine.send(route.wg, packet, now)

    def incoming(self, data: bytes, addr: tuple, now: float) -> tuple[bytes | None, list[Datagram]]:
        """A datagram from the underlay -> (an IP packet for the TUN or None,
        the datagrams to send: handshake answers, queued packets)."""
        if data[:1] in (b"\x01", b"\x02"):
            self._count_handshake(now)
        r = self.engine.receive(data, addr, now)
        if r.packet is not None:
            route = self._by_wg.get(r.peer)     # type: ignore[arg-type]
            packet = r.packet
            network, mask = self._local
            if route is None or int.from_bytes(packet[16:20], "big") & mask != network:
                self.rx_not_local += 1
                return None, r.datagrams
            route.rx_packets += 1
            route.rx_bytes += len(packet)
            self.rx_packets += 1
            self.rx_bytes += len(packet)
            return packet, r.datagrams
        if r.verdict == "keepalive" and r.peer is not None:
            route = self._by_wg.get(r.peer)
            if route is not None:
                route.rx_keepalive += 1
        return None, r.datagrams

    def _count_handshake(self, now: float) -> None:
        """Under load (more handshake messages in a second than a node needs,
        e.g. a flood from spoofed sources), for the next second a handshake
        message without a valid MAC2 gets a 64-byte cookie reply instead of
        our work: the peer must prove its address first (WireGuard's cookie
        mechanism), and existing sessions keep their CPU."""
        if now - self._hs_window >= 1.0:
            self._hs_window, self._hs_count = now, 0
        self._hs_count += 1
        if self._hs_count > UNDER_LOAD_HANDSHAKES:
            if not self.engine.under_load:
                self.under_load_periods += 1
                log.warning("WireGuard handshakes at over %d/s: under load, cookie replies "
                            "first", UNDER_LOAD_HANDSHAKES)
            self._under_load_until = now + UNDER_LOAD_HOLD
        self.engine.under_load = now < self._under_load_until

    def write_failed(self, packet: bytes) -> None:
        """The runner could not write what incoming() returned to the TUN."""
        self.rx_error += 1
        self.rx_packets -= 1
        self.rx_bytes -= len(packet)

    def tick(self, now: float) -> list[Datagram]:
        return self.engine.tick(now).datagrams

    def next_deadline(self) -> float | None:
        return self.engine.next_deadline()

    # -- counters and status (never per packet) ------------------------------
    def counters(self) -> dict:
        """The daemon's counter names (see COUNTERS), every key present."""
        e = self.engine.counters
        c = {"tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
             "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
             "tx_drop_too_short": self.tx_too_short, "tx_drop_not_ipv4": self.tx_not_ipv4,
             "tx_drop_no_route": self.tx_no_route, "tx_drop_tx_error": self.tx_error,
             "rx_drop_not_local": self.rx_not_local, "rx_drop_tx_error": self.rx_error}
        for verdict in wgengine.RECEIVE_VERDICTS:
            if verdict != "data":       # rx_packets, less the ones dropped here
                c[_ACCEPTED.get(verdict, f"rx_drop_{verdict}")] = e[verdict]
        for event in wgengine.EVENT_COUNTERS:
            c[_TX_DROPS.get(event, f"wg_{event}")] = e[event]
        for name in _IO_COUNTERS.values():
            c.setdefault(name, 0)
        if self.io is not None:
            io = dict(zip(WGIO_COUNTERS, self.io.counters()))
            for name, value in io.items():
                c[_IO_COUNTERS[name]] += value
            c["rx_packets"] -= io["rx_write_error"]     # handed to the TUN, not written
        return c

    def peer_status(self) -> list[dict]:
        """Per peer, in table order: the daemon's keys (public_ip, port,
        subnet, packet and byte counts) and `wg show`'s: public key,
        endpoint in use, latest handshake (seconds ago), transfer (wire
        bytes), persistent keepalive, session age. No secret."""
        now, wall = self.clock(), time.time()
        out = []
        for r in self._table:
            p, wg = r.peer, r.wg
            kp = wg.keypairs.current
            last = wg.last_handshake_wall
            out.append({
                "public_ip": str(p.public_ip), "port": p.port, "subnet": str(p.subnet),
                "tx_packets": r.tx_packets, "tx_bytes": r.tx_bytes,
                "rx_packets": r.rx_packets, "rx_bytes": r.rx_bytes,
                "rx_keepalive": r.rx_keepalive, "vtep_mac": None, "source": p.source,
                "public_key": wg.public_key.to_base64(),
                "endpoint": f"{wg.endpoint[0]}:{wg.endpoint[1]}" if wg.endpoint else None,
                "preshared_key": wg.preshared_key is not None,
                "latest_handshake": None if last is None else round(max(0.0, wall - last), 1),
                "transfer_rx": wg.rx_bytes, "transfer_tx": wg.tx_bytes,
                "persistent_keepalive": int(wg.persistent_keepalive),
                "session": kp is not None,
                "session_age": None if kp is None else round(max(0.0, now - kp.created), 1),
                "queued": len(wg.queue),
            })
        return out

    def status(self) -> dict:
        """The status document's "wireguard" section (no secret)."""
        return {"public_key": self.public_key.to_base64(),
                "peers": len(self._table),
                "sessions": sum(1 for r in self._table if r.wg.keypairs.current is not None),
                "aead": f"{self.implementation}: {wgaead.library(self.implementation)}",
                # libcrypto's CPU-feature setting (entry.py sets its default)
                "openssl_ia32cap": os.environ.get("OPENSSL_ia32cap"),
                "under_load": self.engine.under_load,
                "under_load_periods": self.under_load_periods,
                "refused": [{"peer": k, "reason": v} for k, v in self.refused.items()]}

    # -- the dataplane.Engine shape the daemon expects --------------------------
    def unresolved(self) -> list[Peer]:
        return []

    def queue_counters(self) -> list[dict]:
        return []

    def set_tun_mtu(self, mtu: int) -> None:
        self.set_mtu(mtu)

    def close(self) -> None:
        """Forget every peer and session (their keys go with them)."""
        for route in self._table:
            self.engine.remove_peer(route.wg.public_key)
        self._table, self._by_key, self._by_wg = [], {}, {}
        self._routes = Routes()
        if self.io is not None:
            self.io.close()
