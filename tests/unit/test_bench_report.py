"""Parsers and report of benchmarks/ (no root, nothing timed)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import measure, report
from benchmarks.run import order_scenarios, parse_args
from benchmarks.stats import median, percentile, spread
from tests.support.requirements import require

# Trimmed from real iperf3 3.12 --json output.
UDP_DOC = {"end": {
    "sum": {"seconds": 1.0, "packets": 1000, "lost_packets": 10},
    "sum_sent": {"seconds": 1.0, "packets": 1100, "lost_packets": 0},
    "sum_received": {"seconds": 2.0, "packets": 1000, "lost_packets": 10},
}}
TCP_DOC = {"end": {
    "sum_sent": {"seconds": 2.0, "bits_per_second": 12e9, "retransmits": 7},
    "sum_received": {"seconds": 2.0, "bits_per_second": 10e9},
}}
SOCKPERF_OUT = """\
sockperf: [Valid Duration] RunTime=0.550 sec; SentMessages=8752; ReceivedMessages=8752
sockperf: \x1b[2;35m====> avg-rtt=62.846 (std-dev=35.252)\x1b[0m
sockperf: ---> <MAX> observation = 2316.156
sockperf: ---> percentile 99.999 = 2316.156
sockperf: ---> percentile 99.000 =  137.485
sockperf: ---> percentile 90.000 =   69.443
sockperf: ---> percentile 50.000 =   60.951
sockperf: ---> <MIN> observation =   13.770
"""


def test_iperf_json_errors_become_measure_errors():
    with pytest.raises(measure.MeasureError, match="unable to connect"):
        measure.parse_iperf_json(json.dumps({"error": "unable to connect"}))
    with pytest.raises(measure.MeasureError, match="no JSON"):
        measure.parse_iperf_json("iperf3: error - boom")
    with pytest.raises(measure.MeasureError, match="no 'end'"):
        measure.parse_iperf_json("{}")


def test_tcp_result_uses_receiver_goodput():
    assert measure.tcp_result(TCP_DOC) == {"gbps": 10.0, "retransmits": 7}


def test_udp_result_counts_arrivals_and_loss_against_sender():
    result = measure.udp_result(UDP_DOC)
    assert result["rx_pps"] == 990 / 2.0
    assert result["tx_pps"] == 1100.0
    assert result["loss_pct"] == pytest.approx(100 * 110 / 1100)


def test_udp_result_falls_back_to_sum_of_older_iperf3():
    doc = {"end": {"sum": UDP_DOC["end"]["sum"]}}
    result = measure.udp_result(doc)
    assert result["rx_pps"] == 990.0
    assert result["loss_pct"] == pytest.approx(1.0)


def test_udp_bitrate_is_payload_bits_per_second():
    assert measure.udp_bitrate(1000) == 1000 * 64 * 8
    assert measure.udp_bitrate(312_345.6) == round(312_345.6 * 512)
    assert measure.udp_bitrate(100, payload=1000) == 800_000
    assert measure.udp_bitrate(0.0001) == 1  # never 0: iperf3's "unlimited"
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            measure.udp_bitrate(bad)


def test_parse_sockperf_strips_colours_and_reads_percentiles():
    assert measure.parse_sockperf(SOCKPERF_OUT) == {
        "p50_us": 60.951, "p99_us": 137.485, "avg_us": 62.846}
    with pytest.raises(measure.MeasureError):
        measure.parse_sockperf("sockperf: ERROR: nothing received")


def test_parse_pid_stat_survives_odd_process_names():
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
    # majflt cmajflt utime stime ...
    text = "42 (py thon) x) S 1 42 42 0 -1 4194560 10 0 0 0 150 25 0 0 20 0 3"
    assert measure.parse_pid_stat(text) == 175


def test_parse_proc_stat_reads_the_machine_line():
    text = "cpu  10 1 20 300 4 5 6 7 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n"
    assert measure.parse_proc_stat(text) == {
        "user": 10, "nice": 1, "system": 20, "idle": 300, "iowait": 4,
        "irq": 5, "softirq": 6, "steal": 7}


def test_percentile_and_median():
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([0, 100], 99) == pytest.approx(99)
    assert median([None, 4, None, 2]) == 3
    assert median([None]) is None


def test_spread_is_min_max_of_two_or_more():
    assert spread([3.0, None, 1.0, 2.0]) == (1.0, 3.0)
    assert spread([5.0, 5.0]) == (5.0, 5.0)
    assert spread([4.0, None]) is None      # one value: nothing to show
    assert spread([]) is None


def _rep(gbps, machine=None, daemon=None, p50=50.0, udp=(2000.0, 0.0),
         kr=(1500.0, 0.0)):
    rep = {
        "tcp1": {"gbps": gbps, "cpu": {"machine_busy_cores": machine,
                                       "daemon_cores": daemon}},
        "tcp4": {"error": "MeasureError: iperf3: boom"},
        "udp64": {"rx_pps": udp[0], "loss_pct": udp[1]},
        "latency": {"p50_us": p50, "p99_us": 2 * p50},
    }
    if kr is not None:  # None: udp64_kr skipped (no rate), hence absent
        rep["udp64_kr"] = {"rx_pps": kr[0], "loss_pct": kr[1],
                           "target_pps": 1500.0}
    return rep


SCENARIOS = {
    "kernel-vxlan": {"status": "ok", "repetitions": [
        _rep(10.0, machine=1.0, udp=(1400.0, 0.1), kr=(1490.0, 0.5)),
        _rep(12.0, machine=1.2, udp=(1500.0, 0.0), kr=(1500.0, 0.0)),
        _rep(11.0, machine=1.1, udp=(1600.0, 0.2), kr=(1495.0, 0.2))]},
    "udpoverlay-udp": {"status": "ok", "repetitions": [
        _rep(2.0, machine=1.0, daemon=0.5, p50=100.0, udp=(2000.0, 80.0),
             kr=(1200.0, 20.0))]},
    "udpoverlay-vxlan": {"status": "error", "repetitions": [],
                         "error": "daemon on h1 exited with rc 2: bad | flag\nusage"},
}


def test_flatten_derives_cpu_per_gbps():
    flat = report.flatten(_rep(2.0, machine=1.0, daemon=0.5))
    assert flat["cpu_machine_pct_per_gbps"] == 50.0
    assert flat["cpu_daemon_pct_per_gbps"] == 25.0
    assert flat["tcp4_gbps"] is None
    assert flat["udp64_rx_kpps"] == 2.0
    assert flat["udp64_kr_rx_kpps"] == 1.5
    assert flat["udp64_kr_loss_pct"] == 0.0
    assert set(flat) == {m.key for m in report.METRICS}
    skipped = report.flatten(_rep(2.0, kr=None))
    assert skipped["udp64_kr_rx_kpps"] is None
    assert skipped["udp64_kr_loss_pct"] is None
    assert report.flatten({})["tcp1_gbps"] is None
    pingpong = report.flatten({"latency": {"p50_us": 40.0, "p99_us": 90.0, "cpu": {
        "machine_busy_cores": 0.9, "daemon_cores": 0.6}}})
    assert (pingpong["lat_cpu_machine_cores"], pingpong["lat_cpu_daemon_cores"]) == (0.9, 0.6)


def test_kernel_rate_is_median_udp64_rx():
    assert report.udp64_rate_pps(SCENARIOS["kernel-vxlan"]) == 1500.0
    failed = {"repetitions": [{"udp64": {"error": "MeasureError: boom"}}]}
    assert report.udp64_rate_pps(failed) is None
    assert report.udp64_rate_pps({"status": "error", "repetitions": []}) is None


def test_summary_is_median_and_ratio_is_to_kernel_vxlan():
    summary = report.summarize(SCENARIOS)
    assert summary["kernel-vxlan"]["tcp1_gbps"] == 11.0
    assert summary["udpoverlay-vxlan"]["tcp1_gbps"] is None
    rel = report.ratios(summary)
    assert rel["udpoverlay-udp"]["tcp1_gbps"] == pytest.approx(2 / 11)
    assert rel["udpoverlay-udp"]["lat_p50_us"] == pytest.approx(2.0)
    assert summary["kernel-vxlan"]["udp64_kr_rx_kpps"] == pytest.approx(1.495)
    assert summary["kernel-vxlan"]["udp64_kr_loss_pct"] == pytest.approx(0.2)
    assert summary["udpoverlay-udp"]["udp64_kr_loss_pct"] == 20.0
    assert summary["udpoverlay-vxlan"]["udp64_kr_rx_kpps"] is None
    assert rel["udpoverlay-udp"]["udp64_kr_rx_kpps"] == pytest.approx(1.2 / 1.495)
    # loss % never has a ratio, even where the baseline's loss is not 0
    assert summary["kernel-vxlan"]["udp64_loss_pct"] == pytest.approx(0.1)
    assert rel["udpoverlay-udp"]["udp64_loss_pct"] is None
    assert rel["udpoverlay-udp"]["udp64_kr_loss_pct"] is None
    assert rel["kernel-vxlan"]["cpu_daemon_pct_per_gbps"] is None
    assert all(v is None for v in report.ratios(summary, "absent")["kernel-vxlan"].values())


def test_spreads_follow_the_repetitions():
    rng = report.spreads(SCENARIOS)
    assert rng["kernel-vxlan"]["tcp1_gbps"] == (10.0, 12.0)
    assert rng["kernel-vxlan"]["udp64_loss_pct"] == (0.0, 0.2)
    assert rng["kernel-vxlan"]["tcp4_gbps"] is None         # every repetition failed
    assert rng["udpoverlay-udp"]["tcp1_gbps"] is None       # one repetition
    assert all(v is None for v in rng["udpoverlay-vxlan"].values())


def test_markdown_table_shows_spread_next_to_the_median():
    lines = report.markdown_table(SCENARIOS).strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    kernel = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert kernel["scenario"] == "kernel-vxlan"
    assert kernel["TCP 1 stream Gbit/s"] == "11.00 [10.00–12.00] (×1.00)"
    assert kernel["UDP 64 B rx kpps"] == "1.5 [1.4–1.6] (×1.00)"
    assert kernel["UDP 64 B loss %"] == "0.1 [0.0–0.2]"        # spread, still no ratio
    assert kernel["RTT p50 µs"] == "50.0 [50.0–50.0] (×1.00)"
    assert kernel["TCP 4 streams Gbit/s"] == "—"


def test_markdown_table_rows_columns_and_errors():
    table = report.markdown_table(SCENARIOS)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(SCENARIOS)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["scenario", *(m.label for m in report.METRICS), "status"]
    row = dict(zip(header, (c.strip() for c in lines[3].strip("|").split("|"))))
    assert row["scenario"] == "udpoverlay-udp"
    assert row["TCP 1 stream Gbit/s"] == "2.00 (×0.18)"
    assert row["TCP 4 streams Gbit/s"] == "—"
    assert row["UDP 64 B @kernel rate kpps"] == "1.2 (×0.80)"
    assert row["UDP 64 B loss %"] == "80.0"  # no "(×...)" for loss
    assert row["UDP 64 B @kernel rate loss %"] == "20.0"
    no_ratio = [m.label for m in report.METRICS if not m.ratio]
    assert no_ratio == ["UDP 64 B loss %", "UDP 64 B @kernel rate loss %",
                        "ping-pong daemon CPU cores"]
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        assert all("×" not in cells[label] for label in no_ratio)
    assert row["status"].startswith("ok; 1 measurement error(s): tcp4:")
    error_row = lines[4]
    assert "error: daemon on h1 exited with rc 2: bad / flag usage" in error_row
    assert error_row.count("|") == len(header) + 1  # the "|" was escaped away


def test_markdown_report_has_notes():
    doc = {"meta": {"repeat": 3, "duration": 5, "latency_tool": "sockperf",
                    "udp64_kr_rate_pps": 1500.0,
                    "udp64_kr_rate_source": "median udp64 rx of kernel-vxlan"},
           "scenarios": SCENARIOS}
    text = report.markdown_report(doc)
    assert "Medians of 3 repetition(s) of 5 s" in text
    assert "sockperf" in text
    assert "paced at 1.5 kpps (median udp64 rx of kernel-vxlan)" in text
    assert "Loss % has no ratio" in text
    assert "[a–b] = the lowest and highest of the repetitions" in text
    assert "--io: their default (auto)" in text
    doc["meta"]["io"] = "io_uring"
    assert "udpoverlay daemons' --io: io_uring." in report.markdown_report(doc)
    doc["meta"]["udp64_kr_rate_pps"] = None
    assert "@kernel rate: not measured" in report.markdown_report(doc)


def test_chart_is_written(tmp_path):
    require(importlib.util.find_spec("matplotlib") is not None,
            "needs matplotlib (benchmarks/requirements.txt)")
    path = tmp_path / "chart.png"
    assert report.write_chart(SCENARIOS, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_args_validates_scenarios():
    args = parse_args(["--scenarios", "host-routing, kernel-vxlan", "--repeat", "1"])
    assert args.scenarios == ["host-routing", "kernel-vxlan"]
    assert (args.repeat, args.duration) == (1, 5.0)
    with pytest.raises(SystemExit):
        parse_args(["--scenarios", "nope"])
    with pytest.raises(SystemExit):
        parse_args(["--duration", "0"])
    assert args.io is None and parse_args(["--io", "epoll"]).io == "epoll"
    with pytest.raises(SystemExit):
        parse_args(["--io", "uring"])


def test_io_mode_reaches_the_daemon_command_line():
    from benchmarks.scenarios import NODES, make_scenario
    h1, h2 = NODES
    cmd = make_scenario("udpoverlay-udp-nooffload", "io_uring").command(h1, h2)
    assert cmd[-3:] == ["--no-offload", "--io", "io_uring"]
    cmd = make_scenario("udpoverlay-udp-plain").command(h1, h2)
    assert cmd[-2:] == ["--no-offload", "--no-udp-offload"]
    assert "--io" not in make_scenario("udpoverlay-vxlan").command(h1, h2)
    assert make_scenario("udpoverlay-vxlan-direct", "epoll").command(h1, h2)[-3:] == [
        "--io", "epoll", "--direct-routing"]


def test_parse_args_udp_rate(capsys):
    assert parse_args([]).udp_rate is None
    assert parse_args(["--udp-rate", "250000"]).udp_rate == 250000.0
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit):
            parse_args(["--udp-rate", bad])
        assert "--udp-rate must be a positive number of packets/s" in (
            capsys.readouterr().err)
    with pytest.raises(SystemExit):
        parse_args(["--udp-rate", "fast"])


def test_kernel_vxlan_runs_first():
    assert order_scenarios(["host-routing", "udpoverlay-udp", "kernel-vxlan",
                            "udpoverlay-vxlan"]) == [
        "kernel-vxlan", "host-routing", "udpoverlay-udp", "udpoverlay-vxlan"]
    assert order_scenarios(["kernel-vxlan", "host-routing"]) == [
        "kernel-vxlan", "host-routing"]
    assert order_scenarios(["udpoverlay-udp", "host-routing"]) == [
        "udpoverlay-udp", "host-routing"]
    assert order_scenarios(["host-routing", "kernel-vxlan", "host-routing"]) == [
        "kernel-vxlan", "host-routing"]
    assert order_scenarios([]) == []


def test_fastd_config_is_a_null_tun_tunnel_to_the_other_host():
    from benchmarks.scenarios import NODES, fastd_config
    h1, h2 = NODES
    conf = fastd_config(h1, h2, "aa" * 32, "bb" * 32, "fd0")
    assert 'method "null";' in conf and "mode tun;" in conf
    assert f"bind {h1.underlay_ip}:10000;" in conf
    assert f'secret "{"aa" * 32}";' in conf
    assert f'key "{"bb" * 32}";' in conf and f"remote {h2.underlay_ip}:10000;" in conf
    assert f"ip route replace {h2.subnet} dev $INTERFACE" in conf
    assert conf.count("{") == conf.count("}") == 1
