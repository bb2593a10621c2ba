"""Static mode's runner: options -> a running Daemon until SIGINT/SIGTERM.

Order: the operations endpoint first (so /healthz answers and /readyz says
503 while set-up runs) -> the underlay chosen and the daemon set up, off the
loop (pyroute2's sync netlink must not run inside it) -> serve().
"""

from __future__ import annotations

import asyncio

from udpoverlay.daemon import Daemon, interrupt_on_sigterm, prepare, run_loop
from udpoverlay.lifecycle import Lifecycle
from udpoverlay.ops import Ops
from udpoverlay.options import Options

__all__ = ["run"]


async def _main(opts: Options) -> int:
    lifecycle = Lifecycle()
    ops = Ops(opts, lifecycle)
    await ops.start()
    daemon: Daemon | None = None
    try:
        lifecycle.waiting("the underlay interface")
        opts = await asyncio.to_thread(prepare, opts)
        daemon = Daemon(opts, lifecycle)
        ops.attach(daemon)
        lifecycle.waiting("the data plane")
        await asyncio.to_thread(daemon.setup)
        return await daemon.serve()
    finally:
        if daemon is not None:
            daemon.close()
        await ops.close()


def run(opts: Options) -> int:
    """Run the daemon in the foreground until SIGINT/SIGTERM; the exit code.
    ConfigError / TunSetupError propagate to the CLI."""
    interrupt_on_sigterm()
    return run_loop(_main(opts))
