"""The command's entry point (udpoverlay/entry.py): libcrypto's
CPU-feature default is set, an operator's own kept, and nothing loads
libcrypto before it is set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from udpoverlay import entry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("machine", ["x86_64", "AMD64", "i686"])
def test_the_default_masks_only_ifma_on_x86(machine):
    env: dict[str, str] = {}
    entry.libcrypto_defaults(env, machine)
    assert env == {"OPENSSL_ia32cap": ":~0x200000"}
    assert entry.IA32CAP_DEFAULT == ":~" + hex(1 << 21)     # CPUID 7 EBX bit 21: AVX512IFMA


def test_an_operators_own_setting_is_kept():
    env = {"OPENSSL_ia32cap": ":~0"}
    entry.libcrypto_defaults(env, "x86_64")
    assert env == {"OPENSSL_ia32cap": ":~0"}


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "riscv64", "ppc64le"])
def test_other_machines_get_nothing(machine):
    env: dict[str, str] = {}
    entry.libcrypto_defaults(env, machine)
    assert env == {}


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_ia32cap"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_nothing_loads_libcrypto_before_the_entry_sets_the_default():
    """libcrypto reads the variable once, when it is loaded: importing the
    package and the entry module must not load it."""
    got = _run("import udpoverlay, udpoverlay.entry; "
               "print('libcrypto' in open('/proc/self/maps').read())")
    assert got == "False"


def test_the_entry_sets_it_before_the_cli_loads():
    got = _run("import os, sys, udpoverlay.entry as e; sys.argv = ['udpoverlay', '--help']\n"
               "try:\n    e.main()\nexcept SystemExit:\n    pass\n"
               "print(os.environ.get('OPENSSL_ia32cap'), 'udpoverlay.cli' in sys.modules)")
    assert got.splitlines()[-1] == f"{entry.IA32CAP_DEFAULT} True"


def test_both_ways_in_go_through_the_entry():
    with open(os.path.join(ROOT, "udpoverlay", "__main__.py")) as f:
        assert "from udpoverlay.entry import main" in f.read()
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'udpoverlay = "udpoverlay.entry:main"' in f.read()
