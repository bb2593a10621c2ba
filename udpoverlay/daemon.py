"""The daemon: wiring, signals and ordered shutdown.

Order of start: validate config -> detect public IP and MTU -> UDP socket ->
TUN (configured by netlink) -> engine with the peers -> control socket ->
readers on the loop. Shutdown (SIGINT/SIGTERM) undoes it in reverse: stop
readers, close the control server, close the TUN fd (the device and its
routes disappear), close the socket.

Netlink (pyroute2, sync) runs before the loop starts: see tun.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import time

from udpoverlay import __version__
from udpoverlay import tun as tunmod
from udpoverlay.config import RunConfig
from udpoverlay.control import ControlServer
from udpoverlay.dataplane import DataPlane
from udpoverlay._offload_py import SOL_UDP, UDP_GRO, UDP_SEGMENT
from udpoverlay.errors import ConfigError, TunSetupError
from udpoverlay.peers import format_mac

__all__ = ["run", "prepare", "Daemon", "open_socket", "UDP_OVERHEAD"]

log = logging.getLogger("udpoverlay")

VXLAN_TX_SOCKETS = 8       # source ports for per-flow entropy (RFC 7348 section 5)
UDP_OVERHEAD = 28          # outer IPv4 (20) + UDP (8): flannel's udp backend
# + VXLAN header (8) + inner Ethernet (14): flannel's vxlan backend, MTU - 50
OVERHEAD = {"udp": UDP_OVERHEAD, "vxlan": UDP_OVERHEAD + 22}


def derive_vtep_mac(public_ip: str, subnet: str) -> bytes:
    """A locally administered unicast MAC, the same on every start of the same
    host (kernel peers keep our MAC in permanent neighbour/fdb entries)."""
    digest = bytearray(hashlib.sha256(f"udpoverlay-vtep {public_ip} {subnet}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return bytes(digest)
# Forced past net.core.[rw]mem_max (we run as root): a GRO datagram holds up
# to 64 KB, and a burst of them must not overflow the queue.
SOCK_BUF = 16 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def udp_gso_supported(s: socket.socket) -> bool:
    """The kernel knows UDP_SEGMENT (Linux 4.18+). Whether the route's
    device can checksum it shows only when sending: the fast path turns GSO
    off on EIO and says so in status."""
    try:
        s.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_udp_gro(s: socket.socket) -> bool:
    """Receive runs of same-size datagrams as one (Linux 5.0+)."""
    try:
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def open_socket(ip: str, port: int) -> socket.socket:
    """The underlay UDP socket: bound to (ip, port), big buffers, non-blocking."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                             (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, plain, SOCK_BUF)
        try:
            s.bind((ip, port))
        except OSError as exc:
            raise TunSetupError(f"cannot bind UDP {ip}:{port}: {exc.strerror or exc}") from None
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def detect_public_ip(underlay_iface: str | None) -> str:
    """As flannel: the address of --underlay-iface, else of the interface
    holding the default route."""
    if underlay_iface:
        return tunmod.interface_address(underlay_iface)
    return tunmod.default_route_address()


def prepare(cfg: RunConfig) -> RunConfig:
    """Fill in what the user left out (public IP) and re-validate."""
    if cfg.public_ip is None:
        cfg = cfg.with_public_ip(detect_public_ip(cfg.underlay_iface))
    return cfg


