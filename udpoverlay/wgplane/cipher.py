"""The engine's transport cipher on the data plane's AEAD (dataplane/wgaead.py:
the compiled twin's libcrypto loop when it loaded, else its pyca
reference): the same two calls as wireguard.transport.PycaCipher, one packet
each, the same bytes (the differential tests hold both twins to
wireguard.transport)."""

from __future__ import annotations

from typing import Any

from udpoverlay.dataplane.twins import IMPLEMENTATION
from udpoverlay.dataplane.wgaead import WG_OK, WgKey

__all__ = ["DataPlaneCipher", "IMPLEMENTATION"]


class DataPlaneCipher:
    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = WgKey(key)

    @property
    def wgkey(self) -> Any:
        """The key itself, for the batch path's in-place seal and open."""
        return self._key

    def seal(self, receiver: int, counter: int, plaintext: bytes) -> bytes:
        return self._key.seal_batch(receiver, counter, [plaintext])[0]

    def open(self, counter: int, datagram: bytes) -> bytes | None:
        verdict, plaintext = self._key.open_batch([datagram])[0]
        return plaintext if verdict == WG_OK else None

    def __repr__(self) -> str:
        return "DataPlaneCipher(<key hidden>)"
