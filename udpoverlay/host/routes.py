"""DirectRouting (flannel's vxlan backend option): peers on our own link get a
plain kernel route, the others the tunnel.

Design notes:
- As flannel: a peer is "direct" when a route lookup for its public IP gives
  one unicast route without a gateway. We also refuse a lookup that ends on
  our TUN (a public IP inside the overlay) or on no interface.
- A direct peer gets `SUBNET via PUBLIC_IP dev <that interface>` in the main
  table. The TUN carries one route for the whole network; this /24 is more
  specific, so the kernel forwards the peer's traffic on the underlay and the
  data plane never sees it. Kernel peers with DirectRouting send to us
  unencapsulated; that traffic arrives on the underlay and the kernel
  forwards it to the pods: net.ipv4.ip_forward must be 1 (a WARNING says so).
- Never touch a route we did not install. Ours carry their own protocol
  number (ROUTE_PROTO, `proto 117` in `ip route`). A new route is created
  with `add` (exclusive): a route already there for that prefix and metric is
  someone else's, is left alone (one WARNING) and the peer stays in the
  tunnel. Every delete names the protocol and the gateway, so a route someone
  replaced meanwhile is not ours any more and the kernel keeps it (ESRCH).
  A changed peer is delete + add, never replace.
- A daemon killed with SIGKILL cannot remove its routes. At start, adopt()
  takes over the proto-117 routes inside our network left by such a run:
  the first update() keeps those a peer still wants and deletes the rest.
- Lookups cost a netlink round trip (~0.2 ms): an update looks up only public
  IPs it has not decided yet; all of them again at most every `recheck`
  seconds (an underlay change between leases changes nothing before that).
- Sync pyroute2 fails inside a running event loop (see host/netlink.py):
  call update() through asyncio.to_thread; called on the loop's thread
  anyway (close() in a shutdown path), the work moves to a helper thread and
  the caller waits for it. A lock serialises the calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from udpoverlay.host.netlink import attr, netlink
from udpoverlay.peer import Peer

__all__ = ["DirectRoutes", "ROUTE_PROTO"]

log = logging.getLogger(__name__)

ROUTE_PROTO = 117           # rtm_protocol of our routes; unassigned in rt_protos
_RTN_UNICAST = 1
_FORWARD = "/proc/sys/net/ipv4/ip_forward"


@dataclass(frozen=True)
class _Route:
    gateway: str
    oif: int


def _errno(exc: BaseException) -> int | None:
    """The netlink error code of a pyroute2 NetlinkError (or an OSError)."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else getattr(exc, "errno", None)


def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), on a helper thread when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args)
    with concurrent.futures.ThreadPoolExecutor(1, "direct-routes") as ex:
        return ex.submit(fn, *args).result()


def _forwarding() -> bool:
    try:
        with open(_FORWARD) as f:
            return f.read().strip() == "1"
    except OSError:
        return True      # cannot tell: say nothing


