"""From raw repetitions to medians, their spread, ratios, a Markdown table
and a chart.

The raw results (results.json) hold, per scenario, a status and a list of
repetitions; each repetition maps a measurement name (tcp1, tcp4, udp64,
latency, udp64_kr) to the runner's dict or to {"error": "..."}; a skipped
measurement (udp64_kr without a rate) is simply absent. Everything here is a
pure function of that structure except write_chart (matplotlib, Agg).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.stats import median, spread

BASELINE = "kernel-vxlan"


@dataclass(frozen=True)
class Metric:
    """One table column. ratio=False: no (×ratio to the baseline), no bar.

    Loss % gets no ratio: the kernel's loss is often 0.0 or nearly so, and a
    ratio to it ("×15299") says nothing the percentage does not.
    """
    key: str
    label: str
    better: str  # "higher" or "lower"
    fmt: str = "{:.2f}"
    ratio: bool = True


METRICS = (
    Metric("tcp1_gbps", "TCP 1 stream Gbit/s", "higher"),
    Metric("tcp4_gbps", "TCP 4 streams Gbit/s", "higher"),
    Metric("udp64_rx_kpps", "UDP 64 B rx kpps", "higher", "{:.1f}"),
    Metric("udp64_loss_pct", "UDP 64 B loss %", "lower", "{:.1f}", ratio=False),
    Metric("udp64_kr_rx_kpps", "UDP 64 B @kernel rate kpps", "higher", "{:.1f}"),
    Metric("udp64_kr_loss_pct", "UDP 64 B @kernel rate loss %", "lower",
           "{:.1f}", ratio=False),
    Metric("lat_p50_us", "RTT p50 µs", "lower", "{:.1f}"),
    Metric("lat_p99_us", "RTT p99 µs", "lower", "{:.1f}"),
    Metric("cpu_machine_pct_per_gbps", "machine CPU %/(Gbit/s)", "lower", "{:.1f}"),
    Metric("cpu_daemon_pct_per_gbps", "daemon CPU %/(Gbit/s)", "lower", "{:.1f}"),
    # what the RTT costs: busy polling trades CPU for wakeups (--busy-poll-us)
    Metric("lat_cpu_machine_cores", "ping-pong machine CPU cores", "lower"),
    Metric("lat_cpu_daemon_cores", "ping-pong daemon CPU cores", "lower", ratio=False),
)


_NO_RATIO = frozenset(m.key for m in METRICS if not m.ratio)


def _get(rep: dict, measurement: str, field: str) -> float | None:
    value = (rep.get(measurement) or {}).get(field)
    return float(value) if isinstance(value, (int, float)) else None


def _per_gbps(cores: float | None, gbps: float | None) -> float | None:
    if cores is None or not gbps:
        return None
    return 100.0 * cores / gbps


def _kpps(rep: dict, measurement: str) -> float | None:
    pps = _get(rep, measurement, "rx_pps")
    return None if pps is None else pps / 1000


def flatten(rep: dict) -> dict[str, float | None]:
    """One repetition's raw dicts -> {metric key: value or None}."""
    gbps = _get(rep, "tcp1", "gbps")
    cpu = (rep.get("tcp1") or {}).get("cpu") or {}
    lat_cpu = (rep.get("latency") or {}).get("cpu") or {}
    return {
        "tcp1_gbps": gbps,
        "tcp4_gbps": _get(rep, "tcp4", "gbps"),
        "udp64_rx_kpps": _kpps(rep, "udp64"),
        "udp64_loss_pct": _get(rep, "udp64", "loss_pct"),
        "udp64_kr_rx_kpps": _kpps(rep, "udp64_kr"),
        "udp64_kr_loss_pct": _get(rep, "udp64_kr", "loss_pct"),
        "lat_p50_us": _get(rep, "latency", "p50_us"),
        "lat_p99_us": _get(rep, "latency", "p99_us"),
        "cpu_machine_pct_per_gbps": _per_gbps(cpu.get("machine_busy_cores"), gbps),
        "cpu_daemon_pct_per_gbps": _per_gbps(cpu.get("daemon_cores"), gbps),
        "lat_cpu_machine_cores": lat_cpu.get("machine_busy_cores"),
        "lat_cpu_daemon_cores": lat_cpu.get("daemon_cores"),
    }


