"""A mixed flannel wireguard cluster on one etcd: two udpoverlay nodes in
cluster mode and one node whose part flanneld would play, here a small
script (FlannelWg) driving Debian's wireguard-go with `wg`, configured the
way flannel's pkg/backend/wireguard configures flannel-wg from the leases.

    etcd   198.18.0.254 (the lab's switch namespace)
    h1, h2 eth0 198.18.0.1/.2: `udpoverlay run --etcd-endpoints ...`,
           their keys from $WIREGUARD_KEY_FILE (created 0600 by the daemon)
    h3     eth0 198.18.0.3: wireguard-go, device address = the first address
           of its subnet /32, MTU underlay - 80, ListenPort, one route for
           the whole Network; its lease written as flanneld writes it; one
           `wg set ... peer` per other wireguard lease (AllowedIPs = subnet,
           Endpoint = PublicIP:ListenPort, the PSK, the keepalive)

Checked: our lease's exact bytes, the key file's mode, MTU in subnet.env,
/readyz, all six ping directions, 20 MiB with its sha256 intact between
every pair of kinds (ours -> ours, ours -> wireguard-go, wireguard-go ->
ours); then h3 rewrites its lease with a new
key, a hostile writer adds a lease reusing h1's key and one with a
malformed key (refused, counted on /metrics), and h3 leaves (lease
deleted): h1 and h2 follow within about a second of each etcd write, and
a ping h1 -> h2 running through all of it never loses a packet. Last, h2
restarts with the same key file (same public key), then with a new key:
h1 follows and h1 <-> h2 pings again. Namespaces, devices and processes (by PID) are removed by the
`cluster` fixture and this module's fixture, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from lab.netns import wait_for
from tests.integration.ops.httpget import HEALTHZ_PORT, get, sample, scrape
from tests.support.cluster import PREFIX, underlay
from tests.support.overlay import TCPXFER
from tests.support.requirements import require
from udpoverlay.wireguard import generate

PORT = 51820
KEEPALIVE = 5
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
NETWORK = "198.19.0.0/16"
WG_CONFIG = json.dumps({"Network": NETWORK, "Backend": {
    "Type": "wireguard", "ListenPort": PORT, "PSK": PSK,
    "PersistentKeepaliveInterval": KEEPALIVE}})
H3_SUBNET = "198.19.3.0/24"
UAPI_DIR = "/var/run/wireguard"
FOLLOW = 2.5      # s: "about a second" after the etcd write, with headroom for a busy CI host


def _secret(path, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return str(path)


def lease_value(public_ip: str, public_key: str) -> str:
    """What flanneld's wireguard backend writes (json.Marshal of LeaseAttrs)."""
    return ('{"PublicIP":"%s","PublicIPv6":null,"BackendType":"wireguard",'
            '"BackendData":{"PublicKey":"%s"}}' % (public_ip, public_key))


