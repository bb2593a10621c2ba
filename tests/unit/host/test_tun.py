"""TUNSETOFFLOAD fallback: the richest flag set the kernel accepts wins
(unit test: the ioctl is faked; the real one runs in the integration tests)."""

from __future__ import annotations

import errno
import sys

import pytest

from udpoverlay.errors import TunSetupError
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


class _FakePytun:
    """pytun stand-in: TunTapDevice fails with `error` (errno) for flags
    that contain `refuse` (all flags when refuse is 0)."""

    IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000

    class Error(Exception):
        pass

    def __init__(self, refuse: int, error: int) -> None:
        self.refuse, self.error, self.opened = refuse, error, []
        fake = self

        class TunTapDevice:
            def __init__(self, name, flags):
                if (fake.refuse == 0) or flags & fake.refuse:
                    raise fake.Error(fake.error, errno.errorcode.get(fake.error, "?"))
                fake.opened.append(flags)
                self.name = name

            def fileno(self):
                return 99

            def close(self):
                pass

        self.TunTapDevice = TunTapDevice


def test_vnet_hdr_refused_falls_back_to_plain_tun(monkeypatch, caplog):
    fake = _FakePytun(refuse=_FakePytun.IFF_VNET_HDR, error=errno.EINVAL)
    monkeypatch.setitem(sys.modules, "pytun", fake)
    with caplog.at_level("WARNING", logger="udpoverlay.host.tun"):
        dev = tun.create_tun("uotest0", offload=True)
    assert not dev.vnet_hdr and dev.vnet_hdr_refused
    assert fake.opened == [_FakePytun.IFF_TUN | _FakePytun.IFF_NO_PI]
    assert len([r for r in caplog.records if "refused IFF_VNET_HDR" in r.getMessage()]) == 1


@pytest.mark.parametrize("err, needle", [
    (errno.EPERM, "root or CAP_NET_ADMIN"),
    (errno.EACCES, "root or CAP_NET_ADMIN"),
    (errno.EBUSY, "in use"),
    (errno.ENOENT, "modprobe tun"),
])
def test_create_errors_name_the_cause_and_do_not_retry(monkeypatch, err, needle):
    fake = _FakePytun(refuse=0, error=err)
    monkeypatch.setitem(sys.modules, "pytun", fake)
    with pytest.raises(TunSetupError) as ei:
        tun.create_tun("uotest0", offload=True)
    assert needle in str(ei.value) and "\n" not in str(ei.value)
    assert fake.opened == []          # a permission/busy error is not retried without offloads
