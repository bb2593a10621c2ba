"""The underlay interface chosen as flanneld chooses it, in real namespaces:
--iface by name or address (tried in order), --iface-regex, --iface-can-reach,
FLANNELD_IFACE; the data socket binds the interface's own address while
--public-ip is only advertised (1:1 NAT), and the MTU comes from the
interface. h1's eth0 holds 198.18.0.1; its pod bridge pod0 (198.19.1.1) is
the distractor a loose choice would pick."""

from __future__ import annotations

import pytest

from tests.support.overlay import PORT, underlay_of
from tests.support.probes import assert_pings

NAT_IP = "198.18.9.9"      # advertised only; no interface holds it


def _bound(ov, i: int) -> set[str]:
    out = ov.run(ov.hosts[i], ["ss", "-ulnH"], check=True).stdout
    return {line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{PORT}")}


def test_public_ip_is_advertised_interface_address_is_bound(overlay2):
    ov = overlay2
    ov.run(ov.hosts[1], ["ip", "link", "set", "eth0", "mtu", "1400"], check=True)
    ov.start(1, public_ip=False, extra=["--iface", "eth0", "--public-ip", NAT_IP])
    ov.start(2)                 # knows h1 by its real address: the NAT is transparent here
    assert _bound(ov, 1) == {f"{underlay_of(1)}:{PORT}"}
    st = ov.status(ov.hosts[1])
    assert (st["public_ip"], st["bind_ip"], st["tun"], st["iface"]) == \
        (NAT_IP, underlay_of(1), "udpov0", "udpov0")
    assert st["mtu"] == 1400 - 28          # from eth0, not from the advertised address
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)


@pytest.mark.parametrize("extra, env", [
    (["--iface", underlay_of(1)], {}),
    (["--iface-regex", "^eth"], {}),
    (["--iface", "nosuch0", "--iface", "eth0"], {}),           # tried in order
    (["--iface-regex", "^nosuch", "--iface-can-reach", underlay_of(2)], {}),
    (["--underlay-iface", "eth0"], {}),                        # the old name, an alias
    ([], {"FLANNELD_IFACE": "nosuch0,eth0"}),
    (["--iface", "eth0"], {"FLANNELD_IFACE": "pod0"}),         # the command line wins
])
def test_iface_selectors_pick_eth0(overlay2, extra, env):
    ov = overlay2
    d = ov.start(1, public_ip=False, extra=extra, env=env)
    st = ov.status(ov.hosts[1])
    assert (st["public_ip"], st["bind_ip"]) == (underlay_of(1), underlay_of(1)), st
    assert _bound(ov, 1) == {f"{underlay_of(1)}:{PORT}"}
    ov.stop(d)


def test_iface_matching_nothing_fails_in_one_line(overlay2):
    ov = overlay2
    d = ov.start(1, public_ip=False, extra=["--iface", "nosuch0", "--iface-regex", "^zz"],
                 wait=False)
    assert d.proc.wait(timeout=30) == 1
    err = d.stderr().strip().splitlines()
    assert err[-1].startswith("udpoverlay: error: no interface matches"), err
    assert not ov.link_exists(ov.hosts[1])
