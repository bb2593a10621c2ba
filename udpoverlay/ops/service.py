"""The operations layer's one object (Ops): the control socket from the
first moment, the /healthz, /readyz and /metrics endpoint, systemd's
notification (READY=1, STATUS= while waiting, WATCHDOG=1) and SIGHUP's
env-file re-read, wired to the Lifecycle and the Daemon.

The mode runners use exactly this interface:
    ops = Ops(opts, lifecycle); await ops.start()   # first thing on the loop
    ops.attach(daemon)                              # once the Daemon exists
    ops.attach_cluster(membership)                  # cluster mode, once it exists
    await ops.close()                               # last thing

Readiness is the Lifecycle's: /readyz answers 503 with what start-up waits
for ("waiting for a subnet lease from etcd") until the daemon is ready,
then 200; 503 "stopping" during shutdown. /healthz is 200 while the process
serves HTTP at all (flanneld's meaning). Nothing here runs per packet.

The control socket (`udpoverlay status`) is opened by start(), before
anything can block, and handed to the Daemon by attach(), which serves on
it: until the daemon has been ready it answers a start-up document (phase,
what start-up waits for and since when, cluster mode's store state), then
the daemon's own. A second instance on the same TUN name fails here,
before it has touched anything. The watchdog pings come from a task on the
event loop, so they stop when the loop hangs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from udpoverlay import __version__
from udpoverlay.config.options import Options
from udpoverlay.control import ControlServer, ControlSocketBusy
from udpoverlay.errors import TunSetupError
from udpoverlay.lifecycle import READY, STOPPING, Lifecycle
from udpoverlay.ops import logs
from udpoverlay.ops.http import TEXT, OpsServer, Response
from udpoverlay.ops.metrics import OpsCollector, render_snapshot
from udpoverlay.ops.reload import EnvReload
from udpoverlay.ops.sdnotify import Notifier

__all__ = ["Ops"]

log = logging.getLogger(__name__)

RENDER_INTERVAL = 1.0     # s: the youngest /metrics page is served again within this


def _implementation() -> str:
    from udpoverlay import dataplane
    return dataplane.IMPLEMENTATION


class Ops:
    def __init__(self, opts: Options, lifecycle: Lifecycle, *,
                 argv: list[str] | None = None) -> None:
        from udpoverlay.eventloop import loop_name
        self.opts = opts
        self.lifecycle = lifecycle
        self.daemon: Any = None
        self.cluster: Any = None
        self.server: OpsServer | None = None
        self.control: ControlServer | None = None
        self.served = False                 # the daemon has been ready
        self._watchdog: asyncio.Task | None = None
        self.notifier = Notifier()
        self.reloader = EnvReload(opts.env_file, argv)
        self.collector = OpsCollector(lifecycle, _implementation, loop_name,
                                      per_peer=opts.metrics_per_peer)
        self._page: tuple[float, bytes] | None = None       # (monotonic time, body)
        self._rendering: asyncio.Lock | None = None

    @property
    def port(self) -> int | None:
        """The endpoint's bound port, or None when --healthz-port is 0."""
        return self.server.port if self.server is not None else None

    async def start(self) -> None:
        """Open the control socket, bind the endpoint (an error here is the
        CLI's one-line error), hook systemd's notification to the Lifecycle,
        start the watchdog pings when systemd asks for them."""
        self.reloader.baseline(self.opts)
        self.lifecycle.subscribe(self._on_phase)
        control = ControlServer(self.opts.tun, self.control_status)
        try:
            await control.start()
        except ControlSocketBusy as exc:
            raise TunSetupError(f"TUN device {self.opts.tun!r} is in use: another udpoverlay "
                                f"instance runs on it ({exc})") from None
        except OSError as exc:
            raise TunSetupError(f"cannot open control socket for {self.opts.tun}: "
                                f"{exc}") from None
        self.control = control
        if self.opts.healthz_port:
            server = OpsServer(self.opts.healthz_ip, self.opts.healthz_port, {
                "/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.metrics})
            try:
                await server.start()
            except OSError as exc:
                await control.close()
                self.control = None
                raise TunSetupError(f"cannot listen on {self.opts.healthz_ip}:"
                                    f"{self.opts.healthz_port} (--healthz-port): "
                                    f"{exc.strerror or exc}") from None
            self.server = server
            self.collector.rejected = lambda: server.rejected
            log.info("health, readiness and metrics on http://%s:%d/", self.opts.healthz_ip,
                     server.port)
        if self.notifier.enabled:
            self.lifecycle.subscribe(self.notifier.listener(self.lifecycle))
        if self.notifier.watchdog is not None:
            self._watchdog = asyncio.create_task(self._ping(self.notifier.watchdog))
            log.debug("systemd watchdog: WATCHDOG=1 every %.1fs", self.notifier.watchdog)

    async def _ping(self, every: float) -> None:
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(every)

    def _on_phase(self, phase: str) -> None:
        if phase == READY:
            self.served = True

    def attach(self, daemon: Any) -> None:
        """The Daemon exists (its engine may not yet): it serves on our
        control socket, metrics read it, SIGHUP re-reads the env file."""
        self.daemon = daemon
        daemon.control = self.control
        self.collector.daemon = daemon
        daemon.reloaders.append(self.reloader.reload)
        daemon.status_sections["ops"] = self.status

    def status(self) -> dict:
        """The "ops" section of `udpoverlay status --json`."""
        server = self.server
        return {"endpoint": None if server is None else
                f"http://{self.opts.healthz_ip}:{server.port}/",
                "http_answered": 0 if server is None else server.answered,
                "http_rejected": 0 if server is None else server.rejected,
                "http_evicted": 0 if server is None else server.evicted,
                "systemd_notify": self.notifier.enabled, "env_file": self.opts.env_file,
                "verbosity": logs.current.verbosity, "log_format": logs.current.fmt}

    def attach_cluster(self, membership: Any) -> None:
        """Cluster mode: store and lease metrics from the membership, its
        store state in the start-up document."""
        self.cluster = membership
        self.collector.cluster = membership

    def control_status(self) -> dict:
        """What the control socket answers: the daemon's document once it
        has been ready, else the start-up document."""
        if self.served and self.daemon is not None:
            return self.daemon.status()
        lc = self.lifecycle
        now = time.monotonic()
        doc: dict = {"version": __version__, "phase": lc.phase,
                     "mode": "cluster" if self.opts.cluster else "static",
                     "iface": self.opts.tun, "tun": self.opts.tun,
                     "uptime": round(now - lc.started, 3), "ops": self.status()}
        if lc.phase != READY and lc.phase != STOPPING:
            doc["waiting_for"] = lc.waiting_for
            doc["waiting_seconds"] = round(now - lc.waiting_since, 1)
        if self.cluster is not None:
            try:
                doc["cluster"] = self.cluster.status()
            except Exception as exc:  # noqa: BLE001 - status must always answer
                doc["cluster"] = {"error": str(exc)}
        return doc

    async def close(self) -> None:
        if not self.served:
            log.info("stopping before ready (start-up was waiting for %s)",
                     self.lifecycle.waiting_for)
        self.lifecycle.set_stopping()     # STOPPING=1 also when start-up is cut short
        if self.control is not None:
            await self.control.close()    # idempotent: the daemon may have closed it
            self.control = None
        if self.server is not None:
            await self.server.close()
            self.server = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None

    # -- routes ------------------------------------------------------------
    def healthz(self) -> Response:
        return 200, TEXT, b"ok\n"

    def readyz(self) -> Response:
        phase = self.lifecycle.phase
        if phase == READY:
            cluster = self.collector.cluster
            if cluster is not None and getattr(cluster, "view_stale", False):
                # Still ready: traffic flows with the last peers; say it, do not flap.
                return 200, TEXT, (f"ok; etcd view may be stale (no watch event or progress "
                                   f"for {cluster.view_age or 0:.0f}s)\n").encode()
            return 200, TEXT, b"ok\n"
        if phase == STOPPING:
            return 503, TEXT, b"not ready: stopping\n"
        return 503, TEXT, f"not ready: waiting for {self.lifecycle.waiting_for}\n".encode()

    async def metrics(self) -> Response:
        """A snapshot taken on the loop, rendered in a worker thread; a page
        younger than RENDER_INTERVAL is served again, so a scrape flood
        costs the loop at most one render per interval."""
        if self._rendering is None:
            self._rendering = asyncio.Lock()
        async with self._rendering:
            if self._page is None or time.monotonic() - self._page[0] >= RENDER_INTERVAL:
                snap = self.collector.snapshot()
                body = await asyncio.to_thread(render_snapshot, snap)
                self._page = (time.monotonic(), body)
            return 200, CONTENT_TYPE_LATEST, self._page[1]
