"""The LeaseStore protocol over etcd v3 (aetcd, asyncio gRPC).

Why these choices:
- Endpoints are flannel-style URLs (`http://127.0.0.1:2379`, `https://...`).
  One gRPC channel at a time; when a call fails to reach the server we
  move to the next endpoint and retry the call there once per endpoint, so
  a dead member costs one failed RPC, not an outage.
- TLS like flannel's --etcd-cafile/--etcd-certfile/--etcd-keyfile. aetcd
  1.0 only opens insecure channels, so `_TlsClient` mirrors its connect()
  with a secure channel (pinned to aetcd 1.0's attribute names).
- gRPC keepalive pings (10 s) so a watch on a silently dead connection
  fails instead of hanging; etcd accepts pings every 5 s or slower.
- Reconnecting is ours, not gRPC's: gRPC's own reconnect backoff grows to
  tens of seconds (daemons came back 12-33 s after a 90 s outage), so its
  backoff is capped at 1 s and, after any failure to reach the server, the
  channel is dropped and the next call opens a fresh one right away. The
  meaning layer's retry backoff (capped, with jitter) decides when that is.
- TTLs cost one RPC per lease (LeaseTimeToLive); listings and watches of
  other nodes' leases can skip them (with_ttl=False), which is what makes a
  5000-lease listing or a burst of changes cheap.
- aetcd has no automatic lease keepalive and does not re-watch after a
  server restart; the meaning layer (cluster/membership.py) does both. Here a broken
  watch simply raises StoreDisconnected, a compacted one StoreCompacted.
- Every failure leaves as LeaseStoreError: unreachable / timed out ->
  StoreDisconnected (retryable), bad credentials or permission ->
  retryable=False, anything else retryable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from dataclasses import dataclass
from typing import AsyncGenerator, Awaitable, Callable, Sequence, TypeVar

import aetcd
import grpc
from aetcd import exceptions as aetcd_errors
from aetcd import rpc
from aetcd import watcher as aetcd_watcher

from udpoverlay.cluster.store.base import DELETE, PUT, KeyValue, Listing, StoreEvent, Written
from udpoverlay.errors import ConfigError, LeaseStoreError, StoreCompacted, StoreDisconnected

__all__ = ["EtcdStore", "Endpoint", "parse_endpoint", "map_error", "DEFAULT_ENDPOINT"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
_T = TypeVar("_T")
_CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}
CLOSE_GRACE = 5.0              # s before a dropped client's channel is closed
FAILOVER_LOG_INTERVAL = 60.0   # s between failover WARNINGs while the store stays down
_DISCONNECTED = (aetcd_errors.ConnectionFailedError, aetcd_errors.ConnectionTimeoutError,
                 aetcd_errors.WatchTimeoutError, asyncio.TimeoutError, OSError)
_FATAL = (aetcd_errors.UnauthenticatedError, aetcd_errors.InvalidArgumentError)
_DISCONNECTED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_FATAL_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """'http://h:2379', 'https://h:2379' or 'h:2379' (http); ConfigError if bad."""
    raw = text.strip()
    url = urllib.parse.urlsplit(raw if "://" in raw else f"http://{raw}")
    try:
        port = url.port or 2379
    except ValueError:
        port = None
    if url.scheme not in ("http", "https") or not url.hostname or port is None \
            or url.path not in ("", "/"):
        raise ConfigError(f"bad etcd endpoint {text!r} (want http(s)://host:port)")
    return Endpoint(url.scheme, url.hostname, port)


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read etcd {what} {path}: {e.strerror}") from None


def _credentials(ca_file: str | None, cert_file: str | None,
                 key_file: str | None) -> grpc.ChannelCredentials:
    if (cert_file is None) != (key_file is None):
        raise ConfigError("etcd TLS needs both a certificate file and a key file")
    return grpc.ssl_channel_credentials(root_certificates=_read(ca_file, "CA file"),
                                        private_key=_read(key_file, "key file"),
                                        certificate_chain=_read(cert_file, "certificate file"))


class _TlsClient(aetcd.Client):
    """aetcd.Client over TLS: aetcd 1.0's connect() with a secure channel."""

    def __init__(self, host: str, port: int, *, credentials: grpc.ChannelCredentials,
                 **kwargs) -> None:
        super().__init__(host, port, **kwargs)
        self._credentials = credentials
        self._connect_lock = asyncio.Lock()

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._connected.is_set():
                return
            self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}",
                                                   self._credentials,
                                                   options=list(self._options.items()))
            if self._username is not None:
                try:
                    resp = await rpc.AuthStub(self.channel).Authenticate(
                        rpc.AuthenticateRequest(name=self._username, password=self._password),
                        timeout=self._timeout)
                except rpc.AioRpcError as e:
                    aetcd_errors._handle_exception(e)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd_watcher.Watcher(rpc.WatchStub(self.channel),
                                                  timeout=self._timeout, metadata=self.metadata)
            self._connected.set()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _rpc_code(exc: BaseException) -> grpc.StatusCode | None:
    for e in (exc, exc.__cause__):
        if isinstance(e, grpc.aio.AioRpcError):
            return e.code()
    return None


