"""Engine: the thin Python facade over a twin's Core, shared by both twins.

Everything that speaks Python objects happens here, once per call from the
control plane, never per packet: Peer and ipaddress values become ints when
the peer table is set, raw counter snapshots get their names, and per-peer
statistics are joined back to the Peer they belong to by table index. The
cores (dataplane/_py, the reference, and the compiled _c) only see ints and
bytes, so both stay free of parsing and naming code.
"""

from __future__ import annotations

import ipaddress
import operator
import struct
from types import ModuleType
from typing import Iterable

from udpoverlay.dataplane import twins, wire
from udpoverlay.peer import Peer, format_mac

__all__ = ["Engine"]

_PEER_STATS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes")
_SPEC = struct.Struct(wire.PEER_SPEC_FORMAT)


def _net(value) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(value, strict=True)


_FIELDS = operator.attrgetter("public_ip", "port", "subnet", "vtep_mac")
_REC = operator.itemgetter(0)


def _entry(p: Peer) -> tuple:
    """A peer converted once: (packed record, (public_ip, port, subnet) as
    status shows them, then the public_ip object, port, MAC and subnet
    object the cache compares against; holding the subnet object keeps its
    id from being reused while cached)."""
    ip, net = ipaddress.IPv4Address(p.public_ip), _net(p.subnet)
    if p.vtep_mac is not None and len(p.vtep_mac) != 6:
        raise ValueError("vtep mac must be 6 bytes")
    if not 0 < int(p.port) < 65536:
        raise ValueError(f"bad port {p.port}")
    mac = bytes(p.vtep_mac) if p.vtep_mac is not None else None
    rec = _SPEC.pack(int(ip), int(net.network_address), int(p.port), net.prefixlen,
                     mac is not None, mac or bytes(6))
    return rec, (str(ip), int(p.port), str(net)), p.public_ip, p.port, mac, p.subnet


