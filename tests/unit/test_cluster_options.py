"""CLI validation of cluster (etcd) mode: no daemon, no etcd needed."""

from __future__ import annotations

import sys

import pytest

from udpoverlay.cli import main
from udpoverlay.config.options import build_cluster_options
from udpoverlay.errors import ConfigError

EP = "http://198.18.0.254:2379"


@pytest.mark.parametrize("extra", [
    ["--subnet", "198.19.1.0/24"],
    ["--network", "198.19.0.0/16"],
    ["--peer", "198.18.0.2=198.19.2.0/24"],
    ["--lease-ttl", "abc"],
    ["--lease-ttl", "1"],
    ["--etcd-prefix", "coreos.com/network"],
    ["--etcd-certfile", "/x.crt"],
    ["--public-ip", "nope"],
    ["--backend", "vxlan"],
    ["--backend", "udp"],
    ["--vni", "2"],
    ["--port", "8285"],
    ["--enable-nftables"],
    ["--etcd-username", "root"],
    ["--etcd-password", "secret"],
    ["--subnet-lease-renew-margin", "0"],
    ["--subnet-lease-renew-margin", "1440"],
    ["--subnet-lease-renew-margin", "soon"],
    ["--iptables-resync", "-1"],
    ["--iptables-forward-rules=maybe"],
    ["--mtu", "100"],
])
def test_cluster_bad_arguments_exit_2(extra, capsys):
    with pytest.raises(SystemExit) as ei:
        sys.exit(main(["run", "--etcd-endpoints", EP, *extra]))
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("udpoverlay: error: ")


def test_cluster_options_defaults():
    o = build_cluster_options(endpoints=f"{EP}, http://198.18.0.253:2379")
    assert o.endpoints == (EP, "http://198.18.0.253:2379")
    assert o.prefix == "/coreos.com/network"
    assert o.subnet_file == "/run/flannel/subnet.env"
    assert o.lease_ttl == 86400 and o.ip_masq is False
    assert o.renew_margin == 3600 and o.etcd_username is None and o.etcd_password is None
    assert o.iptables_forward_rules is True and o.iptables_resync == 5
    assert (o.healthz_ip, o.healthz_port, o.verbosity) == ("0.0.0.0", 0, 0)


@pytest.mark.parametrize("kw, flag", [
    (dict(peers=["198.18.0.2=198.19.2.0/24"]), "--peer"),
    (dict(subnet="198.19.1.0/24"), "--subnet"),
    (dict(network="198.19.0.0/16"), "--network"),
    (dict(backend="vxlan"), "--backend"),
    (dict(port=8472), "--port"),
    (dict(vni=1), "--vni"),
    (dict(enable_nftables=True), "--enable-nftables"),
])
def test_cluster_options_reject_what_etcd_decides(kw, flag):
    with pytest.raises(ConfigError, match="come from etcd") as ei:
        build_cluster_options(endpoints=EP, **kw)
    assert str(ei.value).startswith(flag)


def test_cluster_options_credentials_and_margin():
    o = build_cluster_options(endpoints=EP, etcd_username="flannel", etcd_password="pw",
                              renew_margin="90")
    assert (o.etcd_username, o.etcd_password, o.renew_margin) == ("flannel", "pw", 5400)


def test_network_config_decides_backend_mtu_and_direct_routing():
    from udpoverlay.cluster.mode import with_network_config
    from udpoverlay.cluster.network import parse_network_config
    vx = parse_network_config('{"Network": "198.19.0.0/16", "EnableNFTables": true, "Backend": '
                              '{"Type": "vxlan", "VNI": 4, "Port": 4789, "MTU": 1400, '
                              '"DirectRouting": true}}')
    o = with_network_config(build_cluster_options(endpoints=EP), vx)
    assert (o.backend, o.port, o.vni, o.mtu, o.direct_routing, o.enable_nftables) == \
        ("vxlan", 4789, 4, 1400, True, True)
    assert with_network_config(build_cluster_options(endpoints=EP, mtu="1300"), vx).mtu == 1300
    udp = parse_network_config('{"Network": "198.19.0.0/16"}')
    plain = with_network_config(build_cluster_options(endpoints=EP), udp)
    assert (plain.backend, plain.port, plain.mtu, plain.direct_routing) == \
        ("udp", 8285, None, False)
    with pytest.raises(ConfigError, match="--direct-routing only applies to the vxlan"):
        with_network_config(build_cluster_options(endpoints=EP, direct_routing=True), udp)
