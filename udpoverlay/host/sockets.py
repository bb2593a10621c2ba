"""The underlay UDP sockets: the main socket bound to (bind IP, port),
and for vxlan a few extra send-only sockets on ephemeral ports; and two
probes of this host's addresses, for following address changes.

Static mode without --iface/--public-ip binds 0.0.0.0 (a laptop's address
changes with the network it is on): the kernel then picks the source
address per packet from the route, and nothing needs rebinding.
source_toward() says which address that is; address_is_local() tells a
daemon bound to one address that the address went away.

Why extra sockets: RFC 7348 section 5 asks for source-port entropy per
inner flow, so underlay ECMP/RSS spreads flows while each flow keeps one
path (and its order). The fast path picks the socket by a hash of the
inner flow.

Buffers are forced past net.core.[rw]mem_max (we run as root): a GRO
datagram holds up to 64 KB, and a burst of them must not overflow the queue.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from udpoverlay.dataplane.wire import SOL_UDP, UDP_GRO, UDP_SEGMENT
from udpoverlay.errors import TunSetupError

__all__ = ["open_socket", "open_tx_sockets", "udp_gso_supported", "enable_udp_gro",
           "address_is_local", "source_toward", "AddressWatch", "SOCK_BUF", "VXLAN_TX_SOCKETS"]

log = logging.getLogger(__name__)

SOCK_BUF = 16 * 1024 * 1024
VXLAN_TX_SOCKETS = 8       # source ports for per-flow entropy (RFC 7348 section 5)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
ADDRESS_POLL = 1.0         # seconds between checks of our underlay address


def open_socket(ip: str, port: int, reuseport: bool = False) -> socket.socket:
    """A UDP socket bound to (ip, port), big buffers, non-blocking;
    TunSetupError if the address cannot be bound. reuseport: one of a
    group sharing the port (host/queues.py)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


def open_tx_sockets(ip: str, n: int = VXLAN_TX_SOCKETS) -> list[socket.socket]:
    """n send sockets on ephemeral ports of ip (closed again on failure)."""
    out: list[socket.socket] = []
    try:
        for _ in range(n):
            out.append(open_socket(ip, 0))
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


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


def address_is_local(ip: str) -> bool:
    """`ip` is one of this host's (this namespace's) addresses: it can be
    bound (EADDRNOTAVAIL otherwise)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


def source_toward(ip: str, port: int) -> str | None:
    """The source address the kernel picks for a datagram to (ip, port)
    now; None if there is no route. Nothing is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((ip, port))
            return str(s.getsockname()[0])
        except OSError:
            return None


class AddressWatch:
    """Our underlay address as seen over time. bound: the one address the
    socket is bound to, or None for 0.0.0.0; current: the source address
    in use (the chosen interface's address at start)."""

    def __init__(self, bound: str | None, current: str) -> None:
        self.bound = bound
        self.current = current
        self.gone = False       # bound to an address this host no longer holds

    def check(self, toward: tuple[str, int] | None, pinned: str) -> None:
        """Log a change once: bound to 0.0.0.0, the new source toward a peer
        (`toward`); bound to one address, that it is gone (`pinned`: why it
        cannot follow) or back."""
        if self.bound is None:
            src = source_toward(*toward) if toward is not None else None
            if src is not None and src != self.current:
                log.warning("underlay address changed: %s -> %s; bound to 0.0.0.0, traffic "
                            "follows (peers must learn %s: through our name, or a new --peer)",
                            self.current, src, src)
                self.current = src
            return
        gone = not address_is_local(self.bound)
        if gone and not self.gone:
            log.error("underlay address %s is gone from this host: the socket stays bound to "
                      "it (%s): restart udpoverlay to use the new address", self.bound, pinned)
        elif self.gone and not gone:
            log.info("underlay address %s is back", self.bound)
        self.gone = gone

    async def watch(self, toward: Callable[[], tuple[str, int] | None], pinned: str,
                    every: float = ADDRESS_POLL) -> None:
        """check() every `every` seconds until cancelled."""
        while True:
            await asyncio.sleep(every)
            try:
                self.check(toward(), pinned)
            except OSError as exc:
                log.debug("address check: %s", exc)
