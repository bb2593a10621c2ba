"""systemd's readiness protocol (sd_notify) without libsystemd.

With Type=notify, systemd passes $NOTIFY_SOCKET: a unix datagram socket,
a path or, when it starts with '@', an abstract name. We send "READY=1"
once the daemon is ready (Lifecycle: data plane up; cluster mode: lease
held and subnet.env written) and "STOPPING=1" when it shuts down, each
with a STATUS= line for `systemctl status`. The variable is removed from
our environment at start (sd_notify's unset_environment), so the commands
we run (iptables, nft) do not inherit it. Sending never blocks and never
fails the daemon: an error is logged once.
"""

from __future__ import annotations

import logging
import os
import socket

from udpoverlay.lifecycle import READY, STOPPING

__all__ = ["Notifier", "socket_address"]

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


class Notifier:
    """Sends lifecycle changes to $NOTIFY_SOCKET, if systemd gave one."""

    def __init__(self, environ=None) -> None:
        environ = os.environ if environ is None else environ
        raw = environ.pop("NOTIFY_SOCKET", "")
        self.address = socket_address(raw)
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket; not notifying systemd", raw)
        self.sent: list[str] = []
        self._failed = False

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

    def on_phase(self, phase: str) -> None:
        """A Lifecycle listener."""
        if phase == READY:
            self.notify("READY=1\nSTATUS=running")
        elif phase == STOPPING:
            self.notify("STOPPING=1\nSTATUS=shutting down")
