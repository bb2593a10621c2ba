"""LeaseValidator and RejectLog: which stored keys are leases, and logging
each offending key/value once (pure; no store, no loop)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from udpoverlay.cluster.codec import encode_lease_value
from udpoverlay.cluster.network import parse_network_config
from udpoverlay.cluster.store.base import KeyValue
from udpoverlay.cluster.validate import Entry, LeaseValidator, Rejection, RejectLog, bad_public_ip

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
P = "/p/subnets/"
CONFIG = parse_network_config('{"Network":"198.19.0.0/17","SubnetMax":"198.19.100.0"}')
UNDERLAY = N("198.18.0.0/24")


def check(name: str, value: str = encode_lease_value("198.18.0.2"), created: int = 7):
    v = LeaseValidator("/p", CONFIG, UNDERLAY, lambda: 0.0)
    return v.check(KeyValue(P + name, value.encode(), 9, create_revision=created))


@pytest.mark.parametrize("name, reason", [
    ("evil/198.19.8.0-24", "nested_key"),
    ("a/b/c", "nested_key"),
    ("not-a-subnet", "not_a_subnet"),
    ("198.19.8.5-24", "not_a_subnet"),        # host bits set
    ("198.19.8.0-33", "not_a_subnet"),
    ("198.19.8.0-25", "subnet_len"),
    ("198.19.9.0-23", "not_a_subnet"),        # host bits set for /23
    ("198.19.0.0-23", "subnet_len"),          # a less specific one is no better
    ("198.19.200.0-24", "outside_network"),
    ("198.19.0.0-24", "outside_range"),       # below SubnetMin
    ("198.19.101.0-24", "outside_range"),     # above SubnetMax
])
def test_keys_that_are_not_leases(name, reason):
    verdict = check(name)
    assert isinstance(verdict, Rejection) and verdict.reason == reason, verdict
    assert "\n" not in verdict.detail


@pytest.mark.parametrize("addr, why", [
    ("0.0.0.0", "0.0.0.0"), ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"),
    ("224.0.0.5", "multicast"), ("239.1.1.1", "multicast"),
    ("255.255.255.255", "class E"), ("240.0.0.1", "class E"),
    ("198.18.0.255", "broadcast address of the underlay network 198.18.0.0/24"),
])
def test_public_ips_that_are_not_peers(addr, why):
    assert why in bad_public_ip(A(addr), UNDERLAY)
    verdict = check("198.19.8.0-24", f'{{"PublicIP":"{addr}"}}')
    assert isinstance(verdict, Rejection) and verdict.reason == "bad_public_ip"


def test_valid_keys_and_addresses():
    for addr in ("198.18.0.2", "198.18.1.255", "10.0.0.1", "169.254.1.1"):
        assert bad_public_ip(A(addr), UNDERLAY) is None
    assert bad_public_ip(A("198.18.0.255"), None) is None      # underlay unknown
    assert bad_public_ip(A("198.18.0.1"), N("198.18.0.0/31")) is None
    for name in ("198.19.8.0-24", "198.19.8.0-024", "198.19.8.0-24&fd00::-64"):
        verdict = check(name)
        assert isinstance(verdict, Entry) and verdict.subnet == N("198.19.8.0/24")
        assert verdict.create_revision == 7 and verdict.key == P + name
    assert check("198.19.8.0-24", "{bad").reason == "bad_value"


def test_reject_log_once_per_key_and_value(caplog):
    rejects = RejectLog()
    r = Rejection(P + "x", "not_a_subnet", "the key does not name a subnet")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            rejects.reject(r, b"v1")
        rejects.reject(r, b"v2")                 # a new value: a new line
        rejects.clear(P + "x")
        rejects.reject(r, b"v2")                 # gone and back: a new offence
    assert caplog.text.count("ignoring lease key /p/subnets/x:") == 3
    counts, listed = rejects.status()
    assert counts == {"not_a_subnet": 3} and [e["key"] for e in listed] == [P + "x"]
    overlap = Rejection(P + "y", "overlap", "older key wins")
    rejects.reject(overlap, b"v")
    rejects.clear(P + "y", keep_overlap=True)
    rejects.keep_only({P + "y"})
    assert [e["key"] for e in rejects.status()[1]] == [P + "y"]
