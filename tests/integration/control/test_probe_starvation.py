"""Issue 21 item 5 on a real daemon: idle connections held against the
health endpoint, each reopened the moment the daemon drops it, by an
unprivileged local user (uid 65534) from the node's own address (where
the kubelet's probes come from) and from 127.0.0.2-9, and by another host
(another namespace) from 8 addresses. Kubelet-style probes (a new
connection from the node's address, GET /readyz, 1 s timeout) are all
answered, for each attacker alone and for all of them at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from lab.netns import wait_for
from tests.integration.control.conftest import SYSTEM_PYTHON, as_nobody
from tests.support.overlay import underlay_of
from udpoverlay.ops.http import MAX_PER_CLIENT

PORT = 8286
PROBES = 14
EXTRA = [f"198.18.0.{i}" for i in range(101, 108)]     # h2's 7 more addresses

# argv: ADDR PORT SECONDS SRC=COUNT... Opens COUNT idle connections from
# each SRC and reopens each one as soon as the server drops it (bounded in
# time); prints "holding N" once all are open, and {"opened", "failed",
# "dropped"} at the end (SIGTERM or SECONDS).
ATTACK = r"""
import json, selectors, signal, socket, sys, time
target = (sys.argv[1], int(sys.argv[2]))
end = time.monotonic() + float(sys.argv[3])
specs = [(a.split("=")[0], int(a.split("=")[1])) for a in sys.argv[4:]]
sel = selectors.DefaultSelector()
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
n = {"opened": 0, "failed": 0, "dropped": 0}
def open_one(src):
    s = socket.socket()
    s.setblocking(False)
    s.bind((src, 0))
    try:
        s.connect(target)
    except BlockingIOError:
        pass
    except OSError:
        n["failed"] += 1
        s.close()
        return
    sel.register(s, selectors.EVENT_READ, src)
    n["opened"] += 1
for src, count in specs:
    for _ in range(count):
        open_one(src)
print("holding", len(sel.get_map()), flush=True)
while not stop and time.monotonic() < end:
    for key, _ in sel.select(0.2):
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if not data:          # dropped by the server: reopen at once
            n["dropped"] += 1
            sel.unregister(key.fileobj)
            key.fileobj.close()
            open_one(key.data)
    for src, count in specs:      # connects that failed outright: try again
        while sum(1 for k in sel.get_map().values() if k.data == src) < count \
                and time.monotonic() < end and not stop:
            open_one(src)
            if n["failed"] > 100000:
                break
print(json.dumps(n), flush=True)
"""

# argv: ADDR PORT SRC COUNT -> a JSON list of status lines (or errors)
PROBE = r"""
import json, socket, sys, time
addr, src, count = (sys.argv[1], int(sys.argv[2])), sys.argv[3], int(sys.argv[4])
out = []
for _ in range(count):
    deadline = time.monotonic() + 1.0
    s = None
    try:
        s = socket.create_connection(addr, timeout=1.0, source_address=(src, 0))
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: " + addr[0].encode() + b"\r\n"
                  b"User-Agent: kube-probe/1.31\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        out.append(data.split(b"\r\n")[0].decode(errors="replace") or "closed")
    except OSError as e:
        out.append("error: " + repr(e))
    finally:
        if s is not None:
            s.close()
    time.sleep(0.1)
print(json.dumps(out))
"""


def _attack(ov, host, name: str, target: str, specs: list[str], nobody: bool):
    out = ov.tmp / f"attack-{name}.out"
    cmd = [SYSTEM_PYTHON, "-c", ATTACK, target, str(PORT), "30", *specs]
    with open(out, "wb") as f:
        proc = ov.lab.popen(host.netns, as_nobody(cmd) if nobody else cmd,
                            stdout=f, stderr=subprocess.STDOUT)
    return proc, out


def _probes(ov, h1) -> list[str]:
    r = ov.run(h1, [sys.executable, "-c", PROBE, underlay_of(1), str(PORT), underlay_of(1),
                    str(PROBES)], timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rejected(ov, h1) -> int:
    return ov.status(h1)["ops"]["http_rejected"]


def test_held_and_reopened_idle_connections_do_not_starve_probes(ov):
    h1, h2 = ov.hosts[1], ov.hosts[2]
    for addr in EXTRA:
        ov.lab.run(h2.netns, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
    d = ov.start(1, peers=[2], extra=["--healthz-port", str(PORT)])   # on 0.0.0.0
    local = [f"{underlay_of(1)}=64"]
    loopback = [f"127.0.0.{i}=8" for i in range(2, 10)]
    remote = [f"{a}=8" for a in (underlay_of(2), *EXTRA)]
    scenarios = [
        ("uid 65534, 64 from the node's address", [(h1, "local", underlay_of(1), local, True)]),
        ("uid 65534, 8 x 8 from 127.0.0.2-9", [(h1, "loop", "127.0.0.1", loopback, True)]),
        ("another host, 8 x 8 from 8 addresses", [(h2, "remote", underlay_of(1), remote,
                                                   False)]),
        ("all three at once", [(h1, "local2", underlay_of(1), local, True),
                               (h1, "loop2", "127.0.0.1", loopback, True),
                               (h2, "remote2", underlay_of(1), remote, False)]),
    ]
    report = []
    for title, attackers in scenarios:
        rejected = _rejected(ov, h1)
        cpu, t0 = _cpu(d.proc.pid), time.monotonic()
        procs = [_attack(ov, host, name, target, specs, nobody)
                 for host, name, target, specs, nobody in attackers]
        try:
            for proc, out in procs:
                wait_for(lambda: b"holding" in out.read_bytes() or proc.poll() is not None,
                         10, 0.05, f"attacker ({title})")
                assert proc.poll() is None, out.read_text()
            time.sleep(1.5)     # past the probation timeout: drops and reopens are under way
            answers = _probes(ov, h1)
        finally:
            for proc, _ in procs:
                ov.lab.stop(proc)
        stats = [json.loads(out.read_text().splitlines()[-1]) for _, out in procs]
        load = (_cpu(d.proc.pid) - cpu) / (time.monotonic() - t0)
        report.append((title, answers, stats, load))
        assert answers == ["HTTP/1.1 200 OK"] * PROBES, (title, answers, stats)
        for s, (_, _, _, specs, _) in zip(stats, attackers):
            held = sum(int(x.split("=")[1]) for x in specs)
            assert s["opened"] >= held and s["failed"] == 0, (title, s)
            if any(int(x.split("=")[1]) > MAX_PER_CLIENT for x in specs):
                # over the per-client cap: dropped after the probation
                # timeout, and reopened at once
                assert s["dropped"] > 0 and s["opened"] > held, (title, s)
        assert _rejected(ov, h1) > rejected, title
    assert d.proc.poll() is None
    print("\n".join(f"{t}: {a.count('HTTP/1.1 200 OK')}/{PROBES} probes answered; "
                    f"daemon CPU {load:.2f} cores; attackers {s}" for t, a, s, load in report))
