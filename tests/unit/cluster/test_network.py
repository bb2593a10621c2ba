"""flannel's network config rules (pkg/subnet/config.go), as udpoverlay reads them."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpoverlay.cluster.network import NetworkConfig, parse_network_config
from udpoverlay.errors import ConfigError

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network


def cfg(**fields) -> NetworkConfig:
    return parse_network_config(json.dumps(fields))


def test_defaults_no_backend_means_udp():
    c = parse_network_config('{"Network": "198.19.0.0/16"}')
    assert c.network == N("198.19.0.0/16")
    assert c.subnet_len == 24
    assert c.subnet_min == A("198.19.1.0")  # the first subnet is skipped
    assert c.subnet_max == A("198.19.255.0")
    assert (c.backend_type, c.backend_port, c.vni) == ("udp", 8285, 1)
    assert c.subnet_count() == 255
    assert not c.enable_ipv6 and c.ipv6_network is None


@pytest.mark.parametrize("network, subnet_len", [
    ("198.18.0.0/15", 24), ("198.19.0.0/22", 24), ("198.19.0.0/23", 25),
    ("198.19.0.0/26", 28), ("198.19.0.0/28", 30),
])
def test_default_subnet_len(network, subnet_len):
    assert cfg(Network=network).subnet_len == subnet_len


@pytest.mark.parametrize("fields, message", [
    ({"Network": "198.19.0.0/29"}, "minimum useful prefix is /28"),
    ({"Network": "198.19.0.0/16", "SubnetLen": 31}, "at most 30"),
    ({"Network": "198.19.0.0/16", "SubnetLen": 17}, "at least four subnets"),
    ({"Network": "198.19.0.0/16", "SubnetLen": "24"}, "SubnetLen must be a non-negative"),
    ({"Network": "198.19.0.0/16", "SubnetLen": 24.0}, "SubnetLen must be a non-negative"),
    ({"Network": "198.19.0.0/16", "SubnetLen": True}, "SubnetLen must be a non-negative"),
    ({"Network": "198.19.0.0/16", "SubnetLen": -1}, "SubnetLen must be a non-negative"),
    ({}, "Network is missing"),
    ({"Network": "0.0.0.0/0"}, "Network is missing"),
    ({"Network": "198.19.0.0"}, "CIDR string"),
    ({"Network": 42}, "CIDR string"),
    ({"Network": "198.19.0.300/16"}, "not a valid CIDR"),
    ({"Network": "fd00::/16"}, "must be an IPv4 network"),
    ({"Network": "198.19.0.0/16", "SubnetMin": "198.20.1.0"}, "not in the range"),
    ({"Network": "198.19.0.0/16", "SubnetMax": "198.18.1.0"}, "not in the range"),
    ({"Network": "198.19.0.0/16", "SubnetMin": "198.19.1.7"}, "SubnetLen (/24) boundary"),
    ({"Network": "198.19.0.0/16", "SubnetMax": "198.19.9.128"}, "boundary"),
    ({"Network": "198.19.0.0/16", "SubnetMin": "198.19.9.0", "SubnetMax": "198.19.8.0"},
     "above SubnetMax"),
    ({"Network": "198.19.0.0/16", "SubnetMin": 5}, "IPv4 address string"),
    ({"Network": "198.19.0.0/16", "Backend": {}}, "Backend.Type is missing"),
    ({"Network": "198.19.0.0/16", "Backend": "udp"}, "Backend must be a JSON object"),
    ({"Network": "198.19.0.0/16", "Backend": {"Type": "host-gw"}}, "not supported"),
    ({"Network": "198.19.0.0/16", "Backend": {"Type": "udp", "Port": 70000}}, "1..65535"),
    ({"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1 << 24}}, "VNI"),
    ({"Network": "198.19.0.0/16", "EnableIPv4": "yes"}, "true or false"),
    ({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/48"},
     "IPv6-only networks are not supported"),
    ({"Network": "198.19.0.0/16", "EnableIPv6": True}, "IPv6Network is missing"),
    ({"Network": "198.19.0.0/16", "IPv6Network": "198.19.0.0/16"}, "must be an IPv6"),
])
def test_rejected_with_one_line_reason(fields, message):
    with pytest.raises(ConfigError) as err:
        cfg(**fields)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("", "not valid JSON"), ("{", "not valid JSON"), ("[1]", "must be a JSON object"),
    ('{"Network": NaN}', "not valid JSON"), ('{"Network": "198.19.0.0/16"} x', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_bad_json(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_network_config(text)


def test_explicit_values_kept():
    c = cfg(Network="198.19.0.0/16", SubnetLen=26, SubnetMin="198.19.4.0",
            SubnetMax="198.19.8.0", Backend={"Type": "vxlan", "VNI": 4096, "Port": 4789})
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (26, A("198.19.4.0"), A("198.19.8.0"))
    assert (c.backend_type, c.backend_port, c.vni) == ("vxlan", 4789, 4096)
    assert c.subnet_count() == 17
    assert list(c.subnets())[:2] == [N("198.19.4.0/26"), N("198.19.4.64/26")]


def test_backend_defaults_per_type():
    assert cfg(Network="198.19.0.0/16", Backend={"Type": "vxlan"}).backend_port == 8472
    assert cfg(Network="198.19.0.0/16", Backend={"Type": "vxlan"}).vni == 1
    assert cfg(Network="198.19.0.0/16", Backend={"Type": "udp"}).backend_port == 8285
    assert cfg(Network="198.19.0.0/16", Backend={"Type": "udp", "Port": 0}).backend_port == 8285
    assert cfg(Network="198.19.0.0/16", Backend={"Type": "udp", "Port": 9000}).backend_port == 9000
    assert cfg(Network="198.19.0.0/16", Backend={"Type": "vxlan", "VNI": 0}).vni == 0


def test_go_decoding_habits():
    # Keys match case-insensitively, null means unset, host bits are masked.
    c = parse_network_config('{"network": "198.19.3.7/16", "SUBNETLEN": null, '
                             '"backend": {"type": "vxlan", "vni": 7}, "Unknown": 1}')
    assert c.network == N("198.19.0.0/16") and c.subnet_len == 24
    assert (c.backend_type, c.vni) == ("vxlan", 7)
    # The last of several case-variant keys wins, as in Go.
    assert cfg(Network="198.18.0.0/16", network="198.19.0.0/16").network == N("198.19.0.0/16")
    assert parse_network_config(b'{"Network": "198.19.0.0/16", "Backend": null}').backend_type \
        == "udp"


def test_dual_stack_accepted_ipv4_used():
    c = cfg(Network="198.19.0.0/16", EnableIPv6=True, IPv6Network="fd00:10::/48")
    assert c.enable_ipv6 and c.ipv6_network == ipaddress.IPv6Network("fd00:10::/48")
    assert c.subnet_len == 24


def test_contains_subnet_is_flannels_compat_check():
    c = cfg(Network="198.19.0.0/16")
    assert c.contains_subnet(N("198.19.1.0/24")) and c.contains_subnet(N("198.19.255.0/24"))
    assert not c.contains_subnet(N("198.19.0.0/24"))   # below SubnetMin
    assert not c.contains_subnet(N("198.19.1.0/25"))   # wrong length
    assert not c.contains_subnet(N("198.18.1.0/24"))   # outside
    assert NetworkConfig.parse('{"Network": "198.19.0.0/16"}') == c


@given(prefix=st.integers(min_value=8, max_value=28),
       base=st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_defaults_partition_the_network(prefix, base):
    network = N((base, prefix), strict=False)
    c = cfg(Network=str(network))
    size = 1 << (32 - c.subnet_len)
    assert c.subnet_len == (24 if prefix <= 22 else prefix + 2)
    assert int(c.subnet_min) == int(network.network_address) + size
    assert int(c.subnet_max) + size == int(network.broadcast_address) + 1
    assert c.subnet_count() == (1 << (c.subnet_len - prefix)) - 1
    assert c.contains_subnet(N((c.subnet_max, c.subnet_len)))


def test_mtu_direct_routing_and_nftables_default_off():
    c = cfg(Network="198.19.0.0/16", Backend={"Type": "vxlan"})
    assert (c.mtu, c.direct_routing, c.enable_nftables) == (None, False, False)


def test_mtu_direct_routing_and_nftables_read_case_insensitively():
    c = parse_network_config('{"Network": "198.19.0.0/16", "enablenftables": true, '
                             '"Backend": {"type": "vxlan", "mtu": 1400, "directrouting": true}}')
    assert (c.mtu, c.direct_routing, c.enable_nftables) == (1400, True, True)
    assert cfg(Network="198.19.0.0/16", Backend={"Type": "udp", "MTU": 0}).mtu is None


@pytest.mark.parametrize("fields, message", [
    (dict(Backend={"Type": "vxlan", "MTU": 100}), "Backend.MTU 100 out of range"),
    (dict(Backend={"Type": "vxlan", "MTU": -1}), "Backend.MTU must be"),
    (dict(Backend={"Type": "vxlan", "MTU": "1400"}), "Backend.MTU must be"),
    (dict(Backend={"Type": "vxlan", "DirectRouting": "yes"}), "Backend.DirectRouting must be"),
    (dict(EnableNFTables=1), "EnableNFTables must be"),
])
def test_new_fields_rejected_with_one_line_reason(fields, message):
    with pytest.raises(ConfigError) as ei:
        cfg(Network="198.19.0.0/16", **fields)
    assert message in str(ei.value) and "\n" not in str(ei.value)