class DirectRoutes:
    """The kernel routes of DirectRouting peers: what update() installed,
    and only that, is what remove_all() deletes.

    tun: our TUN's ifindex or name (a lookup ending there is never direct);
    netlink: a factory of sync IPRoute objects (context managers), e.g.
    `lambda: IPRoute(netns=name)` in tests; recheck: seconds after which an
    update looks every public IP up again; clock: seconds, monotonic."""

    def __init__(self, tun: int | str, *, netlink: Callable[[], Any] = netlink,
                 recheck: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 forwarding: Callable[[], bool] = _forwarding) -> None:
        self.tun = tun
        self.recheck = float(recheck)
        self._netlink = netlink
        self._clock = clock
        self._forwarding = forwarding
        self._lock = threading.Lock()
        self._installed: dict[ipaddress.IPv4Network, _Route] = {}
        self._reach: dict[str, int | None] = {}     # public IP -> oif if direct
        self._checked_at: float | None = None
        self._foreign: set[ipaddress.IPv4Network] = set()
        self._warned_forward = False

    # -- what is installed -------------------------------------------------------
    def installed(self) -> dict[str, str]:
        """Our routes now: subnet -> gateway (for status and tests)."""
        with self._lock:
            return {str(net): r.gateway for net, r in self._installed.items()}

    def adopt(self, network: ipaddress.IPv4Network) -> int:
        """Take over our protocol's routes inside `network` that a previous
        run left behind (killed before it could remove them): the next
        update() keeps or deletes them like its own. The number adopted."""
        return _off_loop(self._adopt, network)

    def _adopt(self, network: ipaddress.IPv4Network) -> int:
        adopted = 0
        with self._lock, self._netlink() as ipr:
            for r in ipr.get_routes(family=2, proto=ROUTE_PROTO, table=254):
                dst, gw, oif = attr(r, "RTA_DST"), attr(r, "RTA_GATEWAY"), attr(r, "RTA_OIF")
                if r["proto"] != ROUTE_PROTO or not dst or not gw or not oif:
                    continue
                net = ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False)
                if net.subnet_of(network) and net not in self._installed:
                    self._installed[net] = _Route(str(gw), int(oif))
                    adopted += 1
                    log.info("DirectRouting: adopted %s via %s, left by a previous run",
                             net, gw)
        return adopted

    # -- update ------------------------------------------------------------------
    def update(self, peers: Iterable[Peer]) -> list[Peer]:
        """Install the routes of the direct peers, remove ours that no peer
        wants any more (gone, moved, not direct); return the other peers, in
        order: they must go through the tunnel."""
        return _off_loop(self._update, list(peers))

    def _update(self, peers: list[Peer]) -> list[Peer]:
        with self._lock, self._netlink() as ipr:
            tun = self._tun_index(ipr)
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self.recheck:
                self._reach.clear()
                self._checked_at = now
            wanted: dict[ipaddress.IPv4Network, _Route] = {}
            for p in peers:
                ip = str(p.public_ip)
                if ip not in self._reach:
                    self._reach[ip] = self._direct_oif(ipr, ip, tun)
                oif = self._reach[ip]
                if oif is not None and p.subnet not in wanted:
                    wanted[p.subnet] = _Route(ip, oif)
            current = {str(p.public_ip) for p in peers}
            for ip in [ip for ip in self._reach if ip not in current]:
                del self._reach[ip]
            for net, route in list(self._installed.items()):
                if wanted.get(net) != route:
                    self._delete(ipr, net, route)
            for net, route in wanted.items():
                if net not in self._installed:
                    self._add(ipr, net, route)
            self._foreign &= set(wanted)
            if self._installed and not self._warned_forward and not self._forwarding():
                self._warned_forward = True
                log.warning("DirectRouting: net.ipv4.ip_forward is 0: traffic from direct "
                            "peers to pods behind this host is not forwarded")
            return self._tunnel_peers(peers)

    def _tunnel_peers(self, peers: list[Peer]) -> list[Peer]:
        """The peers no route of ours serves (a second peer of one subnet too)."""
        tunnel, seen = [], set()
        for p in peers:
            r = self._installed.get(p.subnet)
            if r is None or r.gateway != str(p.public_ip) or p.subnet in seen:
                tunnel.append(p)
            else:
                seen.add(p.subnet)
        return tunnel

    def remove_all(self) -> None:
        """Delete every route we installed (and nothing else); idempotent."""
        _off_loop(self._remove_all)

    def _remove_all(self) -> None:
        with self._lock:
            if not self._installed:
                return
            with self._netlink() as ipr:
                for net, route in list(self._installed.items()):
                    self._delete(ipr, net, route)
            self._reach.clear()
            self._checked_at = None

    # -- netlink steps -------------------------------------------------------------
    def _tun_index(self, ipr: Any) -> int | None:
        if isinstance(self.tun, int):
            return self.tun
        found = ipr.link_lookup(ifname=self.tun)
        return found[0] if found else None

    def _direct_oif(self, ipr: Any, ip: str, tun: int | None) -> int | None:
        """The interface `ip` is directly connected on; None if it is behind a
        gateway, unreachable, local, or reached through our TUN."""
        try:
            routes = ipr.route("get", dst=ip)
        except Exception as exc:  # noqa: BLE001 - unreachable etc.: not direct
            log.debug("DirectRouting: no route to %s: %s", ip, exc)
            return None
        if len(routes) != 1:
            return None
        r = routes[0]
        oif = attr(r, "RTA_OIF")
        if (r["type"] != _RTN_UNICAST or attr(r, "RTA_GATEWAY") or attr(r, "RTA_VIA")
                or attr(r, "RTA_MULTIPATH") or not oif or oif == tun):
            return None
        return int(oif)

    def _add(self, ipr: Any, net: ipaddress.IPv4Network, route: _Route) -> None:
        try:
            ipr.route("add", dst=str(net), gateway=route.gateway, oif=route.oif,
                      proto=ROUTE_PROTO)
        except Exception as exc:  # noqa: BLE001 - one peer's failure is not fatal
            if _errno(exc) == errno.EEXIST:
                if net not in self._foreign:
                    self._foreign.add(net)
                    log.warning("DirectRouting: a route for %s exists that we did not "
                                "install; leaving it, %s stays in the tunnel", net,
                                route.gateway)
            else:
                log.warning("DirectRouting: cannot add %s via %s: %s; it stays in the "
                            "tunnel", net, route.gateway, exc)
            return
        self._installed[net] = route
        log.info("DirectRouting: %s via %s (no tunnel)", net, route.gateway)

    def _delete(self, ipr: Any, net: ipaddress.IPv4Network, route: _Route) -> None:
        """Delete our route: protocol and gateway must match, so a route
        someone else put there is not ours and survives (ESRCH)."""
        del self._installed[net]
        try:
            ipr.route("del", dst=str(net), gateway=route.gateway, oif=route.oif,
                      proto=ROUTE_PROTO)
        except Exception as exc:  # noqa: BLE001 - gone already or not ours any more
            if _errno(exc) != errno.ESRCH:
                log.warning("DirectRouting: cannot delete %s via %s: %s", net,
                            route.gateway, exc)
            return
        log.info("DirectRouting: removed %s via %s", net, route.gateway)
