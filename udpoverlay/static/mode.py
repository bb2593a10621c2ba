"""Static mode's runner: options -> a running Daemon until SIGINT/SIGTERM.

Order: the operations endpoint and the control socket first (so /healthz
answers, /readyz says 503 and `status` says what set-up waits for) -> the
underlay chosen -> with --ip-masq, what the firewall needs (ip_forward,
iptables or nft) -> the peers file read and
the peer names resolved (static/peers.py; --strict-peers: a name that does
not resolve is an error) -> the daemon set up, off the loop (pyroute2's
sync netlink must not run inside it) -> serve(), with the re-resolution
task, the SIGHUP reloader and the peers' status registered.

With none of --iface/--iface-regex/--iface-can-reach/--public-ip the
underlay is the default route's interface, which on a laptop changes
address with the network: the socket then binds 0.0.0.0 (bind_any), so
the kernel picks the source per packet and no rebind is ever needed.
"""

from __future__ import annotations

import asyncio
import dataclasses

from udpoverlay.config.options import Options
from udpoverlay.daemon import Daemon
from udpoverlay.eventloop import interrupt_on_sigterm, run_loop
from udpoverlay.host.interfaces import interface_network, prepare
from udpoverlay.host.preflight import check_firewall_prerequisites
from udpoverlay.lifecycle import Lifecycle
from udpoverlay.ops.service import Ops
from udpoverlay.static.peers import StaticPeers

__all__ = ["run"]


async def _main(opts: Options) -> int:
    lifecycle = Lifecycle()
    ops = Ops(opts, lifecycle)
    await ops.start()
    daemon: Daemon | None = None
    try:
        lifecycle.waiting("the underlay interface")
        pinned = bool(opts.ifaces or opts.iface_regex or opts.iface_can_reach
                      or opts.public_ip or opts.bind_ip)
        opts = await asyncio.to_thread(prepare, opts)
        await asyncio.to_thread(check_firewall_prerequisites, opts)   # --ip-masq's needs
        lifecycle.waiting("the peer names")
        underlay = await asyncio.to_thread(interface_network, str(opts.bind_ip))
        peers = StaticPeers(opts, underlay=underlay)     # its broadcast: no peer's address
        opts = dataclasses.replace(opts, peers=tuple(await peers.start()), bind_any=not pinned)
        daemon = Daemon(opts, lifecycle)
        peers.apply = daemon.apply_peers
        daemon.services.append(peers.run)
        daemon.reloaders.append(peers.reload)
        daemon.status_sections["static"] = peers.status
        daemon.peer_details.append(peers.peer_details)
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
