"""The data plane of each backend, made for the Daemon once its TUN and
socket exist: for udp and vxlan the fast path's Engine and Runner (with the
vxlan source sockets and the offloads the kernel accepts), for wireguard the
WgPlane and its runner. The Daemon holds what is returned and closes it."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Union

from udpoverlay import dataplane
from udpoverlay.config.options import Options
from udpoverlay.dataplane.wgio import WgIo
from udpoverlay.host import sockets
from udpoverlay.host.tun import TunDevice
from udpoverlay.wgplane import WgPlane, WgRunner

__all__ = ["Plane", "AnyEngine", "AnyRunner", "fast_path", "wireguard_plane", "load_wireguard"]

AnyEngine = Union[dataplane.Engine, WgPlane]
AnyRunner = Union[dataplane.Runner, WgRunner]


@dataclass
class Plane:
    engine: AnyEngine
    runner: AnyRunner
    tx_socks: list[socket.socket] = field(default_factory=list)
    udp_gro: bool = False


def load_wireguard(opts: Options) -> WgPlane:
    """Our key (read, or created 0600) and the peers' keys, checked now:
    ConfigError before anything is created. Cluster mode: no subnet yet
    (wireguard_plane() sets it) and no peers."""
    assert opts.private_key_file is not None
    # owned by root (or by the user the daemon runs as, as the peers file)
    plane = WgPlane.load(opts.private_key_file, opts.subnet, keepalive=opts.keepalive,
                         owner_uid=os.geteuid())
    plane.set_peers(opts.peers, strict=True)
    return plane


def wireguard_plane(o: Options, plane: WgPlane, mtu: int, tun: TunDevice, sock: socket.socket,
                    subnet: ipaddress.IPv4Network) -> Plane:
    """wireguard: the plane on the batch path (WgIo) with the offloads the
    kernel accepts, as udp mode's (--no-offload, --no-udp-offload)."""
    plane.set_subnet(subnet)
    plane.set_mtu(mtu)
    udp_gro = o.udp_offload and sockets.enable_udp_gro(sock)
    plane.io = WgIo(tun.vnet_hdr, o.udp_offload and sockets.udp_gso_supported(sock), udp_gro,
                    tun.vnet_hdr and "uso4" in tun.offloads, mtu)
    return Plane(plane, WgRunner(plane, tun.fd, sock, io=plane.io), udp_gro=udp_gro)


def fast_path(o: Options, subnet: ipaddress.IPv4Network, network: ipaddress.IPv4Network,
              vtep_mac: bytes, mtu: int, tun: TunDevice, sock: socket.socket,
              queue_socks: list[socket.socket], bind_addr: str) -> Plane:
    """udp and vxlan: the fast path's engine and runner."""
    engine = dataplane.Engine(o.backend, subnet.network_address, subnet, network, vni=o.vni,
                              vtep_mac=vtep_mac, port=o.port)
    engine.set_tun_mtu(mtu)
    tx_socks: list[socket.socket] = []
    if o.backend == "vxlan":
        # Each flow leaves from one of several sockets on ephemeral ports,
        # so underlay ECMP/RSS spreads flows and keeps order.
        tx_socks = sockets.open_tx_sockets(bind_addr)
        engine.set_tx_fds([s.fileno() for s in tx_socks])
    # The TUN's offloads (vnet header, --no-offload) and the socket's batching
    # (UDP GSO/GRO, --no-udp-offload) are independent: a plain TUN's packets
    # still leave packed into UDP_SEGMENT messages and arrive as GRO buffers.
    try:
        vnet = tun.vnet_hdr
        udp_gro = o.udp_offload and all([sockets.enable_udp_gro(s)
                                         for s in (sock, *queue_socks)])
        engine.set_offload(vnet, udp_gso=o.udp_offload and sockets.udp_gso_supported(sock),
                           tun_uso=vnet and "uso4" in tun.offloads, udp_gro=udp_gro)
        runner = dataplane.Runner(engine, tun.fd, sock.fileno(), threads=o.threads,
                                  io=o.io_mode, busy_poll_us=o.busy_poll_us,
                                  extra=list(zip(tun.queue_fds,
                                                 [s.fileno() for s in queue_socks])))
    except BaseException:
        engine.close()
        for s in tx_socks:
            s.close()
        raise
    return Plane(engine, runner, tx_socks, udp_gro)
