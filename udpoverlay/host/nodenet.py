"""What this node adds to the host's own networking besides the TUN, as
flanneld does: masquerade and FORWARD rules (firewall.py), DirectRouting
routes (routes.py) and the blackhole route for the network.

Why one object: the daemon starts it once the TUN is configured, feeds it
every new peer list (DirectRouting peers get kernel routes), re-asserts the
rules every --iptables-resync seconds and undoes all of it on a clean exit,
in one place. All calls block (iptables, nft, netlink): the daemon runs
them before the event loop or through asyncio.to_thread.

When the firewall is used: in cluster mode as flanneld (FORWARD accepts for
the network unless --iptables-forward-rules=false, masquerade with
--ip-masq); in static mode only with --ip-masq (a laptop overlay does not
touch iptables unless asked).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Iterable

from udpoverlay.config.options import Options
from udpoverlay.errors import TunSetupError
from udpoverlay.host.firewall import Firewall
from udpoverlay.host.netlink import netlink
from udpoverlay.host.routes import ROUTE_PROTO, DirectRoutes
from udpoverlay.peer import Peer

__all__ = ["NodeNetwork", "BLACKHOLE_METRIC"]

log = logging.getLogger(__name__)

# Below the TUN's route for the network (metric 0): it only matters while
# the TUN is gone, so overlay traffic never leaks to the default route.
BLACKHOLE_METRIC = 1000


class NodeNetwork:
    """Firewall rules, DirectRouting routes and the blackhole route of one
    node (each only when its option asks for it)."""

    def __init__(self, opts: Options, subnet: ipaddress.IPv4Network,
                 network: ipaddress.IPv4Network, tun: str) -> None:
        self.network = network
        use_fw = opts.ip_masq or (opts.cluster and opts.iptables_forward_rules)
        self.firewall: Firewall | None = None
        if use_fw:
            self.firewall = Firewall(network, subnet, masquerade=opts.ip_masq,
                                     forward_rules=opts.iptables_forward_rules,
                                     fully_random=not opts.ip_masq_fully_random_disable,
                                     nftables=opts.enable_nftables,
                                     resync=opts.iptables_resync)
        self.direct: DirectRoutes | None = None
        if opts.direct_routing and opts.backend == "vxlan":
            self.direct = DirectRoutes(tun)
        self.blackhole = bool(opts.ip_blackhole_route)
        self._blackhole_installed = False

    @property
    def resync(self) -> float | None:
        """Seconds between firewall checks (None: nothing to re-assert)."""
        return self.firewall.resync if self.firewall is not None else None

    def start(self) -> None:
        """Install the rules and the blackhole route (FirewallError, or
        TunSetupError for the route, on failure)."""
        if self.firewall is not None:
            self.firewall.apply()
        if self.direct is not None:
            self.direct.adopt(self.network)
        if self.blackhole:
            self._route("replace")
            self._blackhole_installed = True
            log.info("blackhole route for %s (metric %d)", self.network, BLACKHOLE_METRIC)

    def route_peers(self, peers: Iterable[Peer]) -> None:
        """DirectRouting: kernel routes on the underlay for the directly
        connected peers. The engine still gets every peer: our traffic to
        them never reaches the TUN (the /24 via the underlay is more
        specific), but a peer that sees us behind a gateway tunnels to us,
        and we must accept that, as flannel.1 does."""
        if self.direct is not None:
            self.direct.update(peers)

    def check(self) -> None:
        """Re-assert the firewall rules if someone changed them."""
        if self.firewall is not None:
            self.firewall.check()       # counts its own repairs (Firewall.repairs)

    def status(self) -> dict:
        return {"firewall": self.firewall.mode if self.firewall is not None else None,
                "firewall_repairs": self.firewall.repairs if self.firewall is not None else 0,
                "direct_routes": self.direct.installed() if self.direct is not None else {},
                "blackhole": self._blackhole_installed}

    def close(self) -> None:
        """Undo everything, each part even if another fails; idempotent."""
        for undo in (self._remove_direct, self._remove_firewall, self._remove_blackhole):
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - shutting down: say it, go on
                log.warning("cleaning up node networking: %s", exc)

    def _remove_direct(self) -> None:
        if self.direct is not None:
            self.direct.remove_all()

    def _remove_firewall(self) -> None:
        if self.firewall is not None:
            self.firewall.remove()

    def _remove_blackhole(self) -> None:
        if self._blackhole_installed:
            self._blackhole_installed = False
            self._route("del")

    def _route(self, op: str) -> None:
        net = self.network
        try:
            with netlink() as ipr:
                ipr.route(op, dst=str(net.network_address), dst_len=net.prefixlen,
                          type="blackhole", priority=BLACKHOLE_METRIC, proto=ROUTE_PROTO)
        except Exception as exc:  # noqa: BLE001 - pyroute2's NetlinkError and OSError
            raise TunSetupError(f"cannot {op} the blackhole route for {net}: {exc}") from None
