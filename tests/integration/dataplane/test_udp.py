"""The udp data plane end to end: real namespaces, real TUN devices, real
daemon processes talking flannel's udp wire format over a bridge underlay.

Addresses: underlay 198.18.0.N/24, overlay 198.19.0.0/16, host N owns
198.19.N.0/24 with a "pod" address 198.19.N.1 on a port-less bridge.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time

import pytest

from lab.netns import wait_for
from tests.support.overlay import NETWORK, PORT, pod_of, underlay_of
from tests.support.probes import SENDER, assert_pings, start_capture, start_listener
from tests.support.requirements import require
from udpoverlay import dataplane


def _expected_impl() -> str:
    return "python" if os.environ.get("UDPOVERLAY_NO_EXTENSIONS") not in (None, "", "0") \
        else dataplane.IMPLEMENTATION


def test_ping_both_ways_and_status(overlay2):
    ov = overlay2
    ov.start(1)
    ov.start(2, bare=True)  # `udpoverlay --public-ip ...` without `run`
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)

    st = ov.status(ov.hosts[1])
    assert st["implementation"] == _expected_impl()
    assert (st["iface"], st["public_ip"], st["port"]) == ("udpov0", underlay_of(1), PORT)
    assert (st["subnet"], st["network"], st["backend"]) == ("198.19.1.0/24", NETWORK, "udp")
    assert st["mtu"] == 1500 - 28
    [peer] = st["peers"]
    assert (peer["public_ip"], peer["port"], peer["subnet"]) == (underlay_of(2), PORT, "198.19.2.0/24")
    assert peer["tx_packets"] >= 6 and peer["rx_packets"] >= 6   # requests + replies
    assert peer["tx_bytes"] >= 6 * 84 and peer["rx_bytes"] >= 6 * 84
    assert st["counters"]["tx_packets"] >= 6
    assert st["routes"] == [{"subnet": "198.19.2.0/24", "via": f"{underlay_of(2)}:{PORT}"}]

    # TUN configured like flannel0: /32 network address, MTU, route, txqueuelen
    h1 = ov.hosts[1]
    link = ov.run(h1, ["ip", "-d", "link", "show", "udpov0"]).stdout
    assert "mtu 1472" in link and "qlen 10000" in link and "tun" in link
    addr = ov.run(h1, ["ip", "-4", "addr", "show", "udpov0"]).stdout
    assert "inet 198.19.1.0/32" in addr
    routes = ov.run(h1, ["ip", "route", "show", "dev", "udpov0"]).stdout
    assert NETWORK in routes

    human = ov.run(h1, [sys.executable, "-m", "udpoverlay", "status"])
    assert human.returncode == 0, human.stderr
    assert "198.19.2.0/24" in human.stdout and underlay_of(2) in human.stdout
    assert st["implementation"] in human.stdout


def test_python_reference_implementation_pings(overlay2):
    ov = overlay2
    ov.start(1, python_ref=True)
    ov.start(2, python_ref=True)
    assert ov.status(ov.hosts[1])["implementation"] == "python"
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)


def test_stock_asyncio_loop_works_too(overlay2, monkeypatch):
    """The daemon runs on uvloop by default and on stock asyncio on request."""
    ov = overlay2
    ov.start(1)
    monkeypatch.setenv("UDPOVERLAY_LOOP", "asyncio")
    ov.start(2)
    assert ov.status(ov.hosts[2])["loop"] == "asyncio"
    assert ov.status(ov.hosts[1])["loop"] == ("uvloop" if importlib.util.find_spec("uvloop")
                                               else "asyncio")
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)


def test_mixed_implementations_interoperate(overlay2):
    ov = overlay2
    ov.start(1, python_ref=True)
    ov.start(2)
    assert_pings(ov, 1, 2)


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_tcp_transfer_20mb_content_checked(overlay2, offload):
    ov = overlay2
    extra = [] if offload else ["--no-offload"]
    ov.start(1, extra=extra)
    ov.start(2, extra=extra)
    nbytes = 24 * 1024 * 1024
    ov.transfer(1, 2, nbytes, 5201)
    ov.transfer(2, 1, nbytes, 5202)

    st1, st2 = ov.status(ov.hosts[1]), ov.status(ov.hosts[2])
    assert st1["peers"][0]["tx_bytes"] >= nbytes and st2["peers"][0]["rx_bytes"] >= nbytes
    for st in (st1, st2):
        assert st["offload"]["enabled"] is offload
        assert st["offload"]["tun"] == (["csum", "tso4", "tso6", "tso_ecn", "uso4", "uso6"]
                                        if offload else [])
        # the underlay batches either way (--no-offload is the TUN's)
        assert st["offload"]["udp_gso"] and st["offload"]["udp_gro"]
        c = st["counters"]
        # 64 KB per TUN read split on the way out, segments merged on the way in
        assert (c["tx_super_packets"] > 0, c["rx_coalesced"] > 0) == (offload, offload), c
        assert c["rx_csum_bad"] == 0 and c["tx_drop_bad_gso"] == 0
    human = ov.run(ov.hosts[1], [sys.executable, "-m", "udpoverlay", "status"]).stdout
    assert ("offload: tun csum,tso4" in human) if offload else \
        ("offload: TUN offloads off (--no-offload)" in human)


def test_wire_is_raw_ipv4_in_udp_8285(overlay2):
    require(importlib.util.find_spec("scapy") is not None, "needs scapy")
    from scapy.all import ICMP, IP, UDP, bind_layers, rdpcap

    ov = overlay2
    ov.start(1)
    ov.start(2)
    pcap = ov.tmp / "wire.pcap"
    cap = start_capture(ov, ov.hosts[2], pcap, "udp")
    assert_pings(ov, 1, 2, count=3)
    time.sleep(0.3)
    ov.lab.stop(cap, signal.SIGINT, timeout=10)

    bind_layers(UDP, IP, dport=PORT)
    pkts = rdpcap(str(pcap))
    tunnel = [p for p in pkts if UDP in p and p[UDP].dport == PORT]
    assert len(tunnel) >= 6, [p.summary() for p in pkts]
    requests = 0
    for p in tunnel:
        outer_ip, outer_udp = p[IP], p[UDP]
        assert outer_udp.sport == PORT  # every node uses the same port
        payload = bytes(outer_udp.payload)
        # no header: the payload IS the inner IPv4 packet, exactly
        assert payload[0] == 0x45
        assert int.from_bytes(payload[2:4], "big") == len(payload)
        assert outer_udp.len == 8 + len(payload)
        inner = IP(payload)
        if outer_ip.src == underlay_of(1):
            assert (outer_ip.dst, inner.src, inner.dst) == (underlay_of(2), pod_of(1), pod_of(2))
            assert ICMP in inner and inner[ICMP].type == 8
            requests += 1
        else:
            assert (outer_ip.src, inner.src, inner.dst) == (underlay_of(2), pod_of(2), pod_of(1))
            assert ICMP in inner and inner[ICMP].type == 0
    assert requests == 3


def test_datagram_from_unknown_source_is_dropped(overlay3):
    require(importlib.util.find_spec("scapy") is not None, "needs scapy")
    from scapy.all import IP, UDP

    ov = overlay3
    ov.start(1, peers=[2])
    ov.start(2, peers=[1])
    assert_pings(ov, 1, 2, count=1)
    h1, h2, h3 = ov.hosts[1], ov.hosts[2], ov.hosts[3]
    before = ov.status(h1)["counters"]["rx_drop_unknown_peer"]
    listener, out = start_listener(ov, h1, pod_of(1), 9999)
    # h3 is not a peer of h1; its inner packet even claims a source in h2's subnet
    spoof = bytes(IP(src="198.19.2.77", dst=pod_of(1), ttl=64) /
                  UDP(sport=4444, dport=9999) / b"spoofed")
    r = ov.run(h3, [sys.executable, "-c", SENDER, underlay_of(3), str(PORT),
                    underlay_of(1), str(PORT), spoof.hex()])
    assert r.returncode == 0, r.stderr
    wait_for(lambda: ov.status(h1)["counters"]["rx_drop_unknown_peer"] > before,
             10, 0.1, "unknown_peer drop counted")

    # a legitimate datagram through the overlay still arrives (the listener works)
    r = ov.run(h2, [sys.executable, "-c", SENDER, pod_of(2), "0", pod_of(1), "9999",
                    b"legit".hex()])
    assert r.returncode == 0, r.stderr
    listener.wait(timeout=20)
    lines = out.read_text().split("\n")
    assert f"{pod_of(2)} legit" in lines, lines
    assert not any("spoofed" in line for line in lines), lines

    st = ov.status(h1)
    assert st["counters"]["rx_drop_unknown_peer"] == before + 1


def test_datagram_from_a_peer_but_another_port_is_dropped(overlay2):
    """udp mode: a peer sends from its configured port; an unprivileged
    process on the peer host sending from another port (with a source in
    the peer's subnet) is dropped and counted, nothing reaches the pod."""
    from tests.support import pktgen as g

    ov = overlay2
    ov.start(1)
    ov.start(2)
    assert_pings(ov, 1, 2, count=1)
    h1, h2 = ov.hosts[1], ov.hosts[2]
    before = ov.status(h1)["counters"]
    listener, out = start_listener(ov, h1, pod_of(1), 9998)
    forged = bytes(g.udp(pod_of(2), pod_of(1), 4444, 9998, b"injected"))
    for port in ("40000", "8286"):
        r = ov.run(h2, [sys.executable, "-c", SENDER, underlay_of(2), port,
                        underlay_of(1), str(PORT), forged.hex()])
        assert r.returncode == 0, r.stderr
    wait_for(lambda: ov.status(h1)["counters"]["rx_drop_bad_port"] >= 2, 10, 0.1,
             "bad_port drops counted")
    r = ov.run(h2, [sys.executable, "-c", SENDER, pod_of(2), "0", pod_of(1), "9998",
                    b"legit".hex()])
    assert r.returncode == 0, r.stderr
    listener.wait(timeout=20)
    lines = out.read_text().split("\n")
    assert f"{pod_of(2)} legit" in lines and not any("injected" in x for x in lines), lines
    c = ov.status(h1)["counters"]
    assert c["rx_drop_bad_port"] == 2 and c["rx_drop_spoofed_src"] == before["rx_drop_spoofed_src"]
    assert c["rx_drop_unknown_peer"] == before["rx_drop_unknown_peer"]


def test_unknown_overlay_destination_gets_icmp_unreachable(overlay2):
    ov = overlay2
    ov.start(1)
    ov.start(2)
    h1 = ov.hosts[1]
    r = ov.run(h1, ["ping", "-n", "-c", "1", "-W", "2", "-I", pod_of(1), "198.19.77.1"],
               timeout=15)
    assert r.returncode != 0
    assert "Unreachable" in r.stdout, r.stdout + r.stderr
    c = ov.status(h1)["counters"]
    assert c["tx_drop_no_route"] >= 1
    assert c["icmp_sent"] >= 1


def _leftovers(ov, host) -> list[str]:
    left = []
    if ov.link_exists(host):
        left.append("link udpov0")
    routes = ov.run(host, ["ip", "route", "show", NETWORK]).stdout.strip()
    if routes:
        left.append(f"route {routes}")
    if ov.status(host, check=False) is not None:
        left.append("control socket still answers")
    return left


def test_sigkill_then_restart_leaves_nothing_behind(overlay2):
    ov = overlay2
    d1 = ov.start(1)
    ov.start(2)
    assert_pings(ov, 1, 2, count=1)
    h1 = ov.hosts[1]

    ov.stop(d1, signal.SIGKILL)
    wait_for(lambda: not _leftovers(ov, h1), 10, 0.1, "TUN gone after SIGKILL")
    assert ov.run(h1, ["ip", "link", "show", "udpov0"]).returncode != 0

    ov.start(1)
    assert_pings(ov, 1, 2)
    assert_pings(ov, 2, 1)


def test_sigterm_exits_zero_and_removes_tun(overlay2):
    ov = overlay2
    d1 = ov.start(1)
    h1 = ov.hosts[1]
    assert ov.link_exists(h1)
    assert ov.stop(d1, signal.SIGTERM) == 0, d1.stderr()
    assert _leftovers(ov, h1) == []
    log = d1.stderr()
    assert "peer 198.18.0.2:8285 -> 198.19.2.0/24" in log
    assert "stopped" in log


def test_sigint_exits_zero(overlay2):
    ov = overlay2
    d1 = ov.start(1)
    assert ov.stop(d1, signal.SIGINT) == 0, d1.stderr()
    assert not ov.link_exists(ov.hosts[1])


def test_second_instance_same_iface_fails_cleanly(overlay2):
    ov = overlay2
    ov.start(1)
    d = ov.start(1, extra=["--port", "8286"], wait=False)
    rc = d.proc.wait(timeout=15)
    assert rc != 0
    err = d.stderr().strip().splitlines()
    assert err and err[-1].startswith("udpoverlay: error:"), err
    _ = ov.status(ov.hosts[1])  # the first one still runs


def test_public_ip_detected_from_underlay_iface_and_default_route(overlay2):
    ov = overlay2
    ov.start(1, public_ip=False, extra=["--underlay-iface", "eth0"])
    # h2 finds its public IP as flannel does: the default-route interface
    ov.run(ov.hosts[2], ["ip", "route", "add", "default", "via", underlay_of(1)], check=True)
    ov.start(2, public_ip=False)
    assert ov.status(ov.hosts[1])["public_ip"] == underlay_of(1)
    assert ov.status(ov.hosts[2])["public_ip"] == underlay_of(2)
    assert_pings(ov, 2, 1)
