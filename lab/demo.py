"""`udpoverlay demo`: three hosts in network namespaces on one machine.

  switch namespace: bridge br0 (the underlay, 198.18.0.0/24)
  hN (N=1..3):      eth0 = 198.18.0.N/24, pod address 198.19.N.1/24,
                    udpoverlay daemon owning 198.19.N.0/24 of 198.19.0.0/16,
                    static peers = the other two hosts (h1, h2 given
                    --public-ip; h3 --iface eth0, flanneld's way)

It pings pod -> pod, moves a few MB over TCP through the overlay (sha256
checked), prints each daemon's status, and removes everything in the end
(also on Ctrl-C or an error). Exit 0 when traffic crossed, 1 otherwise.
Needs root, iproute2 and ping. Part of the lab (lab), which
lives in the source checkout and is not installed: `./dev demo` runs it with
the checkout on PYTHONPATH, and every process it starts inherits that.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from lab.netns import Lab, LabError, wait_for

__all__ = ["main"]

N_HOSTS = 3
NETWORK = "198.19.0.0/16"
XFER_BYTES = 8 * 1024 * 1024
TCPXFER = [sys.executable, "-m", "lab.tcpxfer"]


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _status_ok(lab: Lab, netns: str, human: bool = False):
    cmd = [sys.executable, "-m", "udpoverlay", "status", "--timeout", "2"]
    if not human:
        cmd.append("--json")
    r = lab.run(netns, cmd, check=False, timeout=15)
    return r.stdout if r.returncode == 0 else None


def _run(lab: Lab, logdir: Path) -> bool:
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found on PATH")
    if os.geteuid() != 0:
        raise LabError("the demo needs root (network namespaces, TUN devices)")
    hosts = []
    _say(f"== building {N_HOSTS} hosts on a bridge underlay (namespaces {lab.tag}-*)")
    for i in range(1, N_HOSTS + 1):
        h = lab.add_host(f"h{i}", f"198.18.0.{i}/24")
        lab.add_pod_address(h, f"198.19.{i}.1/24")
        hosts.append(h)
        _say(f"   h{i}: underlay 198.18.0.{i}, subnet 198.19.{i}.0/24, pod 198.19.{i}.1")

    _say("== starting udpoverlay in each host")
    procs = []
    for i, h in enumerate(hosts, 1):
        # h1, h2: the laptop one-liner (--public-ip); the last host as flanneld
        # is told: --iface names the underlay, its address is bound and advertised.
        where = ["--iface", "eth0"] if i == N_HOSTS else ["--public-ip", f"198.18.0.{i}"]
        cmd = [sys.executable, "-m", "udpoverlay", "run", *where,
               "--subnet", f"198.19.{i}.0/24", "--network", NETWORK]
        for j in range(1, N_HOSTS + 1):
            if j != i:
                cmd += ["--peer", f"198.18.0.{j}=198.19.{j}.0/24"]
        _say("   " + " ".join(cmd[1:]))
        with open(logdir / f"h{i}.log", "wb") as out:
            procs.append((h, lab.popen(h.netns, cmd, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=out), logdir / f"h{i}.log"))
    for h, proc, log in procs:
        try:
            wait_for(lambda: proc.poll() is not None or _status_ok(lab, h.netns),
                     15, 0.1, f"daemon on {h.name}")
        except TimeoutError:
            pass
        if proc.poll() is not None or not _status_ok(lab, h.netns):
            _say(f"!! daemon on {h.name} did not come up:\n{log.read_text(errors='replace')}")
            return False

    ok = True
    _say("\n== ping pod -> pod across the overlay")
    for a, b in ((1, 2), (2, 3), (3, 1)):
        _say(f"$ ping -c 3 -I 198.19.{a}.1 198.19.{b}.1   (in h{a})")
        r = lab.run(hosts[a - 1].netns, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                                         "-I", f"198.19.{a}.1", f"198.19.{b}.1"],
                    check=False, timeout=30)
        _say("   " + "\n   ".join(r.stdout.strip().splitlines()[-2:]))
        ok &= r.returncode == 0

    _say(f"\n== TCP transfer of {XFER_BYTES // (1024 * 1024)} MiB h1 (198.19.1.1) -> "
         f"h2 (198.19.2.1)")
    srv_out = logdir / "server.out"
    with open(srv_out, "wb") as f:
        srv = lab.popen(hosts[1].netns, [*TCPXFER, "server", "198.19.2.1", "5201",
                                         "--timeout", "30"],
                        stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"listening" in srv_out.read_bytes() or srv.poll() is not None,
                 10, 0.05, "transfer server")
        r = lab.run(hosts[0].netns, [*TCPXFER, "client", "198.19.2.1", "5201",
                                     str(XFER_BYTES), "--src", "198.19.1.1", "--seed",
                                     str(secrets.randbits(32)), "--timeout", "30"],
                    check=False, timeout=60)
        srv.wait(timeout=10)
        sent = r.stdout.split()
        got = srv_out.read_text(errors="replace").split()
        match = r.returncode == 0 and len(sent) == 2 and got[-2:] == sent
        _say("   " + (r.stderr.strip().splitlines() or ["(no report)"])[-1] + ", sha256 "
             + ("matches" if match else f"MISMATCH: sent {sent} received {got[-2:]}"))
        ok &= match
    except (TimeoutError, subprocess.TimeoutExpired) as exc:
        _say(f"!! transfer failed: {exc}")
        ok = False
    finally:
        lab.stop(srv, signal.SIGTERM, timeout=5)

    _say("\n== udpoverlay status in each host")
    for h in hosts:
        _say(f"--- {h.name} ---")
        _say(_status_ok(lab, h.netns, human=True) or "(no answer)")
    return ok


def main() -> int:
    lab = Lab()
    previous = signal.getsignal(signal.SIGTERM)

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    ok = False
    with tempfile.TemporaryDirectory(prefix="udpoverlay-demo-") as tmp:
        try:
            ok = _run(lab, Path(tmp))
        except KeyboardInterrupt:
            _say("\n!! interrupted")
        except (LabError, subprocess.SubprocessError, OSError) as exc:
            _say(f"!! demo failed: {exc}")
        finally:
            _say("\n== cleaning up (daemons, namespaces)")
            lab.close()
            signal.signal(signal.SIGTERM, previous)
    _say("== traffic crossed the overlay: OK" if ok else "== traffic did NOT cross: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
