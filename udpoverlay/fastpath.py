"""Dispatcher: the compiled fast path, or the pure-Python reference.

UDPOVERLAY_NO_EXTENSIONS=1 selects the reference. UDPOVERLAY_REQUIRE_EXTENSION=1
(set by CI) turns a missing extension into an ImportError instead of a quiet
fallback, so the compiled code is the code under test.
"""

from __future__ import annotations

import os

_NO_EXT = os.environ.get("UDPOVERLAY_NO_EXTENSIONS", "") not in ("", "0")
_REQUIRE = os.environ.get("UDPOVERLAY_REQUIRE_EXTENSION", "") not in ("", "0")

if _NO_EXT:
    from udpoverlay import _fastpath_py as _impl
else:
    try:
        from udpoverlay import _fastpath_c as _impl  # type: ignore[attr-defined]
    except ImportError as exc:
        if _REQUIRE:
            raise ImportError(
                f"udpoverlay's compiled fast path did not load ({exc}); "
                "UDPOVERLAY_REQUIRE_EXTENSION is set") from exc
        from udpoverlay import _fastpath_py as _impl

Engine = _impl.Engine
IMPLEMENTATION: str = _impl.IMPLEMENTATION
MODE_UDP: int = _impl.MODE_UDP
MODE_VXLAN: int = _impl.MODE_VXLAN
VERDICT_NAMES: tuple = _impl.VERDICT_NAMES
BATCH: int = _impl.BATCH
checksum = _impl.checksum

__all__ = ["Engine", "IMPLEMENTATION", "MODE_UDP", "MODE_VXLAN", "VERDICT_NAMES",
           "BATCH", "checksum"]
