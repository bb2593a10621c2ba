"""A small UDP ping-pong, used for latency when sockperf is not installed.

    python -m benchmarks.udpecho server --bind 198.19.2.1 --port 11111
    python -m benchmarks.udpecho client --bind 198.19.1.1 --to 198.19.2.1 \
        --port 11111 --duration 5 --size 64

The client prints one JSON line: samples, lost, p50_us, p99_us, avg_us
(round-trip times). Python's own overhead (a few µs per side) is included,
so its numbers are comparable with each other, not with sockperf's.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

from benchmarks.stats import percentile

_SEQ = struct.Struct("!Q")


def serve(bind: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, port))
    while True:  # ended by a signal from the benchmark runner
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


def ping_pong(bind: str, to: str, port: int, duration: float, size: int,
              timeout: float = 0.2) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 0))
    sock.connect((to, port))
    sock.settimeout(timeout)
    pad = b"\0" * max(0, size - _SEQ.size)
    rtts: list[float] = []
    lost = 0
    deadline = time.monotonic() + duration
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        start = time.perf_counter_ns()
        sock.send(_SEQ.pack(seq) + pad)
        try:
            while True:  # skip late replies to earlier (timed-out) requests
                reply = sock.recv(65535)
                if _SEQ.unpack_from(reply)[0] == seq:
                    break
        except TimeoutError:
            lost += 1
            continue
        rtts.append((time.perf_counter_ns() - start) / 1000)
    return {
        "samples": len(rtts), "lost": lost,
        "p50_us": percentile(rtts, 50), "p99_us": percentile(rtts, 99),
        "avg_us": sum(rtts) / len(rtts) if rtts else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.udpecho")
    parser.add_argument("mode", choices=("server", "client"))
    parser.add_argument("--bind", required=True)
    parser.add_argument("--to")
    parser.add_argument("--port", type=int, default=11111)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.mode == "server":
        serve(args.bind, args.port)
        return 0
    if not args.to:
        parser.error("client needs --to")
    json.dump(ping_pong(args.bind, args.to, args.port, args.duration,
                        args.size), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