class FlannelWg:
    """flanneld's part on h3: wireguard-go as flannel-wg, leases in and out."""

    def __init__(self, cl, host) -> None:
        self.cl, self.lab, self.host = cl, cl.lab, host
        self.dev = ("wg" + self.lab.tag)[:15]
        self.tmp = cl.tmp
        self.psk_file = _secret(self.tmp / "psk", PSK)
        self.key = generate()
        self.key_file = _secret(self.tmp / "h3.key", self.key.secret_base64())
        self.log = open(self.tmp / "wireguard-go.log", "w")
        self.proc = self.lab.popen(host.netns, ["wireguard-go", "-f", self.dev],
                                   stdout=self.log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "WG_PROCESS_FOREGROUND": "1"})
        wait_for(lambda: self.proc.poll() is not None or os.path.exists(self.uapi), 10, 0.05,
                 "wireguard-go's device")
        assert self.proc.poll() is None, self.logs()
        mtu = 1500 - 80
        self.run("wg", "set", self.dev, "private-key", self.key_file, "listen-port", str(PORT))
        self.run("ip", "addr", "add", "198.19.3.0/32", "dev", self.dev)
        self.run("ip", "link", "set", self.dev, "mtu", str(mtu), "up")
        self.run("ip", "route", "add", NETWORK, "dev", self.dev, "scope", "link")

    @property
    def uapi(self) -> str:
        return f"{UAPI_DIR}/{self.dev}.sock"

    def run(self, *cmd: str) -> str:
        return self.lab.run(self.host.netns, list(cmd), timeout=15).stdout

    def write_lease(self) -> None:
        self.cl.etcd.etcdctl("put", f"{PREFIX}/subnets/198.19.3.0-24",
                             lease_value(underlay(3), self.key.public.to_base64()))

    def new_key(self) -> None:
        """A restart with a new key (flannel on tmpfs after a reboot)."""
        self.key = generate()
        _secret(self.tmp / "h3.key", self.key.secret_base64())
        self.run("wg", "set", self.dev, "private-key", self.key_file)
        self.write_lease()

    def leases(self) -> dict[str, tuple[str, str]]:
        """public key -> (subnet, PublicIP) of the other wireguard leases."""
        out = self.cl.etcd.etcdctl("get", f"{PREFIX}/subnets/", "--prefix")
        lines = out.splitlines()
        found = {}
        for k, v in zip(lines[::2], lines[1::2]):
            attrs = json.loads(v)
            if attrs.get("BackendType") != "wireguard":
                continue     # flanneld: "Ignoring non-wireguard lease"
            subnet = k.rsplit("/", 1)[1].replace("-", "/")
            if subnet != H3_SUBNET:
                found[attrs["BackendData"]["PublicKey"]] = (subnet, attrs["PublicIP"])
        return found

    def sync(self) -> None:
        """flanneld's handling of the lease events: a peer per lease; a peer
        whose lease is gone, or whose endpoint IP came back with another
        key, removed by key."""
        want = self.leases()
        have = set(self.run("wg", "show", self.dev, "peers").split())
        for key in have - set(want):
            self.run("wg", "set", self.dev, "peer", key, "remove")
        for key, (subnet, ip) in want.items():
            self.run("wg", "set", self.dev, "peer", key, "allowed-ips", subnet,
                     "endpoint", f"{ip}:{PORT}", "preshared-key", self.psk_file,
                     "persistent-keepalive", str(KEEPALIVE))

    def logs(self) -> str:
        self.log.flush()
        return (self.tmp / "wireguard-go.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.lab.stop(self.proc, timeout=5)
        self.log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uapi)      # left behind only if it had to be killed


@pytest.fixture
def wgcluster(cluster, request):
    for tool in ("wireguard-go", "wg"):
        require(shutil.which(tool) is not None,
                f"needs {tool} (Debian packages wireguard-go, wireguard-tools)")
    cluster.etcd.etcdctl("put", f"{PREFIX}/config", WG_CONFIG)
    for i in (1, 2, 3):
        cluster.add_host(i)
    node = FlannelWg(cluster, cluster.ov.hosts[3])
    try:
        yield cluster, node
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(node.logs())
        node.close()


def _start(cl, i: int):
    env = {**cl.ov.env(), "WIREGUARD_KEY_FILE": str(cl.tmp / f"keys-h{i}" / "wgkey")}
    args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay(i),
            "--etcd-endpoints", cl.etcd.endpoint, "--subnet-file", str(cl.subnet_file(i)),
            "--lease-ttl", "600", "-v", "2", "--healthz-ip", underlay(i),
            "--healthz-port", str(HEALTHZ_PORT)]
    return cl.ov.launch(i, args, env=env, timeout=20)


def _peer_keys(cl, i: int) -> dict[str, str]:
    return {p["subnet"]: p["public_key"] for p in cl.ov.status(cl.ov.hosts[i])["peers"]}


def _follow(cl, want_h3: str | None, since: float) -> float:
    """Until h1 and h2 both have h3's subnet with key want_h3 (None: no
    peer for it); the seconds since `since`."""
    def done() -> bool:
        return all(_peer_keys(cl, i).get(H3_SUBNET) == want_h3 for i in (1, 2))
    wait_for(done, 10, 0.05, f"h1 and h2 follow h3 ({want_h3})")
    return time.monotonic() - since


