"""Skip a test whose requirement is missing, or fail it when all are required.

CI sets UDPOVERLAY_REQUIRE_ALL=1 so a test cannot pass only by skipping.
"""

from __future__ import annotations

import os

import pytest


def require(ok: bool, reason: str) -> None:
    if not ok:
        if os.environ.get("UDPOVERLAY_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        else:
            pytest.skip(reason)
