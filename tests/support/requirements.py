"""Skip a test whose requirement is missing, or fail it when all are required.

CI sets UDPOVERLAY_REQUIRE_ALL=1 so a test cannot pass only by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(ok: bool, reason: str) -> None:
    if not ok:
        if os.environ.get("UDPOVERLAY_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        else:
            pytest.skip(reason)


def require_root_tools() -> None:
    """Root, /dev/net/tun, ip and ping: what namespace tests need."""
    require(os.geteuid() == 0, "needs root (network namespaces, TUN)")
    require(os.path.exists("/dev/net/tun"), "needs /dev/net/tun")
    for tool in ("ip", "ping"):
        require(shutil.which(tool) is not None, f"needs {tool} on PATH")


def require_io_uring() -> None:
    """The compiled twin can read a TUN through io_uring here (fails under
    UDPOVERLAY_REQUIRE_ALL=1 where it was not built in or is refused)."""
    from udpoverlay import dataplane
    require(dataplane.IMPLEMENTATION == "cython", "io_uring needs the compiled data plane")
    core = dataplane.Engine("udp", "198.19.1.0", "198.19.1.0/24", "198.19.0.0/16").core
    try:
        core.set_io("io_uring")
    except OSError as exc:
        require(False, f"io_uring path not usable: {exc}")
    finally:
        core.close()
