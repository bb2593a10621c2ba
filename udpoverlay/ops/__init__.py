"""Operations: what an operator's tools talk to, kept apart from the data
plane. PLACEHOLDER SEAM (being built under issue 12): the health/readiness/
metrics endpoint, systemd notification and the log set-up live here.

The mode runners use exactly this interface:
    ops = Ops(opts, lifecycle); await ops.start()   # first thing on the loop
    ops.attach(daemon)                              # once the Daemon exists
    await ops.close()                               # last thing
"""

from __future__ import annotations

from udpoverlay.lifecycle import Lifecycle
from udpoverlay.options import Options

__all__ = ["Ops"]


class Ops:
    def __init__(self, opts: Options, lifecycle: Lifecycle) -> None:
        self.opts = opts
        self.lifecycle = lifecycle
        self.daemon = None

    async def start(self) -> None:
        return None

    def attach(self, daemon) -> None:
        self.daemon = daemon

    async def close(self) -> None:
        return None
