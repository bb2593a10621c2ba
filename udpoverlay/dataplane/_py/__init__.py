"""The reference twin of the data plane's core, pure Python: assembled in
core.py (as the compiled twin is in _fastpath/core.pyx) from parts that
mirror the compiled twin's file for file. This face only names it."""

from __future__ import annotations

from udpoverlay.dataplane._py.core import IMPLEMENTATION, Core, testing
from udpoverlay.dataplane._py.wgcrypto import WgKey, aead_library
from udpoverlay.dataplane._py.wgio import WgIo

__all__ = ["IMPLEMENTATION", "Core", "WgKey", "WgIo", "aead_library", "testing"]
