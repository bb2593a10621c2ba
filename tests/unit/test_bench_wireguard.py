"""The WireGuard benchmark scenarios' definitions (no root, nothing timed):
udpoverlay-wireguard's command lines and wireguard-go's `wg set` commands
describe two hosts that are each other's one peer."""

from __future__ import annotations

import stat

import pytest

from benchmarks import scenarios
from benchmarks.run import order_scenarios, parse_args
from benchmarks.scenarios import (
    NODES,
    UdpoverlayWireguard,
    WireguardGo,
    make_scenario,
    wg_go_config,
    wg_go_device,
    wg_keys,
)
from udpoverlay.wireguard.keys import load_private_key

H1, H2 = NODES


def _flag(cmd: list[str], name: str) -> str:
    assert cmd.count(name) == 1, (name, cmd)
    return cmd[cmd.index(name) + 1]


def test_both_are_known_and_selectable_with_the_baseline():
    for name in ("udpoverlay-wireguard", "wireguard-go"):
        assert name in scenarios.SCENARIOS
    assert isinstance(make_scenario("udpoverlay-wireguard"), UdpoverlayWireguard)
    assert isinstance(make_scenario("wireguard-go", io="epoll"), WireguardGo)
    args = parse_args(["--scenarios",
                       "udpoverlay-udp,udpoverlay-wireguard,wireguard-go,kernel-vxlan"])
    assert order_scenarios(args.scenarios) == [
        "kernel-vxlan", "udpoverlay-udp", "udpoverlay-wireguard", "wireguard-go"]


def test_keys_are_private_files_of_working_keys(tmp_path):
    keys = wg_keys(tmp_path, "x")
    assert set(keys) == {H1.name, H2.name}
    publics = set()
    for path, public in keys.values():
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o600
        assert load_private_key(path).public.to_base64() == public
        publics.add(public)
    assert len(publics) == 2
    again = wg_keys(tmp_path, "x")             # a second run in the same folder: new keys
    assert {p for _, p in again.values()}.isdisjoint(publics)


def test_udpoverlay_wireguard_daemons_are_each_others_peer(tmp_path):
    sc = make_scenario("udpoverlay-wireguard", io="io_uring")
    assert sc.name == "udpoverlay-wireguard" and sc.IFACE == "uo0"
    sc.keys = wg_keys(tmp_path, sc.name)
    for node, remote in ((H1, H2), (H2, H1)):
        cmd = sc.command(node, remote, tmp_path)
        assert cmd[1:4] == ["-m", "udpoverlay", "run"]
        assert _flag(cmd, "--backend") == "wireguard"
        assert _flag(cmd, "--private-key-file") == sc.keys[node.name][0]
        assert _flag(cmd, "--public-ip") == node.underlay_ip
        assert _flag(cmd, "--subnet") == node.subnet
        assert _flag(cmd, "--network") == scenarios.NETWORK
        assert _flag(cmd, "--tun") == "uo0" and _flag(cmd, "--port") == "51820"
        assert _flag(cmd, "--peer") == (f"{remote.underlay_ip}={remote.subnet},"
                                        f"public-key={sc.keys[remote.name][1]}")
        # flags the wireguard backend refuses never reach it (--io io_uring among them)
        for refused in ("--io", "--threads", "--queues", "--busy-poll-us", "--no-offload"):
            assert refused not in cmd


def test_wireguard_go_is_configured_as_a_flannel_wireguard_node(tmp_path):
    keys = wg_keys(tmp_path, "wireguard-go")
    dev = wg_go_device("uoabc123", H1)
    assert dev == "wguoabc123h1" and len(dev) <= 15
    assert wg_go_device("uoabc123", H2) != dev
    assert len(wg_go_device("uo" + "f" * 30, H1)) == 15
    cmds = wg_go_config(H1, H2, dev, keys[H1.name][0], keys[H2.name][1])
    wg_set = cmds[0]
    assert wg_set[:3] == ["wg", "set", dev]
    assert _flag(wg_set, "private-key") == keys[H1.name][0]
    assert _flag(wg_set, "listen-port") == "51820"
    assert _flag(wg_set, "peer") == keys[H2.name][1]
    assert _flag(wg_set, "allowed-ips") == H2.subnet
    assert _flag(wg_set, "endpoint") == f"{H2.underlay_ip}:51820"
    assert ["ip", "addr", "add", "198.19.1.0/32", "dev", dev] in cmds
    assert ["ip", "link", "set", dev, "up"] in cmds
    assert cmds[-1] == ["ip", "route", "replace", H2.subnet, "dev", dev]
    sc = WireguardGo()
    sc.devs = {H1.name: dev}
    assert sc.command(H1, H2) == ["wireguard-go", "-f", dev]


@pytest.mark.parametrize("name", ["udpoverlay-wireguard", "wireguard-go"])
def test_nothing_running_means_no_pids_and_nothing_to_report(name):
    sc = make_scenario(name)
    assert sc.daemon_pids() == [] and sc.log_tails() == ""
    sc.check_alive()
