"""Cluster mode: the daemon with its subnet and peers from etcd (flannel's layout).

Start sequence (one event loop, uvloop when available):
  store + membership -> load_config (waits while missing/invalid/etcd down)
  -> acquire our lease -> RunConfig from lease + NetworkConfig (backend,
  port, VNI come from etcd) -> Daemon.setup() in a worker thread (pyroute2's
  sync netlink must not run inside the running loop) -> subnet.env ->
  membership.run(dataplane.set_peers) as a task next to Daemon.serve().
Shutdown: serve() returns on SIGINT/SIGTERM; the membership task is
cancelled and the store closed. While etcd is down the membership keeps the
last applied peers, so traffic keeps flowing.

For vxlan the lease must carry our VTEP MAC before the subnet is known, so
the default MAC is derived from the public IP and the etcd prefix (stable
across restarts, like the lease itself).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass

from udpoverlay.config import DEFAULT_IFACE, build_config
from udpoverlay.daemon import Daemon, _run_loop, derive_vtep_mac, detect_public_ip
from udpoverlay.errors import ConfigError, LeaseStoreError
from udpoverlay.lease import DEFAULT_PREFIX
from udpoverlay.peers import format_mac, parse_mac
from udpoverlay.subnetenv import DEFAULT_PATH, previous_subnet, write_subnet_env

__all__ = ["ClusterOptions", "build_cluster_options", "ClusterDaemon", "run"]

log = logging.getLogger("udpoverlay")


@dataclass(frozen=True)
class ClusterOptions:
    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    subnet_file: str = DEFAULT_PATH
    lease_ttl: int = 86400
    ip_masq: bool = False
    public_ip: str | None = None
    underlay_iface: str | None = None
    iface: str = DEFAULT_IFACE
    mtu: int | None = None
    vtep_mac: bytes | None = None
    offload: bool = True
    threads: bool = False


def build_cluster_options(*, endpoints: str, prefix: str | None = None,
                          ca_file=None, cert_file=None, key_file=None,
                          subnet_file: str | None = None, lease_ttl=86400,
                          ip_masq: bool = False, public_ip: str | None = None,
                          underlay_iface: str | None = None, iface: str | None = None,
                          mtu=None, vtep_mac: str | None = None, subnet=None,
                          network=None, peers=(), offload: bool = True,
                          threads: bool = False) -> ClusterOptions:
    """Validate the CLI values of etcd mode; ConfigError on bad ones."""
    if subnet or network or peers:
        raise ConfigError("--subnet, --network and --peer come from etcd; "
                          "do not give them with --etcd-endpoints")
    eps = tuple(e.strip() for e in str(endpoints).split(",") if e.strip())
    if not eps:
        raise ConfigError("--etcd-endpoints: no endpoint given")
    prefix = (prefix or DEFAULT_PREFIX).rstrip("/")
    if not prefix.startswith("/"):
        raise ConfigError(f"--etcd-prefix {prefix!r} must start with '/'")
    try:
        ttl = int(lease_ttl)
    except (TypeError, ValueError):
        raise ConfigError(f"--lease-ttl: bad value {lease_ttl!r}") from None
    if ttl < 5:
        raise ConfigError(f"--lease-ttl {ttl} too small (at least 5 s)")
    if (cert_file is None) != (key_file is None):
        raise ConfigError("--etcd-certfile and --etcd-keyfile go together")
    if public_ip not in (None, ""):
        try:
            public_ip = str(ipaddress.IPv4Address(public_ip))
        except ValueError:
            raise ConfigError(f"--public-ip: bad IPv4 address {public_ip!r}") from None
    else:
        public_ip = None
    if mtu is not None:
        try:
            mtu = int(mtu)
        except (TypeError, ValueError):
            raise ConfigError(f"--mtu: bad value {mtu!r}") from None
    mac = None
    if vtep_mac:
        try:
            mac = parse_mac(vtep_mac) if isinstance(vtep_mac, str) else bytes(vtep_mac)
        except ValueError as exc:
            raise ConfigError(f"--vtep-mac: {exc}") from None
    return ClusterOptions(endpoints=eps, prefix=prefix, ca_file=ca_file,
                          cert_file=cert_file, key_file=key_file,
                          subnet_file=subnet_file or DEFAULT_PATH, lease_ttl=ttl,
                          ip_masq=bool(ip_masq), public_ip=public_ip,
                          underlay_iface=underlay_iface, iface=iface or DEFAULT_IFACE,
                          mtu=mtu, vtep_mac=mac, offload=bool(offload),
                          threads=bool(threads))


class ClusterDaemon(Daemon):
    """The daemon plus its cluster membership (shown under "cluster" in status)."""

    membership = None

    def status(self) -> dict:
        doc = super().status()
        if self.membership is not None:
            doc["cluster"] = self.membership.status()
        return doc


def _detect_public_ip(opts: ClusterOptions) -> str:
    return opts.public_ip or detect_public_ip(opts.underlay_iface)


async def _main(opts: ClusterOptions) -> int:
    from udpoverlay.leases import ClusterMembership
    from udpoverlay.stores.etcd import EtcdStore

    public_ip = await asyncio.to_thread(_detect_public_ip, opts)
    store = EtcdStore(list(opts.endpoints), ca_file=opts.ca_file,
                      cert_file=opts.cert_file, key_file=opts.key_file)
    daemon: ClusterDaemon | None = None
    task: asyncio.Task | None = None
    try:
        membership = ClusterMembership(
            store, prefix=opts.prefix, public_ip=public_ip,
            previous_subnet=previous_subnet(opts.subnet_file),
            lease_ttl=opts.lease_ttl, retry_max=2.0)
        config = await membership.load_config()
        vtep_mac = None
        if config.backend_type == "vxlan":
            vtep_mac = opts.vtep_mac or derive_vtep_mac(public_ip, opts.prefix)
            membership.backend_data = {"VtepMAC": format_mac(vtep_mac)}
        lease = await membership.acquire()
        cfg = build_config(public_ip=public_ip, port=config.backend_port, iface=opts.iface,
                           subnet=str(lease.subnet), network=str(config.network),
                           mtu=opts.mtu, backend=config.backend_type,
                           underlay_iface=opts.underlay_iface, vni=config.vni,
                           vtep_mac=vtep_mac, offload=opts.offload, threads=opts.threads)
        daemon = ClusterDaemon(cfg)
        daemon.membership = membership
        await asyncio.to_thread(daemon.setup)
        write_subnet_env(opts.subnet_file, config.network, lease.subnet, daemon.mtu,
                         ipmasq=opts.ip_masq)
        log.info("wrote %s", opts.subnet_file)
        failure: list[BaseException] = []

        async def follow() -> None:
            try:
                await membership.run(daemon.dataplane.set_peers)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - stop the daemon cleanly
                log.error("cluster membership stopped: %s", exc)
                failure.append(exc)
                os.kill(os.getpid(), signal.SIGTERM)

        task = asyncio.create_task(follow(), name="udpoverlay-cluster")
        code = await daemon.serve()
        return 1 if failure else code
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await asyncio.wait_for(store.close(), 5)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        if daemon is not None:
            daemon.close_sync()


def run(opts: ClusterOptions) -> int:
    """Run the daemon in etcd mode until SIGINT/SIGTERM; exit code.
    ConfigError / TunSetupError / LeaseStoreError propagate to the CLI."""
    return _run_loop(_main(opts))
