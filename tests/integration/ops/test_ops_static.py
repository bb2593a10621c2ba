"""The operations endpoint, systemd notification and SIGHUP on real daemons
in namespaces (static mode): /metrics against `status --json` after a real
transfer, drops counted when forged datagrams arrive, READY=1 then
STOPPING=1 on a $NOTIFY_SOCKET the test listens on, and a SIGHUP that
re-reads --env-file while traffic keeps flowing."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from lab.netns import wait_for
from tests.integration.ops.httpget import HEALTHZ_PORT, get, sample, scrape
from tests.support import pktgen as g
from tests.support.overlay import PORT, pod_of, subnet_of, underlay_of
from tests.support.probes import SENDER, assert_pings

OPS = ["--healthz-port", str(HEALTHZ_PORT)]
# argv: ADDR PORT. Bad requests first (each answered), then 40 idle
# connections held open for up to 20 s.
HOSTILE = r"""
import socket, sys, time
addr = (sys.argv[1], int(sys.argv[2]))
def ask(name, data):
    s = socket.create_connection(addr, timeout=5)
    s.sendall(data)
    print(name + ":", s.recv(100).split(b"\r\n")[0].decode(), flush=True)
    s.close()
ask("big", b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
ask("junk", bytes(range(1, 256)) + b"\r\n\r\n")
ask("post", b"POST /readyz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
idle = [socket.create_connection(addr, timeout=5) for _ in range(40)]
print("holding", len(idle), flush=True)
time.sleep(20)
"""


def _notify_socket(tmp_path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify.sock"))
    s.settimeout(15)
    return s


def _next_state(s: socket.socket) -> str:
    """The next message that is not a STATUS= line of the start-up wait."""
    for _ in range(20):
        msg = s.recv(4096).decode()
        if not msg.startswith("STATUS=waiting"):
            return msg
    raise AssertionError("only STATUS= lines")


def test_metrics_equal_status_and_count_forged_drops_notify_ready_stopping(overlay2, tmp_path):
    ov = overlay2
    notify = _notify_socket(tmp_path)
    try:
        d1 = ov.start(1, extra=[*OPS, "--healthz-ip", underlay_of(1)],
                      env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        ov.start(2)
        msg = _next_state(notify)
        assert msg.splitlines()[0] == "READY=1", msg
        h1, h2 = ov.hosts[1], ov.hosts[2]
        assert get(ov, h1, "/healthz", underlay_of(1)) == (200, "ok\n")
        assert get(ov, h1, "/readyz", underlay_of(1)) == (200, "ok\n")
        ov.transfer(1, 2, 2_000_000, 5301)
        ov.transfer(2, 1, 500_000, 5302)

        st = ov.status(h1)
        m = scrape(ov, h1, underlay_of(1))
        [peer] = st["peers"]
        where = f"{peer['public_ip']}:{peer['port']}"
        for d in ("tx", "rx"):
            for what in ("packets", "bytes"):
                got = sample(m, f"udpoverlay_peer_{what}_total", subnet=subnet_of(2), peer=where,
                             direction=d)
                assert got == peer[f"{d}_{what}"] > 0, (d, what, got, peer)
                assert sample(m, f"udpoverlay_{what}_total", direction=d) == \
                    st["counters"][f"{d}_{what}"]
        assert sample(m, "udpoverlay_routes") == 1
        assert sample(m, "udpoverlay_ready") == 1
        info = [k for k in m if k[0] == "udpoverlay_build_info"]
        assert len(info) == 1 and dict(info[0][1])["fastpath"] == st["implementation"]
        assert sample(m, "udpoverlay_offload_enabled", feature="vnet_hdr") == \
            int(st["offload"]["enabled"])

        # Forged datagrams: from h2's address but not its port (bad_port),
        # and from a host that is no peer at all (an address h1 never heard of).
        before = sample(m, "udpoverlay_drops_total", direction="rx", reason="bad_port")
        forged = bytes(g.udp(pod_of(2), pod_of(1), 4444, 9998, b"injected"))
        for port in ("40000", "40001", "40002"):
            r = ov.run(h2, [sys.executable, "-c", SENDER, underlay_of(2), port,
                            underlay_of(1), str(PORT), forged.hex()])
            assert r.returncode == 0, r.stderr

        def dropped():
            now = scrape(ov, h1, underlay_of(1))
            return sample(now, "udpoverlay_drops_total", direction="rx", reason="bad_port")
        wait_for(lambda: dropped() == before + 3, 10, 0.1, "bad_port drops in /metrics")
        assert ov.status(h1)["counters"]["rx_drop_bad_port"] == before + 3

        assert ov.stop(d1) == 0
        msg = _next_state(notify)
        assert msg.splitlines()[0] == "STOPPING=1", msg
    finally:
        notify.close()


def test_hostile_clients_do_not_hurt_the_endpoint_or_traffic(overlay2):
    """A neighbour host sends an oversized head, garbage and a POST, then
    holds a pile of idle connections open: each bad request gets its one-line
    error, the idle pile over the per-client cap is closed after the
    probation timeout, and h1's own probes still answer while the pile is
    held; pings pass."""
    ov = overlay2
    ov.start(1, extra=[*OPS, "--healthz-ip", underlay_of(1)])
    ov.start(2)
    h1, h2 = ov.hosts[1], ov.hosts[2]
    out = ov.tmp / "hostile.out"
    with open(out, "wb") as f:
        proc = ov.lab.popen(h2.netns, [sys.executable, "-c", HOSTILE, underlay_of(1),
                                       str(HEALTHZ_PORT)], stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"holding" in out.read_bytes() or proc.poll() is not None, 20, 0.05,
                 "hostile client")
        text = out.read_text()
        assert "big: HTTP/1.1 431" in text and "junk: HTTP/1.1 400" in text, text
        assert "post: HTTP/1.1 405" in text and "holding" in text, text
        # while h2 holds its connections, h1's own probe is served
        assert get(ov, h1, "/healthz", underlay_of(1)) == (200, "ok\n")
        # over the per-client cap, 32 are on probation: closed after 1 s silent
        wait_for(lambda: sample(scrape(ov, h1, underlay_of(1)),
                                "udpoverlay_http_connections_rejected_total") >= 32,
                 10, 0.2, "the idle connections over the cap closed")
    finally:
        ov.lab.stop(proc)
    assert_pings(ov, 1, 2, count=2)


def test_sighup_rereads_env_file_and_keeps_traffic(overlay2, tmp_path):
    ov = overlay2
    env_file = tmp_path / "udpoverlay.env"
    env_file.write_text("FLANNELD_V=0\nFLANNELD_IP_MASQ=false\n")
    d1 = ov.start(1, extra=["--env-file", str(env_file)])
    ov.start(2)
    assert_pings(ov, 1, 2, count=1)
    env_file.write_text("# changed\nFLANNELD_V=1\nFLANNELD_LOG_FORMAT=json\n"
                        "FLANNELD_IP_MASQ=true\n")
    d1.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "log format json" in d1.stderr(), 10, 0.1, "reload logged")
    log = d1.stderr()
    assert "SIGHUP: log verbosity -v 1 (was 0)" in log, log
    assert f"FLANNELD_IP_MASQ changed in {env_file}, needs a restart" in log, log
    assert d1.proc.poll() is None
    assert_pings(ov, 1, 2, count=2)
    # a bad value: one error line, the running settings stay, still forwarding
    env_file.write_text("FLANNELD_V=lots\n")
    d1.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in d1.stderr(), 10, 0.1, "failed reload logged")
    assert d1.proc.poll() is None
    assert_pings(ov, 1, 2, count=1)
    assert ov.stop(d1) == 0
