"""udpoverlay --backend wireguard (static mode) against Debian's
wireguard-go configured with `wg`, as a real peer.

    h1: eth0 198.18.0.1, pod 198.19.1.1: `udpoverlay run --backend wireguard`
    h2: eth0 198.18.0.2, pod 198.19.2.1: wireguard-go (device wg<tag>,
        address 198.19.2.0/32, route 198.19.1.0/24 via it), its peer = us:
        AllowedIPs 198.19.1.0/24, Endpoint 198.18.0.1:51820

Each side initiates in turn (wireguard-go first, then our restarted
daemon), with and without a preshared key; pings and 20 MiB transfers with
matching sha256 both ways. A capture on h2's eth0 shows only WireGuard
messages: no inner address or payload, also before the first handshake; our
persistent keepalive comes at its interval. The private key appears in no
log line and no status document; an unsafe key file or a peer without a key
is one line and exit 2, with nothing created. Everything (processes by
PID, namespaces) is removed by the `lab` fixture, also on failure.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.netns import wait_for
from tests.support.overlay import NETWORK, Overlay, pod_of, subnet_of, underlay_of
from tests.support.wgpeer import PORT, our_key, pcap_udp, secret_file, start_ours
from udpoverlay import entry
from udpoverlay.wireguard import PresharedKey, generate

MIB = 1024 * 1024


def _ping(ov: Overlay, src: int, dst: int, count: int = 3, pattern: str | None = None):
    cmd = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "3", "-I", pod_of(src), pod_of(dst)]
    if pattern:
        cmd[1:1] = ["-p", pattern]
    r = ov.run(ov.hosts[src], cmd, timeout=30)
    assert r.returncode == 0 and f" {count} received" in r.stdout, r.stdout + r.stderr
    return r


def _wg_counters(ov: Overlay) -> dict:
    return ov.status(ov.hosts[1])["counters"]


def _check_no_secret(ov: Overlay, key_file: str) -> None:
    secret = Path(key_file).read_text().strip()
    raw = base64.b64decode(secret)
    doc = json.dumps(ov.status(ov.hosts[1]))
    text = ov.run(ov.hosts[1], [sys.executable, "-m", "udpoverlay", "status"]).stdout
    logs = ov.dump_logs()
    for where, blob in (("status JSON", doc), ("status text", text), ("daemon log", logs)):
        assert secret not in blob and raw.hex() not in blob, where
    assert "wireguard: our public key" in logs       # the log did talk about keys


@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
def test_each_side_initiates_ping_and_20_mib_both_ways(wgbed, with_psk):
    ov, wg = wgbed
    key_file, our_public = our_key(ov)
    spec = psk_file = ""
    if with_psk:
        psk_file = secret_file(ov.tmp / "shared.psk",
                                base64.b64encode(PresharedKey(os.urandom(32)).raw).decode())
        spec = f",preshared-key-file={psk_file}"
    d = start_ours(ov, wg, key_file, spec)
    wg.add_peer(our_public, psk_file or None)
    # 1. wireguard-go initiates (we have no keepalive: we stay silent)
    _ping(ov, 2, 1)
    c = _wg_counters(ov)
    assert c["wg_rx_initiation"] >= 1 and c["wg_tx_initiation"] == 0, c
    assert wg.latest_handshake() > 0
    ov.transfer(2, 1, 20 * MIB, 9101)
    ov.transfer(1, 2, 20 * MIB, 9102)
    st = ov.status(ov.hosts[1])
    (p,) = st["peers"]
    assert p["public_key"] == wg.key.public.to_base64() and p["preshared_key"] is with_psk
    assert p["endpoint"] == f"{underlay_of(2)}:{PORT}" and p["latest_handshake"] is not None
    assert p["rx_bytes"] > 20 * MIB and p["tx_bytes"] > 20 * MIB and p["transfer_rx"] > p["rx_bytes"]
    assert st["wireguard"]["public_key"] == our_public and st["mtu"] == 1500 - 80
    # the entry point set libcrypto up before loading it (udpoverlay/entry.py)
    aead = st["wireguard"]["aead"]
    assert aead.startswith("cython: OpenSSL ") and aead.endswith(", provider functions"), aead
    assert st["wireguard"]["openssl_ia32cap"] == entry.IA32CAP_DEFAULT
    drops = {k: v for k, v in st["counters"].items()
             if "_drop_" in k and v and k not in ("tx_drop_not_ipv4",)}
    assert not drops, drops
    _check_no_secret(ov, key_file)
    # 2. our daemon restarts (same key) and initiates: wireguard-go's old
    # session is useless to it, our ping's first packet starts the handshake
    assert ov.stop(d) == 0
    start_ours(ov, wg, key_file, spec)
    _ping(ov, 1, 2)
    c = _wg_counters(ov)
    assert c["wg_tx_initiation"] >= 1 and c["wg_rx_response"] >= 1, c
    ov.transfer(1, 2, 20 * MIB, 9103)
    ov.transfer(2, 1, 20 * MIB, 9104)


def test_underlay_shows_only_wireguard_and_keepalives_come_on_time(wgbed):
    ov, wg = wgbed
    key_file, our_public = our_key(ov)
    cap = ov.tmp / "underlay.pcap"
    dump = ov.lab.popen(ov.hosts[2].netns, ["tcpdump", "-i", "eth0", "-n", "-U", "-s", "0",
                                            "-w", str(cap), "udp"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: cap.exists() and cap.stat().st_size >= 24, 10, 0.05, "tcpdump")
    time.sleep(0.3)
    # keepalive=1: the engine starts a handshake at once and keeps the session warm
    start_ours(ov, wg, key_file, ",keepalive=1")
    # wireguard-go does not know us yet: no session, our pings wait in the
    # engine's queue (the initiations go unanswered) ...
    ov.run(ov.hosts[1], ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-p", "5ec7e75ec7e7",
                         "-I", pod_of(1), pod_of(2)], timeout=30)
    # ... until it does: our next retry (REKEY_TIMEOUT, 5 s) gets an answer
    # and what waited goes out, encrypted
    wg.add_peer(our_public)
    wait_for(lambda: ov.status(ov.hosts[1])["peers"][0]["session"], 12, 0.2, "a session")
    _ping(ov, 1, 2, count=3, pattern="5ec7e75ec7e7")
    _ping(ov, 2, 1, count=3, pattern="5ec7e75ec7e7")
    time.sleep(4.5)                                         # idle: keepalives only
    ov.lab.stop(dump, timeout=5)
    frames = [(t, src, dst, p) for t, src, dst, _sp, _dp, p in pcap_udp(cap)]
    ours = [f for f in frames if f[1] == underlay_of(1)]
    kinds = [p[0] for _t, _s, _d, p in frames]
    first_response = kinds.index(2)
    assert kinds[:first_response].count(1) >= 2 and set(kinds[:first_response]) == {1}, kinds[:8]
    assert tcpdump_saw(ov, frames) and any(p[0] == 4 and len(p) > 32 for _t, _s, _d, p in ours)
    inner = [bytes([198, 19, 1, 1]), bytes([198, 19, 2, 1]), bytes([198, 19, 2, 0])]
    for t, src, dst, payload in frames:
        assert payload[:1] in (b"\x01", b"\x02", b"\x03", b"\x04"), (src, dst, payload[:8])
        assert payload[1:4] == b"\0\0\0"
        assert b"\x5e\xc7\xe7\x5e\xc7\xe7" not in payload
        assert not any(a in payload for a in inner), (src, dst)
    # persistent keepalives: empty transport messages (32 bytes) from us, one a second
    last_ping = max(t for t, src, dst, p in frames if len(p) > 32)
    keep = [t for t, src, dst, p in ours if p[0] == 4 and len(p) == 32 and t > last_ping + 0.5]
    gaps = [b - a for a, b in zip(keep, keep[1:])]
    assert len(keep) >= 3 and all(0.8 <= g <= 1.6 for g in gaps), (keep, gaps)
    st = ov.status(ov.hosts[1])
    assert st["peers"][0]["persistent_keepalive"] == 1 and st["counters"]["wg_tx_keepalive"] >= 3
    assert st["counters"]["wg_tx_initiation_retry"] >= 1
    _check_no_secret(ov, key_file)


def tcpdump_saw(ov: Overlay, frames) -> bool:
    """The capture holds traffic both ways (it ran the whole time)."""
    return ({underlay_of(1), underlay_of(2)} <= {f[1] for f in frames}) and len(frames) > 20


def test_key_problems_exit_2_in_one_line_with_nothing_created(wgbed):
    ov, wg = wgbed
    key = generate()
    path = ov.tmp / "loose.key"
    path.write_text(key.secret_base64() + "\n")
    os.chmod(path, 0o644)
    base = [sys.executable, "-m", "udpoverlay", "run", "--backend", "wireguard",
            "--public-ip", underlay_of(1), "--subnet", subnet_of(1), "--network", NETWORK]
    peer = f"{underlay_of(2)}={subnet_of(2)}"
    cases = [
        (["--private-key-file", str(path), "--peer",
          peer + f",public-key={wg.key.public.to_base64()}"], "gives group or others access"),
        (["--private-key-file", str(path), "--peer", peer], "needs the peer's public key"),
        (["--private-key-file", str(ov.tmp / "new.key"), "--peer",
          peer + ",public-key=" + key.secret_base64()[:30]], "public-key"),
    ]
    for argv, needle in cases:
        r = ov.run(ov.hosts[1], base + argv, timeout=30)
        lines = r.stderr.strip().splitlines()
        # one error line (the last); any other line is start-up's INFO (starting, stopping)
        errors = [line for line in lines if " INFO " not in line]
        assert r.returncode == 2 and errors == lines[-1:] and needle in lines[-1], r.stderr
        assert lines[-1].startswith("udpoverlay: error: ")
        assert key.secret_base64() not in r.stderr + r.stdout
        assert key.secret_base64()[:30] not in r.stderr
        assert not ov.link_exists(ov.hosts[1])
    assert not (ov.tmp / "new.key").exists()       # the bad peer was found first


def test_a_corrected_public_key_in_the_peers_file_applies_on_sighup(wgbed):
    ov, wg = wgbed
    key_file, our_public = our_key(ov)
    wg.add_peer(our_public)
    peers = ov.tmp / "peers.toml"

    def write(public: str) -> None:
        text = (f'[[peer]]\nhost = "{underlay_of(2)}"\nsubnet = "{subnet_of(2)}"\n'
                f'public-key = "{public}"\n')
        with open(peers, "w") as f:
            f.write(text)
        os.chmod(peers, 0o600)

    write(generate().public.to_base64())             # a wrong key: wireguard-go ignores us
    d = ov.launch(1, [sys.executable, "-m", "udpoverlay", "run", "--backend", "wireguard",
                      "--private-key-file", key_file, "--public-ip", underlay_of(1),
                      "--subnet", subnet_of(1), "--network", NETWORK,
                      "--peers-file", str(peers)])
    r = ov.run(ov.hosts[1], ["ping", "-n", "-c", "1", "-W", "1", "-I", pod_of(1), pod_of(2)],
               timeout=20)
    assert r.returncode != 0
    assert ov.status(ov.hosts[1])["counters"]["wg_rx_response"] == 0
    write(wg.key.public.to_base64())
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: ov.status(ov.hosts[1])["peers"][0]["public_key"] == wg.key.public.to_base64(),
             10, 0.1, "the reloaded key")
    _ping(ov, 1, 2)
    st = ov.status(ov.hosts[1])
    assert st["counters"]["wg_rx_response"] >= 1 and st["wireguard"]["refused"] == []
    assert st["static"]["reloads"] == 1 and d.proc.poll() is None
