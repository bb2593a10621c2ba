"""HTTP GETs from inside a host's namespace (the endpoint listens on the
host's underlay address, reachable only there), and /metrics parsed with
prometheus_client's own parser."""

from __future__ import annotations

import sys

from prometheus_client.parser import text_string_to_metric_families

# argv: URL TIMEOUT -> prints "STATUS\n" then the body; exit 0 (or 3: no answer)
GET = r"""
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError as e:
    print("no answer:", e); sys.exit(3)
sys.stdout.write(f"{status}\n"); sys.stdout.flush(); sys.stdout.buffer.write(body)
"""

HEALTHZ_PORT = 8286


def get(ov, host, path: str, addr: str, port: int = HEALTHZ_PORT) -> tuple[int, str]:
    """(status, body); status 0 when nothing answered."""
    r = ov.run(host, [sys.executable, "-c", GET, f"http://{addr}:{port}{path}", "3"],
               timeout=20)
    if r.returncode != 0:
        return 0, r.stdout + r.stderr
    status, _, body = r.stdout.partition("\n")
    return int(status), body


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label pairs): value} of a /metrics page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(ov, host, addr: str, port: int = HEALTHZ_PORT) -> dict[tuple[str, tuple], float]:
    status, body = get(ov, host, "/metrics", addr, port)
    assert status == 200, (status, body)
    return parse(body)


def sample(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))
