"""Where static peers may point, and the files that say so.

- Names that resolve (through h1's own hosts file) to 127.0.0.1, 0.0.0.0
  and 224.0.0.1 never carry pod traffic: a uid-65534 socket on h1 and one
  on h2 (the LAN), both on the peers' port, receive none of h1's pod
  packets (they do receive the test's own control datagrams, so they would
  see them), datagrams the local socket forges as that peer never reach
  h1's TUN, and status lists the three peers waiting, refused. The
  addresses exist only inside the test's namespaces.
- Those addresses as literals (--peer, the peers file) and --ip-masq with a
  --network holding the underlay address: exit 2, one line, no TUN.
- A peers file others may write (0666, or a symlink to uid 65534's file)
  is refused at start; one that uid 65534 took over is refused on SIGHUP
  and the running table stays.
- The env file and the peers file replaced by FIFOs: a SIGHUP stalls
  neither the pings nor /healthz, and SIGTERM still ends the daemon at
  once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.laptop.helpers import (
    default_route,
    name_of,
    reply_times,
    start_static,
    tun_rx_packets,
    wait_until,
)
from tests.integration.ops.httpget import get
from tests.support.overlay import Overlay, pod_of, subnet_of, underlay_of
from tests.support.requirements import require

NOBODY = 65534
PYTHON = "/usr/bin/python3"        # runnable by uid 65534 (not a pyenv shim)
TRAP_PORT = 9001
HEALTHZ = 8290
BAD = {3: "127.0.0.1", 4: "0.0.0.0", 5: "224.0.0.1"}     # peer host index -> answer

# A uid-65534 socket on 0.0.0.0:TRAP_PORT. Counts datagrams that are IPv4
# packets (pod traffic) and the test's b"control" ones; on b"inject" it
# sends 20 packets from 198.19.3.5 (inside the 127.0.0.1 peer's subnet) to
# h1's daemon, as that peer; on b"quit" it prints its counts and exits.
TRAP = r"""
import json, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!10H", b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def forged(i):
    body = struct.pack("!HHHH", 4000, 4000, 12, 0) + b"hey!"
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), i, 0, 64, 17, 0,
                      socket.inet_aton("198.19.3.5"), socket.inet_aton("198.19.1.1"))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + body
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.2)
print("ready", flush=True)
got = {"pod": 0, "control": 0, "injected": 0}
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        data, src = s.recvfrom(65535)
    except socket.timeout:
        continue
    if data == b"quit":
        break
    if data == b"inject":
        for i in range(20):
            s.sendto(forged(i), ("127.0.0.1", 8285))
        got["injected"] += 20
    elif data == b"control":
        got["control"] += 1
    elif data[:1] and data[0] >> 4 == 4:
        got["pod"] += 1
