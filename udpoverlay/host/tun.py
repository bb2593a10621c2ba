"""The TUN device: open it (IFF_TUN|IFF_NO_PI, non-blocking) and configure it
through netlink (pyroute2), the way flannel configures flannel0:

  address  = the local subnet's network address as /32
  mtu      = underlay MTU - 28 (decided by the caller)
  route    = the whole overlay network on the device
  link up, txqueuelen raised, IPv6 off (no router solicitations into the TUN),
  accept_local on (so ICMP errors from the TUN's own address are accepted)

The device is not persistent: closing its fd removes it, and the kernel
removes its addresses and routes with it. So a SIGKILLed daemon leaves
nothing behind.

Offloads (the default): the device is opened with IFF_VNET_HDR, so every
read and write carries a 10-byte virtio_net_hdr, and TUNSETOFFLOAD lets the
kernel hand us TCP (and, with USO, UDP) super-packets of up to 64 KB with
their checksums left to us. Kernels refuse flags they do not know with
EINVAL, so the flag sets are tried from the richest down; what was accepted
is in TunDevice.offloads (and in `udpoverlay status`). A kernel or sandbox
that refuses IFF_VNET_HDR itself gets the plain one-packet path with one log
line (TunDevice.vnet_hdr_refused, shown in status), not a failed start.

Creating and configuring are two steps (create_tun, configure_tun): cluster
mode creates the device before it writes to etcd and configures it once the
lease says which subnet is ours.

pyroute2: call these functions before the event loop starts or through
asyncio.to_thread (sync IPRoute inside a running loop fails; a uvloop policy
breaks it entirely).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import struct

from udpoverlay.dataplane.wire import VNET_HDR_LEN
from udpoverlay.errors import TunSetupError
from udpoverlay.host.netlink import netlink
from udpoverlay.host.queues import open_tun_queue

__all__ = ["TunDevice", "create_tun", "configure_tun", "open_tun", "set_offloads",
           "OFFLOAD_SETS", "TUN_F"]

log = logging.getLogger(__name__)

TXQUEUELEN = 10000
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F = {"csum": 0x01, "tso4": 0x02, "tso6": 0x04, "tso_ecn": 0x08,
         "uso4": 0x20, "uso6": 0x40}
# Tried in order; USO needs kernel 6.2, TSO_ECN lets CWR segments through.
OFFLOAD_SETS = (("csum", "tso4", "tso6", "tso_ecn", "uso4", "uso6"),
                ("csum", "tso4", "tso6", "tso_ecn"),
                ("csum", "tso4", "tso6"),
                ("csum",))


class TunDevice:
    """An open, configured TUN device. close() removes it.

    vnet_hdr: reads and writes carry a virtio_net_hdr; offloads: the
    TUNSETOFFLOAD flags the kernel accepted (names from TUN_F)."""

    def __init__(self, dev, name: str, mtu: int, vnet_hdr: bool = False,
                 offloads: tuple[str, ...] = ()) -> None:
        self._dev = dev
        self.name = name
        self.mtu = mtu
        self.fd = dev.fileno()
        self.vnet_hdr = vnet_hdr
        self.offloads = offloads
        self.vnet_hdr_refused = False   # asked for IFF_VNET_HDR, the kernel said no
        self.queue_fds: list[int] = []  # queues past the first (--queues, host/queues.py)

    def close(self) -> None:
        for fd in self.queue_fds:
            os.close(fd)
        self.queue_fds = []
        if self._dev is not None:
            try:
                self._dev.close()
            finally:
                self._dev = None
                self.fd = -1

    def __enter__(self) -> "TunDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def set_offloads(fd: int) -> tuple[str, ...]:
    """Set the richest TUNSETOFFLOAD flag set the kernel accepts on a TUN
    opened with IFF_VNET_HDR; the names accepted (empty: none)."""
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
    for names in OFFLOAD_SETS:
        flags = 0
        for n in names:
            flags |= TUN_F[n]
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError:
            continue
        return names
    return ()


# errno of a failed TUNSETIFF -> what the user should be told (one line).
_CREATE_ERRORS = {
    errno.EPERM: "permission denied: root or CAP_NET_ADMIN is needed",
    errno.EACCES: "permission denied on /dev/net/tun: root or CAP_NET_ADMIN is needed",
    errno.EBUSY: "the device is in use (is another udpoverlay instance running on it?)",
    errno.ENOENT: "/dev/net/tun is missing (load the tun module: modprobe tun)",
    errno.ENODEV: "the kernel has no TUN support (load the tun module: modprobe tun)",
}


def _errno_of(exc: BaseException) -> int | None:
    code = getattr(exc, "errno", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]     # pytun.Error(errno, message)
    return code


def create_tun(name: str, offload: bool = False, queues: int = 1) -> TunDevice:
    """Open the TUN device (not yet configured). offload: ask for
    IFF_VNET_HDR; a kernel (or a sandbox) that refuses it gets the plain
    one-packet path instead, with one log line and `vnet_hdr_refused` set
    (shown in status). queues > 1: a multi-queue device, the extra queues'
    fds in `queue_fds`. TunSetupError names the real cause otherwise."""
    try:
        import pytun
    except ImportError as exc:  # pragma: no cover
        raise TunSetupError(f"python-pytun is required: {exc}") from None
    if len(name) > 15:
        raise TunSetupError(f"interface name {name!r} longer than 15 characters")
    plain = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_MULTI_QUEUE if queues > 1 else 0)
    refused = False
    try:
        try:
            dev = pytun.TunTapDevice(name, flags=plain | (pytun.IFF_VNET_HDR if offload else 0))
        except Exception as exc:  # noqa: BLE001 - pytun.Error and OSError
            if not offload or _errno_of(exc) in _CREATE_ERRORS:
                raise
            dev = pytun.TunTapDevice(name, flags=plain)
            refused = True
            log.warning("the kernel refused IFF_VNET_HDR on TUN %s (%s): offloads off, "
                        "one packet per TUN read and write", name, exc)
    except Exception as exc:  # noqa: BLE001
        cause = _CREATE_ERRORS.get(_errno_of(exc) or 0, str(exc))
        raise TunSetupError(f"cannot create TUN device {name!r}: {cause}") from None
    tun = TunDevice(dev, dev.name, 0, vnet_hdr=offload and not refused)
    tun.vnet_hdr_refused = refused
    try:
        for _ in range(queues - 1):
            tun.queue_fds.append(open_tun_queue(
                tun.name, plain | (pytun.IFF_VNET_HDR if tun.vnet_hdr else 0)))
    except BaseException:
        tun.close()
        raise
    return tun


def configure_tun(tun: TunDevice, subnet: str, network: str, mtu: int,
                  txqueuelen: int = TXQUEUELEN) -> None:
    """Offload flags, then address, MTU, route and link state by netlink;
    TunSetupError on failure (the caller closes the device)."""
    subnet_net = ipaddress.IPv4Network(subnet, strict=False)
    network_net = ipaddress.IPv4Network(network, strict=False)
    tun.mtu = mtu
    try:
        if tun.vnet_hdr:
            tun.offloads = set_offloads(tun.fd)
        os.set_blocking(tun.fd, False)
        _disable_ipv6(tun.name)
        _accept_local(tun.name)
        _configure(tun.name, str(subnet_net.network_address), str(network_net),
                   mtu, txqueuelen)
    except TunSetupError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TunSetupError(f"cannot configure TUN device {tun.name!r}: {exc}") from None


def open_tun(name: str, subnet: str, network: str, mtu: int,
             txqueuelen: int = TXQUEUELEN, offload: bool = False) -> TunDevice:
    """Create and configure the TUN device; TunSetupError on any failure
    (the half-made device is removed again). offload: open it with
    IFF_VNET_HDR and ask for TSO/USO (see the module notes)."""
    tun = create_tun(name, offload)
    try:
        configure_tun(tun, subnet, network, mtu, txqueuelen)
    except BaseException:
        tun.close()
        raise
    return tun


def _disable_ipv6(name: str) -> None:
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    if os.path.exists(path):
        try:
            with open(path, "w") as f:
                f.write("1")
        except OSError:
            pass  # the fast path drops non-IPv4 anyway


def _accept_local(name: str) -> None:
    """ICMP errors the fast path writes back into the TUN come from the TUN's
    own address (as flannel's do); without accept_local the kernel drops
    them as martians and `ping` never says "Destination Net Unreachable"."""
    path = f"/proc/sys/net/ipv4/conf/{name}/accept_local"
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError:
        pass


def _configure(name: str, addr: str, network: str, mtu: int,
               txqueuelen: int) -> None:
    with netlink() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise TunSetupError(f"TUN device {name!r} vanished")
        idx = found[0]
        try:
            ipr.link("set", index=idx, mtu=mtu)
        except Exception as exc:  # noqa: BLE001
            raise TunSetupError(f"cannot set MTU {mtu} on {name}: {exc}") from None
        try:
            ipr.link("set", index=idx, txqlen=txqueuelen)
        except Exception:  # noqa: BLE001 - not fatal
            pass
        try:
            ipr.addr("replace", index=idx, address=addr, prefixlen=32)
        except Exception as exc:  # noqa: BLE001
            raise TunSetupError(f"cannot add {addr}/32 to {name}: {exc}") from None
        ipr.link("set", index=idx, state="up")
        net = ipaddress.IPv4Network(network)
        try:
            ipr.route("replace", dst=str(net.network_address),
                      dst_len=net.prefixlen, oif=idx)
        except Exception as exc:  # noqa: BLE001
            raise TunSetupError(f"cannot route {network} via {name}: {exc}") from None
