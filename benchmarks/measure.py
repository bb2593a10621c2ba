"""Traffic generators (iperf3, sockperf or benchmarks.udpecho), their parsers,
and CPU sampling from /proc.

Parsers are pure functions of the tool's output (unit-tested without root);
runners execute the tools in Lab namespaces, pod address to pod address, and
raise MeasureError with the tool's own message on failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab.netns import Lab, wait_for

IPERF_PORT = 5201
LATENCY_PORT = 11111
UDP_PAYLOAD = 64
# iperf3 paces a rate-limited (-b) sender with a timer: each tick it sends
# until its average since the test's start is back up to the rate, so it
# emits bursts of about rate x tick. The default tick, 1000 µs, makes bursts
# of ~300 datagrams at 300 kpps; 100 µs makes them ~30, closer to the steady
# rate udp64_kr means to offer (same tick for every scenario).
PACING_TIMER_US = 100
_SLACK = 30.0  # seconds a tool may take beyond its --time before we give up
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SOCKPERF_PCT = re.compile(r"percentile\s+([0-9.]+)\s*=\s*([0-9.]+)")
_SOCKPERF_AVG = re.compile(r"avg-(?:rtt|lat)\s*=\s*([0-9.]+)")


class MeasureError(RuntimeError):
    pass


# -- parsers -------------------------------------------------------------
def parse_iperf_json(text: str) -> dict:
    """iperf3 --json output as a dict; MeasureError on iperf3's own error."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MeasureError(f"iperf3 printed no JSON ({exc}): {text[-200:]!r}")
    if doc.get("error"):
        raise MeasureError(f"iperf3: {doc['error']}")
    if "end" not in doc:
        raise MeasureError("iperf3 JSON has no 'end' section")
    return doc


def tcp_result(doc: dict) -> dict:
    """Receiver-side goodput of a TCP test (all streams) in Gbit/s."""
    end = doc["end"]
    received = end.get("sum_received") or end.get("sum")
    if not received or not received.get("seconds"):
        raise MeasureError("iperf3 TCP result has no receiver sum")
    return {
        "gbps": received["bits_per_second"] / 1e9,
        "retransmits": (end.get("sum_sent") or {}).get("retransmits"),
    }


def udp_result(doc: dict) -> dict:
    """Datagrams per second that ARRIVED, and loss against what was sent.

    The receiver's `packets` is the highest sequence number it saw, so
    datagrams lost after the last one that arrived are not in its
    `lost_packets`: loss is computed against the sender's count instead.
    """
    end = doc["end"]
    received = end.get("sum_received") or end.get("sum")
    sent = end.get("sum_sent") or end.get("sum")
    if not received or not received.get("seconds"):
        raise MeasureError("iperf3 UDP result has no receiver sum")
    arrived = max(0, received["packets"] - received["lost_packets"])
    sent_packets = sent.get("packets") or 0
    loss = (100.0 * max(0, sent_packets - arrived) / sent_packets
            if sent_packets else None)
    return {
        "rx_pps": arrived / received["seconds"],
        "tx_pps": sent_packets / sent["seconds"] if sent.get("seconds") else None,
        "loss_pct": loss,
    }


def udp_bitrate(rate_pps: float, payload: int = UDP_PAYLOAD) -> int:
    """iperf3's -b (bits/s of UDP payload) for rate_pps datagrams of payload B.

    At least 1: iperf3 reads -b 0 as "unlimited", the opposite of a slow rate.
    """
    if not math.isfinite(rate_pps) or rate_pps <= 0:
        raise ValueError(f"packet rate must be a positive number, not {rate_pps!r}")
    return max(1, round(rate_pps * payload * 8))


def parse_sockperf(text: str) -> dict:
    """p50/p99/average (µs) from `sockperf ping-pong --full-rtt` output."""
    text = _ANSI.sub("", text)
    pcts = {float(p): float(v) for p, v in _SOCKPERF_PCT.findall(text)}
    avg = _SOCKPERF_AVG.search(text)
    if 50.0 not in pcts or 99.0 not in pcts:
        raise MeasureError(f"sockperf printed no percentiles: {text[-300:]!r}")
    return {"p50_us": pcts[50.0], "p99_us": pcts[99.0],
            "avg_us": float(avg.group(1)) if avg else None}


def parse_pid_stat(text: str) -> int:
    """utime + stime (clock ticks) from /proc/<pid>/stat (all threads)."""
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return int(fields[11]) + int(fields[12])


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq",
                "steal")


def parse_proc_stat(text: str) -> dict[str, int]:
    """The machine-wide `cpu` line of /proc/stat, in clock ticks."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:len(_STAT_FIELDS) + 1]]
            return dict(zip(_STAT_FIELDS, values))
    raise MeasureError("/proc/stat has no cpu line")


# -- CPU sampling ----------------------------------------------------------
class CpuSampler:
    """CPU used between start() and stop(), in cores (seconds per second).

    `machine_*` is the whole machine (/proc/stat is not namespaced): busy =
    user + nice + system + irq + softirq; `daemon` is utime + stime of the
    given processes (the udpoverlay daemons), None when there are none.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK")

    def _snapshot(self) -> tuple[float, dict[str, int], int | None]:
        machine = parse_proc_stat(Path("/proc/stat").read_text())
        daemon = None
        if self.pids:
            daemon = sum(parse_pid_stat(Path(f"/proc/{pid}/stat").read_text())
                         for pid in self.pids)
        return time.monotonic(), machine, daemon

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict:
        try:
            end = self._snapshot()
        except FileNotFoundError:  # a daemon died during the run
            raise MeasureError("a daemon exited while CPU was sampled")
        (t0, m0, d0), (t1, m1, d1) = self._start, end
        secs = (t1 - t0) * self.hz
        delta = {k: (m1[k] - m0[k]) / secs for k in m0}
        busy = sum(delta[k] for k in ("user", "nice", "system", "irq", "softirq"))
        return {
            "machine_busy_cores": busy,
            "machine_system_cores": delta["system"],
            "machine_softirq_cores": delta["softirq"],
            "daemon_cores": None if d0 is None else (d1 - d0) / secs,
        }


