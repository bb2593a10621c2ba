"""systemd's readiness protocol (sd_notify) without libsystemd.

With Type=notify, systemd passes $NOTIFY_SOCKET: a unix datagram socket,
a path or, when it starts with '@', an abstract name. We send "READY=1"
once the daemon is ready (Lifecycle: data plane up; cluster mode: lease
held and subnet.env written) and "STOPPING=1" when it shuts down, each
with a STATUS= line for `systemctl status`; while starting, every change
of what start-up waits for is a "STATUS=waiting for ..." line, so a start
blocked on etcd says so in `systemctl status`.

Watchdog: with WatchdogSec= systemd sets $WATCHDOG_USEC (and $WATCHDOG_PID,
which must be ours); `watchdog_interval` is then half of it, and Ops sends
"WATCHDOG=1" that often from a task on the event loop, so a loop that hangs
stops the pings and systemd restarts the daemon.

The variables are removed from our environment at start (sd_notify's
unset_environment), so the commands we run (iptables, nft) do not inherit
them. Sending never blocks and never fails the daemon: an error is logged
once.
"""

from __future__ import annotations

import logging
import os
import socket

from udpoverlay.lifecycle import READY, STARTING, STOPPING

__all__ = ["Notifier", "socket_address", "watchdog_interval"]

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | None:
    """$NOTIFY_SOCKET -> an address for sendto ('@x' -> abstract '\\0x');
    None when unset or not a unix socket (vsock addresses are not ours)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(usec: str, pid: str, own_pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC, as
    sd_watchdog_enabled advises), or None: unset, not a positive number, or
    $WATCHDOG_PID names another process."""
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    if pid:
        try:
            if int(pid) != own_pid:
                return None
        except ValueError:
            return None
    return value / 2e6


class Notifier:
    """Sends lifecycle changes to $NOTIFY_SOCKET, if systemd gave one."""

    def __init__(self, environ=None, pid: int | None = None) -> None:
        environ = os.environ if environ is None else environ
        raw = environ.pop("NOTIFY_SOCKET", "")
        usec, wpid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
        self.address = socket_address(raw)
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket; not notifying systemd", raw)
        self.watchdog = watchdog_interval(usec, wpid, os.getpid() if pid is None else pid) \
            if self.address is not None else None
        self.sent: list[str] = []
        self._failed = False
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one notification; False (logged once) if it failed."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s",
                            self.address.replace("\0", "@"), exc)
            self._failed = True
            return False
        self.sent.append(message)
        return True

    def on_phase(self, phase: str, waiting_for: str = "") -> None:
        """A Lifecycle listener (see Ops: it passes what start-up waits for)."""
        if phase == READY:
            self.notify("READY=1\nSTATUS=running")
        elif phase == STOPPING:
            self.notify("STOPPING=1\nSTATUS=shutting down")
        elif phase == STARTING:
            status = f"waiting for {waiting_for or 'start-up'}"
            if status != self._status:
                self._status = status
                self.notify(f"STATUS={status}")

    def listener(self, lifecycle):
        """on_phase bound to `lifecycle` (it tells what start-up waits for)."""
        return lambda phase: self.on_phase(phase, lifecycle.waiting_for)
