"""The WireGuard bed shared by the daemon-level tests: our daemon beside
Debian's wireguard-go (tests/support/wgpeer.py) on the two-host overlay."""

from __future__ import annotations

import shutil

import pytest

from tests.support.requirements import require, require_root_tools
from tests.support.wgpeer import WgGo


@pytest.fixture
def wgbed(overlay2, request):
    require_root_tools()
    for tool in ("wireguard-go", "wg", "tcpdump"):
        require(shutil.which(tool) is not None,
                f"needs {tool} (Debian packages wireguard-go, wireguard-tools, tcpdump)")
    node = WgGo(overlay2)
    try:
        yield overlay2, node
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(node.logs())
        node.close()