# -- runners ---------------------------------------------------------------
@dataclass
class Endpoints:
    """Where traffic goes: client pod in client_ns -> server pod in server_ns."""
    lab: Lab
    client_ns: str
    server_ns: str
    client_ip: str
    server_ip: str
    logdir: Path
    cwd: Path


def tail_lines(text: str, lines: int = 3) -> str:
    """The last lines of a tool's output, joined to fit one table cell."""
    kept = [line.strip() for line in text.strip().splitlines()[-lines:]]
    return " / ".join(kept) or "(no output)"


def _client(ep: Endpoints, cmd: list[str], duration: float) -> str:
    try:
        proc = ep.lab.run(ep.client_ns, cmd, check=False, cwd=ep.cwd,
                          timeout=duration + _SLACK)
    except subprocess.TimeoutExpired:
        raise MeasureError(f"{cmd[0]} did not finish within {duration + _SLACK:.0f} s")
    if proc.returncode != 0 and not proc.stdout.lstrip().startswith("{"):
        raise MeasureError(f"{cmd[0]} exit {proc.returncode}: "
                           f"{tail_lines(proc.stderr or proc.stdout)}")
    return proc.stdout


def latency_tool() -> str:
    """sockperf when installed, else the Python echo in benchmarks.udpecho."""
    return "sockperf" if shutil.which("sockperf") else "udpecho"


def start_servers(ep: Endpoints, tool: str, tag: str) -> list[subprocess.Popen]:
    """iperf3 and the latency server on the server pod; waits until listening."""
    if tool == "sockperf":
        lat = ["sockperf", "server", "-i", ep.server_ip, "-p", str(LATENCY_PORT)]
    else:
        lat = [sys.executable, "-m", "benchmarks.udpecho", "server",
               "--bind", ep.server_ip, "--port", str(LATENCY_PORT)]
    procs = []
    for name, cmd in (("iperf3", ["iperf3", "-s", "-B", ep.server_ip,
                                  "-p", str(IPERF_PORT)]), (tool, lat)):
        with open(ep.logdir / f"{tag}-{name}-server.log", "w") as log:
            procs.append(ep.lab.popen(ep.server_ns, cmd, cwd=ep.cwd,
                                      stdout=log, stderr=subprocess.STDOUT))
    listening = [("-Hltn", f"{ep.server_ip}:{IPERF_PORT}"),
                 ("-Hlun", f"{ep.server_ip}:{LATENCY_PORT}")]

    def ready() -> bool:
        if any(p.poll() is not None for p in procs):
            raise MeasureError(f"a traffic server exited; see {ep.logdir}")
        return all(addr in ep.lab.run(ep.server_ns, ["ss", flags]).stdout
                   for flags, addr in listening)

    wait_for(ready, timeout=10, interval=0.1, what="iperf3/latency servers")
    return procs


def iperf_tcp(ep: Endpoints, duration: float, streams: int = 1) -> dict:
    out = _client(ep, ["iperf3", "-c", ep.server_ip, "-B", ep.client_ip,
                       "-p", str(IPERF_PORT), "-t", str(duration),
                       "-P", str(streams), "--connect-timeout", "3000",
                       "--json"], duration)
    return tcp_result(parse_iperf_json(out))


def iperf_udp64(ep: Endpoints, duration: float,
                rate_pps: float | None = None) -> dict:
    """UDP 64 B datagrams: unlimited (-b 0) or paced at rate_pps (udp64_kr).

    Unlimited, the sender feels no back-pressure through a user-space tunnel,
    so its loss says little; paced at the kernel's rate, the loss is the
    figure the requirement asks for. The paced result keeps target_pps.
    """
    rate = ["-b", "0"]
    if rate_pps is not None:
        rate = ["-b", str(udp_bitrate(rate_pps)),
                "--pacing-timer", str(PACING_TIMER_US)]
    out = _client(ep, ["iperf3", "-c", ep.server_ip, "-B", ep.client_ip,
                       "-p", str(IPERF_PORT), "-t", str(duration), "-u",
                       "-l", str(UDP_PAYLOAD), *rate,
                       "--connect-timeout", "3000", "--json"], duration)
    result = udp_result(parse_iperf_json(out))
    if rate_pps is not None:
        result["target_pps"] = rate_pps
    return result


def latency(ep: Endpoints, duration: float, tool: str) -> dict:
    if tool == "sockperf":
        out = _client(ep, ["sockperf", "ping-pong", "-i", ep.server_ip,
                           "-p", str(LATENCY_PORT), "-t", str(max(1, round(duration))),
                           "-m", str(UDP_PAYLOAD), "--client_ip", ep.client_ip,
                           "--full-rtt"], duration)
        return parse_sockperf(out)
    out = _client(ep, [sys.executable, "-m", "benchmarks.udpecho", "client",
                       "--bind", ep.client_ip, "--to", ep.server_ip,
                       "--port", str(LATENCY_PORT), "--duration", str(duration),
                       "--size", str(UDP_PAYLOAD)], duration)
    result = json.loads(out)
    if not result.get("samples"):
        raise MeasureError("udpecho: no reply arrived")
    return result