def summarize(scenarios: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Median of every metric over a scenario's repetitions."""
    summary = {}
    for name, result in scenarios.items():
        flat = [flatten(rep) for rep in result.get("repetitions", [])]
        summary[name] = {m.key: median(f[m.key] for f in flat) for m in METRICS}
    return summary


def spreads(scenarios: dict[str, dict]) -> dict[str, dict[str, tuple[float, float] | None]]:
    """(min, max) of every metric over a scenario's repetitions (None with
    fewer than two values): the noise a reader weighs the median against."""
    out = {}
    for name, result in scenarios.items():
        flat = [flatten(rep) for rep in result.get("repetitions", [])]
        out[name] = {m.key: spread(f[m.key] for f in flat) for m in METRICS}
    return out


def udp64_rate_pps(result: dict) -> float | None:
    """Median udp64 datagrams/s that arrived over a scenario's repetitions.

    For kernel-vxlan, this is the rate udp64_kr offers every scenario: the
    rate the kernel sustains. None when no repetition has a udp64 result.
    """
    return median(_get(rep, "udp64", "rx_pps")
                  for rep in result.get("repetitions", []))


def ratios(summary: dict[str, dict], baseline: str = BASELINE
           ) -> dict[str, dict[str, float | None]]:
    """value / baseline's value of the same metric (None where undefined).

    Always None for metrics with ratio=False (loss %).
    """
    base = summary.get(baseline, {})
    out = {}
    for name, values in summary.items():
        out[name] = {}
        for key, value in values.items():
            ref = base.get(key)
            defined = key not in _NO_RATIO and value is not None and ref
            out[name][key] = value / ref if defined else None
    return out


def measurement_errors(result: dict) -> list[str]:
    """Distinct '<measurement>: <error>' strings over all repetitions."""
    seen: list[str] = []
    for rep in result.get("repetitions", []):
        for measurement, value in rep.items():
            if isinstance(value, dict) and value.get("error"):
                text = f"{measurement}: {value['error']}"
                if text not in seen:
                    seen.append(text)
    return seen


def _cell_text(text: str, limit: int = 400) -> str:
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def status_text(result: dict) -> str:
    if result.get("status") == "error":
        return _cell_text(f"error: {result.get('error')}")
    errors = measurement_errors(result)
    if errors:
        return _cell_text(f"ok; {len(errors)} measurement error(s): "
                          + "; ".join(errors))
    return "ok"


def cell_text(m: Metric, value: float | None, rng: tuple[float, float] | None,
              ratio: float | None) -> str:
    """One cell: median [min–max over the repetitions] (×ratio)."""
    if value is None:
        return "—"
    cell = m.fmt.format(value)
    if rng is not None:
        cell += f" [{m.fmt.format(rng[0])}–{m.fmt.format(rng[1])}]"
    if ratio is not None:
        cell += f" (×{ratio:.2f})"
    return cell


def markdown_table(scenarios: dict[str, dict], baseline: str = BASELINE) -> str:
    """Rows scenarios, columns metric medians with [min–max] over the
    repetitions (where there are two or more) and (×ratio to baseline).

    Metrics with ratio=False (loss %) show no ratio.
    """
    summary = summarize(scenarios)
    spread_of = spreads(scenarios)
    rel = ratios(summary, baseline)
    header = ["scenario", *(m.label for m in METRICS), "status"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(METRICS) + ["---"]) + "|"]
    for name, result in scenarios.items():
        cells = [name]
        for m in METRICS:
            cells.append(cell_text(m, summary[name][m.key], spread_of[name][m.key],
                                   rel[name][m.key]))
        cells.append(status_text(result))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def udp64_kr_note(meta: dict) -> str:
    """What "@kernel rate" meant in this run: the rate and where it came from."""
    rate = meta.get("udp64_kr_rate_pps")
    if not rate:
        return ("UDP 64 B @kernel rate: not measured (no kernel-vxlan udp64 "
                "result in this run and no --udp-rate).")
    source = meta.get("udp64_kr_rate_source") or "?"
    return (f"UDP 64 B @kernel rate: iperf3 UDP, 64-byte payloads, paced at "
            f"{rate / 1000:.1f} kpps ({source}); loss % against what was sent. "
            "The plain UDP 64 B columns are unpaced (-b 0), where a "
            "user-space tunnel's sender feels no back-pressure.")


def markdown_report(doc: dict) -> str:
    """The whole results.md: a title, the table and what the numbers mean."""
    meta = doc.get("meta", {})
    notes = [
        f"Medians of {meta.get('repeat', '?')} repetition(s) of "
        f"{meta.get('duration', '?')} s each, one run on one topology "
        f"({meta.get('started', '?')}, kernel {meta.get('kernel', '?')}, "
        f"{meta.get('cpus', '?')} CPUs).",
        "[a–b] = the lowest and highest of the repetitions: the noise to weigh "
        "a median (and a ratio) against; none with a single repetition.",
        f"(×r) = ratio of the medians to {BASELINE} in the same run. Higher is better for "
        "throughput and kpps; lower for loss, latency and CPU. Loss % has no "
        "ratio: the kernel's loss is often 0.",
        udp64_kr_note(meta),
        f"Latency: UDP ping-pong round trip, {meta.get('latency_tool', '?')}, "
        "64-byte messages.",
        f"udpoverlay daemons' --io: {meta.get('io') or 'their default (auto)'}.",
        "CPU is sampled during the TCP one-stream test: machine = busy time "
        "(user+nice+system+irq+softirq) of the whole machine, including both "
        "iperf3 ends; daemon = utime+stime of the two udpoverlay daemons. "
        "100 % = one core.",
    ]
    return ("# udpoverlay benchmark\n\n" + markdown_table(doc["scenarios"])
            + "\n" + "\n".join(f"- {n}" for n in notes) + "\n")


def write_chart(scenarios: dict[str, dict], path: Path,
                baseline: str = BASELINE) -> bool:
    """Bars of each scenario's ratio to the baseline, one group per metric.

    Returns False (and writes nothing) when matplotlib is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    rel = ratios(summarize(scenarios), baseline)
    names = [name for name in rel if name != baseline]
    # loss % has no ratios; nor have metrics the baseline has no value for
    # (daemon CPU)
    with_ratio = [m for m in METRICS if m.ratio]
    metrics = [m for m in with_ratio
               if any(rel[n][m.key] for n in names)] or with_ratio
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, m in enumerate(metrics):
            if rel[name][m.key]:  # a log axis cannot show 0
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(rel[name][m.key])
        # bars grow from the baseline (1) up or down to the ratio
        ax.bar(xs, [y - 1 for y in ys], width, bottom=1, label=name)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda y, _: f"×{y:g}"))
    ax.axhline(1.0, color="black", linewidth=0.8, label=f"{baseline} (×1)")
    if baseline not in rel or not names:
        ax.text(0.5, 0.5, f"nothing to compare with {baseline} in this run",
                transform=ax.transAxes, ha="center")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([f"{m.label}\n({m.better} is better)" for m in metrics],
                       fontsize=7)
    ax.set_ylabel(f"ratio to {baseline} (same run, log scale)")
    ax.set_title("udpoverlay benchmark: medians relative to the kernel's vxlan")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
