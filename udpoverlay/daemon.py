"""The daemon: the host devices and the data plane wired together, with an
ordered start and shutdown.

  open_host()  sync, before the event loop (pyroute2's sync netlink must not
            run inside it): bind the underlay UDP port on the chosen
            interface's address (bind_ip; public_ip is only advertised) or,
            static mode with nothing pinning one (bind_any), on 0.0.0.0 so
            the kernel picks the source per packet and an address change
            needs no rebind; create the TUN device, take the MTU from the
            chosen interface.
  setup()   the rest, also sync: TUN configured by netlink -> vxlan
            source sockets -> data-plane engine with the peers.
  serve()   on the loop: control socket (its own unless the caller opened
            one early and set `control`), data-plane readers (or worker
            threads), the vxlan ARP resolver, peer liveness and keepalives
            (liveness.py), the underlay address watch, the mode's
            `services`; marks the Lifecycle ready; returns on stop()
            (SIGINT/SIGTERM). SIGHUP runs the `reloaders` (reloads.py).
  close()   undoes setup in reverse, idempotent: the TUN fd first (the device
            and its routes go with it), then the engine and the sockets.

Static mode (static/mode.py) and cluster mode (cluster/mode.py) drive it;
cluster mode runs open_host() before it writes to etcd, setup() with the
options completed from the lease, and stops the daemon through stop() when
the membership fails. Extension points, so the modes and the operations
layer (ops/) plug in without editing this file: `services` (coroutine
functions run as tasks while serving), `reloaders` (SIGHUP),
`status_sections` (extra top-level keys of the status document),
`peer_details` (extra keys per peer entry, by subnet).

--backend wireguard (wgplane/): the private key is read (or created) in
the constructor and the peers' keys checked there, before anything is
made (a bad key file is a ConfigError: exit 2); the TUN has the same
offloads as in udp mode (its batch path splits, seals and coalesces); a
WgPlane takes the dataplane Engine's place (it has its shape where status,
liveness and /metrics read it) and a WgRunner the Runner's.
Liveness sends no keepalives of its own then: the engine's persistent
keepalives are WireGuard's.

Address changes (host/sockets.AddressWatch): bound to 0.0.0.0 the new
source address is only noted; bound to one address, one ERROR line says it
is gone and a restart is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import signal
import socket
import time
from typing import Any, Callable, Coroutine

from udpoverlay import __version__, dataplane, planes
from udpoverlay.config.options import Options
from udpoverlay.control import ControlServer
from udpoverlay.dataplane import twins, wire
from udpoverlay.errors import ConfigError, TunSetupError
from udpoverlay.eventloop import loop_name
from udpoverlay.host import interfaces, queues, sockets
from udpoverlay.host import tun as tunmod
from udpoverlay.host.nodenet import NodeNetwork
from udpoverlay.host.tunwatch import TunGone, TunWatch, refuse_foreign_overlay
from udpoverlay.lifecycle import Lifecycle
from udpoverlay.liveness import Liveness
from udpoverlay.peer import derive_vtep_mac, format_mac
from udpoverlay.reloads import Reloads
from udpoverlay.status import setup_summary
from udpoverlay.wgplane import WgPlane

__all__ = ["Daemon", "OVERHEAD"]

log = logging.getLogger(__name__)

# The TUN MTU is the underlay's minus what encapsulation adds (flannel's MTU - 28
# and MTU - 50): the outer IPv4 + UDP headers, for vxlan also its own header.
OUTER_HDR = 20 + 8
# WireGuard: outer IPv6-sized header (40) + UDP 8 + its 16-byte header and
# 16-byte tag, flannel's MTU - 80 (so an IPv6 underlay fits as well).
OVERHEAD = {"udp": OUTER_HDR, "vxlan": OUTER_HDR + wire.VXLAN_HDR, "wireguard": 80}
ANY = "0.0.0.0"


class Daemon:
    """Holds every resource the daemon created, for status and shutdown."""

    def __init__(self, opts: Options, lifecycle: Lifecycle | None = None) -> None:
        if opts.public_ip is None:
            raise ConfigError("the daemon needs a public IP")
        if opts.bind_ip is None:       # bind what we advertise (no NAT)
            opts = dataclasses.replace(opts, bind_ip=opts.public_ip)
        twins.check_fast_path(opts.require_fast_path)
        self.opts = opts
        self.started = time.monotonic()
        self.mtu = 0
        self.vtep_mac = b""
        self.udp_gro = False
        self.sock: socket.socket | None = None
        self.tx_socks: list[socket.socket] = []
        self.queue_socks: list[socket.socket] = []     # queues 1.. (--queues)
        self.tun: tunmod.TunDevice | None = None
        self.engine: planes.AnyEngine | None = None
        self.runner: planes.AnyRunner | None = None
        self.wg: WgPlane | None = None
        self.control: ControlServer | None = None
        self.nodenet: NodeNetwork | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self.exit_code = 0
        self.tunwatch: TunWatch | None = None
        self.lifecycle = lifecycle or Lifecycle()
        self.services: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.reloads = Reloads()
        self.reloaders = self.reloads.reloaders
        self.status_sections: dict[str, Callable[[], Any]] = {}
        self.peer_details: list[Callable[[], dict[str, dict]]] = []
        self.liveness = Liveness(lambda: self.engine, self._send, opts.keepalive,
                                 sends=opts.backend != "wireguard")
        if opts.backend == "wireguard":
            self.wg = planes.load_wireguard(opts)
        self.address = sockets.AddressWatch(None if opts.bind_any else str(opts.bind_ip),
                                            str(opts.bind_ip))

    @property
    def bind_addr(self) -> str:
        """What the underlay sockets bind: the wildcard or one address."""
        return ANY if self.opts.bind_any else str(self.opts.bind_ip)

    def _send(self, data: bytes, addr: tuple) -> None:
        if self.sock is None:
            raise OSError("no underlay socket")
        self.sock.sendto(data, addr)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        if self.opts.subnet is None:
            raise ConfigError("no subnet yet")
        return self.opts.subnet

    @property
    def network(self) -> ipaddress.IPv4Network:
        if self.opts.network is None:
            raise ConfigError("no network yet")
        return self.opts.network

    # -- host seams: the unit tests replace these to run without root -----
    def interface_mtu(self, ip: str) -> int:
        return interfaces.interface_mtu(ip)

    def create_tun(self, name: str, offload: bool) -> tunmod.TunDevice:
        return tunmod.create_tun(name, offload, self.opts.queues)

    def configure_tun(self, tun: tunmod.TunDevice, subnet: str, network: str,
                      mtu: int) -> None:
        tunmod.configure_tun(tun, subnet, network, mtu)
        self.tunwatch = TunWatch(tun.name, subnet.split("/")[0], network)

    def refuse_taken_network(self, network: str) -> None:
        refuse_foreign_overlay(network, self.opts.tun)

    # -- set-up (sync, before the loop) -----------------------------------
    def open_host(self) -> None:
        """Bind the underlay port and create the TUN device, unconfigured.
        Cluster mode does this before it writes anything to etcd, so a
        second instance fails here and never touches the first one's lease."""
        if self.sock is not None:
            return
        o = self.opts
        if o.network is not None:     # before anything is made or written to etcd
            self.refuse_taken_network(str(o.network))
        try:
            if o.queues > 1:
                self.sock, *self.queue_socks = queues.open_socket_group(
                    self.bind_addr, o.port, o.queues, o.backend)
            else:
                self.sock = sockets.open_socket(self.bind_addr, o.port)
            self.tun = self.create_tun(o.tun, o.offload)
            # MTU from the interface we bind (not from --public-ip, which
            # may be a 1:1 NAT address no interface holds); known before
            # cluster mode writes to etcd.
            self.mtu = o.mtu if o.mtu is not None else \
                self.interface_mtu(str(o.bind_ip)) - OVERHEAD[o.backend]
            if self.mtu < 68:
                raise ConfigError(f"underlay MTU too small: the TUN would get {self.mtu} "
                                  f"(IPv4 needs at least 68)")
        except BaseException:
            self.close()
            raise

    def setup(self, opts: Options | None = None) -> None:
        """Everything up to a running data plane (opts: the options completed
        with the lease, in cluster mode). Undone by close() on failure."""
        if opts is not None:
            self.opts = opts
        o = self.opts
        pub = str(o.public_ip)
        try:
            self.open_host()
            assert self.sock is not None and self.tun is not None
            self.vtep_mac = o.vtep_mac or derive_vtep_mac(pub, str(self.subnet))
            self.configure_tun(self.tun, str(self.subnet), str(self.network), self.mtu)
            if self.wg is not None:
                made = planes.wireguard_plane(o, self.wg, self.mtu, self.tun, self.sock,
                                              self.subnet)
            else:
                made = planes.fast_path(o, self.subnet, self.network, self.vtep_mac, self.mtu,
                                        self.tun, self.sock, self.queue_socks, self.bind_addr)
            self.engine, self.runner = made.engine, made.runner
            self.tx_socks, self.udp_gro = made.tx_socks, made.udp_gro
            # Masquerade/forward rules, DirectRouting, blackhole route.
            self.nodenet = NodeNetwork(o, self.subnet, self.network, self.tun.name)
            self.nodenet.start()
            self.nodenet.route_peers(o.peers)
            assert self.engine is not None
            self.engine.set_peers(o.peers)
        except BaseException:
            self.close()
            raise
        self._log_setup()

    def _log_setup(self) -> None:
        for line in setup_summary(self.status()):
            log.info("%s", line)

    async def apply_peers(self, peers) -> None:
        """A new full peer list (cluster mode's lease changes; static mode's
        name changes and reloads): DirectRouting peers get kernel routes
        (netlink, off the loop); the engine gets them all in one swap."""
        assert self.engine is not None
        peers = list(peers)
        if self.nodenet is not None and self.nodenet.direct is not None:
            await asyncio.to_thread(self.nodenet.route_peers, peers)
        self.engine.set_peers(peers)

    async def _resync(self, every: float) -> None:
        """Re-assert the TUN's set-up and the firewall rules every `every`
        seconds (flanneld's --iptables-resync), off the loop. A TUN that is
        gone stops the daemon, exit 1: only a restart can make a new one."""
        while True:
            await asyncio.sleep(every)
            try:
                if self.tunwatch is not None:
                    await asyncio.to_thread(self.tunwatch.check)
                if self.nodenet is not None and self.nodenet.resync:
                    await asyncio.to_thread(self.nodenet.check)
            except TunGone as exc:
                log.error("%s: exiting so that udpoverlay is restarted", exc)
                self.exit_code = 1
                self.stop()
                return
            except Exception as exc:  # noqa: BLE001 - keep forwarding; say it, retry
                log.warning("re-asserting the TUN and firewall set-up failed: %s", exc)

    def check_address(self) -> None:
        """Note an underlay address change (see the module doc)."""
        self.address.check(self._toward(), self._pinned())

    def _toward(self) -> tuple[str, int] | None:
        peers = self.engine.peers if self.engine is not None else ()
        return (str(peers[0].public_ip), peers[0].port) if peers else None

    def _pinned(self) -> str:
        return (f"the lease still advertises {self.opts.public_ip}" if self.opts.cluster
                else "pinned by --iface/--public-ip")

    def close(self) -> None:
        """Release everything setup() made, in reverse; idempotent."""
        if self.runner is not None:
            self.runner.stop()
        if self.nodenet is not None:
            self.nodenet.close()
            self.nodenet = None
        if self.tun is not None:
            self.tun.close()      # the device and its routes go with the fd
            self.tun = None
        if self.engine is not None:
            self.engine.close()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for s in (*self.tx_socks, *self.queue_socks):
            s.close()
        self.tx_socks = []
        self.queue_socks = []

    # -- status -------------------------------------------------------
    def offload_status(self) -> dict:
        """What the kernel accepted: the TUN's offloads (a vnet header, its
        TUNSETOFFLOAD flags) and, apart, the socket's UDP GSO (live: the fast
        path drops it if a send is refused) and GRO."""
        on = bool(self.opts.offload and self.tun is not None and self.tun.vnet_hdr)
        eng = self.engine
        return {"enabled": on,
                "vnet_hdr_refused": bool(self.tun is not None and self.tun.vnet_hdr_refused),
                "tun": list(self.tun.offloads) if on and self.tun is not None else [],
                "udp_offload": bool(self.opts.udp_offload),
                "udp_gso": bool(eng is not None and eng.udp_gso),
                "udp_gro": bool(self.udp_gro),
                "tun_uso": bool(on and eng is not None and eng.tun_uso),
                **({"wireguard": True} if self.wg is not None else {})}

    def status(self) -> dict:
        """The daemon's status document (what `status --json` prints and the
        control socket serves): set-up, offloads, peers with liveness, counters,
        per-queue counters, the lifecycle phase and the mode's own sections. A
        failing section becomes {"error": ...}: status must always answer."""
        o = self.opts
        vxlan = o.backend == "vxlan"
        doc: dict = {
            "version": __version__,
            "implementation": self.engine.implementation if self.engine else "?",
            "fast_path_error": dataplane.FALLBACK,
            "loop": loop_name(),
            "dataplane": self.runner.mode if self.runner is not None else None,
            "iface": o.tun,           # the TUN's name (key kept for compatibility)
            "tun": o.tun,
            "public_ip": str(o.public_ip),
            "bind_ip": self.bind_addr,
            "underlay_ip": self.address.current,     # the source address in use
            "underlay_address_gone": self.address.gone,
            "port": o.port,
            "subnet": str(o.subnet),
            "network": str(o.network),
            "mtu": self.mtu,
            "backend": o.backend,
            "vni": o.vni if vxlan else None,
            "vtep_mac": format_mac(self.vtep_mac) if vxlan else None,
            "uptime": round(time.monotonic() - self.started, 3),
            "offload": self.offload_status(),
            "node_network": self.nodenet.status() if self.nodenet is not None else None,
            "tun_repairs": self.tunwatch.repairs if self.tunwatch is not None else 0,
        }
        if self.wg is not None:
            doc["wireguard"] = self.wg.status()
        if self.engine is not None:
            peers = self.liveness.peer_entries(self.engine, self.peer_details)
            doc["peers"] = peers
            doc["routes"] = [{"subnet": p["subnet"], "via": f"{p['public_ip']}:{p['port']}"}
                             for p in peers]
            doc["counters"] = self.engine.counters()
            if self.engine.queues > 1:
                doc["queues"] = self.engine.queue_counters()
            doc["counters"]["tx_keepalive"] = self.liveness.tx_keepalive
            doc["counters"]["tx_keepalive_errors"] = self.liveness.tx_keepalive_errors
        doc["phase"] = self.lifecycle.phase
        for key, section in self.status_sections.items():
            try:
                doc[key] = section()
            except Exception as exc:  # noqa: BLE001 - status must always answer
                doc[key] = {"error": str(exc)}
        return doc

    # -- the loop -------------------------------------------------------
    def stop(self) -> None:
        """Make serve() return (from the loop's thread or any other)."""
        self._stop_requested = True
        if self._stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def reload(self) -> None:
        """SIGHUP: run the reloaders (reloads.py)."""
        self.reloads.request()

    async def serve(self) -> int:
        """Run the data plane until stop() (SIGINT/SIGTERM call it); 0."""
        assert self.engine is not None and self.runner is not None and self.sock is not None
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        tasks: list[asyncio.Task] = []
        try:
            if self.control is None:    # else opened early by the caller (Ops)
                self.control = ControlServer(self.opts.tun, self.status)
                try:
                    await self.control.start()
                except OSError as exc:
                    raise TunSetupError(f"cannot open control socket for {self.opts.tun}: "
                                        f"{exc}") from None
            self.runner.start(loop)
            if self.opts.backend == "vxlan":
                tasks.append(asyncio.create_task(
                    dataplane.arp.resolve_macs(self.engine, self.sock)))
            tasks.append(asyncio.create_task(self._resync(self.opts.iptables_resync)))
            tasks.append(asyncio.create_task(self.liveness.run()))
            tasks.append(asyncio.create_task(self.address.watch(self._toward, self._pinned())))
            for service in self.services:
                tasks.append(asyncio.create_task(service()))
            log.info("running; control socket %s", self.control.path)
            self.lifecycle.set_ready()
            await self._stop.wait()
            log.info("shutting down")
        finally:
            self.lifecycle.set_stopping()
            if self.reloads.task is not None:
                tasks.append(self.reloads.task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.runner.stop()
            if self.control is not None:
                await self.control.close()
            if self.nodenet is not None:   # netlink and iptables: not on the loop
                await asyncio.to_thread(self.nodenet.close)
                self.nodenet = None
            self.close()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped")
        return self.exit_code
