"""flannel's lease key/value encoding, byte for byte."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpoverlay.cluster import gojson
from udpoverlay.cluster.codec import (
    config_key,
    decode_lease_value,
    encode_lease_value,
    normalize_prefix,
    parse_subnet_key,
    subnet_key,
    subnets_prefix,
    vxlan_backend_data,
)
from udpoverlay.errors import LeaseDecodeError

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
PREFIX = "/coreos.com/network"
# Exactly what flannel v0.28 writes, re-addressed into 198.18.0.0/15.
FLANNEL_VXLAN = ('{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"vxlan",'
                 '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')
# json.Marshal(LeaseAttrs{PublicIP: ...}) from flannel's udp backend: PublicIPv6 is a nil
# pointer (null, no omitempty); BackendType/BackendData are omitempty.
FLANNEL_UDP = '{"PublicIP":"198.18.0.1","PublicIPv6":null}'


def test_vxlan_value_byte_for_byte():
    value = encode_lease_value(A("198.18.0.3"), "vxlan",
                               vxlan_backend_data(1, "C6:D2:32:6F:8F:44"))
    assert value == FLANNEL_VXLAN


def test_udp_value_byte_for_byte():
    assert encode_lease_value("198.18.0.1") == FLANNEL_UDP
    assert encode_lease_value("198.18.0.1", "", {}) == FLANNEL_UDP


def test_keys():
    assert normalize_prefix("/coreos.com/network/") == PREFIX
    assert normalize_prefix("coreos.com//network") == PREFIX
    assert config_key(PREFIX + "/") == "/coreos.com/network/config"
    assert subnets_prefix(PREFIX) == "/coreos.com/network/subnets/"
    key = subnet_key(PREFIX, N("198.19.1.0/24"))
    assert key == "/coreos.com/network/subnets/198.19.1.0-24"
    assert parse_subnet_key(key) == N("198.19.1.0/24")


@pytest.mark.parametrize("key, expected", [
    ("/p/subnets/198.19.1.0-24", N("198.19.1.0/24")),
    ("/p/subnets/198.19.1.0-24&fd00:10:0:1::-64", N("198.19.1.0/24")),  # dual-stack flannel
    ("/p/subnets/198.19.1.7-24", None),     # host bits set
    ("/p/subnets/198.19.1.0-33", None),
    ("/p/subnets/198.19.1.0/24", None),
    ("/p/subnets/198.19.1-24", None),
    ("/p/subnets/x198.19.1.0-24", None),
    ("/p/config", None),
])
def test_parse_subnet_key(key, expected):
    assert parse_subnet_key(key) == expected


def test_decode_flannel_values():
    lease = decode_lease_value(N("198.19.3.0/24"), FLANNEL_VXLAN.encode(), expires=5.0)
    assert lease.public_ip == A("198.18.0.3") and lease.backend_type == "vxlan"
    assert lease.vtep_mac() == bytes.fromhex("c6d2326f8f44") and lease.vni() == 1
    assert lease.raw == FLANNEL_VXLAN and lease.expires == 5.0
    udp = decode_lease_value(N("198.19.1.0/24"), FLANNEL_UDP)
    assert (udp.backend_type, udp.backend_data, udp.vtep_mac(), udp.vni()) == ("", None, None, None)


def test_decode_is_case_insensitive_like_go():
    lease = decode_lease_value(N("198.19.3.0/24"),
                               '{"publicip":"198.18.0.9","backendtype":"vxlan",'
                               '"backenddata":{"vtepmac":"02:00:00:00:00:09","vni":2}}')
    assert lease.public_ip == A("198.18.0.9")
    assert lease.vtep_mac() == bytes.fromhex("020000000009") and lease.vni() == 2


@pytest.mark.parametrize("raw", [
    "", "null", "[]", "{}", '{"PublicIP":null}', '{"PublicIP":"198.18.0"}',
    '{"PublicIP":"fd00::1"}', '{"PublicIP":7}', '{"PublicIP":"198.18.0.1","BackendType":1}',
    '{"PublicIP":"198.18.0.1","BackendData":[1]}', b"\xff",
])
def test_decode_rejects(raw):
    with pytest.raises(LeaseDecodeError):
        decode_lease_value(N("198.19.3.0/24"), raw)


def test_bad_vtep_mac_is_a_value_error():
    lease = decode_lease_value(N("198.19.3.0/24"), '{"PublicIP":"198.18.0.1","BackendType":'
                               '"vxlan","BackendData":{"VtepMAC":"zz"}}')
    with pytest.raises(ValueError):
        lease.vtep_mac()


def test_go_html_escaping():
    assert gojson.dumps({"a": "<&>\u2028", "b": "é"}) == \
        '{"a":"\\u003c\\u0026\\u003e\\u2028","b":"é"}'


ips = st.integers(min_value=int(A("198.18.0.0")), max_value=int(A("198.19.255.255"))).map(A)
macs = st.binary(min_size=6, max_size=6).map(lambda b: bytes([b[0] & 0xFE]) + b[1:])


@given(ip=ips, mac=macs, vni=st.integers(min_value=0, max_value=(1 << 24) - 1))
def test_vxlan_round_trip(ip, mac, vni):
    text = ":".join(f"{b:02x}" for b in mac)
    raw = encode_lease_value(ip, "vxlan", vxlan_backend_data(vni, text))
    assert json.loads(raw) == {"PublicIP": str(ip), "PublicIPv6": None, "BackendType": "vxlan",
                               "BackendData": {"VNI": vni, "VtepMAC": text}}
    lease = decode_lease_value(N("198.19.3.0/24"), raw)
    assert (lease.public_ip, lease.vtep_mac(), lease.vni(), lease.raw) == (ip, mac, vni, raw)