class Engine:
    """One data plane: a core of the chosen twin plus the peers it routes to.

    backend: "udp" (flannel's IP-in-UDP) or "vxlan"; tun_addr: our overlay
    address (the local subnet's network address); subnet: the local subnet
    (packets from the wire must be for it); network: the whole overlay
    (validated only); port: the underlay UDP port; twin: a core module from
    dataplane.twin(), by default the switch's choice."""

    def __init__(self, backend: str, tun_addr, subnet, network, vni: int = 1,
                 vtep_mac: bytes = b"\x02\0\0\0\0\x01", port: int = 8285,
                 twin: ModuleType | None = None) -> None:
        if backend not in wire.MODES:
            raise ValueError(f"unknown backend {backend!r}")
        if len(vtep_mac) != 6:
            raise ValueError("vtep mac must be 6 bytes")
        if not 0 <= vni < 1 << 24:
            raise ValueError(f"bad VNI {vni}: 24 bits")
        if twin is None:
            twin = twins.DEFAULT
        local = _net(subnet)
        _net(network)
        self.backend = backend
        self.implementation: str = twin.IMPLEMENTATION
        self.core = twin.Core(wire.MODES[backend], int(ipaddress.IPv4Address(tun_addr)),
                              int(local.network_address), local.prefixlen, int(vni),
                              bytes(vtep_mac), int(port))
        self._peers: tuple[Peer, ...] = ()
        self._index: dict[Peer, int] | None = {}    # built when first needed
        # per peer, in table order: _entry(), which holds (public_ip, port,
        # subnet) as status shows them; also set_peers' conversion cache by
        # id(subnet): the control plane hands the same address objects again,
        # so an unchanged peer costs a dict lookup, not an ipaddress parse.
        self._ents: list[tuple] = []
        self._cache: dict[int, tuple] = {}

    # -- devices ------------------------------------------------------------
    def set_tx_fds(self, fds: Iterable[int]) -> None:
        """vxlan: send through these sockets (bound to different source
        ports), chosen per inner flow; empty = the main socket only."""
        self.core.set_tx_fds([int(fd) for fd in fds][:wire.MAX_TX_FDS])

    def set_offload(self, vnet_hdr: bool, udp_gso: bool = False, tun_uso: bool = False,
                    udp_gro: bool = False) -> None:
        """Declare what the devices were set up with (before any I/O): the
        TUN carries a virtio_net_hdr; the socket takes UDP_SEGMENT; the TUN
        takes UDP GSO writes (only with the vnet header); the socket has
        UDP_GRO. The TUN and the socket are independent: a plain TUN (one
        packet per read and write) still gets its packets packed into
        UDP_SEGMENT messages and GRO buffers split, when the socket allows."""
        self.core.set_offload(bool(vnet_hdr), bool(udp_gso), bool(tun_uso), bool(udp_gro))

    def set_tun_mtu(self, mtu: int) -> None:
        """Declare the TUN's MTU (0: unknown). Received inner TCP packets
        longer than it, DF set, are written as GSO packets (vnet header) or
        split into MTU-sized ones, so the kernel can forward them."""
        if not 0 <= int(mtu) <= 65535:
            raise ValueError(f"bad TUN MTU {mtu}")
        self.core.set_tun_mtu(int(mtu))

    @property
    def vnet_hdr(self) -> bool:
        return bool(self.core.vnet_hdr)

    @property
    def udp_gso(self) -> bool:
        """UDP_SEGMENT in use (turned off for good if the kernel refuses it)."""
        return bool(self.core.udp_gso)

    @property
    def tun_uso(self) -> bool:
        return bool(self.core.tun_uso)

    @property
    def udp_gro(self) -> bool:
        """Received datagrams are split at their UDP_GRO size (always with
        the vnet header)."""
        return bool(self.core.udp_gro)

    # -- peers ----------------------------------------------------------------
    def set_peers(self, peers: Iterable[Peer]) -> None:
        """Replace the peer table in one swap; counters of kept peers stay,
        and a learned VTEP MAC survives a swap that names none. A peer's
        vtep_mac is configured (never learned over); None: learned by ARP.

        Cheap at scale (the cluster code calls this with the full list on
        every change): unchanged peers come from a cache, the core builds
        its table from one packed buffer."""
        peers = tuple(peers)
        cache, fresh, ents = self._cache, {}, []
        for p in peers:
            ip, port, net, mac = _FIELDS(p)
            ent = cache.get(id(net))
            if ent is None or ent[2] is not ip or ent[3] != port or ent[4] != mac:
                ent = _entry(p)
            fresh[id(net)] = ent
            ents.append(ent)
        self.core.set_peers_packed(b"".join(map(_REC, ents)))
        self._peers, self._index, self._ents, self._cache = peers, None, ents, fresh

    @property
    def peers(self) -> tuple[Peer, ...]:
        """The peers, in table order."""
        return self._peers

    def peer_status(self) -> list[dict]:
        """Per peer: where it is, its counters, its VTEP MAC (configured or
        learned, as the core holds it) and where the control plane got it."""
        out = []
        for p, ent, st in zip(self._peers, self._ents, self.core.peer_stats()):
            d = dict(zip(("public_ip", "port", "subnet"), ent[1]))
            d.update(zip(_PEER_STATS, st))
            d["vtep_mac"] = format_mac(st[4])
            d["rx_keepalive"] = st[5]
            d["source"] = p.source
            out.append(d)
        return out

    def unresolved(self) -> list[Peer]:
        """vxlan: the peers whose VTEP MAC is not known yet."""
        if self.backend != "vxlan":
            return []
        return [p for p, st in zip(self._peers, self.core.peer_stats()) if st[4] is None]

    def learned(self) -> list[tuple[int, Peer, tuple]]:
        """vxlan: the peers whose VTEP MAC is learned, not configured, as
        (table index, peer, (tx_packets, tx_bytes, rx_packets, rx_bytes, MAC
        or None)), for the ARP resolver's re-validation."""
        if self.backend != "vxlan":
            return []
        return [(i, p, st) for i, (p, st) in enumerate(zip(self._peers, self.core.peer_stats()))
                if p.vtep_mac is None]

    def arp_request(self, peer: Peer | int) -> bytes:
        """The VXLAN datagram asking `peer` (a Peer or a table index) for its
        VTEP's MAC (KeyError / IndexError if it is not in the table)."""
        if isinstance(peer, int):
            return self.core.arp_request(peer)
        if self._index is None:
            index: dict[Peer, int] = {}
            for i, p in enumerate(self._peers):
                index.setdefault(p, i)
            self._index = index
        return self.core.arp_request(self._index[peer])

    # -- counters -------------------------------------------------------------
    def counters(self) -> dict:
        """Named counters: totals, then tx_drop_*/rx_drop_* per verdict, rx_arp,
        rx_keepalive (neither is a drop)."""
        scalars, out_v, in_v = self.core.counts()
        c = dict(zip(wire.SCALAR_COUNTERS, scalars))
        for i in range(1, wire.N_VERDICTS):
            if i in (wire.ARP, wire.KEEPALIVE):
                continue
            c["tx_drop_" + wire.VERDICT_NAMES[i]] = out_v[i]
            c["rx_drop_" + wire.VERDICT_NAMES[i]] = in_v[i]
        c["rx_arp"] = in_v[wire.ARP]
        c["rx_keepalive"] = in_v[wire.KEEPALIVE]
        return c

    @property
    def queues(self) -> int:
        return int(self.core.queues)

    def queue_counters(self) -> list[dict]:
        """Per queue (--queues): what its workers moved, to see the spread."""
        return [dict(zip(_PEER_STATS, q)) for q in self.core.queue_counts()]

    def close(self) -> None:
        """Release the core's resources; idempotent (both cores' close() is).
        Stop the Runner first: a core whose workers may still run keeps its
        buffers."""
        self.core.close()
