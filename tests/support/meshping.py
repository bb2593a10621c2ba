"""Pings between overlay addresses while something else happens, counted
per sequence number, and daemons' status read without a process per look.

Why per sequence number: a loss count taken from ping's summary cannot tell
a ping lost in the overlay from the one still in flight when ping was
stopped. Here each ping (iputils, `-D`) prints one line per reply with its
icmp_seq and the wall-clock time (flushed line by line, so a reply can be
waited for while ping runs); stopped by SIGINT (by PID), it prints how
many it transmitted. A sequence number with no reply is lost, except those
sent in the last `grace` seconds before the stop (still in flight). Every
ping also ends by itself after `deadline` seconds' worth of pings (-c, not
-w: with -w, iputils gives up at the first ICMP error, such as the Net
Unreachable a daemon answers for a subnet it has no route to yet), and
every wait is bounded.

Root may ping every 10 ms (`-i 0.01`): 12 pairs of that cost little CPU on
a 2-core machine. Each ping is started with Lab.popen, so Lab.close() ends
it by PID if the test did not.

peek_status() reads a daemon's control socket from the test process (the
socket is a file, so it is reachable from any namespace): a look every
half second at five daemons would otherwise start ten Python processes a
second (`udpoverlay status`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.netns import Host, Lab
from udpoverlay.config.defaults import DEFAULT_TUN
from udpoverlay.control import socket_path

__all__ = ["Ping", "PingResult", "peek_status"]

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(\d+) ")
_SUMMARY = re.compile(r"^(\d+) packets transmitted, (\d+) received", re.M)


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    replies: dict[int, float]      # icmp_seq -> wall-clock time of its (first) reply
    interval: float
    text: str                      # ping's output, for a failure message

    def lost(self, grace: float = 0.2) -> list[int]:
        """Sequence numbers never answered, but those sent in the last
        `grace` seconds (in flight when ping was stopped)."""
        last = self.transmitted - int(grace / self.interval)
        return [seq for seq in range(1, last + 1) if seq not in self.replies]

    def first_reply(self) -> float | None:
        return min(self.replies.values()) if self.replies else None

    def max_gap(self) -> float:
        """The longest time between two replies in a row (s): how steadily
        the pings flowed."""
        times = [self.replies[seq] for seq in sorted(self.replies)]
        return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))

    def when(self, seq: int) -> float | None:
        """About when `seq` was sent (wall clock), from its nearest answered
        neighbour: for saying when a loss happened."""
        if not self.replies:
            return None
        near = min(self.replies, key=lambda s: abs(s - seq))
        return self.replies[near] + (seq - near) * self.interval


class Ping:
    """`ping -D -i interval` from src to dst in host's namespace, in the
    background, for at most `deadline` seconds' worth of pings."""

    def __init__(self, lab: Lab, host: Host, src: str, dst: str, out: Path, *,
                 interval: float = 0.01, deadline: float = 600) -> None:
        self.lab, self.out, self.interval = lab, out, interval
        argv = ["ping", "-n", "-D", "-i", f"{interval:g}", "-c", str(int(deadline / interval)),
                "-I", src, dst]
        with open(out, "wb") as f:
            self.proc = lab.popen(host.netns, argv, stdin=subprocess.DEVNULL, stdout=f,
                                  stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 10) -> PingResult:
        """SIGINT (ping prints its summary), then the result."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGINT)     # ping itself: `ip netns exec` execs it
            except ProcessLookupError:
                pass
        return self.wait(timeout)

    def first_reply(self, timeout: float) -> float | None:
        """Wait (bounded) for the first reply while ping runs: its wall-clock
        time, or None."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 1):
            first = self.result().first_reply()
            if first is not None or self.proc.poll() is not None or time.monotonic() > deadline:
                return first
            time.sleep(0.05)
        return None

    def wait(self, timeout: float) -> PingResult:
        """The result once ping ended by itself (killed after `timeout` s)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.lab.stop(self.proc, signal.SIGKILL, timeout=5)
        return self.result()

    def result(self) -> PingResult:
        text = self.out.read_text(errors="replace")
        replies: dict[int, float] = {}
        for line in text.splitlines():
            m = _REPLY.match(line)
            if m:
                replies.setdefault(int(m.group(2)), float(m.group(1)))
        m = _SUMMARY.search(text)
        sent = int(m.group(1)) if m else max(replies, default=0)
        return PingResult(sent, replies, self.interval, text[-2000:])


def peek_status(host: Host, iface: str = DEFAULT_TUN, timeout: float = 2.0) -> dict | None:
    """The status document of the daemon of `iface` in host's namespace,
    straight from its control socket; None while nobody answers there."""
    path = socket_path(iface, netns=os.stat(f"/run/netns/{host.netns}").st_ino)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    chunks: list[bytes] = []
    try:
        s.connect(path)
        for _ in range(10_000):            # bounded: documents are far below 640 MiB
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        s.close()
    try:
        doc = json.loads(b"".join(chunks))
    except ValueError:
        return None                       # cut short (the daemon was busy): ask again
    return doc if isinstance(doc, dict) else None
