"""Cluster mode's runner: the daemon with its subnet and peers from etcd
(flannel's layout). The same role and shape as static/mode.py: run(opts).

Start sequence (one event loop, uvloop when available):
  choose the underlay interface -> store + membership -> load_config (waits
  while missing/invalid/etcd down) -> the flags checked against the config
  (--direct-routing needs vxlan; Backend.MTU or --mtu) -> what the
  firewall rules need (host/preflight.py: ip_forward, iptables or nft) ->
  bind the port, create the TUN and take the MTU (Daemon.open_host:
  nothing written to etcd yet, so every check has run) -> acquire our lease -> Daemon.setup()
  with Options.for_lease (subnet, network from the lease), in a worker thread
  (pyroute2's sync netlink must not run inside the running loop) -> subnet.env ->
  membership.run(daemon.apply_peers) registered as one of the daemon's
  `services` (run while it serves), the membership's status registered
  as the "cluster" section of the status document (`status_sections`),
  as static mode registers its peers' service and "static" section.
Shutdown: serve() returns on SIGINT/SIGTERM and cancels the membership
service; the store is closed. While etcd is down the membership keeps the
last applied peers, so traffic keeps flowing.

Operations (udpoverlay/ops): the /healthz, /readyz, /metrics endpoint runs
from the first moment (/readyz says what start-up waits for), the
membership is attached for the store and lease metrics, and every change
of the peer list is logged one line per peer (added, removed, moved).
SIGTERM during start-up unwinds cleanly; SIGHUP is ignored until serving.

For vxlan the lease must carry our VTEP MAC before the subnet is known, so
the default MAC is derived from the public IP and the etcd prefix (stable
across restarts, like the lease itself).

For wireguard (flannel's pkg/backend/wireguard) the lease must carry our
public key: the private key is read from $WIREGUARD_KEY_FILE or
/run/flannel/wgkey (created, `wg genkey` format, when missing: 0600 where
flanneld uses 0400; refused when group or others may read it) when the
Daemon is made, before anything is written to etcd; the config's PSK and
keepalive go to every peer. /readyz turns ready only once the lease with
that key is written and the plane runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os

from udpoverlay.cluster.membership import ClusterMembership
from udpoverlay.cluster.network import NetworkConfig
from udpoverlay.cluster.subnetenv import previous_subnet, write_subnet_env
from udpoverlay.config.options import Options
from udpoverlay.daemon import Daemon
from udpoverlay.errors import ConfigError, NetworkConfigChanged
from udpoverlay.eventloop import interrupt_on_sigterm, run_loop
from udpoverlay.host.interfaces import interface_network, prepare
from udpoverlay.host.preflight import check_firewall_prerequisites
from udpoverlay.lifecycle import Lifecycle
from udpoverlay.ops.service import Ops
from udpoverlay.peer import derive_vtep_mac, format_mac

__all__ = ["run", "with_network_config", "peer_events", "wg_key_file", "WG_KEY_FILE"]

log = logging.getLogger(__name__)

EVENT_LINES = 50     # per peer-list change: one line each, then a count
WG_KEY_FILE = "/run/flannel/wgkey"      # flanneld's; $WIREGUARD_KEY_FILE overrides


def wg_key_file(environ=os.environ) -> str:
    """Where our WireGuard private key lives (flanneld's rule)."""
    return environ.get("WIREGUARD_KEY_FILE") or WG_KEY_FILE


def with_network_config(opts: Options, config: NetworkConfig) -> Options:
    """The options with what the network config decides (network, backend,
    port, VNI, EnableNFTables, Backend.MTU unless --mtu, DirectRouting or the
    flag); ConfigError for a flag the config makes meaningless."""
    if opts.direct_routing and config.backend_type != "vxlan":
        raise ConfigError(f"--direct-routing only applies to the vxlan backend (the network "
                          f"config says {config.backend_type})")
    if config.backend_type == "wireguard":
        for flag, given in (("--queues", opts.queues > 1), ("--threads", opts.threads),
                            ("--io io_uring", opts.io_mode == "io_uring"),
                            ("--busy-poll-us", opts.busy_poll_us > 0),
                            ("--vtep-mac", opts.vtep_mac is not None)):
            if given:
                raise ConfigError(f"{flag} does not apply to the wireguard backend (its data "
                                  f"path runs on the event loop, one packet per TUN read)")
        opts = dataclasses.replace(opts, private_key_file=opts.private_key_file
                                   or wg_key_file())
    return dataclasses.replace(
        opts, network=config.network, backend=config.backend_type,
        port=config.backend_port, vni=config.vni,
        mtu=opts.mtu if opts.mtu is not None else config.mtu,
        direct_routing=opts.direct_routing or config.direct_routing,
        enable_nftables=config.enable_nftables)


def peer_events(known: dict, peers: list, limit: int = EVENT_LINES) -> list[str]:
    """One line per peer added, removed or moved (by subnet), at most
    `limit` and a count of the rest; `known` (subnet -> peer) is updated."""
    def via(p) -> str:
        return f"{p.public_ip}:{p.port}"
    now = {p.subnet: p for p in peers}
    lines = [f"peer added: {s} via {via(p)}" for s, p in now.items() if s not in known]
    lines += [f"peer removed: {s} (was via {via(p)})" for s, p in known.items() if s not in now]
    lines += [f"peer changed: {s} via {via(p)} (was via {via(known[s])})"
              for s, p in now.items() if s in known and via(known[s]) != via(p)]
    known.clear()
    known.update(now)
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more peer changes "
                                 f"(`udpoverlay status` lists them all)"]
    return lines


