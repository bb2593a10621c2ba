"""More than one queue (--queues N): extra TUN queue fds and a group of
underlay sockets on one port, so N worker pairs can each own a queue.

TUN side: the device is created with IFF_MULTI_QUEUE and every further
TUNSETIFF with the same name and flags attaches one more queue (fd). The
kernel picks a queue per flow (its automq table learns the queue a flow's
packets were last written from, else a flow hash), so a flow is read by one
worker and stays in order.

Socket side: N sockets bound to the same (address, port) with SO_REUSEPORT.
The kernel's own choice in such a group hashes the outer 4-tuple, and in
udp mode all of one peer's traffic has the same 4-tuple (both ends use the
fixed port, as flannel does), so one socket would get it all. A classic BPF
program attached to the group (SO_ATTACH_REUSEPORT_CBPF) picks the socket
by the INNER flow instead: addresses, plus ports for TCP and UDP that are
not fragments. It is symmetric (xor), like the kernel's TUN flow hash, so
both directions of a flow meet on one queue. A datagram too short for the
loads makes the program return 0, i.e. socket 0; such datagrams are then
checked and counted by that worker like any other.

A second instance: a reuseport group would let another root process join
our port silently, so the port is first probed with a plain bind, which
fails with EADDRINUSE while any of our sockets holds it (same error, same
one line as with one queue).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

from udpoverlay.dataplane.wire import MAX_QUEUES, VXLAN_HDR
from udpoverlay.errors import TunSetupError
from udpoverlay.host import sockets

__all__ = ["steering_program", "open_socket_group", "open_tun_queue", "IFF_MULTI_QUEUE"]

TUNSETIFF = 0x400454CA
IFF_MULTI_QUEUE = 0x0100
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS, _LD_W_IND, _LD_MEM = 0x20, 0x28, 0x30, 0x40, 0x60
_LDX_B_MSH, _ST, _TAX = 0xB1, 0x02, 0x07
_XOR_X, _RSH_K, _MOD_K = 0xAC, 0x74, 0x94
_JEQ_K, _JSET_K, _RET_A = 0x15, 0x45, 0x16


def steering_program(backend: str, n: int) -> list[tuple[int, int, int, int]]:
    """The socket-choosing program: (code, jt, jf, k) instructions. The
    inner IPv4 header starts at the UDP payload (udp) or after the VXLAN
    header and the inner Ethernet header (vxlan)."""
    if not 1 <= n <= MAX_QUEUES:
        raise ValueError(f"{n} queues: 1 to {MAX_QUEUES}")
    b = VXLAN_HDR if backend == "vxlan" else 0
    return [
        (_LD_W_ABS, 0, 0, b + 12),      # 0  A = source address
        (_TAX, 0, 0, 0),                # 1  X = A
        (_LD_W_ABS, 0, 0, b + 16),      # 2  A = destination address
        (_XOR_X, 0, 0, 0),              # 3  A ^= X
        (_ST, 0, 0, 0),                 # 4  M[0] = A
        (_LD_H_ABS, 0, 0, b + 6),       # 5  A = flags + fragment offset
        (_JSET_K, 9, 0, 0x3FFF),        # 6  a fragment (MF or offset): no ports -> 16
        (_LD_B_ABS, 0, 0, b + 9),       # 7  A = protocol
        (_JEQ_K, 1, 0, 6),              # 8  TCP -> 10
        (_JEQ_K, 0, 6, 17),             # 9  UDP -> 10, else -> 16
        (_LDX_B_MSH, 0, 0, b),          # 10 X = header length
        (_LD_W_IND, 0, 0, b),           # 11 A = both ports
        (_TAX, 0, 0, 0),                # 12
        (_LD_MEM, 0, 0, 0),             # 13
        (_XOR_X, 0, 0, 0),              # 14
        (_ST, 0, 0, 0),                 # 15 M[0] ^= ports
        (_LD_MEM, 0, 0, 0),             # 16 A = M[0]
        (_TAX, 0, 0, 0),                # 17
        (_RSH_K, 0, 0, 16),             # 18
        (_XOR_X, 0, 0, 0),              # 19 fold the high half in
        (_MOD_K, 0, 0, n),              # 20
        (_RET_A, 0, 0, 0),              # 21 the socket's index in the group
    ]


def _attach(s: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def open_socket_group(ip: str, port: int, n: int, backend: str) -> list[socket.socket]:
    """n UDP sockets on (ip, port) sharing it by SO_REUSEPORT, steered by
    inner flow; the first is the main socket. TunSetupError (one line) if
    the port is taken or the kernel refuses."""
    probe = sockets.open_socket(ip, port)   # EADDRINUSE while anyone holds the port
    probe.close()
    out: list[socket.socket] = []
    try:
        for _ in range(n):
            out.append(sockets.open_socket(ip, port, reuseport=True))
        try:
            _attach(out[0], steering_program(backend, n))
        except OSError as exc:
            raise TunSetupError(f"--queues {n}: the kernel refused the socket steering "
                                f"program: {exc.strerror or exc}") from None
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def open_tun_queue(name: str, flags: int) -> int:
    """One more queue of the multi-queue TUN `name` (flags as it was created
    with, IFF_MULTI_QUEUE included): a non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as exc:
        os.close(fd)
        hint = (" (the kernel caps a TUN's queues)" if exc.errno == errno.EINVAL else "")
        raise TunSetupError(f"cannot attach a queue to TUN {name}: "
                            f"{exc.strerror or exc}{hint}") from None
    return fd
