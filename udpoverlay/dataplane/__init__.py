"""The data plane: what the rest of udpoverlay uses (Engine, Runner, the ARP
resolver) and which twin runs (twins.py: compiled or pure-Python reference).
"""

from __future__ import annotations

from udpoverlay.dataplane import arp
from udpoverlay.dataplane.engine import Engine
from udpoverlay.dataplane.runner import Runner
from udpoverlay.dataplane.twins import DEFAULT, FALLBACK, IMPLEMENTATION, twin

__all__ = ["DEFAULT", "FALLBACK", "IMPLEMENTATION", "twin", "Engine", "Runner", "arp"]
