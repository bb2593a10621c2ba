"""Traffic probes shared by the data-plane integration tests: pings that
must all come back, a tcpdump capture on a host's underlay, and tiny
scripts run inside a namespace to listen for or forge UDP datagrams."""

from __future__ import annotations

import shutil
import subprocess
import sys

from lab.netns import wait_for
from tests.support.overlay import pod_of
from tests.support.requirements import require


def assert_pings(ov, i, j, count=3):
    r = ov.ping(i, j, count)
    assert r.returncode == 0, (f"ping {pod_of(i)} -> {pod_of(j)} failed:\n"
                               f"{r.stdout}{r.stderr}\n{ov.dump_logs()}")
    assert f"{count} received" in r.stdout, r.stdout


def start_listener(ov, host, addr: str, port: int, seconds: float = 15):
    """LISTENER on addr:port in host's namespace, ready: (process, output
    file); it prints one line per datagram and stops at b"legit"."""
    out = ov.tmp / f"listener-{host.name}-{port}.out"
    with open(out, "wb") as f:
        proc = ov.lab.popen(host.netns, [sys.executable, "-c", LISTENER, addr, str(port),
                                         str(seconds)], stdout=f, stderr=subprocess.STDOUT)
    wait_for(lambda: b"ready" in out.read_bytes() or proc.poll() is not None,
             10, 0.05, "listener")
    return proc, out


def start_capture(ov, host, pcap, filt):
    require(shutil.which("tcpdump") is not None, "needs tcpdump on PATH")
    err = open(ov.tmp / "tcpdump.err", "wb")
    proc = ov.lab.popen(host.netns, ["tcpdump", "-Z", "root", "-i", "eth0", "-n", "-U",
                                     "--immediate-mode", "-s", "0",
                                     "-w", str(pcap), filt],
                        stdout=subprocess.DEVNULL, stderr=err)
    # tcpdump says "listening on ..." once the capture is live
    wait_for(lambda: b"listening on" in (ov.tmp / "tcpdump.err").read_bytes()
             or proc.poll() is not None, 10, 0.05, "tcpdump to start")
    assert proc.poll() is None, (ov.tmp / "tcpdump.err").read_text()
    return proc


LISTENER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.5)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    print(addr[0], data.decode(errors="replace"), flush=True)
    if data == b"legit":
        break
"""

SENDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.sendto(bytes.fromhex(sys.argv[5]), (sys.argv[3], int(sys.argv[4])))
"""