class Daemon:
    """Holds every resource the daemon created, for status and shutdown."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self.sock: socket.socket | None = None
        self.tun: tunmod.TunDevice | None = None
        self.engine = None
        self.dataplane: DataPlane | None = None
        self.control: ControlServer | None = None
        self.mtu = 0
        self.implementation = "?"
        self.vtep_mac = b""
        self._arp_task: asyncio.Task | None = None
        self.tx_socks: list[socket.socket] = []
        self.udp_gro = False

    # -- set-up (sync, before the loop) -----------------------------------
    def setup(self) -> None:
        from udpoverlay import fastpath
        cfg = self.cfg
        pub = str(cfg.public_ip)
        if cfg.mtu is not None:
            self.mtu = cfg.mtu
        else:
            self.mtu = tunmod.interface_mtu(pub) - OVERHEAD[cfg.backend]
        self.vtep_mac = cfg.vtep_mac or derive_vtep_mac(pub, str(cfg.subnet))
        try:
            self.sock = open_socket(pub, cfg.port)
            self.tun = tunmod.open_tun(cfg.iface, str(cfg.subnet), str(cfg.network), self.mtu,
                                       offload=cfg.offload)
            self.engine = fastpath.Engine(
                mode=fastpath.MODE_VXLAN if cfg.backend == "vxlan" else fastpath.MODE_UDP,
                tun_addr=str(cfg.subnet.network_address),
                local_subnet=str(cfg.subnet), network=str(cfg.network),
                vni=cfg.vni, vtep_mac=self.vtep_mac, local_port=cfg.port)
            self.implementation = fastpath.IMPLEMENTATION
            if cfg.backend == "vxlan":
                # Each flow leaves from one of several sockets on ephemeral
                # ports, so underlay ECMP/RSS spreads flows and keeps order.
                for _ in range(VXLAN_TX_SOCKETS):
                    self.tx_socks.append(open_socket(pub, 0))
                self.engine.set_tx_fds([s.fileno() for s in self.tx_socks])
            if cfg.offload:
                self.udp_gro = enable_udp_gro(self.sock)
                self.engine.set_offload(True, udp_gso=udp_gso_supported(self.sock),
                                        tun_uso="uso4" in self.tun.offloads)
            self.dataplane = DataPlane(self.engine, self.tun.fd, self.sock,
                                       threads=cfg.threads)
            self.dataplane.set_peers(cfg.peers)
        except BaseException:
            self.close_sync()
            raise
        log.info("udpoverlay %s (fast path: %s) backend=%s", __version__,
                 self.implementation, cfg.backend)
        log.info("underlay: udp %s:%d; tun %s: address %s/32 mtu %d, route %s",
                 pub, cfg.port, self.tun.name, cfg.subnet.network_address,
                 self.mtu, cfg.network)
        log.info("local subnet %s", cfg.subnet)
        if cfg.backend == "vxlan":
            log.info("vxlan: vni %d, our VTEP %s at %s", cfg.vni,
                     format_mac(self.vtep_mac), cfg.subnet.network_address)
        off = self.offload_status()
        if not off["enabled"]:
            log.info("offloads: off (--no-offload): one packet per TUN read and write")
        else:
            log.info("offloads: tun %s; udp gso %s, gro %s",
                     ",".join(off["tun"]) or "none (kernel refused TUNSETOFFLOAD)",
                     "on" if off["udp_gso"] else "off", "on" if off["udp_gro"] else "off")
        if not cfg.peers:
            log.info("no peers configured")
        for p in cfg.peers:
            log.info("peer %s:%d -> %s", p.public_ip, p.port, p.subnet)

    def close_sync(self) -> None:
        if self.dataplane is not None:
            self.dataplane.stop()
        if self.tun is not None:
            self.tun.close()      # the device and its routes go with the fd
            self.tun = None
        if self.engine is not None and hasattr(self.engine, "close"):
            try:
                self.engine.close()
            except Exception:  # noqa: BLE001
                pass
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for s in self.tx_socks:
            s.close()
        self.tx_socks = []

    # -- status -------------------------------------------------------
    def offload_status(self) -> dict:
        """What the kernel accepted: TUN offload flags, UDP GSO (live: the
        fast path turns it off if the kernel refuses a send), UDP GRO."""
        on = bool(self.cfg.offload and self.tun is not None and self.tun.vnet_hdr)
        return {"enabled": on,
                "tun": list(self.tun.offloads) if on else [],
                "udp_gso": bool(on and self.engine is not None and self.engine.udp_gso),
                "udp_gro": bool(on and self.udp_gro),
                "tun_uso": bool(on and self.engine is not None and self.engine.tun_uso)}

    def status(self) -> dict:
        cfg = self.cfg
        doc = {
            "version": __version__,
            "implementation": self.implementation,
            "loop": loop_name(),
            "dataplane": self.dataplane.mode if self.dataplane is not None else None,
            "iface": cfg.iface,
            "public_ip": str(cfg.public_ip),
            "port": cfg.port,
            "subnet": str(cfg.subnet),
            "network": str(cfg.network),
            "mtu": self.mtu,
            "backend": cfg.backend,
            "vni": cfg.vni if cfg.backend == "vxlan" else None,
            "vtep_mac": format_mac(self.vtep_mac) if cfg.backend == "vxlan" else None,
            "uptime": round(time.monotonic() - self.started, 3),
            "offload": self.offload_status(),
        }
        if self.dataplane is not None:
            dp = self.dataplane.status()
            doc["peers"] = dp["peers"]
            doc["routes"] = [{"subnet": p["subnet"],
                              "via": f"{p['public_ip']}:{p['port']}"} for p in dp["peers"]]
            doc["counters"] = dp["counters"]
        return doc

    # -- the loop -------------------------------------------------------
    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            self.control = ControlServer(self.cfg.iface, self.status)
            try:
                await self.control.start()
            except OSError as exc:
                raise TunSetupError(f"cannot open control socket for {self.cfg.iface}: {exc}") from None
            self.dataplane.start(loop)
            if self.cfg.backend == "vxlan":
                self._arp_task = asyncio.create_task(self.dataplane.resolve_macs())
            log.info("running; control socket @udpoverlay.%s", self.cfg.iface)
            await stop.wait()
            log.info("shutting down")
        finally:
            if self._arp_task is not None:
                self._arp_task.cancel()
            if self.dataplane is not None:
                self.dataplane.stop()
            if self.control is not None:
                await self.control.close()
            self.close_sync()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        log.info("stopped")
        return 0


def _run_loop(coro) -> int:
    """uvloop when installed, unless UDPOVERLAY_LOOP=asyncio asks for the
    stock loop. uvloop.run(), never a uvloop policy: pyroute2 breaks under one."""
    choice = os.environ.get("UDPOVERLAY_LOOP", "").strip().lower()
    if choice not in ("", "uvloop", "asyncio"):
        raise ConfigError(f"UDPOVERLAY_LOOP={choice!r}: choose uvloop or asyncio")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("UDPOVERLAY_LOOP=uvloop but uvloop is not installed") from None
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def loop_name() -> str:
    """'uvloop' or 'asyncio': the running event loop, for status."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "none"
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(cfg: RunConfig) -> int:
    """Run the daemon in the foreground until SIGINT/SIGTERM; exit code.

    ConfigError / TunSetupError propagate to the CLI."""
    # Until the loop installs its handlers, SIGTERM unwinds like Ctrl-C, so
    # set-up is undone (and the exit is clean) even during start-up.
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = prepare(cfg)
    if cfg.public_ip is None:  # pragma: no cover - prepare guarantees it
        raise ConfigError("no public IP")
    daemon = Daemon(cfg)
    daemon.setup()
    try:
        return _run_loop(daemon.serve())
    finally:
        daemon.close_sync()
