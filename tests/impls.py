"""The two fast-path implementations under test: the pure-Python reference
and the compiled extension (None when it is not built; under
UDPOVERLAY_REQUIRE_EXTENSION=1, as in CI, a missing extension is an error)."""

from __future__ import annotations

import os

from udpoverlay import _fastpath_py as ref

try:
    from udpoverlay import _fastpath_c as comp
except ImportError:  # pragma: no cover - CI sets UDPOVERLAY_REQUIRE_EXTENSION
    comp = None
    if os.environ.get("UDPOVERLAY_REQUIRE_EXTENSION") == "1":
        raise

__all__ = ["ref", "comp"]
