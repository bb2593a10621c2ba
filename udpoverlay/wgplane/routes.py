"""Longest-prefix match of an IPv4 address over the peers' subnets (the
outgoing direction's peer choice: WireGuard's cryptokey routing).

One dict per prefix length, longest first: a lookup costs one mask and one
dict probe per distinct prefix length in the table (usually one). The
table is built whole and swapped whole by its one owner (the event loop).
"""

from __future__ import annotations

import ipaddress
from typing import Generic, Iterable, TypeVar

__all__ = ["Routes"]

V = TypeVar("V")


class Routes(Generic[V]):
    def __init__(self, entries: Iterable[tuple[ipaddress.IPv4Network, V]] = ()) -> None:
        by_len: dict[int, dict[int, V]] = {}
        for net, value in entries:
            by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = value
        self._levels = [((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, table)
                        for plen, table in sorted(by_len.items(), reverse=True)]
        self.size = sum(len(t) for t in by_len.values())

    def lookup(self, addr: int) -> V | None:
        """The value of the longest prefix holding addr (an int), or None."""
        for mask, table in self._levels:
            value = table.get(addr & mask)
            if value is not None:
                return value
        return None

    def __len__(self) -> int:
        return self.size
