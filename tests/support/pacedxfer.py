"""A TCP transfer at a fixed rate, for tests that need traffic to flow for
minutes (rekeys at the real timer) or across an event (a restart, a move):
the content is checked end to end and the receiver reports its stalls.

  python -m tests.support.pacedxfer server BIND_IP PORT [--timeout S]
      accepts one connection, reads until EOF; prints one JSON line:
      {"bytes", "sha256", "max_gap", "gaps": [[wall start, seconds], ...]}
      (gaps: receive pauses longer than --gap, 0.5 s by default).
  python -m tests.support.pacedxfer client DST_IP PORT --rate BYTES_PER_S
                                    --seconds S [--src IP] [--seed N] [--timeout S]
      sends rate x seconds bytes of deterministic pseudo-random data, paced
      (behind schedule after a stall, it catches up as fast as TCP allows);
      prints {"bytes", "sha256", "took"}.
Every blocking call has a timeout; a timeout exits 3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import time

CHUNK = 16 * 1024


def server(bind: str, port: int, timeout: float, gap: float) -> int:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, port))
    ls.listen(1)
    ls.settimeout(timeout)
    print("listening", flush=True, file=sys.stderr)
    conn, _ = ls.accept()
    conn.settimeout(timeout)
    h = hashlib.sha256()
    n = 0
    deadline = time.monotonic() + timeout
    last, last_wall, max_gap, gaps = time.monotonic(), time.time(), 0.0, []
    while True:
        if time.monotonic() > deadline:
            raise socket.timeout("transfer took too long")
        data = conn.recv(CHUNK * 4)
        now = time.monotonic()
        if now - last > gap:
            gaps.append([round(last_wall, 3), round(now - last, 3)])
        max_gap = max(max_gap, now - last)
        last, last_wall = now, time.time()
        if not data:
            break
        h.update(data)
        n += len(data)
    conn.close()
    ls.close()
    print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "max_gap": round(max_gap, 3),
                      "gaps": gaps}), flush=True)
    return 0


def client(dst: str, port: int, rate: float, seconds: float, src: str | None, seed: int,
           timeout: float) -> int:
    nbytes = int(rate * seconds)
    rng = random.Random(seed)
    deadline = time.monotonic() + timeout
    s = None
    for _ in range(int(timeout / 0.1) + 1):     # the server may still be starting
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        try:
            s.connect((dst, port))
            break
        except (ConnectionRefusedError, socket.timeout):
            s.close()
            s = None
            if time.monotonic() > deadline:
                raise socket.timeout("no connection") from None
            time.sleep(0.1)
    if s is None:
        raise socket.timeout("no connection")
    h = hashlib.sha256()
    sent = 0
    started = time.monotonic()
    while sent < nbytes:
        if time.monotonic() > deadline:
            raise socket.timeout("transfer took too long")
        ahead = started + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        chunk = rng.randbytes(min(CHUNK, nbytes - sent))
        s.sendall(chunk)
        h.update(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # wait for the server to close
    s.close()
    print(json.dumps({"bytes": nbytes, "sha256": h.hexdigest(),
                      "took": round(time.monotonic() - started, 3)}), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    sv = sub.add_parser("server")
    sv.add_argument("bind")
    sv.add_argument("port", type=int)
    sv.add_argument("--timeout", type=float, default=60)
    sv.add_argument("--gap", type=float, default=0.5)
    cl = sub.add_parser("client")
    cl.add_argument("dst")
    cl.add_argument("port", type=int)
    cl.add_argument("--rate", type=float, required=True)
    cl.add_argument("--seconds", type=float, required=True)
    cl.add_argument("--src")
    cl.add_argument("--seed", type=int, default=1)
    cl.add_argument("--timeout", type=float, default=60)
    a = p.parse_args(argv)
    try:
        if a.mode == "server":
            return server(a.bind, a.port, a.timeout, a.gap)
        return client(a.dst, a.port, a.rate, a.seconds, a.src, a.seed, a.timeout)
    except (socket.timeout, TimeoutError) as exc:
        print(f"pacedxfer: timeout: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