async def _main(opts: Options) -> int:
    from udpoverlay.cluster.store.etcd import EtcdStore

    store = EtcdStore(list(opts.endpoints), ca_file=opts.ca_file,   # checks only, no I/O
                      cert_file=opts.cert_file, key_file=opts.key_file,
                      username=opts.etcd_username, password=opts.etcd_password)
    daemon: Daemon | None = None
    lifecycle = Lifecycle()
    ops = Ops(opts, lifecycle)
    await ops.start()       # /healthz answers, /readyz says why not, from here on
    try:
        lifecycle.waiting("the underlay interface")
        opts = await asyncio.to_thread(prepare, opts)     # bind_ip, public_ip
        public_ip = str(opts.public_ip)
        membership = ClusterMembership(
            store, prefix=opts.prefix, public_ip=public_ip,
            previous_subnet=previous_subnet(opts.subnet_file),
            lease_ttl=opts.lease_ttl, renew_margin=opts.renew_margin, retry_max=2.0,
            underlay_network=await asyncio.to_thread(interface_network, str(opts.bind_ip)))
        ops.attach_cluster(membership)
        lifecycle.waiting("the network config from etcd")
        config = await membership.load_config()
        opts = with_network_config(opts, config)
        vtep_mac = None
        if config.backend_type == "vxlan":
            vtep_mac = opts.vtep_mac or derive_vtep_mac(public_ip, opts.prefix)
            membership.backend_data = {"VtepMAC": format_mac(vtep_mac)}
        # What the firewall rules need (ip_forward, iptables/nft), then bind
        # the port, create the TUN and take the MTU, all before anything is
        # written to etcd: a node that fails here holds no lease, and a
        # second instance on this host never touches the first one's.
        lifecycle.waiting("the host checks")
        await asyncio.to_thread(check_firewall_prerequisites, opts)
        if config.backend_type == "wireguard":
            assert opts.private_key_file is not None
            await asyncio.to_thread(_key_directory, opts.private_key_file)
        daemon = Daemon(opts, lifecycle)       # wireguard: our key read (or created) here
        if daemon.wg is not None:
            daemon.wg.psk = config.wg_psk
            membership.backend_data = {"PublicKey": daemon.wg.public_key.to_base64()}
        ops.attach(daemon)
        daemon.status_sections["cluster"] = membership.status   # after "ops", as before
        await asyncio.to_thread(daemon.open_host)
        lifecycle.waiting("a subnet lease from etcd")
        lease = await membership.acquire()
        lifecycle.waiting("the data plane")
        await asyncio.to_thread(daemon.setup, opts.for_lease(
            public_ip=public_ip, subnet=str(lease.subnet), network=str(config.network),
            backend=config.backend_type, port=config.backend_port, vni=config.vni,
            vtep_mac=vtep_mac))
        write_subnet_env(opts.subnet_file, config.network, lease.subnet, daemon.mtu,
                         ipmasq=opts.ip_masq)
        log.info("wrote %s", opts.subnet_file)
        failure: list[BaseException] = []
        running = daemon

        known: dict = {}

        async def apply(peers) -> None:
            peers = list(peers)
            await running.apply_peers(peers)
            for line in peer_events(known, peers):
                log.info("%s", line)

        async def follow() -> None:
            assert running.engine is not None
            try:
                await membership.run(apply)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - stop the daemon cleanly
                if isinstance(exc, NetworkConfigChanged):
                    log.error("%s", exc)
                else:
                    log.error("cluster membership stopped: %s", exc)
                failure.append(exc)
                running.stop()

        daemon.services.append(follow)
        code = await daemon.serve()
        return 1 if failure else code
    finally:
        try:
            await asyncio.wait_for(store.close(), 5)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        if daemon is not None:
            daemon.close()
        await ops.close()


def _key_directory(path: str) -> None:
    """The key file's directory (/run/flannel on a fresh tmpfs), as flanneld
    makes it."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755, exist_ok=True)


def run(opts: Options) -> int:
    """Run the daemon in etcd mode until SIGINT/SIGTERM; exit code.
    ConfigError / TunSetupError / LeaseStoreError propagate to the CLI.
    SIGTERM during start-up (waiting for etcd) unwinds cleanly; SIGHUP is
    ignored until the daemon serves (then it reloads)."""
    interrupt_on_sigterm()
    return run_loop(_main(opts))
