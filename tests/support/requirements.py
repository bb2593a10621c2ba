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
