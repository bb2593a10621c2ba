"""DirectRouting end to end: udpoverlay vxlan daemons started with
`--direct-routing` give directly connected peers a kernel route via their
public IP, so pod traffic between them never passes the TUN (its packet
counters stay still), while peers behind a gateway still use the tunnel;
a kernel flannel.1 host configured with DirectRouting interoperates; the
routes go when the daemon stops.

Addresses: underlay 198.18.0.N/24, host N owns 198.19.N.0/24, pod 198.19.N.1.
"""

from __future__ import annotations

from lab import kernel_vxlan
from lab.netns import wait_for
from tests.support.overlay import subnet_of, underlay_of
from tests.support.probes import assert_pings
from udpoverlay.host.routes import ROUTE_PROTO

MAC = {1: "02:00:5e:00:02:01", 2: "02:00:5e:00:02:02", 3: "02:00:5e:00:02:03"}
TUN_COUNTERS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes")


def start_direct(ov, i: int, peers: list[int]):
    """udpoverlay --backend vxlan --direct-routing on host i, static peers
    with their VTEP MACs."""
    args = ["--backend", "vxlan", "--direct-routing", "--vtep-mac", MAC[i]]
    for j in peers:
        args += ["--peer", f"{underlay_of(j)}={subnet_of(j)},vtep-mac={MAC[j]}"]
    return ov.start(i, peers=[], extra=args)


def our_routes(ov, i: int) -> list[str]:
    out = ov.run(ov.hosts[i], ["ip", "-o", "-4", "route", "show", "proto", str(ROUTE_PROTO)],
                 timeout=10).stdout
    return sorted(" ".join(line.split()) for line in out.splitlines())


def direct(j: int) -> str:
    """Our route for host j's subnet, as `ip route show proto ...` prints it."""
    return f"{subnet_of(j)} via {underlay_of(j)} dev eth0"


def wait_routes(ov, i: int, expected: list[int]) -> None:
    want = sorted(direct(j) for j in expected)
    try:
        wait_for(lambda: our_routes(ov, i) == want, 10, 0.1, f"direct routes on h{i}")
    except TimeoutError:
        raise AssertionError(f"h{i}: routes {our_routes(ov, i)}, want {want}\n"
                             f"{ov.dump_logs()}") from None


def tun_counters(ov, i: int) -> dict:
    c = ov.status(ov.hosts[i])["counters"]
    return {k: c[k] for k in TUN_COUNTERS}


def test_two_udpoverlay_hosts_bypass_the_tun(overlay2):
    ov = overlay2
    d1 = start_direct(ov, 1, [2])
    start_direct(ov, 2, [1])
    wait_routes(ov, 1, [2])
    wait_routes(ov, 2, [1])
    before = {i: tun_counters(ov, i) for i in (1, 2)}
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)
    ov.transfer(1, 2, 4 * 1024 * 1024 + 17, 5401)
    ov.transfer(2, 1, 4 * 1024 * 1024 + 17, 5402)
    assert {i: tun_counters(ov, i) for i in (1, 2)} == before
    # SIGTERM: exactly our route goes, with the TUN
    assert ov.stop(d1) == 0, d1.stderr()
    assert our_routes(ov, 1) == []
    assert not ov.link_exists(ov.hosts[1])
    assert our_routes(ov, 2) == [direct(1)]


def test_peer_behind_a_gateway_uses_the_tunnel(overlay3):
    """h1 and h3 reach each other only through h2 (a host route via h2 on
    each side): they tunnel, everything else is direct."""
    ov = overlay3
    for i, j in ((1, 3), (3, 1)):
        ov.run(ov.hosts[i], ["ip", "route", "add", f"{underlay_of(j)}/32",
                             "via", underlay_of(2)], check=True)
    for i in (1, 2, 3):
        start_direct(ov, i, [j for j in (1, 2, 3) if j != i])
    wait_routes(ov, 1, [2])
    wait_routes(ov, 2, [1, 3])
    wait_routes(ov, 3, [2])
    before = tun_counters(ov, 1)
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)
    assert tun_counters(ov, 1) == before
    assert_pings(ov, 1, 3, count=3)
    after = tun_counters(ov, 1)
    # three requests out through the TUN, three replies in (at least: the
    # peer's VTEP MAC is given, so no ARP is needed)
    assert after["tx_packets"] - before["tx_packets"] >= 3, (before, after)
    assert after["rx_packets"] - before["rx_packets"] >= 3, (before, after)
    assert_pings(ov, 3, 2)
    ov.transfer(3, 1, 1024 * 1024, 5403)


