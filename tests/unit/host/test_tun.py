"""TUNSETOFFLOAD fallback: the richest flag set the kernel accepts wins
(unit test: the ioctl is faked; the real one runs in the integration tests)."""

from __future__ import annotations

import errno

import pytest

from udpoverlay.host import tun


@pytest.mark.parametrize("refused, expect", [
    (0x00, ("csum", "tso4", "tso6", "tso_ecn", "uso4", "uso6")),
    (0x20, ("csum", "tso4", "tso6", "tso_ecn")),          # a kernel before USO (6.2)
    (0x28, ("csum", "tso4", "tso6")),
    (0x02, ("csum",)),
    (0x01, ()),
])
def test_richest_accepted_flag_set_wins(monkeypatch, refused, expect):
    calls = []

    def ioctl(fd, req, arg):
        calls.append((req, arg))
        if req == tun.TUNSETOFFLOAD and arg & refused:
            raise OSError(errno.EINVAL, "Invalid argument")
        return 0

    monkeypatch.setattr(tun.fcntl, "ioctl", ioctl)
    assert tun.set_offloads(7) == expect
    assert calls[0][0] == tun.TUNSETVNETHDRSZ
    offload_calls = [arg for req, arg in calls if req == tun.TUNSETOFFLOAD]
    assert offload_calls[0] == 0x6F and len(offload_calls) <= len(tun.OFFLOAD_SETS)
