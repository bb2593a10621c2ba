"""/metrics on a real daemon (static mode) for what issue 20 item 9 found
missing: process_* of the daemon's own process, per-peer liveness and the
peers-by-state gauge, keepalives sent, firewall re-applies after someone
flushes the rules, only the drop series that can move, and the page
gzip-compressed when the scraper asks (as Prometheus does)."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import time

from lab.netns import wait_for
from tests.integration.ops.httpget import HEALTHZ_PORT, parse, sample, scrape
from tests.support.overlay import subnet_of, underlay_of
from tests.support.probes import assert_pings
from tests.support.requirements import require
from udpoverlay.ops.metrics import DROP_REASONS

# argv: URL -> prints the Content-Encoding line, then the raw body (hex)
GZ = r"""
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Accept-Encoding": "gzip"})
with urllib.request.urlopen(req, timeout=5) as r:
    print(r.headers.get("Content-Encoding"))
    print(r.read().hex())
"""


def test_process_liveness_keepalives_firewall_drops_and_gzip(overlay2):
    require(shutil.which("iptables") is not None, "needs iptables")
    ov = overlay2
    addr = underlay_of(1)
    d1 = ov.start(1, extra=["--healthz-port", str(HEALTHZ_PORT), "--healthz-ip", addr,
                            "--keepalive", "1", "--ip-masq", "--iptables-resync", "1"])
    ov.start(2)
    h1 = ov.hosts[1]
    assert_pings(ov, 1, 2, count=2)
    peer = {"subnet": subnet_of(2), "peer": f"{underlay_of(2)}:8285"}
    wait_for(lambda: sample(scrape(ov, h1, addr), "udpoverlay_peer_active", **peer) == 1,
             10, 0.3, "h2 active in /metrics")
    m = scrape(ov, h1, addr)
    assert sample(m, "udpoverlay_peers", state="active") == 1
    assert sample(m, "udpoverlay_peers", state="never") == 0
    assert sample(m, "udpoverlay_tx_keepalives_total") >= 1
    assert sample(m, "udpoverlay_tx_keepalive_errors_total") == 0
    # the daemon's own process, not the scraper's
    pid = d1.proc.pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    assert abs(sample(m, "process_open_fds") - fds) <= 8, (sample(m, "process_open_fds"), fds)
    assert 0 < time.time() - sample(m, "process_start_time_seconds") < 120
    assert sample(m, "process_resident_memory_bytes") > 10 << 20
    assert sample(m, "process_cpu_seconds_total") > 0
    # only the drop series that can move
    drops = {dict(k[1])["direction"] + "/" + dict(k[1])["reason"]
             for k in m if k[0] == "udpoverlay_drops_total"}
    assert drops == {f"{d}/{r}" for d in ("tx", "rx") for r in DROP_REASONS[d]}
    # someone flushes the nat table: put back within the resync, counted
    assert sample(m, "udpoverlay_firewall_repairs_total") == 0
    ov.lab.run(h1.netns, ["iptables", "-t", "nat", "-F"])
    wait_for(lambda: sample(scrape(ov, h1, addr), "udpoverlay_firewall_repairs_total") == 1,
             10, 0.3, "the re-apply counted")
    assert ov.status(h1)["node_network"]["firewall_repairs"] == 1
    # gzip when asked; the same page as plain text
    r = ov.run(h1, [sys.executable, "-c", GZ, f"http://{addr}:{HEALTHZ_PORT}/metrics"])
    assert r.returncode == 0, r.stderr
    encoding, body = r.stdout.split("\n")[:2]
    assert encoding == "gzip"
    page = parse(gzip.decompress(bytes.fromhex(body)).decode())
    assert sample(page, "udpoverlay_routes") == 1
    assert sample(page, "udpoverlay_peer_active", **peer) == 1
