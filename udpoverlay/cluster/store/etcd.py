"""The LeaseStore protocol over etcd v3 (aetcd, asyncio gRPC).

Why these choices:
- Endpoints are flannel-style URLs (`http://127.0.0.1:2379`, `https://...`).
  One gRPC connection at a time (store/etcdclient.py). Which member, and
  when to leave it, is store/failover.py's: a failure moves us once however
  many tasks saw it, never back to the member that just failed while
  another is untried. A call that fails because the member cannot serve us
  is retried on the next member at once (once per endpoint), so a dead or
  cut-off member costs one failed RPC, not an outage.
- "Cannot serve us" is one rule (store/etcderrors.py): every refusal a
  leaderless or partitioned member gives fails over; a genuine answer to
  the request (failed compare, permission denied) does not.
- Every call and the watch stream require a leader (`hasleader`, like
  flanneld's watches): a member cut off from its peers refuses within a few
  seconds instead of serving a frozen view.
- Watches survive a fail-over: the watch is re-created on the new member
  from the last revision seen + 1 (revisions are cluster-wide) without
  bothering the meaning layer; only when every member failed in a row does
  it raise StoreDisconnected (the meaning layer backs off and re-lists).
- A dropped connection is closed at once; the calls still on it are ended
  (a unary call, the keepalive stream and our watches each turn into
  StoreDisconnected for the generation that already moved: no second move).
- TLS like flannel's --etcd-cafile/--etcd-certfile/--etcd-keyfile.
- gRPC keepalive pings (10 s) while calls are open, so a watch on a silently
  dead connection fails instead of hanging. Not without calls: etcd's
  enforcement policy forbids that and answers with GOAWAY too_many_pings.
- Reconnecting is ours, not gRPC's: gRPC's own reconnect backoff grows to
  tens of seconds (daemons came back 12-33 s after a 90 s outage), so its
  backoff is capped at 1 s and, after any failure to reach the server, the
  connection is dropped and the next call opens a fresh one right away. The
  meaning layer's retry backoff (capped, with jitter) decides when that is.
- view_stale / view_age (store/freshness.py): how long since a watch stream
  last showed life (an event or a progress answer, asked for every
  stale_after / 3 s), for status, readyz and metrics.
- TTLs cost one RPC per lease (LeaseTimeToLive); listings and watches of
  other nodes' leases can skip them (with_ttl=False), which is what makes a
  5000-lease listing or a burst of changes cheap.
- aetcd has no automatic lease keepalive; the meaning layer
  (cluster/membership.py) renews. A compacted watch raises StoreCompacted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncGenerator, Awaitable, Callable, Sequence, TypeVar

import grpc
from aetcd import exceptions as aetcd_errors

from udpoverlay.cluster.store.base import DELETE, PUT, KeyValue, Listing, StoreEvent, Written
from udpoverlay.cluster.store.endpoints import Endpoint, credentials, parse_endpoint
from udpoverlay.cluster.store.etcdclient import SHUT_TIMEOUT, EtcdClient
from udpoverlay.cluster.store.etcderrors import map_error, one_line
from udpoverlay.cluster.store.failover import EndpointPool
from udpoverlay.cluster.store.freshness import STALE_AFTER, ViewFreshness
from udpoverlay.errors import ConfigError, LeaseStoreError, StoreCompacted, StoreDisconnected

__all__ = ["EtcdStore", "Endpoint", "parse_endpoint", "map_error", "DEFAULT_ENDPOINT"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
_T = TypeVar("_T")
_CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}
FAILOVER_LOG_INTERVAL = 60.0   # s between failover WARNINGs while the store stays down
WATCH_CANCEL_TIMEOUT = 1.0     # s for telling a member we stop watching
RESUME_RESET = 1.0             # s a watch must live before its failures count anew


class EtcdStore:
    """LeaseStore over one or more etcd endpoints (members of one cluster)."""

    def __init__(self, endpoints: Sequence[str] = (DEFAULT_ENDPOINT,), *,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 5.0,
                 stale_after: float = STALE_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        if not self.endpoints:
            raise ConfigError("no etcd endpoints given")
        if (username is None) != (password is None):
            raise ConfigError("etcd authentication needs both a username and a password")
        tls_files = any(p is not None for p in (ca_file, cert_file, key_file))
        plain = [str(e) for e in self.endpoints if e.scheme == "http"]
        if tls_files and plain:     # as flanneld: the files are for https endpoints only
            log.warning("etcd TLS files apply to https:// endpoints only: %s used without "
                        "TLS", ", ".join(plain))
        self._credentials: grpc.ChannelCredentials | None = None
        if tls_files or any(e.scheme == "https" for e in self.endpoints):
            self._credentials = credentials(ca_file, cert_file, key_file)
        self._auth = {"username": username, "password": password}
        self.timeout = timeout
        self.pool: EndpointPool[Endpoint] = EndpointPool(self.endpoints, clock)
        self.freshness = ViewFreshness(stale_after, clock)
        self._client: EtcdClient | None = None
        self._client_generation = -1
        self._watch_queues: dict[int, set[asyncio.Queue]] = {}   # by generation
        self._progress: asyncio.Task | None = None
        self._closers: set[asyncio.Task] = set()
        self._failover_logged = -FAILOVER_LOG_INTERVAL

    # -- what status, readyz and metrics can ask ------------------------------
    @property
    def endpoint(self) -> Endpoint:
        """The endpoint currently in use."""
        return self.pool.current

    @property
    def failovers(self) -> int:
        """Fail-overs made so far (one per detected failure)."""
        return self.pool.moves

    def view_age(self) -> float | None:
        """Seconds since a watch stream last showed life (an event, a created
        watch, a progress answer); None before the first watch answered."""
        return self.freshness.age()

    @property
    def view_stale(self) -> bool:
        """True when the watched view may be out of date: no sign of life from
        the watches for longer than stale_after (say "stale", not "connected")."""
        return self.freshness.stale()

    # -- the one connection ---------------------------------------------------
    def _connect(self) -> tuple[EtcdClient, int]:
        """The current connection and its generation (made on first use)."""
        if self._client is None or self._client_generation != self.pool.generation:
            ep, generation = self.endpoint, self.pool.generation
            self._client = EtcdClient(
                ep.host, ep.port, timeout=self.timeout,
                credentials=self._credentials if ep.scheme == "https" else None,
                options=dict(_CHANNEL_OPTIONS),
                on_watch_response=lambda: self._watch_alive(generation), **self._auth)
            self._client_generation = generation
        return self._client, self._client_generation

    def _watch_alive(self, generation: int) -> None:
        if generation == self.pool.generation:   # a dropped connection proves nothing
            self.freshness.mark()

    def _failed(self, generation: int, error: LeaseStoreError) -> None:
        """The member of `generation` cannot serve us: move on (once per
        failure, however many tasks report it) and close its connection."""
        if not self.pool.report(generation, str(error)):
            return
        client, self._client = self._client, None
        if client is not None:
            self._retire(client, generation)
        if len(self.endpoints) > 1:
            now = time.monotonic()
            quiet = now - self._failover_logged < FAILOVER_LOG_INTERVAL
            if not quiet:
                self._failover_logged = now
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "%s; switching to etcd endpoint %s", error, self.endpoint)

    def _retire(self, client: EtcdClient, generation: int) -> None:
        """End our watches on a dropped connection and close it now."""
        for queue in self._watch_queues.pop(generation, ()):
            queue.put_nowait(StoreDisconnected(f"etcd watch via {client.target}: connection "
                                               f"dropped after a failure"))
        task = asyncio.get_running_loop().create_task(self._shut(client))
        self._closers.add(task)                  # a strong reference until done
        task.add_done_callback(self._closers.discard)

    async def _shut(self, client: EtcdClient) -> None:
        try:
            await client.shut()
        except Exception as e:  # noqa: BLE001 - nothing more to do with it
            log.debug("closing etcd client: %s", one_line(e))

    def _as_store_error(self, what: str, endpoint: Endpoint, client: EtcdClient,
                        exc: BaseException) -> LeaseStoreError:
        error = map_error(what, endpoint, exc)
        if client.closed and not isinstance(error, (StoreDisconnected, StoreCompacted)):
            # Whatever a call on a closed connection raises, it is the connection.
            error = StoreDisconnected(f"etcd {what} via {endpoint}: connection closed "
                                      f"({one_line(exc)})")
        return error

    async def _call(self, what: str, op: Callable[[EtcdClient], Awaitable[_T]]) -> _T:
        error: LeaseStoreError | None = None
        for _ in self.endpoints:
            client, generation = self._connect()
            endpoint = self.endpoint
            try:
                return await op(client)
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                # Not us being cancelled: gRPC ends calls this way when their
                # connection is closed (after another task's fail-over).
                error = StoreDisconnected(f"etcd {what} via {endpoint}: call ended with its "
                                          f"connection")
            except Exception as e:
                error = self._as_store_error(what, endpoint, client, e)
                if not isinstance(error, StoreDisconnected):
                    raise error from e
            self._failed(generation, error)
        assert error is not None
        raise error

    async def _ttl(self, client: EtcdClient, lease_id: int) -> float | None:
        if not lease_id:
            return None
        try:
            ttl = (await client.get_lease_info(lease_id, keys=False)).TTL
        except Exception as e:  # the TTL is informational; never fail a read for it
            log.debug("lease %x TTL lookup failed: %s", lease_id, one_line(e))
            return None
        return float(ttl) if ttl >= 0 else None

    async def _kvs(self, client: EtcdClient, items: list,
                   with_ttl: bool = True) -> list[KeyValue]:
        if with_ttl:
            ttls = await asyncio.gather(*(self._ttl(client, kv.lease) for kv in items))
        else:
            ttls = [None] * len(items)
        return [KeyValue(kv.key.decode("utf-8", "replace"), bytes(kv.value), kv.mod_revision,
                         kv.lease, ttl, kv.create_revision) for kv, ttl in zip(items, ttls)]

    async def get(self, key: str) -> KeyValue | None:
        async def op(c: EtcdClient) -> KeyValue | None:
            got = await c.get(key.encode())
            return None if got is None else (await self._kvs(c, [got]))[0]
        return await self._call("get", op)

    async def list_prefix(self, prefix: str, with_ttl: bool = True) -> Listing:
        async def op(c: EtcdClient) -> Listing:
            got = await c.get_prefix(prefix.encode())
            return Listing(tuple(await self._kvs(c, list(got), with_ttl)), got.header.revision)
        return await self._call("list", op)

    async def _txn_put(self, c: EtcdClient, key: str, value: bytes, ttl: int | None,
                       guard) -> Written | None:
        lease = await c.lease(ttl) if ttl else None
        lease_id = lease.id if lease else 0
        try:
            ok, responses = await c.transaction(
                compare=[guard], success=[c.transactions.put(key.encode(), value, lease=lease_id)],
                failure=[])
        except BaseException:
            await self._revoke_quietly(c, lease_id)
            raise
        if not ok:
            await self._revoke_quietly(c, lease_id)
            return None
        return Written(lease_id, lease.ttl if lease else None,
                       responses[0].response_put.header.revision)

    async def _revoke_quietly(self, c: EtcdClient, lease_id: int) -> None:
        if lease_id:
            try:
                await c.revoke_lease(lease_id)
            except Exception as e:  # it expires on its own
                log.debug("revoking unused lease %x: %s", lease_id, one_line(e))

    async def create(self, key: str, value: bytes, ttl: int) -> Written | None:
        async def op(c: EtcdClient) -> Written | None:
            return await self._txn_put(c, key, value, ttl,
                                       c.transactions.version(key.encode()) == 0)
        return await self._call("create", op)

    async def put(self, key: str, value: bytes, ttl: int | None,
                  expect_mod_revision: int | None = None) -> Written | None:
        async def op(c: EtcdClient) -> Written | None:
            if expect_mod_revision is None:
                guard = c.transactions.version(key.encode()) > -1  # always true
            else:
                guard = c.transactions.mod(key.encode()) == expect_mod_revision
            return await self._txn_put(c, key, value, ttl, guard)
        return await self._call("put", op)

    async def delete(self, key: str) -> bool:
        async def op(c: EtcdClient) -> bool:
            return await c.delete(key.encode()) is not None
        return await self._call("delete", op)

    async def refresh(self, lease_id: int) -> int | None:
        async def op(c: EtcdClient) -> int | None:
            reply = await c.refresh_lease(lease_id)
            if reply is None:       # the stream ended unanswered: the connection, not the lease
                raise StoreDisconnected(f"etcd lease refresh via {self.endpoint}: no answer")
            return reply.TTL if reply.TTL > 0 else None
        return await self._call("lease refresh", op)

    async def revoke_lease(self, lease_id: int) -> None:
        async def op(c: EtcdClient) -> None:
            try:
                await c.revoke_lease(lease_id)
            except aetcd_errors.ClientError as e:
                if "not found" not in str(e):
                    raise
        await self._call("lease revoke", op)

    async def watch_prefix(self, prefix: str, start_revision: int,
                           with_ttl: bool = True) -> AsyncGenerator[list[StoreEvent], None]:
        """Batches of events; across a fail-over the watch resumes on the
        next member at the revision after the last one delivered."""
        loop = asyncio.get_running_loop()
        next_revision, failures = start_revision, 0
        while True:
            client, generation = self._connect()
            endpoint = self.endpoint
            queue: asyncio.Queue = asyncio.Queue()
            self._watch_queues.setdefault(generation, set()).add(queue)
            watch, pump, started = None, None, loop.time()
            try:
                try:
                    watch = await client.watch_prefix(prefix.encode(), start_revision=next_revision,
                                                      progress_notify=True)
                except asyncio.CancelledError:
                    if _cancelling():
                        raise
                    raise StoreDisconnected(f"etcd watch via {endpoint}: connection closed") \
                        from None
                except Exception as e:
                    raise self._as_store_error("watch", endpoint, client, e) from e
                self._watch_alive(generation)
                self.freshness.watches += 1
                self._ensure_progress()
                pump = asyncio.create_task(self._pump(watch, queue, endpoint))
                try:
                    while True:
                        items = [await queue.get()]
                        while not queue.empty():
                            items.append(queue.get_nowait())
                        raw = [i for i in items if not isinstance(i, BaseException)]
                        if raw:
                            batch = await self._events(client, raw, with_ttl)
                            next_revision = max(next_revision, batch[-1].revision + 1)
                            yield batch
                        errors = [i for i in items if isinstance(i, BaseException)]
                        if errors:
                            raise errors[0]
                finally:
                    self.freshness.watches -= 1
            except StoreDisconnected as e:
                self._failed(generation, e)
                if loop.time() - started >= RESUME_RESET:
                    failures = 0             # it served us a while: a new incident
                failures += 1
                if failures >= len(self.endpoints):
                    raise                    # every member failed in a row
                log.info("etcd watch of %s resumes at revision %d via %s (%s)", prefix,
                         next_revision, self.endpoint, e)
            finally:
                self._watch_queues.get(generation, set()).discard(queue)
                if pump is not None:
                    pump.cancel()
                if watch is not None and not client.closed:
                    try:
                        async with asyncio.timeout(WATCH_CANCEL_TIMEOUT):
                            await watch.cancel()
                    except Exception as e:  # the stream may already be gone
                        log.debug("cancelling watch: %s", one_line(e))

    def _ensure_progress(self) -> None:
        if self._progress is None or self._progress.done():
            self._progress = asyncio.get_running_loop().create_task(
                self._ask_progress(), name="udpoverlay-etcd-progress")

    async def _ask_progress(self) -> None:
        """While watches run, ask the current connection for a progress answer
        every stale_after / 3 s (etcd's own progress notices come every 10 min)."""
        while self.freshness.watches > 0:
            await asyncio.sleep(self.freshness.progress_interval)
            if self._client is not None and self._client_generation == self.pool.generation:
                self._client.request_progress()

    async def _pump(self, watch, queue: asyncio.Queue, endpoint: Endpoint) -> None:
        try:
            async for event in watch:
                queue.put_nowait(event)
            queue.put_nowait(StoreDisconnected(f"etcd watch via {endpoint}: stream ended"))
        except asyncio.CancelledError:
            if _cancelling():
                raise
            queue.put_nowait(StoreDisconnected(f"etcd watch via {endpoint}: connection closed"))
        except Exception as e:
            queue.put_nowait(map_error("watch", endpoint, e))

    async def _events(self, client: EtcdClient, raw: list,
                      with_ttl: bool) -> list[StoreEvent]:
        puts = [e.kv for e in raw if e.kind == "PUT"]
        kvs = iter(await self._kvs(client, puts, with_ttl))
        out = []
        for e in raw:
            if e.kind == "PUT":
                kv = next(kvs)
                out.append(StoreEvent(PUT, kv, kv.mod_revision))
            else:
                kv = KeyValue(e.kv.key.decode("utf-8", "replace"), b"", e.kv.mod_revision)
                out.append(StoreEvent(DELETE, kv, kv.mod_revision))
        return out

    async def close(self) -> None:
        """Close the connection now, and any still closing (nothing else uses
        the store any more)."""
        client, self._client = self._client, None
        if client is not None:
            self._retire(client, self._client_generation)
        if self._progress is not None:
            self._progress.cancel()
        pending = [t for t in self._closers if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2 * SHUT_TIMEOUT)


def _cancelling() -> bool:
    """Is the running task itself being cancelled (not merely handed a
    CancelledError by a call whose connection was closed)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