def map_error(what: str, endpoint: Endpoint | str, exc: BaseException) -> LeaseStoreError:
    """Any client failure -> LeaseStoreError with the right `retryable`."""
    if isinstance(exc, LeaseStoreError):
        return exc
    message = f"etcd {what} via {endpoint}: {_one_line(exc)}"
    code = _rpc_code(exc)
    if isinstance(exc, aetcd_errors.RevisionCompactedError):
        return StoreCompacted(message, exc.compacted_revision)
    if isinstance(exc, _DISCONNECTED) or code in _DISCONNECTED_CODES:
        return StoreDisconnected(message)
    if isinstance(exc, _FATAL) or code in _FATAL_CODES:
        return LeaseStoreError(message, retryable=False)
    return LeaseStoreError(message, retryable=True)


class EtcdStore:
    """LeaseStore over one or more etcd endpoints (failover in order)."""

    def __init__(self, endpoints: Sequence[str] = (DEFAULT_ENDPOINT,), *,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 5.0) -> None:
        self._dropped: dict[aetcd.Client, asyncio.TimerHandle] = {}   # closed later
        self._closers: set[asyncio.Task] = set()
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        if not self.endpoints:
            raise ConfigError("no etcd endpoints given")
        if (username is None) != (password is None):
            raise ConfigError("etcd authentication needs both a username and a password")
        tls_files = any(p is not None for p in (ca_file, cert_file, key_file))
        plain = [str(e) for e in self.endpoints if e.scheme == "http"]
        if tls_files and plain:
            raise ConfigError(f"etcd TLS files given but endpoint {plain[0]} is not https://")
        self._credentials = None
        if tls_files or any(e.scheme == "https" for e in self.endpoints):
            self._credentials = _credentials(ca_file, cert_file, key_file)
        self._auth = {"username": username, "password": password}
        self.timeout = timeout
        self._index = 0
        self._client: aetcd.Client | None = None
        self._failover_logged = -FAILOVER_LOG_INTERVAL

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint currently in use."""
        return self.endpoints[self._index]

    def _connect(self) -> aetcd.Client:
        if self._client is None:
            ep = self.endpoint
            kwargs = dict(timeout=self.timeout, options=dict(_CHANNEL_OPTIONS), **self._auth)
            if ep.scheme == "https":
                self._client = _TlsClient(ep.host, ep.port, credentials=self._credentials,
                                          **kwargs)
            else:
                self._client = aetcd.Client(ep.host, ep.port, **kwargs)
        return self._client

    async def _drop_client(self) -> None:
        """Forget the client; close it a little later. Several tasks share
        it (lease watch, config watch, renewals): closing it under another
        task's call in flight could leave that call hanging on a dead
        channel, so the others get time to fail on their own first."""
        client, self._client = self._client, None
        if client is not None:
            self._dropped[client] = asyncio.get_running_loop().call_later(
                CLOSE_GRACE, self._start_closing, client)

    def _start_closing(self, client: aetcd.Client) -> None:
        task = asyncio.get_running_loop().create_task(self._close_client(client))
        self._closers.add(task)                  # a strong reference until done
        task.add_done_callback(self._closers.discard)

    async def _close_client(self, client: aetcd.Client) -> None:
        """Close one client (bounded; a broken channel may fail to close)."""
        handle = self._dropped.pop(client, None)
        if handle is not None:
            handle.cancel()
        try:
            await asyncio.wait_for(client.close(), CLOSE_GRACE)
        except Exception as e:  # noqa: BLE001 - nothing more to do with it
            log.debug("closing etcd client: %s", _one_line(e))

    async def _fail_over(self, error: LeaseStoreError) -> None:
        """The server is unreachable: drop the channel (the next call opens a
        fresh one, no gRPC backoff) and move to the next endpoint, if any."""
        await self._drop_client()
        if len(self.endpoints) > 1:
            self._index = (self._index + 1) % len(self.endpoints)
            now = time.monotonic()
            quiet = now - self._failover_logged < FAILOVER_LOG_INTERVAL
            if not quiet:
                self._failover_logged = now
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "%s; switching to etcd endpoint %s", error, self.endpoint)

    async def _call(self, what: str, op: Callable[[aetcd.Client], Awaitable[_T]]) -> _T:
        error: LeaseStoreError | None = None
        for _ in self.endpoints:
            endpoint = self.endpoint
            try:
                return await op(self._connect())
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = map_error(what, endpoint, e)
                if not isinstance(error, StoreDisconnected):
                    raise error from e
                await self._fail_over(error)
        assert error is not None
        raise error

    async def _ttl(self, client: aetcd.Client, lease_id: int) -> float | None:
        if not lease_id:
            return None
        try:
            ttl = (await client.get_lease_info(lease_id, keys=False)).TTL
        except Exception as e:  # the TTL is informational; never fail a read for it
            log.debug("lease %x TTL lookup failed: %s", lease_id, _one_line(e))
            return None
        return float(ttl) if ttl >= 0 else None

    async def _kvs(self, client: aetcd.Client, items: list,
                   with_ttl: bool = True) -> list[KeyValue]:
        if with_ttl:
            ttls = await asyncio.gather(*(self._ttl(client, kv.lease) for kv in items))
        else:
            ttls = [None] * len(items)
        return [KeyValue(kv.key.decode("utf-8", "replace"), bytes(kv.value), kv.mod_revision,
                         kv.lease, ttl, kv.create_revision) for kv, ttl in zip(items, ttls)]

    async def get(self, key: str) -> KeyValue | None:
        async def op(c: aetcd.Client) -> KeyValue | None:
            got = await c.get(key.encode())
            return None if got is None else (await self._kvs(c, [got]))[0]
        return await self._call("get", op)

    async def list_prefix(self, prefix: str, with_ttl: bool = True) -> Listing:
        async def op(c: aetcd.Client) -> Listing:
            got = await c.get_prefix(prefix.encode())
            return Listing(tuple(await self._kvs(c, list(got), with_ttl)), got.header.revision)
        return await self._call("list", op)

    async def _txn_put(self, c: aetcd.Client, key: str, value: bytes, ttl: int | None,
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

    async def _revoke_quietly(self, c: aetcd.Client, lease_id: int) -> None:
        if lease_id:
            try:
                await c.revoke_lease(lease_id)
            except Exception as e:  # it expires on its own
                log.debug("revoking unused lease %x: %s", lease_id, _one_line(e))

    async def create(self, key: str, value: bytes, ttl: int) -> Written | None:
        async def op(c: aetcd.Client) -> Written | None:
            return await self._txn_put(c, key, value, ttl,
                                       c.transactions.version(key.encode()) == 0)
        return await self._call("create", op)

    async def put(self, key: str, value: bytes, ttl: int | None,
                  expect_mod_revision: int | None = None) -> Written | None:
        async def op(c: aetcd.Client) -> Written | None:
            if expect_mod_revision is None:
                guard = c.transactions.version(key.encode()) > -1  # always true
            else:
                guard = c.transactions.mod(key.encode()) == expect_mod_revision
            return await self._txn_put(c, key, value, ttl, guard)
        return await self._call("put", op)

    async def delete(self, key: str) -> bool:
        async def op(c: aetcd.Client) -> bool:
            return await c.delete(key.encode()) is not None
        return await self._call("delete", op)

    async def refresh(self, lease_id: int) -> int | None:
        async def op(c: aetcd.Client) -> int | None:
            reply = await c.refresh_lease(lease_id)
            return reply.TTL if reply is not None and reply.TTL > 0 else None
        return await self._call("lease refresh", op)

    async def revoke_lease(self, lease_id: int) -> None:
        async def op(c: aetcd.Client) -> None:
            try:
                await c.revoke_lease(lease_id)
            except aetcd_errors.ClientError as e:
                if "not found" not in str(e):
                    raise
        await self._call("lease revoke", op)

    async def watch_prefix(self, prefix: str, start_revision: int,
                           with_ttl: bool = True) -> AsyncGenerator[list[StoreEvent], None]:
        endpoint = self.endpoint
        client = self._connect()
        try:
            watch = await client.watch_prefix(prefix.encode(), start_revision=start_revision)
        except Exception as e:
            error = map_error("watch", endpoint, e)
            if isinstance(error, StoreDisconnected):
                await self._fail_over(error)
            raise error from e
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(self._pump(watch, queue, endpoint))
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                raw = [i for i in items if not isinstance(i, BaseException)]
                if raw:
                    yield await self._events(client, raw, with_ttl)
                errors = [i for i in items if isinstance(i, BaseException)]
                if errors:
                    if isinstance(errors[0], StoreDisconnected):
                        await self._fail_over(errors[0])
                    raise errors[0]
        finally:
            pump.cancel()
            try:
                await watch.cancel()
            except Exception as e:  # the stream may already be gone
                log.debug("cancelling watch: %s", _one_line(e))

    async def _pump(self, watch, queue: asyncio.Queue, endpoint: Endpoint) -> None:
        try:
            async for event in watch:
                queue.put_nowait(event)
            queue.put_nowait(StoreDisconnected(f"etcd watch via {endpoint}: stream ended"))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            queue.put_nowait(map_error("watch", endpoint, e))

    async def _events(self, client: aetcd.Client, raw: list,
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
        """Close every client now, the dropped ones too (nothing else uses
        the store any more)."""
        clients = [*self._dropped, *([self._client] if self._client is not None else [])]
        self._client = None
        for client in clients:
            await self._close_client(client)
