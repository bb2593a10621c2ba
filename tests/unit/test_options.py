"""Config validation and the CLI's handling of bad arguments (no root)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from udpoverlay.cli import main
from udpoverlay.config.options import build_config
from udpoverlay.config.peerspec import parse_peer
from udpoverlay.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE = dict(public_ip="198.18.0.1", port=None, tun=None,
            subnet="198.19.1.0/24", network="198.19.0.0/16")


def cfg(**kw):
    args = dict(BASE)
    args.update(kw)
    return build_config(**args)


def test_valid_config_defaults():
    c = cfg(peers=["198.18.0.2=198.19.2.0/24", "198.18.0.3:9000=198.19.3.0/24"])
    assert c.port == 8285 and c.tun == "udpov0" and c.backend == "udp"
    assert c.public_ip == ipaddress.IPv4Address("198.18.0.1")
    assert [(str(p.public_ip), p.port, str(p.subnet)) for p in c.peers] == [
        ("198.18.0.2", 8285, "198.19.2.0/24"), ("198.18.0.3", 9000, "198.19.3.0/24")]
    assert c.mtu is None


def test_peers_by_name_wait_for_resolution_literals_are_resolved_at_once():
    c = cfg(peers=["Bob.Example.NET.:9000=198.19.2.0/24,keepalive=25",
                   "198.18.0.3=198.19.3.0/24", "carol=198.19.4.0/24"])
    assert [(s.host, s.port, str(s.subnet), s.keepalive) for s in c.peer_specs] == [
        ("bob.example.net", 9000, "198.19.2.0/24", 25), ("198.18.0.3", 8285, "198.19.3.0/24", None),
        ("carol", 8285, "198.19.4.0/24", None)]
    # only the literal is a Peer yet: names become Peers once resolved
    assert [(str(p.public_ip), p.host) for p in c.peers] == [("198.18.0.3", None)]
    bob = c.peer_specs[0].resolved(ipaddress.IPv4Address("198.18.0.2"))
    assert (str(bob.public_ip), bob.host, bob.keepalive) == ("198.18.0.2", "bob.example.net", 25)


def test_peers_behind_one_nat_differ_by_port_in_udp_mode_only():
    peers = ["198.18.0.254:8301=198.19.2.0/24", "198.18.0.254:8302=198.19.3.0/24"]
    assert len(cfg(peers=peers).peers) == 2
    with pytest.raises(ConfigError, match="given twice"):
        cfg(peers=peers, backend="vxlan")


def test_parse_peer_refuses_a_name_it_cannot_resolve():
    with pytest.raises(ConfigError, match="is a name"):
        parse_peer("bob.example.net=198.19.2.0/24", 8285)


def test_peer_port_follows_our_port_and_vtep_mac():
    c = cfg(port="9999", backend="vxlan", peers=["198.18.0.2=198.19.2.0/24,vtep-mac=02:00:00:00:00:02"])
    assert c.port == 9999 and c.peers[0].port == 9999
    assert c.peers[0].vtep_mac == bytes.fromhex("020000000002")


def test_public_ip_may_be_omitted():
    c = cfg(public_ip=None)
    assert c.public_ip is None
    detected = c.with_underlay("198.18.0.9")
    assert (str(detected.public_ip), str(detected.bind_ip)) == ("198.18.0.9", "198.18.0.9")


def test_public_ip_advertised_bind_ip_from_the_interface():
    nat = cfg(public_ip="198.18.9.9").with_underlay("198.18.0.1")
    assert (str(nat.public_ip), str(nat.bind_ip)) == ("198.18.9.9", "198.18.0.1")
    with pytest.raises(ConfigError, match="our own --public-ip"):
        cfg(public_ip=None, peers=["198.18.0.1=198.19.2.0/24"]).with_underlay("198.18.0.1")


def test_config_is_frozen():
    c = cfg()
    with pytest.raises(Exception):
        c.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("kw, needle", [
    (dict(subnet="198.19.1.0/33"), "bad CIDR"),
    (dict(subnet="nonsense"), "bad CIDR"),
    (dict(subnet="198.19.1.1/24"), "host bits"),
    (dict(network="198.19.0.0"), "bad CIDR"),
    (dict(subnet="198.18.9.0/24"), "outside --network"),
    (dict(subnet="198.19.0.0/16"), "smaller than --network"),
    (dict(public_ip="198.18.0.300"), "bad IPv4 address"),
    (dict(port="0"), "bad port"),
    (dict(port="70000"), "bad port"),
    (dict(port="http"), "bad port"),
    (dict(mtu="100"), "--mtu"),
    (dict(tun="a-very-long-interface-name"), "interface name"),
    (dict(ifaces=["eth0/1"]), "--iface"),
    (dict(ifaces=["198.18.0.300"]), "bad IPv4 address"),
    (dict(iface_regex=["(eth"]), "bad regular expression"),
    (dict(iface_can_reach="nowhere"), "--iface-can-reach"),
    (dict(direct_routing=True), "only applies to --backend vxlan"),
    (dict(iptables_resync="0"), "--iptables-resync"),
    (dict(healthz_port="70000"), "--healthz-port"),
    (dict(healthz_ip="localhost"), "--healthz-ip"),
    (dict(backend="geneve"), "unknown backend"),
    (dict(backend="vxlan", vni=1 << 24), "out of range"),
    (dict(peers=["198.18.0.2=198.19.2.0/24,vtep-mac=02:00:00:00:00:01"]), "only applies to --backend vxlan"),
    (dict(backend="gre"), "unknown backend"),
    (dict(peers=["198.18.0.1=198.19.2.0/24"]), "our own --public-ip"),
    (dict(peers=["198.18.0.2=198.19.1.128/25"]), "overlaps our --subnet"),
    (dict(peers=["198.18.0.2=198.19.0.0/16"]), "overlaps our --subnet"),
    (dict(peers=["198.18.0.2=198.19.2.0/24", "198.18.0.3=198.19.2.0/25"]), "overlap"),
    (dict(peers=["198.18.0.2=198.19.2.0/24", "198.18.0.2=198.19.3.0/24"]), "given twice"),
    (dict(peers=["198.18.0.2=198.18.5.0/24"]), "outside --network"),
    (dict(peers=["198.18.0.2:0=198.19.2.0/24"]), "bad port"),
    (dict(peers=["198.18.0.2:x=198.19.2.0/24"]), "bad port"),
    (dict(peers=["198.18.0.2"]), "expected HOST[:PORT]=SUBNET"),
    (dict(peers=["198.18.0.2=198.19.2.0/24,vtep-mac=zz"]), "bad MAC"),
    (dict(peers=["198.18.0.2=198.19.2.0/24,color=red"]), "unknown option"),
    (dict(peers=["198.18.0.300=198.19.2.0/24"]), "bad IPv4 address"),
    (dict(peers=["198.18.0=198.19.2.0/24"]), "bad IPv4 address"),       # all digits: an address
    (dict(peers=["bob_.example.net!=198.19.2.0/24"]), "bad host name"),
    (dict(peers=["-bob.example.net=198.19.2.0/24"]), "bad host name"),
    (dict(peers=["bob..example.net=198.19.2.0/24"]), "bad host name"),
    (dict(peers=["[2001:db8::1]=198.19.2.0/24"]), "bad"),
    (dict(peers=["bob=198.19.2.0/24,keepalive=-1"]), "keepalive"),
    (dict(peers=["bob=198.19.2.0/24,keepalive=99999"]), "out of range"),
    (dict(peers=["bob=198.19.2.0/24", "carol=198.19.2.128/25"]), "overlap"),
    (dict(peers=["bob=198.19.1.0/24"]), "overlaps our --subnet"),
    (dict(peers=["bob=198.19.2.0/24,vtep-mac=02:00:00:00:00:01"]), "only applies to --backend vxlan"),
    (dict(keepalive="-5"), "--keepalive"),
    (dict(resolve_interval="0"), "--resolve-interval"),
])
def test_bad_config_is_one_line_config_error(kw, needle):
    with pytest.raises(ConfigError) as ei:
        cfg(**kw)
    msg = str(ei.value)
    assert needle in msg
    assert "\n" not in msg


def test_parse_peer_default_port():
    p = parse_peer("198.18.0.2=198.19.2.0/24", 8285)
    assert (str(p.public_ip), p.port, str(p.subnet), p.vtep_mac) == (
        "198.18.0.2", 8285, "198.19.2.0/24", None)


@pytest.mark.parametrize("argv, needle", [
    (["--public-ip", "198.18.0.1", "--subnet", "198.19.1.0/24", "--network",
      "198.19.0.0/16", "--peer", "198.18.0.2=198.19.1.0/24"], "overlaps"),
    (["run", "--public-ip", "198.18.0.1", "--subnet", "198.18.9.0/24", "--network",
      "198.19.0.0/16"], "outside"),
    (["--public-ip", "198.18.0.1", "--subnet", "198.19.1.0/24", "--network",
      "198.19.0.0/16", "--peer", "198.18.0.1=198.19.2.0/24"], "own"),
    (["--public-ip", "198.18.0.1", "--subnet", "198.19.1.0/99", "--network",
      "198.19.0.0/16"], "bad CIDR"),
    (["--public-ip", "198.18.0.1", "--network", "198.19.0.0/16"], "--subnet"),
    (["--bogus-flag"], "unrecognized"),
    (["run", "--bogus-flag"], "unrecognized"),
    (["run", "--public-ip", "198.18.0.1"], "--etcd-endpoints (cluster mode"),   # both ways
    (["run", "--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16", "--bogus"],
     "unrecognized"),
])
def test_cli_bad_arguments_exit_2_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as ei:
        sys.exit(main(argv))
    assert ei.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("udpoverlay: error: ") and needle in lines[0], err


def _run_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "udpoverlay", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=str(ROOT))


def test_cli_process_bad_arguments_exit_2():
    r = _run_cli("--public-ip", "198.18.0.1", "--subnet", "198.19.1.0/24",
                 "--network", "198.19.0.0/16", "--peer", "198.18.0.2=198.19.1.0/25")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("udpoverlay: error: ")
    assert r.stdout == ""


def test_cli_version_names_implementation():
    from udpoverlay import __version__, dataplane
    r = _run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"udpoverlay {__version__} (fast path: {dataplane.IMPLEMENTATION})"


def test_cli_version_python_reference():
    env = dict(os.environ, UDPOVERLAY_NO_EXTENSIONS="1",
               PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "udpoverlay", "--version"], capture_output=True,
                       text=True, timeout=60, env=env, cwd=str(ROOT))
    assert r.stdout.strip().endswith("(fast path: python)")


def test_cli_help_mentions_peer_syntax():
    r = _run_cli("run", "--help")
    assert r.returncode == 0 and "HOST[:PORT]=SUBNET" in r.stdout


def test_status_without_daemon_fails_cleanly():
    r = _run_cli("status", "--tun", "nosuchdev0", "--timeout", "1")
    assert r.returncode == 1
    assert r.stderr.startswith("udpoverlay: error: ") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("kw, flag", [(dict(peers_file="/etc/peers.toml"), "--peers-file"),
                                      (dict(strict_peers=True), "--strict-peers")])
def test_static_peer_flags_are_refused_in_cluster_mode(kw, flag):
    from udpoverlay.config.options import build_cluster_options
    with pytest.raises(ConfigError, match=f"{flag}: in cluster mode"):
        build_cluster_options(endpoints="http://127.0.0.1:2379", **kw)
    # keepalives and liveness work in both modes
    assert build_cluster_options(endpoints="http://127.0.0.1:2379", keepalive=25).keepalive == 25
