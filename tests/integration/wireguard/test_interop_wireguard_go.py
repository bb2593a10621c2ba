"""Our engine against a real WireGuard: Debian's wireguard-go, configured
with `wg set`, in its own namespace.

    ns "wg": eth0 198.18.0.1, wireguard-go's TUN with 198.19.1.1/24, peer = us
    ns "us": eth0 198.18.0.2, a plain UDP socket on :51820 driven by the
             engine in this test process; no TUN: ICMP packets are built by hand

Everything runs on the Lab's switch, removed (processes by PID, then the
namespaces) by the `lab` fixture, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.requirements import require, require_root_tools
from tests.support.wgpeer import udp_socket_in
from tests.support.wireguard import icmp_echo, parse_icmp_echo
from udpoverlay.wireguard import Engine, PresharedKey, generate
from udpoverlay.wireguard.constants import REKEY_AFTER_TIME

WG_IP, US_IP = "198.18.0.1", "198.18.0.2"
PORT = 51820
WG_TUN_IP, US_OVERLAY_IP = "198.19.1.1", "198.19.2.1"
WG_NET, US_NET = "198.19.1.0/24", "198.19.2.0/24"
CLONE_NEWNET = 0x40000000
UAPI_DIR = "/var/run/wireguard"


def _wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Driver:
    """The caller's loop around the engine: socket in, socket out, timers."""

    def __init__(self, engine: Engine, sock: socket.socket) -> None:
        self.engine, self.sock = engine, sock
        self.events: list = []  # (engine time, Received)
        self.offset = 0.0  # added to the engine's clock: lets a test jump ahead in time

    def now(self) -> float:
        return time.monotonic() + self.offset

    def send(self, datagrams) -> None:
        for data, addr in datagrams:
            self.sock.sendto(data, addr)

    def pump(self, until, timeout: float, on_packet=None) -> bool:
        """Run until until() is true (True) or timeout passes (False)."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout * 1000) + 100):  # at most one round a millisecond
            now = time.monotonic()
            if until():
                return True
            if now >= deadline:
                return False
            wait = min(deadline - now, 0.05)
            due = self.engine.next_deadline()
            if due is not None:
                wait = max(0.0, min(wait, due - self.now()))
            readable, _, _ = select.select([self.sock], [], [], wait)
            for _ in range(64 if readable else 0):
                try:
                    data, addr = self.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                r = self.engine.receive(data, addr, self.now())
                self.events.append((self.now(), r))
                self.send(r.datagrams)
                if r.packet is not None and on_packet is not None:
                    for reply in on_packet(r.packet):
                        self.send(self.engine.send(r.peer, reply, self.now()))
            self.send(self.engine.tick(self.now()).datagrams)
        return until()

    def verdicts(self) -> list[str]:
        return [r.verdict for _, r in self.events]

    def packets(self) -> list[bytes]:
        return [r.packet for _, r in self.events if r.verdict == "data"]


class WgNode:
    """wireguard-go in the "wg" namespace, configured through `wg set`."""

    def __init__(self, lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.ns = lab.add_host("wg", f"{WG_IP}/24").netns
        self.us_ns = lab.add_host("us", f"{US_IP}/24").netns
        self.dev = ("wg" + lab.tag)[:15]
        self.key = generate()
        self.key_file = self._secret_file("wg.key", self.key.secret_base64())
        self.log = open(tmp / "wireguard-go.log", "w")
        self.proc = lab.popen(self.ns, ["wireguard-go", "-f", self.dev], stdout=self.log,
                              stderr=subprocess.STDOUT,
                              env={**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "debug"})
        _wait(lambda: self.proc.poll() is not None or os.path.exists(self.uapi), 10, "wireguard-go's device")
        assert self.proc.poll() is None, self.logs()
        self.run("wg", "set", self.dev, "private-key", self.key_file, "listen-port", str(PORT))
        self.run("ip", "addr", "add", f"{WG_TUN_IP}/24", "dev", self.dev)
        self.run("ip", "link", "set", self.dev, "up")
        self.run("ip", "route", "add", US_NET, "dev", self.dev)

    @property
    def uapi(self) -> str:
        return f"{UAPI_DIR}/{self.dev}.sock"

    def _secret_file(self, name: str, text: str) -> str:
        path = self.tmp / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        return str(path)

    def run(self, *cmd: str, timeout: float = 10) -> str:
        return self.lab.run(self.ns, list(cmd), timeout=timeout).stdout

    def add_peer(self, public_b64: str, psk: PresharedKey | None = None, keepalive: int = 0) -> None:
        cmd = ["wg", "set", self.dev, "peer", public_b64, "allowed-ips", US_NET,
               "endpoint", f"{US_IP}:{PORT}"]
        if psk is not None:
            import base64
            cmd += ["preshared-key", self._secret_file(f"psk-{os.urandom(3).hex()}",
                                                        base64.b64encode(psk.raw).decode())]
        if keepalive:
            cmd += ["persistent-keepalive", str(keepalive)]
        self.run(*cmd)

    def latest_handshake(self, public_b64: str) -> int:
        for line in self.run("wg", "show", self.dev, "latest-handshakes").splitlines():
            key, _, stamp = line.partition("\t")
            if key == public_b64:
                return int(stamp)
        return 0

    def logs(self) -> str:
        self.log.flush()
        return (self.tmp / "wireguard-go.log").read_text()[-3000:]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.lab.stop(self.proc, timeout=5)
        self.log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uapi)  # left behind only if it had to be killed


@pytest.fixture
def wg(lab, tmp_path, request):
    require_root_tools()
    for tool in ("wireguard-go", "wg"):
        require(shutil.which(tool) is not None,
                f"needs {tool} (Debian packages wireguard-go, wireguard-tools)")
    node = WgNode(lab, tmp_path)
    try:
        yield node
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(node.logs())
        node.close()


def _our_side(wg: WgNode, psk: PresharedKey | None = None, keepalive: int = 0,
              under_load: bool = False):
    """Our engine with wireguard-go as its one peer, wg told about us."""
    engine = Engine(generate())
    engine.under_load = under_load
    peer = engine.add_peer(wg.key.public, endpoint=(WG_IP, PORT), allowed_ips=[WG_NET],
                           preshared_key=psk, now=time.monotonic())
    sock = udp_socket_in(wg.us_ns, (US_IP, PORT))  # first: wg may send at once
    wg.add_peer(engine.public_key.to_base64(), psk=psk, keepalive=keepalive)
    return engine, peer, Driver(engine, sock)


def _echo_replies(driver: Driver, ident: int) -> list[dict]:
    out = []
    for pkt in driver.packets():
        icmp = parse_icmp_echo(pkt)
        if icmp and icmp["type"] == 0 and icmp["id"] == ident:
            out.append(icmp)
    return out


@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
def test_we_initiate_and_get_the_echo_reply(wg, with_psk):
    psk = PresharedKey(os.urandom(32)) if with_psk else None
    engine, peer, driver = _our_side(wg, psk)
    try:
        ident = 0x4242
        driver.send(engine.send(peer, icmp_echo(US_OVERLAY_IP, WG_TUN_IP, ident, 1), time.monotonic()))
        assert driver.pump(lambda: _echo_replies(driver, ident), timeout=5), (driver.verdicts(), wg.logs())
        reply = _echo_replies(driver, ident)[0]
        assert (reply["src"], reply["dst"], reply["seq"]) == (WG_TUN_IP, US_OVERLAY_IP, 1)
        assert driver.verdicts()[0] == "response" and engine.counters["tx_initiation"] == 1
        # more traffic on the same session, then wireguard-go's own view of it
        for seq in range(2, 6):
            driver.send(engine.send(peer, icmp_echo(US_OVERLAY_IP, WG_TUN_IP, ident, seq, b"x" * 900),
                                    time.monotonic()))
        assert driver.pump(lambda: len(_echo_replies(driver, ident)) == 5, timeout=5), driver.verdicts()
        assert sorted(r["seq"] for r in _echo_replies(driver, ident)) == [1, 2, 3, 4, 5]
        assert wg.latest_handshake(engine.public_key.to_base64()) > 0
        assert not {"bad_auth", "replay", "wrong_inner_source", "malformed"} & set(engine.counters)
    finally:
        driver.sock.close()


def test_a_preshared_key_mismatch_fails_the_handshake(wg):
    """wireguard-go answers (the PSK only enters the response), and we
    refuse the response: no session, nothing decrypted."""
    engine = Engine(generate())
    peer = engine.add_peer(wg.key.public, endpoint=(WG_IP, PORT), allowed_ips=[WG_NET],
                           preshared_key=PresharedKey(os.urandom(32)))
    sock = udp_socket_in(wg.us_ns, (US_IP, PORT))
    wg.add_peer(engine.public_key.to_base64(), psk=PresharedKey(os.urandom(32)))
    driver = Driver(engine, sock)
    try:
        driver.send(engine.send(peer, icmp_echo(US_OVERLAY_IP, WG_TUN_IP, 3, 1), driver.now()))
        assert driver.pump(lambda: "bad_auth" in driver.verdicts(), timeout=3), driver.verdicts()
        assert peer.keypairs.all() == [] and driver.packets() == []
    finally:
        sock.close()


def test_wireguard_go_initiates_and_ping_gets_answers(wg):
    engine, peer, driver = _our_side(wg)
    try:
        def answer(packet: bytes):
            icmp = parse_icmp_echo(packet)
            if icmp and icmp["type"] == 8:
                yield icmp_echo(icmp["dst"], icmp["src"], icmp["id"], icmp["seq"], icmp["data"], reply=True)

        ping = wg.lab.popen(wg.ns, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "3", "-s", "1000",
                                    US_OVERLAY_IP], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
        assert driver.pump(lambda: ping.poll() is not None, timeout=10, on_packet=answer), driver.verdicts()
        output = ping.stdout.read() if ping.stdout else ""
        assert ping.returncode == 0 and " 3 received" in output, (output, driver.verdicts(), wg.logs())
        assert driver.verdicts()[0] == "initiation" and engine.counters["tx_response"] == 1
        assert engine.counters["tx_initiation"] == 0  # we only answered
        requests = [parse_icmp_echo(p) for p in driver.packets()]
        assert [r["seq"] for r in requests if r and r["type"] == 8] == [1, 2, 3]
        assert all(len(p) == 20 + 8 + 1000 for p in driver.packets())  # padding removed
    finally:
        driver.sock.close()


def test_persistent_keepalive_from_wireguard_go(wg):
    engine, peer, driver = _our_side(wg, keepalive=1)
    try:
        def keepalives():
            return [t for t, r in driver.events if r.verdict == "keepalive"]

        assert driver.pump(lambda: len(keepalives()) >= 4, timeout=8), driver.verdicts()
        assert driver.verdicts()[0] == "initiation"  # setting the keepalive made it handshake
        times = keepalives()
        gaps = [b - a for a, b in zip(times[1:], times[2:])]  # the first follows the handshake
        assert gaps and all(0.8 <= g <= 1.5 for g in gaps), gaps
    finally:
        driver.sock.close()


def test_a_strangers_initiation_gets_no_answer(wg):
    engine, peer, driver = _our_side(wg)  # a configured peer exists, but it is not the stranger
    driver.sock.close()
    stranger = Engine(generate())
    speer = stranger.add_peer(wg.key.public, endpoint=(WG_IP, PORT), allowed_ips=[WG_NET])
    sock = udp_socket_in(wg.us_ns, (US_IP, PORT))
    sdriver = Driver(stranger, sock)
    try:
        sdriver.send(stranger.send(speer, icmp_echo(US_OVERLAY_IP, WG_TUN_IP, 1, 1), time.monotonic()))
        sdriver.pump(lambda: bool(sdriver.events), timeout=1.5)
        assert sdriver.events == []  # no response, no cookie: nothing at all
        assert stranger.counters["tx_initiation"] == 1
        assert wg.latest_handshake(engine.public_key.to_base64()) == 0
    finally:
        sock.close()


def test_we_rekey_with_wireguard_go_without_losing_a_packet(wg):
    """Our clock jumps past REKEY_AFTER_TIME mid-stream: we start a new
    handshake while echo traffic flows; every request gets its reply."""
    engine, peer, driver = _our_side(wg)
    try:
        ident, count = 0x5151, 40
        first_index = None
        for seq in range(1, count + 1):
            if seq == count // 2:
                first_index = peer.keypairs.current.local_index
                driver.offset += REKEY_AFTER_TIME + 1
            driver.send(engine.send(peer, icmp_echo(US_OVERLAY_IP, WG_TUN_IP, ident, seq), driver.now()))
            driver.pump(lambda: False, timeout=0.02)
        assert driver.pump(lambda: len(_echo_replies(driver, ident)) == count, timeout=5), (
            driver.verdicts(), dict(engine.counters))
        assert sorted(r["seq"] for r in _echo_replies(driver, ident)) == list(range(1, count + 1))
        assert engine.counters["tx_initiation"] == 2 and engine.counters["response"] == 2
        assert peer.keypairs.current.local_index != first_index
        assert not {"bad_auth", "replay", "unknown_index"} & set(engine.counters)
    finally:
        driver.sock.close()


def test_wireguard_go_understands_our_cookie_reply(wg):
    """Under load we answer its initiation with a cookie; its retry (after
    REKEY_TIMEOUT) carries a MAC2 we accept, and the session comes up."""
    engine, peer, driver = _our_side(wg, keepalive=1, under_load=True)
    try:
        assert driver.pump(lambda: "keepalive" in driver.verdicts(), timeout=9), driver.verdicts()
        verdicts = driver.verdicts()
        assert verdicts[0] == "cookie_sent" and "initiation" in verdicts
        assert verdicts.index("initiation") > verdicts.index("cookie_sent")
        assert engine.counters["tx_cookie_reply"] >= 1 and engine.counters["tx_response"] == 1
    finally:
        driver.sock.close()
