"""CLI validation of cluster (etcd) mode: no daemon, no etcd needed."""

from __future__ import annotations

import sys

import pytest

from udpoverlay.cli import main
from udpoverlay.errors import ConfigError
from udpoverlay.options import build_cluster_options

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


def test_cluster_options_reject_static_values():
    with pytest.raises(ConfigError, match="come from etcd"):
        build_cluster_options(endpoints=EP, peers=["198.18.0.2=198.19.2.0/24"])
