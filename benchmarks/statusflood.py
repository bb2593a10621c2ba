"""Status flood during a transfer: does a busy control socket slow forwarding?

Two namespace hosts (benchmarks.scenarios.Topology) run udpoverlay (udp
backend, offloads on); the receiving host h2 also has --peers fake peers, so
its status document is large (~240 KB at 1000, the case of issue 11). Each
repetition measures, alone and then during a status flood (a loop in h2's
namespace connecting --rate times a second, reading the whole document,
closing): iperf3 TCP goodput h1 pod -> h2 pod, UDP round-trip latency, and
the CPU of h2's daemon. Printed: medians, the flood/alone ratios, the status
requests really answered per second, and h2's control counters (how many
documents were built for how many answers).

    sudo python -m benchmarks.statusflood [--repeat 3] [--duration 5] [--rate 90]
                                          [--peers 1000]

Run from the repository root, as root. Everything lives in one Lab and is
removed on exit or error.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["fake_peer_args", "main"]


def fake_peer_args(n: int) -> list[str]:
    """--peer arguments for n peers that exist only on paper: public IPs
    198.18.1.1 on, /28 subnets from 198.19.128.0 (n <= 2000)."""
    if not 0 <= n <= 2000:
        raise ValueError("between 0 and 2000 fake peers")
    args = []
    for k in range(n):
        ip = f"198.18.{1 + k // 250}.{1 + k % 250}"
        args += ["--peer", f"{ip}=198.19.{128 + k // 16}.{k % 16 * 16}/28"]
    return args


# -- the flood (runs inside h2's namespace) ---------------------------------
def flood(tun: str, rate: float, limit: float) -> dict:
    """Ask for status `rate` times a second until SIGTERM (or `limit`
    seconds); read each answer whole, as `udpoverlay status` would."""
    import socket

    try:
        from udpoverlay.control import socket_path
        path = socket_path(tun)
    except ImportError:       # a tree from before issue 11: the abstract name
        path = "\0udpoverlay." + tun
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    asked = answered = nbytes = 0
    start = time.monotonic()
    for i in range(int(rate * limit) + 1):
        if stop:
            break
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        asked += 1
        data = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(3)
                s.connect(path)
                for _ in range(10_000):
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            pass
        if data.endswith(b"\n"):
            answered += 1
            nbytes += len(data)
    secs = time.monotonic() - start
    return {"asked": asked, "answered": answered, "seconds": secs,
            "answered_per_s": answered / secs, "doc_bytes": nbytes // max(1, answered)}


# -- the measurement (runs in the root namespace) ---------------------------
def _status(lab, host, iface: str) -> dict:
    r = lab.run(host.netns, [sys.executable, "-m", "udpoverlay", "status", "--json",
                             "--tun", iface, "--timeout", "5"], check=False, timeout=30)
    return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr.strip()}


def _once(ep, tool: str, duration: float, pids: list[int]) -> dict:
    from benchmarks import measure
    cpu = measure.CpuSampler(pids)
    cpu.start()
    tcp = measure.iperf_tcp(ep, duration)
    usage = cpu.stop()
    lat = measure.latency(ep, duration, tool)
    return {"gbps": tcp["gbps"], "p50_us": lat.get("p50_us"), "p99_us": lat.get("p99_us"),
            "daemon_cores": usage["daemon_cores"]}


def measure_flood(args) -> dict:
    from benchmarks import measure
    from benchmarks.scenarios import Topology, Udpoverlay, bring_up
    from lab.netns import Lab

    class Crowded(Udpoverlay):
        """udpoverlay udp; h2 also carries the fake peers."""

        def command(self, node, remote, logdir=None):
            extra = fake_peer_args(args.peers) if node.name == "h2" else []
            return super().command(node, remote, logdir) + extra

    logdir = Path(tempfile.mkdtemp(prefix="statusflood-"))
    runs: dict = {"alone": [], "flood": [], "flood_rate": []}
    with Lab() as lab:
        topo = Topology(lab)
        scenario = Crowded("udp", offload=True)
        bring_up(scenario, topo, logdir, timeout=60)
        h2 = topo.hosts[1][1]
        h2_pid = scenario.daemon_pids()[1]
        ep = topo.endpoints(logdir)
        tool = measure.latency_tool()
        measure.start_servers(ep, tool, "statusflood")
        for _ in range(args.repeat):
            runs["alone"].append(_once(ep, tool, args.duration, [h2_pid]))
            out = logdir / "flood.json"
            with open(out, "w") as f:
                fl = lab.popen(h2.netns, [sys.executable, "-m", "benchmarks.statusflood",
                                          "--flood", "--rate", str(args.rate),
                                          "--limit", str(4 * args.duration + 60)],
                               stdout=f, stderr=subprocess.STDOUT, cwd=str(_ROOT))
            time.sleep(0.5)
            runs["flood"].append(_once(ep, tool, args.duration, [h2_pid]))
            lab.stop(fl)
            runs["flood_rate"].append(json.loads(out.read_text()))
        runs["control"] = _status(lab, h2, Udpoverlay.IFACE).get("control")
        runs["tool"] = tool
        scenario.teardown(topo)
    return runs


def alone_vs_flood(runs: dict, during: str) -> list[str]:
    """The table of medians: each metric alone, during the load (`during`
    names it: "flood", "scrapes"), and their ratio. Shared with scrapeflood."""
    from benchmarks.stats import median

    def med(cond: str, key: str):
        return median(r[key] for r in runs[cond])

    lines = [f"| metric | alone | during {during} | {during} / alone |",
             "| --- | --- | --- | --- |"]
    for key, label in (("gbps", "TCP Gbit/s"), ("p50_us", f"RTT p50 µs ({runs['tool']})"),
                       ("p99_us", "RTT p99 µs"), ("daemon_cores", "h2 daemon CPU, cores")):
        a, f = med("alone", key), med("flood", key)
        ratio = f"{f / a:.3f}" if a and f is not None else "—"
        lines.append(f"| {label} | {_fmt(a)} | {_fmt(f)} | {ratio} |")
    return lines


def report(runs: dict) -> str:
    lines = alone_vs_flood(runs, "flood")
    rates = runs["flood_rate"]
    per_s = ", ".join("%.1f" % r["answered_per_s"] for r in rates)
    asked = ", ".join(str(r["asked"]) for r in rates)
    size = rates[0]["doc_bytes"] if rates else 0
    lines.append("")
    lines.append(f"status answered per second during the flood: {per_s} "
                 f"(asked {asked}; document {size} bytes)")
    lines.append(f"h2 control counters at the end: {json.dumps(runs.get('control'))}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3g}"


_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.statusflood",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--rate", type=float, default=90.0, help="status requests per second")
    p.add_argument("--peers", type=int, default=1000, help="fake peers on h2")
    p.add_argument("--flood", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--tun", default="uo0", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.repeat >= 1 and args.duration > 0 and args.rate > 0
            and 0 <= args.peers <= 2000):
        p.error("--repeat >= 1, --duration > 0, --rate > 0, --peers 0..2000")
    if args.flood:
        print(json.dumps(flood(args.tun, args.rate, args.limit)), flush=True)
        return 0
    return measure_and_print(measure_flood, report, args)


def measure_and_print(measure, render, args) -> int:
    """Both flood benchmarks' ending: SIGTERM unwinds like Ctrl-C (through
    the Lab, which cleans up), then the table and the raw runs as JSON."""
    def _interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _interrupt)
    runs = measure(args)
    print(render(runs))
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
