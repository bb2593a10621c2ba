"""TCP transfer with a content check, for the demo, the tests and benchmarks.

  python -m lab.tcpxfer ...

  server: python tcpxfer.py server BIND_IP PORT [--timeout S]
          accepts one connection, reads until EOF, prints
          `<bytes> <sha256>` on stdout, exits 0.
  client: python tcpxfer.py client DST_IP PORT NBYTES [--src IP] [--seed N] [--timeout S]
          sends NBYTES of deterministic pseudo-random data, prints
          `<bytes> <sha256>` of what it sent, exits 0.
Every blocking call has a timeout; a timeout exits 3.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import socket
import sys
import time

CHUNK = 64 * 1024


def server(bind: str, port: int, timeout: float) -> int:
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
    while True:
        if time.monotonic() > deadline:
            raise socket.timeout("transfer took too long")
        data = conn.recv(CHUNK)
        if not data:
            break
        h.update(data)
        n += len(data)
    conn.close()
    ls.close()
    print(n, h.hexdigest(), flush=True)
    return 0


def client(dst: str, port: int, nbytes: int, src: str | None, seed: int,
           timeout: float) -> int:
    rng = random.Random(seed)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    deadline = time.monotonic() + timeout
    while True:  # the server may still be starting
        try:
            s.connect((dst, port))
            break
        except (ConnectionRefusedError, socket.timeout):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            s.close()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(timeout)
            if src:
                s.bind((src, 0))
    h = hashlib.sha256()
    left = nbytes
    started = time.monotonic()
    while left > 0:
        if time.monotonic() > deadline:
            raise socket.timeout("transfer took too long")
        chunk = rng.randbytes(min(CHUNK, left))
        s.sendall(chunk)
        h.update(chunk)
        left -= len(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # wait for the server to close
    s.close()
    took = max(time.monotonic() - started, 1e-6)
    print(f"{nbytes / 1e6:.1f} MB in {took:.2f}s ({nbytes * 8 / took / 1e6:.0f} Mbit/s)",
          file=sys.stderr, flush=True)
    print(nbytes, h.hexdigest(), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    sv = sub.add_parser("server")
    sv.add_argument("bind")
    sv.add_argument("port", type=int)
    sv.add_argument("--timeout", type=float, default=60)
    cl = sub.add_parser("client")
    cl.add_argument("dst")
    cl.add_argument("port", type=int)
    cl.add_argument("nbytes", type=int)
    cl.add_argument("--src")
    cl.add_argument("--seed", type=int, default=1)
    cl.add_argument("--timeout", type=float, default=60)
    a = p.parse_args(argv)
    try:
        if a.mode == "server":
            return server(a.bind, a.port, a.timeout)
        return client(a.dst, a.port, a.nbytes, a.src, a.seed, a.timeout)
    except (socket.timeout, TimeoutError) as exc:
        print(f"tcpxfer: timeout: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