def test_kernel_flannel_host_with_direct_routing(overlay2):
    """h2 runs only the kernel: flannel.1 exists, and for h1 it has the
    DirectRouting route instead of neighbour/fdb/route entries. Its underlay
    keeps tx checksumming on (plain forwarding: nothing to finish)."""
    ov = overlay2
    h2 = ov.hosts[2]
    kernel_vxlan.setup_flannel_vxlan(ov.lab, h2, subnet_of(2), mac=MAC[2])
    ov.run(h2, ["ip", "route", "replace", subnet_of(1), "via", underlay_of(1),
                "dev", "eth0"], check=True)
    start_direct(ov, 1, [2])
    wait_routes(ov, 1, [2])
    before = tun_counters(ov, 1)
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)
    ov.transfer(2, 1, 4 * 1024 * 1024 + 17, 5404)
    ov.transfer(1, 2, 4 * 1024 * 1024 + 17, 5405)
    assert tun_counters(ov, 1) == before


def test_one_sided_gateway_still_connects(overlay3):
    """Only h1 reaches h3 through h2: h1 tunnels to h3, h3 routes directly to
    h1. h3 must accept h1's vxlan (a kernel flannel.1 with DirectRouting does)."""
    ov = overlay3
    ov.run(ov.hosts[1], ["ip", "route", "add", f"{underlay_of(3)}/32", "via", underlay_of(2)],
           check=True)
    for i in (1, 2, 3):
        start_direct(ov, i, [j for j in (1, 2, 3) if j != i])
    wait_routes(ov, 1, [2])
    wait_routes(ov, 3, [1, 2])
    assert_pings(ov, 1, 3)
    assert_pings(ov, 3, 1)


def test_routes_left_by_a_killed_run_are_adopted(overlay2):
    """A SIGKILLed daemon cannot remove its routes. The next run takes over
    our protocol's routes inside the network: the one a peer still wants
    stays, the stale one goes; a proto-117 route outside the network (not
    ours to judge) and a foreign route inside it are left alone."""
    ov = overlay2
    h1 = ov.hosts[1]
    gw = underlay_of(2)
    for route in ([str(subnet_of(2)), "via", gw, "dev", "eth0", "proto", str(ROUTE_PROTO)],
                  ["198.19.77.0/24", "via", gw, "dev", "eth0", "proto", str(ROUTE_PROTO)],
                  ["198.18.77.0/24", "via", gw, "dev", "eth0", "proto", str(ROUTE_PROTO)],
                  ["198.19.78.0/24", "via", gw, "dev", "eth0", "proto", "static"]):
        ov.run(h1, ["ip", "route", "add", *route], timeout=10)
    start_direct(ov, 2, [1])
    d1 = start_direct(ov, 1, [2])
    outside = f"198.18.77.0/24 via {gw} dev eth0"
    want = sorted([direct(2), outside])
    try:
        wait_for(lambda: our_routes(ov, 1) == want, 10, 0.1, "stale route removed")
    except TimeoutError:
        raise AssertionError(f"routes {our_routes(ov, 1)}, want {want}\n"
                             f"{ov.dump_logs()}") from None
    static = ov.run(h1, ["ip", "-o", "route", "show", "198.19.78.0/24"], timeout=10).stdout
    assert "198.19.78.0/24" in static
    assert_pings(ov, 1, 2)
    assert ov.stop(d1) == 0, d1.stderr()
    assert our_routes(ov, 1) == [outside]