print(json.dumps(got), flush=True)
"""

SEND = ("import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))\n")


def _nobody(cmd: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]


def _require_nobody_tools() -> None:
    require(os.access(PYTHON, os.X_OK), f"needs {PYTHON}")
    require(subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0,
            "needs setpriv (util-linux)")


def _trap(ov: Overlay, i: int) -> tuple[subprocess.Popen, Path]:
    out = ov.tmp / f"trap-h{i}.out"
    with open(out, "w") as f:
        proc = ov.lab.popen(ov.hosts[i].netns,
                            _nobody([PYTHON, "-I", "-c", TRAP, str(TRAP_PORT), "40"]),
                            stdout=f, stderr=subprocess.STDOUT)
    wait_until(lambda: "ready" in out.read_text() or proc.poll() is not None, 10,
               what=f"the trap on h{i}")
    return proc, out


def _send(ov: Overlay, i: int, addr: str, text: str) -> None:
    ov.run(ov.hosts[i], [PYTHON, "-I", "-c", SEND, addr, str(TRAP_PORT), text], check=True)


def test_names_answering_local_or_multicast_addresses_get_no_pod_traffic(overlay2, netns_etc):
    _require_nobody_tools()
    ov = overlay2
    h1 = ov.hosts[1]
    for i in (1, 2):
        default_route(ov, i)
    names = {i: name_of(ov, i) for i in (2, *BAD)}
    netns_etc.hosts(h1.netns, {names[2]: underlay_of(2),
                               **{names[i]: addr for i, addr in BAD.items()}})
    traps = {i: _trap(ov, i) for i in (1, 2)}
    d1 = start_static(ov, 1, [f"{names[2]}={subnet_of(2)}",
                              *(f"{names[i]}:{TRAP_PORT}={subnet_of(i)}" for i in BAD)])
    start_static(ov, 2, [f"{underlay_of(1)}={subnet_of(1)}"])

    # the traps see what reaches them: loopback on h1, multicast on the LAN
    _send(ov, 1, "127.0.0.1", "control")
    _send(ov, 1, "224.0.0.1", "control")
    assert ov.ping(1, 2, count=2).returncode == 0, ov.dump_logs()     # the good peer works
    pings = {i: ov.run(h1, ["ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", "-I", pod_of(1),
                            pod_of(i)]).stdout for i in BAD}
    before = tun_rx_packets(ov, 1)
    _send(ov, 1, "127.0.0.1", "inject")          # forged as the 127.0.0.1 peer
    time.sleep(0.5)
    injected_rx = tun_rx_packets(ov, 1) - before
    for i in (1, 2):
        _send(ov, i, "127.0.0.1", "quit")
    got = {}
    for i, (proc, out) in traps.items():
        proc.wait(timeout=10)
        got[i] = json.loads(out.read_text().splitlines()[-1])
    assert got[1]["control"] >= 1 and got[2]["control"] == 1, got    # they would have seen it
    assert got[1]["injected"] == 20
    assert got[1]["pod"] == 0 and got[2]["pod"] == 0, (got, ov.dump_logs())
    assert injected_rx == 0, "datagrams from 127.0.0.1 were written to the TUN as a peer's"
    for out in pings.values():      # the waiting peers' subnets: net unreachable
        assert " 0 received" in out and "Unreachable" in out, out

    st = ov.status(h1)
    assert [p["subnet"] for p in st["peers"]] == [subnet_of(2)]
    waiting = {w["host"]: w["reason"] for w in st["static"]["waiting"]}
    for i, addr in BAD.items():
        assert f"resolves to {addr}, which" in waiting[names[i]], waiting
    assert st["static"]["refused_addresses"] >= 3
    assert sum("waits: resolves to" in line and "WARNING" in line
               for line in d1.stderr().splitlines()) == 3


def test_bad_literals_and_masquerade_over_the_underlay_exit_2(overlay2, tmp_path):
    ov = overlay2
    default_route(ov, 1)
    peers = tmp_path / "peers.toml"
    peers.write_text(f'[[peer]]\nhost = "224.0.0.1"\nsubnet = "{subnet_of(5)}"\n')
    # started together: each its own TUN name, so their control sockets never meet
    runs = {addr: start_static(ov, 1, [f"{addr}:{TRAP_PORT}={subnet_of(3)}"],
                               ["--tun", f"uobad{n}"], wait=False)
            for n, addr in enumerate(BAD.values())}
    runs["file"] = start_static(ov, 1, [], ["--peers-file", str(peers), "--tun", "uobadf"],
                                wait=False)
    runs["masq"] = ov.launch(1, [sys.executable, "-m", "udpoverlay", "run", "--subnet",
                                 "198.18.1.0/24", "--network", "198.18.0.0/16", "--ip-masq",
                                 "--tun", "uobadm"], wait=False)
    for what, d in runs.items():
        try:
            rc = d.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{what}: the daemon started:\n{d.stderr()}") from None
        # start-up's INFO lines may come first; the error is one line, the last
        lines = [ln for ln in d.stderr().strip().splitlines()
                 if ln.startswith("udpoverlay: error: ")]
        assert rc == 2 and len(lines) == 1 and d.stderr().strip().endswith(lines[0]), \
            (what, d.stderr())
        if what == "masq":
            assert f"contains our underlay address {underlay_of(1)}: with --ip-masq" in lines[0]
        else:
            addr = "224.0.0.1" if what == "file" else what
            assert f"{addr} is " in lines[0] and "not a peer's address" in lines[0], lines
    assert f"({peers}:1)" in runs["file"].stderr()
    for name in ("udpov0", "uobadf", "uobadm", *(f"uobad{n}" for n in range(len(BAD)))):
        assert not ov.link_exists(ov.hosts[1], name)


def _peers_text(i: int, addr: str) -> str:
    return f'[[peer]]\nhost = "{addr}"\nsubnet = "{subnet_of(i)}"\n'


def test_peers_files_others_can_write_are_refused(overlay2, tmp_path):
    _require_nobody_tools()
    ov = overlay2
    loose = tmp_path / "loose.toml"
    loose.write_text(_peers_text(2, underlay_of(2)))
    loose.chmod(0o666)
    theirs = tmp_path / "theirs.toml"
    theirs.write_text(_peers_text(2, underlay_of(2)))
    os.chown(theirs, NOBODY, NOBODY)
    link = tmp_path / "link.toml"
    link.symlink_to(theirs)
    for path, why in ((loose, "writable by group or others (mode 0666)"),
                      (link, f"owned by uid {NOBODY}, not root")):
        d = ov.start(1, peers=[], extra=["--peers-file", str(path)], wait=False)
        assert d.proc.wait(timeout=20) == 2
        (line,) = [ln for ln in d.stderr().strip().splitlines()
                   if ln.startswith("udpoverlay: error: ")]
        assert line.startswith(f"udpoverlay: error: --peers-file {path}: refused: ") \
            and why in line, line

    good = tmp_path / "peers.toml"
    good.write_text(_peers_text(2, underlay_of(2)))
    d1 = ov.start(1, peers=[], extra=["--peers-file", str(good)])
    ov.start(2, peers=[1])
    assert ov.ping(1, 2, count=1).returncode == 0, ov.dump_logs()
    # uid 65534 is handed the file and points the peer at an address of its
    # own (written here by the test: uid 65534 cannot reach pytest's 0700
    # tmp_path, but owning the file it could write it)
    os.chown(good, NOBODY, NOBODY)
    good.write_text(_peers_text(2, "198.18.0.77"))
    os.kill(d1.proc.pid, signal.SIGHUP)
    wait_until(lambda: ov.status(ov.hosts[1])["static"]["reload_error"], 5,
               what="the refused reload")
    errors = [line for line in d1.stderr().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"owned by uid {NOBODY}" in errors[0] \
        and "running peers kept" in errors[0], errors
    (p,) = ov.status(ov.hosts[1])["peers"]
    assert p["public_ip"] == underlay_of(2)
    assert ov.ping(1, 2, count=1).returncode == 0


def test_fifo_env_and_peers_files_stall_nothing_and_block_no_stop(overlay2, tmp_path):
    ov = overlay2
    h1 = ov.hosts[1]
    env = tmp_path / "udpoverlay.env"
    env.write_text("FLANNELD_V=0\n")
    peers = tmp_path / "peers.toml"
    peers.write_text(_peers_text(2, underlay_of(2)))
    d1 = ov.start(1, peers=[], extra=["--env-file", str(env), "--peers-file", str(peers),
                                      "--healthz-ip", underlay_of(1),
                                      "--healthz-port", str(HEALTHZ)])
    ov.start(2, peers=[1])
    out = ov.tmp / "ping.out"
    with open(out, "w") as f:
        ping = ov.lab.popen(h1.netns, ["ping", "-n", "-D", "-i", "0.05", "-W", "1", "-w", "20",
                                       "-I", pod_of(1), pod_of(2)],
                            stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(reply_times(out)) >= 10, 5, what="pings flowing")
        for path in (env, peers):
            path.unlink()
            os.mkfifo(path, 0o600)
        hup = time.time()
        os.kill(d1.proc.pid, signal.SIGHUP)
        assert get(ov, h1, "/healthz", underlay_of(1), HEALTHZ)[0] == 200
        wait_until(lambda: sum("not a regular file (a FIFO)" in line
                               for line in d1.stderr().splitlines()) >= 2, 5,
                   what="both FIFOs refused")
        time.sleep(1.5)
        assert get(ov, h1, "/healthz", underlay_of(1), HEALTHZ)[0] == 200
        after = time.time()
    finally:
        ov.lab.stop(ping)
    times = [t for t in reply_times(out) if hup - 0.5 <= t <= after]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 20 and max(gaps) < 0.5, (len(times), max(gaps, default=None))
    st = ov.status(h1)
    assert [p["subnet"] for p in st["peers"]] == [subnet_of(2)]
    assert "FIFO" in st["static"]["reload_error"]
    errors = [line for line in d1.stderr().splitlines() if "ERROR" in line]
    assert len(errors) == 2 and any(f"--peers-file {peers}" in e for e in errors) \
        and any(f"env file {env}" in e for e in errors), errors
    stopped = time.monotonic()
    assert ov.stop(d1, timeout=5) == 0, d1.stderr()
    assert time.monotonic() - stopped < 3.0
