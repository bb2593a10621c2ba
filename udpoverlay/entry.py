"""The `udpoverlay` command's entry (the console script and `python -m
udpoverlay`): libcrypto's CPU-feature default first, then cli.main.

Why before anything else: libcrypto reads OPENSSL_ia32cap once, when it
is loaded, and importing the CLI loads it (the compiled data plane links
it). The default masks AVX-512 IFMA (CPUID leaf 7 EBX bit 21) and nothing
else, so that libcrypto keys Poly1305 with its AVX2 code: the IFMA code
computes a table of powers of each key before its first block, which a
stream pays once and WireGuard pays per packet (a packet is a message of
its own). Measured on this project's 2-core bench (README, Performance):
a 1408-byte seal in a bare C loop 836 -> 757 ns, WireGuard mode's daemons
16 % less CPU per Gbit/s. Every other feature stays detected; a CPU
without IFMA is unchanged; another machine type ignores the variable. An
operator's own OPENSSL_ia32cap is kept (":~0" masks nothing).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import MutableMapping

__all__ = ["IA32CAP_DEFAULT", "libcrypto_defaults", "main"]

IA32CAP_DEFAULT = ":~0x200000"
_X86 = {"x86_64", "amd64", "i386", "i686"}


def libcrypto_defaults(environ: MutableMapping[str, str] = os.environ,
                       machine: str | None = None) -> None:
    """Set OPENSSL_ia32cap's default in environ unless it is set already."""
    arch = (platform.machine() if machine is None else machine).lower()
    if arch in _X86:
        environ.setdefault("OPENSSL_ia32cap", IA32CAP_DEFAULT)


def main() -> int:
    libcrypto_defaults()
    from udpoverlay.cli import main as cli_main  # loads libcrypto: after the default
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
