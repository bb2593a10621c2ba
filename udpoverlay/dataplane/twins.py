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
import logging
import os
from types import ModuleType

from udpoverlay.errors import ConfigError

_NO_EXT = os.environ.get("UDPOVERLAY_NO_EXTENSIONS", "") not in ("", "0")
_REQUIRE = os.environ.get("UDPOVERLAY_REQUIRE_EXTENSION", "") not in ("", "0")
_MODULES = {"python": "udpoverlay.dataplane._py", "cython": "udpoverlay.dataplane._c"}


def twin(name: str) -> ModuleType:
    """The core module of one twin, "python" or "cython" (ImportError if the
    extension is not built)."""
    if name not in _MODULES:
        raise ValueError(f"unknown fast path {name!r}: python or cython")
    return importlib.import_module(_MODULES[name])


def _default() -> tuple[ModuleType, str | None]:
    """The twin to run and, when the compiled one should have run but did
    not import, why (the daemon warns with it: never a silent slow path)."""
    if _NO_EXT:
        return twin("python"), None
    try:
        return twin("cython"), None
    except ImportError as exc:
        if _REQUIRE:
            raise ImportError(
                f"udpoverlay's compiled fast path did not load ({exc}); "
                "UDPOVERLAY_REQUIRE_EXTENSION is set") from exc
        return twin("python"), str(exc) or type(exc).__name__


DEFAULT, FALLBACK = _default()
IMPLEMENTATION: str = DEFAULT.IMPLEMENTATION

__all__ = ["DEFAULT", "FALLBACK", "IMPLEMENTATION", "twin", "check_fast_path"]

log = logging.getLogger(__name__)


def check_fast_path(required: bool) -> None:
    """Never a silent slow path: the compiled twin's import error is a
    WARNING, or with --require-fast-path a refusal (ConfigError: exit 2)."""
    if FALLBACK is None:
        return
    if required:
        raise ConfigError(f"--require-fast-path: the compiled fast path did not load "
                          f"({FALLBACK})")
    log.warning("the compiled fast path did not load (%s): running the pure-Python "
                "reference, many times slower; --require-fast-path refuses to start instead",
                FALLBACK)
