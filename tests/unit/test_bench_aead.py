"""benchmarks/aead.py's parser and a very short run of its cases (nothing
timed is asserted: only that every case runs and opens what it sealed)."""

from __future__ import annotations

from benchmarks import aead

# Real output of `openssl speed -evp chacha20-poly1305 -bytes 1424 -seconds 3`
# (OpenSSL 3.0.19), stdout.
SPEED_OUT = """\
Doing ChaCha20-Poly1305 for 3s on 1424 size blocks: 4793521 ChaCha20-Poly1305's in 3.00s
version: 3.0.19
built on: Tue Jan 27 12:00:00 2026 UTC
options: bn(64,64)
compiler: gcc -fPIC -pthread -m64 -Wa,--noexecstack -Wall -fzero-call-used-regs=used-gpr
CPUINFO: OPENSSL_ia32cap=0xfffa32034f8bffff:0x1a415f46f1bf2ffb
The 'numbers' are in 1000s of bytes per second processed.
type           1424 bytes
ChaCha20-Poly1305  2271719.76k
"""


def test_parse_speed():
    assert aead.parse_speed(SPEED_OUT) == 2271719.76 * 1000
    assert aead.parse_speed("openssl: command not found\n") is None


def test_every_case_runs(impl):
    seal, open_ = aead.slots_case(impl.WgKey, 1400, 4, 0)
    seal(0)
    open_(0)                    # asserts all four authenticate
    seal, open_ = aead.lists_case(impl.WgKey, 100, 3, 1420)
    assert len(seal(1)) == 3
    assert [v for v, _ in open_(0)] == [0, 0, 0]


def test_the_c_floor_builds_on_the_products_header_and_runs_both_ways():
    """The C loop includes _fastpath/wgevp.h and runs each path it names
    (a mode the header does not take would exit non-zero: None)."""
    got = aead.c_floor(1408, 4, 0.05, [("evp", {}), ("provider", {}), ("neither", {})])
    assert got[0] is not None and got[0][1] > 0
    assert got[1] is not None and got[1][1] > 0
    assert got[2] is None


def test_seal_slots_as_the_daemon_runs_it(monkeypatch):
    """The child process gets the command's libcrypto default; it measures
    the compiled twin, so without the extension it reports nothing."""
    import argparse
    import platform

    from udpoverlay.dataplane import wgaead

    try:
        built = wgaead.wgkey_class("cython") is not None
    except (ImportError, AttributeError):
        built = False
    monkeypatch.delenv("OPENSSL_ia32cap", raising=False)
    got = aead.as_the_daemon(argparse.Namespace(size=100, batch=4, seconds=1, mtu=0))
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        assert got is None                      # the default sets nothing here
    elif not built:
        assert got is None
    else:
        assert got is not None and got[0] > 0 and got[1] > 0
    monkeypatch.setenv("OPENSSL_ia32cap", ":~0x200000")
    assert aead.as_the_daemon(argparse.Namespace(size=100, batch=4, seconds=1, mtu=0)) is None
