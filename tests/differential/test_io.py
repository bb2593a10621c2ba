"""Differential tests of the I/O loops: both twins' real tun_to_udp and
udp_to_tun run over the same real fds (a SEQPACKET socket pair as the TUN,
UDP sockets on 127.0.0.1 as the underlay), udp and vxlan, with and without
offloads, and must send the same datagrams from the same sockets, write the
same packets to the TUN and count the same. Plus the send rule on a full
socket buffer: the same waits per batch and the same tx_error counts.

Loopback only; every fd is closed, every wait bounded."""

from __future__ import annotations

import pytest

from tests.support.iorig import OFFLOADS, check_full_buffer, check_tun_to_udp, check_udp_to_tun


@pytest.mark.parametrize("offload", list(OFFLOADS))
@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_tun_to_udp_identical(backend, offload):
    check_tun_to_udp(backend, offload)


@pytest.mark.parametrize("offload", list(OFFLOADS))
@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_udp_to_tun_identical(backend, offload):
    check_udp_to_tun(backend, offload)


@pytest.mark.parametrize("offload", ["plain", "vnet"])
def test_full_socket_buffer_same_waits_and_drops(offload):
    check_full_buffer(offload)