def _transfer(cl, src: int, dst: int, nbytes: int, port: int) -> None:
    """TCP pod src -> pod dst (lab.tcpxfer): every byte arrives, sha256 intact."""
    out = cl.tmp / f"xfer-{src}-{dst}.out"
    with open(out, "wb") as f:
        server = cl.lab.popen(cl.ov.hosts[dst].netns,
                              [*TCPXFER, "server", cl.pods[dst], str(port), "--timeout", "60"],
                              stdout=f, stderr=subprocess.STDOUT, env=cl.ov.env())
    try:
        wait_for(lambda: b"listening" in out.read_bytes() or server.poll() is not None,
                 10, 0.05, "tcpxfer server")
        c = cl.ov.run(cl.ov.hosts[src], [*TCPXFER, "client", cl.pods[dst], str(port),
                                         str(nbytes), "--src", cl.pods[src], "--timeout", "60"],
                      timeout=90)
        assert c.returncode == 0, c.stdout + c.stderr
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            cl.lab.stop(server, signal.SIGTERM, 5)
    sent, got = c.stdout.split(), out.read_text().split()
    assert sent[0] == str(nbytes) and got[-2:] == sent[-2:], (sent, got)


def test_mixed_wireguard_cluster(wgcluster):
    cl, h3 = wgcluster
    h3.write_lease()                     # h3 first: 198.19.3.0/24 is taken
    d1, d2 = _start(cl, 1), _start(cl, 2)
    h3.sync()
    for i in (1, 2):
        st = cl.ov.status(cl.ov.hosts[i])
        ours = st["wireguard"]["public_key"]
        raw = cl.etcd.etcdctl("get", f"{PREFIX}/subnets/{st['subnet'].replace('/', '-')}",
                              "--print-value-only").strip()
        assert raw == lease_value(underlay(i), ours)            # flanneld's bytes
        key_file = cl.tmp / f"keys-h{i}" / "wgkey"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert key_file.read_text().strip() not in (d1.stderr() + d2.stderr())
        assert (st["backend"], st["port"], st["mtu"]) == ("wireguard", PORT, 1500 - 80)
        assert "FLANNEL_MTU=1420" in cl.subnet_file(i).read_text()
        assert get(cl.ov, cl.ov.hosts[i], "/readyz", underlay(i))[0] == 200
        cl.add_pod(i)
    cl.lab.add_pod_address(cl.ov.hosts[3], "198.19.3.1/24")
    cl.pods[3] = "198.19.3.1"
    wait_for(lambda: all(H3_SUBNET in _peer_keys(cl, i) for i in (1, 2)), 10, 0.1, "h3 known")
    for i, j in ((1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)):
        cl.wait_ping(i, j, 15)
    # 20 MiB between every pair of kinds: ours -> ours, ours -> wireguard-go, and back
    for n, (i, j) in enumerate(((1, 2), (1, 3), (3, 2))):
        _transfer(cl, i, j, 20 << 20, 5301 + n)
    peers = [line.split("\t") for line in h3.run("wg", "show", h3.dev, "dump").splitlines()[1:]]
    assert sorted((p[2], p[3], p[7]) for p in peers) == sorted(   # endpoint, AllowedIPs, keepalive
        (f"{underlay(i)}:{PORT}", str(cl.subnet(i)), str(KEEPALIVE)) for i in (1, 2))
    peer = next(p for p in cl.ov.status(cl.ov.hosts[1])["peers"] if p["subnet"] == H3_SUBNET)
    assert peer["preshared_key"] and peer["persistent_keepalive"] == KEEPALIVE
    assert peer["public_key"] == h3.key.public.to_base64() and peer["session"]

    # Traffic h1 -> h2 runs through both events and never stops.
    # (ended by SIGINT after the events; ping then prints its summary)
    steady = cl.lab.popen(cl.ov.hosts[1].netns,
                          ["ping", "-n", "-q", "-c", "3000", "-i", "0.1", "-W", "2", "-I",
                           cl.pods[1], cl.pods[2]],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steady_t0 = time.monotonic()
    old_key = h3.key.public.to_base64()
    t0 = time.monotonic()
    h3.new_key()                           # h3's lease rewritten with a new PublicKey
    took = _follow(cl, h3.key.public.to_base64(), t0)
    print(f"key change followed after {took:.2f}s")
    assert took < FOLLOW, f"key change followed after {took:.2f}s"
    assert old_key not in json.dumps(cl.ov.status(cl.ov.hosts[1])["wireguard"])
    for i in (1, 2):                       # a new session with the new key
        cl.wait_ping(i, 3, 10)
        cl.wait_ping(3, i, 10)
    # hostile writers: h1's key on another lease, a malformed key: neither is a peer
    # (subnets past the first 100, where the nodes' random choice never falls)
    h1_key = cl.ov.status(cl.ov.hosts[1])["wireguard"]["public_key"]
    cl.etcd.etcdctl("put", f"{PREFIX}/subnets/198.19.200.0-24", lease_value(underlay(9), h1_key))
    cl.etcd.etcdctl("put", f"{PREFIX}/subnets/198.19.201.0-24",
                    lease_value(underlay(10), "bm90IGEga2V5"))
    for i in (1, 2):
        def counted(i=i) -> bool:
            m = scrape(cl.ov, cl.ov.hosts[i], underlay(i))
            return (sample(m, "udpoverlay_lease_keys_rejected_total", reason="duplicate_key"),
                    sample(m, "udpoverlay_lease_keys_rejected_total",
                           reason="bad_public_key")) == (1, 1)
        wait_for(counted, 10, 0.2, f"h{i} counts the hostile leases")
        assert not {"198.19.200.0/24", "198.19.201.0/24"} & set(_peer_keys(cl, i))
    t0 = time.monotonic()
    cl.etcd.etcdctl("del", f"{PREFIX}/subnets/198.19.3.0-24")      # h3 leaves
    took = _follow(cl, None, t0)
    print(f"lease removal followed after {took:.2f}s")
    assert took < FOLLOW, f"lease removal followed after {took:.2f}s"
    assert cl.ping(1, 3, count=1).returncode != 0
    t0 = time.monotonic()
    h3.write_lease()                                                # h3 joins again
    took = _follow(cl, h3.key.public.to_base64(), t0)
    print(f"a joining lease followed after {took:.2f}s")
    assert took < FOLLOW, f"a joining lease followed after {took:.2f}s"
    cl.etcd.etcdctl("del", f"{PREFIX}/subnets/198.19.3.0-24")      # and leaves for good
    _follow(cl, None, time.monotonic())
    time.sleep(0.5)
    steady_s = time.monotonic() - steady_t0
    os.kill(steady.pid, signal.SIGINT)     # ping itself (ip netns exec execs it)
    out, _ = steady.communicate(timeout=30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m is not None, out
    sent, got = int(m.group(1)), int(m.group(2))
    print(f"steady ping h1 -> h2: {got}/{sent} over {steady_s:.1f}s")
    # every echo answered, but the one in flight when SIGINT came
    assert sent >= 10 * (steady_s - 1) * 0.8 and got >= sent - 1, out
    for d in (d1, d2):
        assert d.proc.poll() is None
        assert PSK not in d.stderr()
    cl.etcd.etcdctl("del", f"{PREFIX}/subnets/198.19.200.0-24")
    cl.etcd.etcdctl("del", f"{PREFIX}/subnets/198.19.201.0-24")

    # h2 restarts with its key file: the same public key, the same lease
    h2_key = cl.ov.status(cl.ov.hosts[2])["wireguard"]["public_key"]
    h2_subnet = str(cl.subnet(2))
    assert cl.ov.stop(d2) == 0
    d2 = _start(cl, 2)
    assert cl.ov.status(cl.ov.hosts[2])["wireguard"]["public_key"] == h2_key
    assert str(cl.subnet(2)) == h2_subnet
    cl.wait_ping(1, 2, 15)
    # ... and with a new key (its key file gone, as on a tmpfs after a reboot)
    assert cl.ov.stop(d2) == 0
    os.unlink(cl.tmp / "keys-h2" / "wgkey")
    d2 = _start(cl, 2)
    new_key = cl.ov.status(cl.ov.hosts[2])["wireguard"]["public_key"]
    assert new_key != h2_key and str(cl.subnet(2)) == h2_subnet
    wait_for(lambda: _peer_keys(cl, 1).get(h2_subnet) == new_key, 5, 0.05, "h1 follows h2's key")
    cl.wait_ping(1, 2, 15)
    cl.wait_ping(2, 1, 15)
