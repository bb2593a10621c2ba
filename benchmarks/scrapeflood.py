"""Scrape flood during a transfer: does Prometheus scraping /metrics slow
forwarding?

Two namespace hosts (benchmarks.scenarios.Topology) run udpoverlay (udp
backend, offloads on); the receiving host h2 serves /metrics
(--healthz-port) and also carries --peers fake peers, so each scrape
renders per-peer series for all of them (~4 series per peer). Each
repetition measures, alone and then during a scrape loop (inside h2's
namespace: --scrapes GETs of /metrics spread evenly over the measurement,
each read whole): iperf3 TCP goodput h1 pod -> h2 pod, UDP round-trip
latency, and the CPU of h2's daemon. Printed: medians, the loop/alone
ratios, the scrapes really answered and the page size.

    sudo python -m benchmarks.scrapeflood [--repeat 3] [--duration 5] [--scrapes 100]
                                          [--peers 1000]

Run from the repository root, as root. Everything lives in one Lab and is
removed on exit or error. Speed is reported as ratios, never asserted.
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

from benchmarks.statusflood import _once, alone_vs_flood, fake_peer_args, measure_and_print

__all__ = ["main", "scrape_loop"]

PORT = 8286
_ROOT = Path(__file__).resolve().parents[1]


# -- the scrape loop (runs inside h2's namespace) -----------------------------
def scrape_loop(url: str, count: int, seconds: float) -> dict:
    """GET url `count` times, evenly over `seconds` (or until SIGTERM)."""
    import urllib.request

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    asked = answered = nbytes = 0
    worst = 0.0
    start = time.monotonic()
    for i in range(count):
        if stop:
            break
        time.sleep(max(0.0, start + i * seconds / count - time.monotonic()))
        asked += 1
        t = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read()
        except OSError:
            continue
        worst = max(worst, time.monotonic() - t)
        if body.startswith(b"# HELP"):
            answered += 1
            nbytes += len(body)
    secs = time.monotonic() - start
    return {"asked": asked, "answered": answered, "seconds": secs,
            "page_bytes": nbytes // max(1, answered), "slowest_scrape_s": round(worst, 4)}


# -- the measurement (runs in the root namespace) -----------------------------
def measure_scrapes(args) -> dict:
    from benchmarks import measure
    from benchmarks.scenarios import Topology, Udpoverlay, bring_up
    from lab.netns import Lab

    class Scraped(Udpoverlay):
        """udpoverlay udp; h2 serves /metrics and carries the fake peers."""

        def command(self, node, remote, logdir=None):
            extra = []
            if node.name == "h2":
                extra = [*fake_peer_args(args.peers), "--healthz-ip", node.underlay_ip,
                         "--healthz-port", str(PORT)]
            return super().command(node, remote, logdir) + extra

    logdir = Path(tempfile.mkdtemp(prefix="scrapeflood-"))
    runs: dict = {"alone": [], "flood": [], "loop": []}
    with Lab() as lab:
        topo = Topology(lab)
        scenario = Scraped("udp", offload=True)
        bring_up(scenario, topo, logdir, timeout=60)
        node2, h2 = topo.hosts[1]
        h2_pid = scenario.daemon_pids()[1]
        ep = topo.endpoints(logdir)
        tool = measure.latency_tool()
        measure.start_servers(ep, tool, "scrapeflood")
        url = f"http://{node2.underlay_ip}:{PORT}/metrics"
        for _ in range(args.repeat):
            runs["alone"].append(_once(ep, tool, args.duration, [h2_pid]))
            out = logdir / "loop.json"
            with open(out, "w") as f:
                loop = lab.popen(h2.netns, [sys.executable, "-m", "benchmarks.scrapeflood",
                                            "--loop", url, "--scrapes", str(args.scrapes),
                                            "--duration", str(args.duration)],
                                 stdout=f, stderr=subprocess.STDOUT, cwd=str(_ROOT))
            time.sleep(0.2)
            # the TCP measurement covers the whole loop; latency runs after it
            runs["flood"].append(_once(ep, tool, args.duration, [h2_pid]))
            loop.wait(timeout=args.duration + 60)
            runs["loop"].append(json.loads(out.read_text()))
        runs["tool"] = tool
        scenario.teardown(topo)
    return runs


def report(runs: dict) -> str:
    lines = alone_vs_flood(runs, "scrapes")
    loops = runs["loop"]
    lines.append("")
    lines.append("scrapes answered per repetition: "
                 + ", ".join(f"{r['answered']}/{r['asked']} in {r['seconds']:.1f}s"
                             for r in loops)
                 + f"; page {loops[0]['page_bytes'] if loops else 0} bytes; slowest scrape "
                 + ", ".join(f"{r['slowest_scrape_s']}s" for r in loops))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scrapeflood",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--scrapes", type=int, default=100, help="scrapes per measurement")
    p.add_argument("--peers", type=int, default=1000, help="fake peers on h2")
    p.add_argument("--loop", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.repeat >= 1 and args.duration > 0 and args.scrapes >= 1
            and 0 <= args.peers <= 2000):
        p.error("--repeat >= 1, --duration > 0, --scrapes >= 1, --peers 0..2000")
    if args.loop:
        print(json.dumps(scrape_loop(args.loop, args.scrapes, args.duration)), flush=True)
        return 0
    return measure_and_print(measure_scrapes, report, args)


if __name__ == "__main__":
    sys.exit(main())
