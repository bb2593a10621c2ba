"""Peers by name, and a laptop whose underlay address changes.

h1 knows h2 by a name in its own hosts file (/etc/netns/<h1>/hosts), and
h3's name, which does not resolve: that peer waits and traffic to its
subnet is answered with ICMP net unreachable. Neither daemon pins its
address (no --public-ip/--iface), so both bind 0.0.0.0. While a ping runs,
h2's address is replaced and its name updated (as dynamic DNS would): the
pings resume within the resolve interval + 1 s of the name's change and
within 2 s of h1 using the new address, with the same h2 daemon process.
"""

from __future__ import annotations

import subprocess
import time

from tests.integration.laptop.helpers import (
    default_route,
    name_of,
    peer_entry,
    reply_times,
    start_static,
    wait_until,
)
from tests.support.overlay import pod_of, subnet_of, underlay_of

RESOLVE = 1.0
NEW_ADDR = "198.18.0.12"


def test_peer_name_follows_an_address_change(overlay2, netns_etc):
    ov = overlay2
    h1, h2 = ov.hosts[1], ov.hosts[2]
    for i in (1, 2):
        default_route(ov, i)
    n1, n2, n3 = name_of(ov, 1), name_of(ov, 2), name_of(ov, 3)
    netns_etc.hosts(h1.netns, {n2: underlay_of(2)})
    netns_etc.hosts(h2.netns, {n1: underlay_of(1)})
    interval = ["--resolve-interval", str(RESOLVE)]
    start_static(ov, 1, [f"{n2}={subnet_of(2)}", f"{n3}={subnet_of(3)}"], interval)
    d2 = start_static(ov, 2, [f"{n1}={subnet_of(1)}"], interval)

    st = ov.status(h1)
    assert st["bind_ip"] == "0.0.0.0" and st["underlay_ip"] == underlay_of(1), st
    (p2,) = st["peers"]
    assert (p2["host"], p2["public_ip"], p2["subnet"]) == (n2, underlay_of(2), subnet_of(2))
    (w3,) = st["static"]["waiting"]
    assert (w3["host"], w3["subnet"]) == (n3, subnet_of(3)) and "resolve" in w3["reason"]
    # the waiting peer's subnet: ICMP net unreachable from our TUN address
    r = ov.run(h1, ["ping", "-n", "-c", "1", "-W", "1", "-I", pod_of(1), pod_of(3)])
    assert r.returncode != 0 and "Unreachable" in r.stdout, r.stdout
    assert ov.ping(1, 2, count=2).returncode == 0

    out = ov.tmp / "ping.out"
    with open(out, "w") as f:
        ping = ov.lab.popen(h1.netns, ["ping", "-n", "-D", "-i", "0.1", "-W", "1", "-w", "25",
                                       "-I", pod_of(1), pod_of(2)],
                            stdout=f, stderr=subprocess.STDOUT)
    wait_until(lambda: len(reply_times(out)) >= 5, 5, what="pings flowing")
    # the laptop moves: its address is replaced (a DHCP lease on a new
    # network), then its name follows
    ov.run(h2, ["ip", "addr", "del", f"{underlay_of(2)}/24", "dev", "eth0"], check=True)
    ov.run(h2, ["ip", "addr", "add", f"{NEW_ADDR}/24", "dev", "eth0"], check=True)
    default_route(ov, 2)
    moved = time.time()
    time.sleep(0.5)        # the outage is visible: no replies now
    renamed = time.time()
    netns_etc.hosts(h1.netns, {n2: NEW_ADDR})
    wait_until(lambda: (peer_entry(ov, 1, subnet_of(2)) or {}).get("public_ip") == NEW_ADDR,
               RESOLVE + 5, what="h1 to use h2's new address")
    learned = time.time()
    resumed = wait_until(lambda: [t for t in reply_times(out) if t > renamed], 5,
                         what="pings to resume")[0]
    ov.lab.stop(ping)

    gap = [t for t in reply_times(out) if moved < t < renamed]
    assert not gap, f"replies while h2's name pointed at its old address: {gap}"
    assert resumed - renamed <= RESOLVE + 1.0, (resumed - renamed, ov.dump_logs())
    assert resumed - learned <= 2.0
    assert d2.proc.poll() is None            # the same process, never restarted
    wait_until(lambda: ov.status(h2)["underlay_ip"] == NEW_ADDR, 5,
               what="h2's status to show its new source address")
    print(f"pings resumed {resumed - renamed:.2f} s after the rename, "
          f"{resumed - learned:.2f} s after h1 used the new address")
    assert "underlay address changed" in d2.stderr()
    names = {n["host"]: n for n in ov.status(h1)["static"]["names"]}
    assert names[n2]["address"] == NEW_ADDR and names[n2]["error"] is None
    assert names[n3]["address"] is None and names[n3]["failures"] >= 1


def test_strict_peers_refuse_a_name_that_does_not_resolve(overlay2, netns_etc):
    ov = overlay2
    default_route(ov, 1)
    netns_etc.hosts(ov.hosts[1].netns, {})
    d = start_static(ov, 1, [f"{name_of(ov, 2)}={subnet_of(2)}"], ["--strict-peers"],
                     wait=False)
    assert d.proc.wait(timeout=30) == 2
    err = d.stderr().strip().splitlines()
    assert err[-1].startswith("udpoverlay: error: peer ") and name_of(ov, 2) in err[-1], err
    assert "--strict-peers" in err[-1]
    assert not ov.link_exists(ov.hosts[1])
