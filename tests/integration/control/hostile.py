"""An unprivileged local user attacking the control socket, run by the
tests as uid 65534 (setpriv) inside a host's network namespace, with the
system's python3 and the standard library only (it must not need to read
anything private).

  hostile.py read ACTUAL_SOCKET_PATH   try to read status every way it can
  hostile.py squat DIR IFACE           bind every name it can, serve a fake
                                       document on each, until stdin closes

Each prints one JSON line saying what worked and what was refused.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

FAKE = json.dumps({"impostor": True, "peers": [], "public_ip": "198.18.0.66"}).encode() + b"\n"
LIFETIME = 120.0           # seconds, in case the test forgets us


def _try(fn) -> str:
    try:
        fn()
        return "ok"
    except OSError as exc:
        return type(exc).__name__


def read(path: str) -> dict:
    got: dict = {"listdir": _try(lambda: os.listdir(os.path.dirname(path)))}
    data = b""
    for name, where in (("socket", path), ("abstract", "\0udpoverlay.udpov0")):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            got[name] = _try(lambda: s.connect(where))
            if got[name] == "ok":
                data += s.recv(1 << 20)
        finally:
            s.close()
    got["bytes"] = len(data)
    got["data"] = data.decode(errors="replace")[:200]
    return got


def squat(tmpdir: str, iface: str) -> None:
    ino = os.stat("/proc/self/ns/net").st_ino
    names = {"abstract": "\0udpoverlay." + iface,
             "tmpfile": os.path.join(tmpdir, f"net{ino}-{iface}.sock"),
             "rundir": f"/run/udpoverlay/net{ino}-{iface}.sock"}
    report: dict = {"mkdir_rundir": _try(lambda: os.mkdir("/run/udpoverlay", 0o777))}
    listeners = []
    for name, where in names.items():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        report[name] = _try(lambda: s.bind(where))
        if report[name] == "ok":
            s.listen(16)
            listeners.append(s)
        else:
            s.close()
    print(json.dumps(report), flush=True)
    deadline = time.monotonic() + LIFETIME
    while time.monotonic() < deadline:
        ready, _, _ = select.select([*listeners, sys.stdin], [], [], 0.5)
        if sys.stdin in ready and not sys.stdin.buffer.read1(1):
            break
        for s in ready:
            if s is not sys.stdin:
                conn, _ = s.accept()
                conn.sendall(FAKE)
                conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "read":
        print(json.dumps(read(sys.argv[2])), flush=True)
    else:
        squat(sys.argv[2], sys.argv[3])
