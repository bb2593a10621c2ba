"""Control-plane scale benchmark: ClusterMembership over a real etcd with N leases.

    python -m benchmarks.scale [--sizes 1000,5000] [--singles 200]
                               [--churn-rate 200] [--churn-seconds 10]

Run from the repository root (no root needed: etcd listens on 127.0.0.1 only,
Debian's /usr/bin/etcd, started and stopped by PID by tests.support.etcdserver).
Per N, in one etcd under a fresh prefix (Network 198.19.0.0/16, SubnetLen 29,
so 8191 subnets fit):

1. populate: a writer process puts N leases (public IPs from 198.18.0.0/15);
2. time to all routes: ClusterMembership.run() starts in this process and
   apply_peers is timed until it holds all N peers (wall and CPU);
3. CPU per change: the writer makes `--singles` changes one at a time (add a
   lease, delete it, ...), 20 ms apart; this process's CPU time
   (time.process_time: the event loop, gRPC's threads, decoding, policy,
   the apply_peers call) over the phase, minus the idle rate measured just
   before, divided by the number of changes;
4. churn: the writer adds and deletes leases at `--churn-rate` changes/s for
   `--churn-seconds`; change-to-route latency = when apply_peers got a list
   with (or without) the subnet minus when the writer's put (or delete)
   returned, p50/p99 (CLOCK_MONOTONIC is system-wide, so the two processes'
   clocks agree).

apply_peers is a fake that records arrival times (phase 3 only counts
calls; phases 2 and 4 diff the list by object identity, which is cheap
because unchanged peers keep their Peer objects). The writer runs in its own
process so its CPU is not counted. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.etcdserver import ETCD, EtcdServer
from udpoverlay.cluster.codec import encode_lease_value, subnet_key
from udpoverlay.cluster.membership import ClusterMembership
from udpoverlay.cluster.store.etcd import EtcdStore

CONFIG = '{"Network": "198.19.0.0/16", "SubnetLen": 29, "Backend": {"Type": "udp"}}'
BASE = int(ipaddress.IPv4Address("198.19.0.0"))
OWN_INDEX = 8190          # our own subnet: the last one, far from the writer's
CHURN_FIRST = 5000        # churn adds start here (sizes up to 5000)


def subnet(i: int) -> ipaddress.IPv4Network:
    """The i-th allocatable /29 (the first one is skipped, as flannel does)."""
    return ipaddress.IPv4Network((BASE + 8 * (i + 1), 29))


def public_ip(i: int) -> str:
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.1.0")) + i))


# -- the writer (its own process) ------------------------------------------------

async def _writer(endpoint: str, prefix: str, phase: str, args: dict) -> list:
    store = EtcdStore([endpoint], timeout=10.0)
    done: list[tuple[str, str, float]] = []
    try:
        async def put(i: int) -> None:
            await store.put(subnet_key(prefix, subnet(i)), encode_lease_value(public_ip(i))
                            .encode(), None)
            done.append(("add", str(subnet(i)), time.monotonic()))

        async def delete(i: int) -> None:
            await store.delete(subnet_key(prefix, subnet(i)))
            done.append(("del", str(subnet(i)), time.monotonic()))

        if phase == "config":
            await store.put(f"{prefix}/config", CONFIG.encode(), None)
        elif phase == "populate":
            n = args["n"]
            for first in range(0, n, 250):
                await asyncio.gather(*(put(i) for i in range(first, min(n, first + 250))))
        elif phase == "singles":
            i = args["first"]
            for k in range(args["count"]):
                await (put(i) if k % 2 == 0 else delete(i))
                i += k % 2
                await asyncio.sleep(0.02)
        elif phase == "churn":
            rng = random.Random(1)
            live = list(range(args["n"]))
            fresh = args["first"]
            period = 1.0 / args["rate"]
            start = time.monotonic()
            for k in range(int(args["rate"] * args["seconds"])):
                delay = start + k * period - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if k % 2 == 0:
                    await put(fresh)
                    live.append(fresh)
                    fresh += 1
                else:
                    await delete(live.pop(rng.randrange(len(live))))
        return done
    finally:
        await store.close()


def writer(endpoint: str, prefix: str, phase: str, args: dict) -> list:
    return asyncio.run(_writer(endpoint, prefix, phase, args))


# -- the membership side (this process) ------------------------------------------

class Recorder:
    """apply_peers: when each subnet appeared in / left the applied list."""

    def __init__(self) -> None:
        self.diff = True
        self.calls: list[tuple[float, int]] = []
        self.appeared: dict[str, float] = {}
        self.left: dict[str, float] = {}
        self._prev: dict[int, Any] = {}

    def baseline(self, peers: list) -> None:
        """Start diffing from `peers` (what apply_peers holds now)."""
        self._prev = {id(p): p for p in peers}
        self.appeared.clear()
        self.left.clear()

    def __call__(self, peers: list) -> None:
        now = time.monotonic()
        self.calls.append((now, len(peers)))
        if not self.diff:
            return
        cur = {id(p): p for p in peers}
        for pid in cur.keys() - self._prev.keys():
            self.appeared[str(cur[pid].subnet)] = now
        for pid in self._prev.keys() - cur.keys():
            self.left[str(self._prev[pid].subnet)] = now
        self._prev = cur


def latencies(done: list, rec: Recorder) -> list[float]:
    out = []
    for kind, sub, t in done:
        seen = (rec.appeared if kind == "add" else rec.left).get(sub)
        if seen is not None and seen >= t - 0.5:   # arrival of this change, not an older one
            out.append(max(0.0, seen - t))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(pool, endpoint: str, n: int, singles: int, rate: float,
                  seconds: float) -> dict:
    prefix = f"/udpoverlay-scale/{n}/network"
    loop = asyncio.get_running_loop()

    async def write(phase: str, **args) -> list:
        return await loop.run_in_executor(None, pool.apply, writer,
                                          (endpoint, prefix, phase, args))

    await write("config")
    await write("populate", n=n)
    store = EtcdStore([endpoint], timeout=10.0)
    rec = Recorder()
    member = ClusterMembership(store, prefix=prefix, public_ip="198.18.0.1",
                               previous_subnet=subnet(OWN_INDEX), retry_max=2.0)
    result: dict[str, Any] = {"n": n}
    cpu0, wall0 = time.process_time(), time.monotonic()
    task = asyncio.create_task(member.run(rec))
    try:
        deadline = wall0 + 120
        while not rec.calls or rec.calls[-1][1] < n:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {n} routes after 120 s")
            await asyncio.sleep(0.001)
        result["all_routes_s"] = rec.calls[-1][0] - wall0
        result["all_routes_cpu_s"] = time.process_time() - cpu0
        await asyncio.sleep(1.0)

        # idle rate, then single changes (no diffing in apply_peers)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(2.0)
        idle_rate = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        rec.diff = False
        calls0 = len(rec.calls)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await write("singles", first=n, count=singles)
        await asyncio.sleep(0.2)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        result["cpu_per_change_ms"] = 1000 * (cpu - idle_rate * wall) / singles
        result["cpu_per_change_raw_ms"] = 1000 * cpu / singles
        result["single_applies"] = len(rec.calls) - calls0

        # churn, with arrival times
        rec.diff = True
        rec.baseline(list(member.feed.view.peers.values()))
        calls0 = len(rec.calls)
        cpu0 = time.process_time()
        done = await write("churn", n=n, first=CHURN_FIRST, rate=rate, seconds=seconds)
        await asyncio.sleep(1.0)
        lat = latencies(done, rec)
        result["churn_changes"] = len(done)
        result["churn_seen"] = len(lat)
        result["churn_p50_ms"] = 1000 * pct(lat, 0.5)
        result["churn_p99_ms"] = 1000 * pct(lat, 0.99)
        result["churn_applies"] = len(rec.calls) - calls0
        result["churn_cpu_per_change_ms"] = 1000 * (time.process_time() - cpu0) / max(1, len(done))
        return result
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


def table(rows: list[dict]) -> str:
    head = ("| N | all routes (s) | CPU to all routes (s) | CPU/change (ms) | (raw) | "
            "applies / single changes | churn changes (seen) | churn applies | "
            "churn CPU/change (ms) | churn p50 (ms) | churn p99 (ms) |")
    lines = [head, "|" + "|".join([" --- "] * (head.count("|") - 1)) + "|"]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['all_routes_s']:.2f} | {r['all_routes_cpu_s']:.2f} | "
            f"{r['cpu_per_change_ms']:.2f} | {r['cpu_per_change_raw_ms']:.2f} | "
            f"{r['single_applies']} / {r['singles']} | {r['churn_changes']} "
            f"({r['churn_seen']}) | {r['churn_applies']} | {r['churn_cpu_per_change_ms']:.2f} | "
            f"{r['churn_p50_ms']:.1f} | {r['churn_p99_ms']:.1f} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, endpoint: str) -> list[dict]:
    rows = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        for n in args.sizes:
            row = await measure(pool, endpoint, n, args.singles, args.churn_rate,
                                args.churn_seconds)
            row["singles"] = args.singles
            print(f"N={n}: {row}", file=sys.stderr)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,5000",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--singles", type=int, default=200)
    p.add_argument("--churn-rate", type=float, default=200.0)
    p.add_argument("--churn-seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    if not Path(ETCD).exists():
        print(f"needs {ETCD} (Debian etcd-server)", file=sys.stderr)
        return 1
    if max(args.sizes) > CHURN_FIRST or \
            CHURN_FIRST + args.churn_rate * args.churn_seconds / 2 >= OWN_INDEX:
        print(f"sizes must be at most {CHURN_FIRST} and churn-rate x churn-seconds at most "
              f"{2 * (OWN_INDEX - CHURN_FIRST - 1)} changes (8191 /29 subnets)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="udpoverlay-scale-") as tmp:
        server = EtcdServer(Path(tmp) / "etcd")
        try:
            server.start()
            try:
                import uvloop
                rows = uvloop.run(main_async(args, server.endpoint))
            except ImportError:
                rows = asyncio.run(main_async(args, server.endpoint))
        finally:
            server.stop()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
