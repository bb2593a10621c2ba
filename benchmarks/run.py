"""Benchmark CLI: one run, one two-host topology, every scenario measured.

    python -m benchmarks.run [--repeat N] [--duration S]
                             [--scenarios a,b,...] [--udp-rate PPS] [--out DIR]
                             [--io auto|io_uring|epoll]

Run from the repository root, as root. A scenario that cannot be set up, or
whose daemon dies, is reported as "error: ..." in the table; the run goes on.
kernel-vxlan, when selected, runs first: the datagrams/s it receives in udp64
is the rate at which udp64_kr offers 64-byte UDP to every scenario (itself
included), unless --udp-rate gives the rate; with neither, udp64_kr is skipped.
Everything the run creates lives in one Lab and is removed on exit, Ctrl-C,
SIGTERM or error. Raw numbers: results.json; table: results.md (also printed);
ratios to kernel-vxlan: chart.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import measure, report
from benchmarks.report import BASELINE
from benchmarks.scenarios import (
    REPO_ROOT,
    SCENARIOS,
    Scenario,
    Topology,
    bring_up,
    clear_overlay_routes,
    make_scenario,
)
from lab.netns import Lab

SETTLE = 0.5  # seconds between measurements, to let queues drain
REQUIRED_TOOLS = ("ip", "ping", "ss", "iperf3")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3,
                        help="repetitions per measurement; the median is reported")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per measurement (default 5)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--udp-rate", type=float, default=None, metavar="PPS",
                        help="datagrams/s for udp64_kr (UDP 64 B at a fixed rate); "
                             f"default: what {BASELINE} received in udp64 "
                             "in this run (udp64_kr is skipped if neither)")
    parser.add_argument("--io", choices=("auto", "io_uring", "epoll"), default=None,
                        help="the udpoverlay daemons' --io (default: theirs, auto)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results/<timestamp>/)")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name in args.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if args.repeat < 1 or args.duration < 1:
        parser.error("--repeat and --duration must be at least 1")
    if args.udp_rate is not None and not (math.isfinite(args.udp_rate)
                                          and args.udp_rate > 0):
        parser.error(f"--udp-rate must be a positive number of packets/s, "
                     f"not {args.udp_rate:g}")
    return args


def order_scenarios(names: list[str], first: str = BASELINE) -> list[str]:
    """first (kernel-vxlan) when selected, then the others in the given order.

    udp64_kr offers every scenario the rate kernel-vxlan reached in udp64,
    so kernel-vxlan has to be measured before the others. Duplicates are
    dropped (a scenario's results are keyed by its name).
    """
    unique = list(dict.fromkeys(names))
    return ([first] if first in unique else []) + [n for n in unique if n != first]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


def _version(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                              cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if proc.returncode == 0 and text else None


def run_metadata(args: argparse.Namespace, tool: str) -> dict:
    return {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "repeat": args.repeat, "duration": args.duration,
        "scenarios": args.scenarios, "latency_tool": tool, "io": args.io,
        "kernel": platform.release(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "iperf3": _version(["iperf3", "--version"]),
        "sockperf": _version(["sockperf", "--version"]) if tool == "sockperf" else None,
        "git_commit": _version(["git", "rev-parse", "HEAD"]),
    }


def _attempt(rep: dict, name: str, fn) -> None:
    """Record fn()'s result, or its failure, under rep[name]."""
    start = time.monotonic()
    try:
        rep[name] = fn()
    except Exception as exc:  # noqa: BLE001 - one failed measurement, go on
        rep[name] = {"error": f"{type(exc).__name__}: {exc}"}
    log(f"    {name}: {json.dumps(rep[name])[:160]} "
        f"({time.monotonic() - start:.1f} s)")
    time.sleep(SETTLE)


def run_repetition(ep: measure.Endpoints, scenario: Scenario, duration: float,
                   tool: str, rep: dict) -> None:
    """Fill rep with each measurement as it completes (partial on Ctrl-C)."""
    sampler = measure.CpuSampler(scenario.daemon_pids())

    def with_cpu(measurement):
        def run() -> dict:
            sampler.start()
            result = measurement()
            result["cpu"] = sampler.stop()
            return result
        return run

    steps = (("tcp1", with_cpu(lambda: measure.iperf_tcp(ep, duration, streams=1))),
             ("tcp4", lambda: measure.iperf_tcp(ep, duration, streams=4)),
             ("udp64", lambda: measure.iperf_udp64(ep, duration)),
             ("latency", with_cpu(lambda: measure.latency(ep, duration, tool))))
    for name, fn in steps:
        _attempt(rep, name, fn)
        scenario.check_alive()


def run_udp64_kr(ep: measure.Endpoints, scenario: Scenario, name: str,
                 duration: float, rate_pps: float, repetitions: list[dict]
                 ) -> None:
    """udp64_kr once per repetition, after all of them (see run_scenario)."""
    for i, rep in enumerate(repetitions):
        log(f"  {name}: udp64_kr at {rate_pps:.0f} packets/s, "
            f"repetition {i + 1}/{len(repetitions)}")
        _attempt(rep, "udp64_kr",
                 lambda: measure.iperf_udp64(ep, duration, rate_pps))
        scenario.check_alive()


def run_scenario(topo: Topology, name: str, args: argparse.Namespace,
                 logdir: Path, tool: str, result: dict,
                 udp_rate: float | None = None) -> float | None:
    """Set up, measure --repeat times, tear down, filling result as it goes.

    udp64_kr runs after the repetitions (so that kernel-vxlan can run it at
    its own udp64 rate, known only then; every scenario does the same), at
    udp_rate, or, for kernel-vxlan without udp_rate, at the median rate it
    received in udp64. Returns that rate (None: udp64_kr skipped, absent from
    the results) for the scenarios that follow.

    Never raises an Exception (it becomes result's error); Ctrl-C/SIGTERM
    mark the result interrupted and propagate after the teardown.
    """
    result.update(status="ok", error=None, repetitions=[])
    scenario = make_scenario(name, args.io)
    ep = topo.endpoints(logdir)
    servers = []
    try:
        bring_up(scenario, topo, logdir)
        servers = measure.start_servers(ep, tool, name)
        for i in range(args.repeat):
            log(f"  {name}: repetition {i + 1}/{args.repeat}")
            rep: dict = {}
            result["repetitions"].append(rep)
            run_repetition(ep, scenario, args.duration, tool, rep)
        if udp_rate is None and name == BASELINE:
            udp_rate = report.udp64_rate_pps(result)
        if udp_rate is None:
            log(f"  {name}: udp64_kr skipped: no rate ({BASELINE} has no "
                "udp64 result in this run and no --udp-rate)")
        else:
            run_udp64_kr(ep, scenario, name, args.duration, udp_rate,
                         result["repetitions"])
    except Exception as exc:  # noqa: BLE001 - report it, run the next scenario
        result.update(status="error", error=f"{exc}")
        log(f"  {name}: error: {exc}")
    except (KeyboardInterrupt, SystemExit):
        result.update(status="error", error="interrupted")
        raise
    finally:
        for proc in servers:
            topo.lab.stop(proc)
        try:
            scenario.teardown(topo)
            clear_overlay_routes(topo)
        except Exception as exc:  # noqa: BLE001 - the next setup checks for leftovers
            log(f"  {name}: teardown failed: {exc}")
    return udp_rate


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def _raise_exit(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.scenarios = order_scenarios(args.scenarios)
    if os.geteuid() != 0:
        print("benchmarks.run needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (see benchmarks/README.md)",
              file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO_ROOT / "benchmarks" / "results" / stamp).resolve()
    logdir = out / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    tool = measure.latency_tool()
    doc = {"meta": run_metadata(args, tool), "scenarios": {}}
    rate = args.udp_rate
    doc["meta"].update(udp64_kr_rate_pps=rate,
                       udp64_kr_rate_source="--udp-rate" if rate else None)
    if rate:
        log(f"udp64_kr at {rate:.0f} packets/s (--udp-rate)")
    elif BASELINE in args.scenarios:
        log(f"{BASELINE} first: its udp64 rate is udp64_kr's rate")
    else:
        log(f"udp64_kr skipped: {BASELINE} is not selected and no --udp-rate")
    code = 0
    signal.signal(signal.SIGTERM, _raise_exit)
    lab = Lab()
    try:
        topo = Topology(lab)
        for name in args.scenarios:
            log(f"scenario {name}")
            doc["scenarios"][name] = {}
            used = run_scenario(topo, name, args, logdir, tool,
                                doc["scenarios"][name], rate)
            if rate is None and used is not None:
                rate = used
                doc["meta"].update(
                    udp64_kr_rate_pps=rate,
                    udp64_kr_rate_source=f"median udp64 rx of {BASELINE}")
                log(f"udp64_kr at {rate:.0f} packets/s ({BASELINE}'s udp64)")
            _write_json(out / "results.json", doc)
    except (KeyboardInterrupt, SystemExit) as exc:
        doc["meta"]["interrupted"] = True
        code = 130 if isinstance(exc, KeyboardInterrupt) else int(exc.code or 1)
        log("interrupted: cleaning up, writing partial results")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let cleanup finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _write_json(out / "results.json", doc)
    (out / "results.md").write_text(report.markdown_report(doc))
    if not report.write_chart(doc["scenarios"], out / "chart.png"):
        log("matplotlib missing: no chart.png (pip install -r benchmarks/requirements.txt)")
    print(report.markdown_table(doc["scenarios"]))
    log(f"results in {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
