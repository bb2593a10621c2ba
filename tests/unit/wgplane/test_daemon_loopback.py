"""The daemon with --backend wireguard, without root: the TUN is a
socketpair (tests/unit/test_daemon.py's LoopbackDaemon), our socket is on
127.0.0.1 and the peer is a WireGuard engine this test drives on
127.0.0.2. Everything else is the daemon's: the key file, the plane, the
runner on the event loop, status and stop."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import stat

import pytest

from tests.support.asyncutil import run, wait_until
from tests.support.wireguard import icmp_echo
from tests.unit.test_daemon import LoopbackDaemon, _free_port
from udpoverlay.config.options import build_config
from udpoverlay.errors import ConfigError
from udpoverlay.status import format_status, setup_summary
from udpoverlay.wgplane import WgRunner
from udpoverlay.wireguard import Engine, generate, load_private_key


@pytest.fixture
def peer_sock():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.2", 0))
    s.settimeout(5)
    try:
        yield s
    finally:
        s.close()


def _opts(key_file, peer_port: int, peer_key, **kw):
    return build_config(public_ip="127.0.0.1", port=_free_port(),
                        tun="uowg" + secrets.token_hex(4), subnet="198.19.1.0/24",
                        network="198.19.0.0/16", backend="wireguard",
                        private_key_file=str(key_file),
                        peers=[f"127.0.0.2:{peer_port}=198.19.2.0/24,"
                               f"public-key={peer_key.public.to_base64()}"], **kw)


def test_key_file_made_0600_then_traffic_both_ways_encrypted(loop, peer_sock, tmp_path):
    theirs = generate()
    key_file = tmp_path / "wg.key"
    opts = _opts(key_file, peer_sock.getsockname()[1], theirs)
    d = LoopbackDaemon(opts)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600      # created
    ours = load_private_key(str(key_file), create=False, owner_uid=os.geteuid())
    d.setup()
    assert d.mtu == 1500 - 80 and isinstance(d.runner, WgRunner)
    peer = Engine(theirs)
    wg = peer.add_peer(ours.public, endpoint=("127.0.0.1", opts.port),
                       allowed_ips=["198.19.1.0/24"])

    async def main():
        served = asyncio.create_task(d.serve())
        await wait_until(lambda: d.lifecycle.ready, 5, "ready")
        out = icmp_echo("198.19.1.1", "198.19.2.5", 9, 1, b"payload-out")
        d.kernel_side.send(out)
        wire = []
        got = None
        for _ in range(10):     # the initiation, then the packet once the session is up
            data, src = await asyncio.to_thread(peer_sock.recvfrom, 65536)
            wire.append(data)
            r = peer.receive(data, src, asyncio.get_running_loop().time())
            for dg, addr in r.datagrams:
                peer_sock.sendto(dg, addr)
            if r.verdict == "data":
                got = r.packet
                break
        back = icmp_echo("198.19.2.5", "198.19.1.1", 9, 1, b"payload-back", reply=True)
        for dg, addr in peer.send(wg, back, asyncio.get_running_loop().time()):
            peer_sock.sendto(dg, addr)
        into_tun = await asyncio.to_thread(d.kernel_side.recv, 65536)
        doc = await asyncio.to_thread(lambda: json.loads(json.dumps(d.status())))
        d.stop()
        await asyncio.wait_for(served, 5)
        return wire, got, into_tun, doc

    wire, got, into_tun, doc = run(main())
    assert got == icmp_echo("198.19.1.1", "198.19.2.5", 9, 1, b"payload-out")
    assert into_tun == icmp_echo("198.19.2.5", "198.19.1.1", 9, 1, b"payload-back", reply=True)
    assert wire[0][0] == 1 and all(b"payload" not in w for w in wire)
    assert doc["backend"] == "wireguard" and doc["port"] == opts.port and doc["mtu"] == 1420
    assert doc["wireguard"]["public_key"] == ours.public.to_base64()
    (p,) = doc["peers"]
    assert p["public_key"] == theirs.public.to_base64() and p["session"]
    assert p["tx_packets"] == p["rx_packets"] == 1 and p["latest_handshake"] is not None
    assert doc["counters"]["rx_packets"] == 1 and doc["counters"]["wg_rx_response"] == 1
    text = json.dumps(doc) + format_status(doc) + "\n".join(setup_summary(doc))
    assert ours.secret_base64() not in text and "public key " + p["public_key"] in text
    assert d.tun is None and d.sock is None


def test_unsafe_key_file_refused_before_anything_is_made(peer_sock, tmp_path):
    key_file = tmp_path / "wg.key"
    key_file.write_text(generate().secret_base64() + "\n")
    os.chmod(key_file, 0o644)
    made = []

    class Watch(LoopbackDaemon):
        def create_tun(self, name, offload):
            made.append(name)
            return super().create_tun(name, offload)

    with pytest.raises(ConfigError, match="gives group or others access") as ei:
        Watch(_opts(key_file, peer_sock.getsockname()[1], generate()))
    assert made == [] and key_file.read_text().strip() not in str(ei.value)
    os.chmod(key_file, 0o600)
    key_file.write_text("not a key\n")
    with pytest.raises(ConfigError, match="not valid base64"):
        Watch(_opts(key_file, peer_sock.getsockname()[1], generate()))
    assert made == []
