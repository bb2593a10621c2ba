"""A handshake flood for the WireGuard tests: handshake messages (from a
file, sent as they are) round-robin from many source addresses, each its
own UDP socket, at a fixed rate for a bounded time.

    python -m tests.support.wgflood TARGET_IP PORT MESSAGES_FILE RATE SECONDS SRC_IP...

MESSAGES_FILE holds the messages back to back, each 148 bytes (type 1,
initiations). Run it inside a namespace whose interface has every SRC_IP.
Prints the number of datagrams sent; exits 0."""

from __future__ import annotations

import signal
import socket
import sys
import time

INITIATION = 148
BURST = 50


def main(argv: list[str]) -> int:
    target, port, path, rate, seconds, *sources = argv
    with open(path, "rb") as f:
        blob = f.read()
    messages = [blob[i:i + INITIATION] for i in range(0, len(blob), INITIATION)]
    socks = []
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    addr, pps, end = (target, int(port)), float(rate), time.monotonic() + float(seconds)
    start = time.monotonic()
    counts = [0, 0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))     # stopped early: still report
    try:
        _flood(socks, messages, addr, pps, start, end, counts)
    finally:
        print(counts[0], flush=True)
    return 0


def _flood(socks, messages, addr, pps, start, end, counts) -> None:
    """counts: [sent, attempted], kept current (the caller prints them)."""
    sent = n = 0
    while time.monotonic() < end:
        for _ in range(BURST):
            try:
                socks[n % len(socks)].sendto(messages[n % len(messages)], addr)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass            # a full buffer or an ICMP error: the flood goes on
            n += 1
            counts[0], counts[1] = sent, n
        ahead = start + n / pps - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
