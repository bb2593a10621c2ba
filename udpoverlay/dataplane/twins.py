"""The switch between the data plane's two twins.

The twins are core modules with the same int-based API: `_c` (compiled from
_fastpath/, the one in production) and `_py` (the pure-Python reference the
compiled one must match byte for byte). UDPOVERLAY_NO_EXTENSIONS=1 selects
the reference. UDPOVERLAY_REQUIRE_EXTENSION=1 (set by CI) turns a missing
extension into an ImportError instead of a quiet fallback, so the compiled
code is the code under test.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_NO_EXT = os.environ.get("UDPOVERLAY_NO_EXTENSIONS", "") not in ("", "0")
_REQUIRE = os.environ.get("UDPOVERLAY_REQUIRE_EXTENSION", "") not in ("", "0")
_MODULES = {"python": "udpoverlay.dataplane._py", "cython": "udpoverlay.dataplane._c"}


def twin(name: str) -> ModuleType:
    """The core module of one twin, "python" or "cython" (ImportError if the
    extension is not built)."""
    if name not in _MODULES:
        raise ValueError(f"unknown fast path {name!r}: python or cython")
    return importlib.import_module(_MODULES[name])


def _default() -> ModuleType:
    if _NO_EXT:
        return twin("python")
    try:
        return twin("cython")
    except ImportError as exc:
        if _REQUIRE:
            raise ImportError(
                f"udpoverlay's compiled fast path did not load ({exc}); "
                "UDPOVERLAY_REQUIRE_EXTENSION is set") from exc
        return twin("python")


DEFAULT: ModuleType = _default()
IMPLEMENTATION: str = DEFAULT.IMPLEMENTATION

__all__ = ["DEFAULT", "IMPLEMENTATION", "twin"]
