"""One gRPC connection to one etcd member, as the store needs it (aetcd 1.0).

Why a subclass of aetcd.Client (pinned to aetcd 1.0's attribute names):
- Every call, the watch stream included, carries the metadata
  `hasleader: true`, as flanneld's watches do (clientv3.WithRequireLeader).
  A member without a leader (cut off from its peers) then refuses at once
  with UNAVAILABLE "etcdserver: no leader", and cancels our watch stream a
  few election timeouts after losing its leader, instead of serving a
  frozen view for as long as the cut lasts.
- TLS: aetcd 1.0 only opens insecure channels; connect() opens a secure
  one when given credentials.
- Watch streams report every response (events, progress answers) to
  `on_response`, and request_progress() asks etcd (>= 3.4) for a progress
  answer: the store's freshness bound (store/freshness.py) rests on both.
  aetcd itself drops responses without events.
- shut() closes the channel first (that cancels every call on it at once)
  and never waits on aetcd's watcher lock: a dropped connection must not
  linger (one stayed open ~40 s until etcd closed it). The watch requests
  are written by a task of ours that shut() cancels, so no task of the
  watch stream outlives the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Callable

import aetcd
import grpc
from aetcd import exceptions as aetcd_errors
from aetcd import rpc
from aetcd import watcher as aetcd_watcher

__all__ = ["EtcdClient", "REQUIRE_LEADER"]

REQUIRE_LEADER = (("hasleader", "true"),)
SHUT_TIMEOUT = 2.0      # s: closing a channel is local; bound it anyway


class _Watcher(aetcd_watcher.Watcher):
    def __init__(self, stub, *, timeout, metadata, on_response: Callable[[], None]) -> None:
        super().__init__(stub, timeout=timeout, metadata=metadata)
        self._on_response = on_response
        self._call = None
        self._writer: asyncio.Task | None = None

    async def _handle_request(self, metadata) -> None:
        # aetcd 1.0's, keeping the stream call: only cancelling the call ends
        # the stream (a closed channel keeps a connection with a live stream).
        # Our requests are written by a task of ours, not handed to gRPC as an
        # iterator: gRPC's task reading that iterator outlives a call that
        # failed before its metadata went out (cancel() leaves the task of a
        # finished call alone), and shut()'s gc.collect() then freed it
        # pending: asyncio's ERROR "Task was destroyed but it is pending!".
        writer = None
        try:
            self._call = call = self._watchstub.Watch(metadata=metadata)
            self._writer = writer = asyncio.get_running_loop().create_task(
                self._write_requests(call), name="udpoverlay-etcd-watch-requests")
            async for response in call:
                if response is None:
                    break
                await self._handle_response(response)
        except Exception as e:
            await self._terminate_stream(e)
        finally:
            if writer is not None:
                writer.cancel()

    async def _write_requests(self, call) -> None:
        """aetcd's queued requests onto the stream, in order, until it ends."""
        try:
            async for request in self._iter_request():
                await call.write(request)
            await call.done_writing()
        except Exception:  # noqa: BLE001 - as gRPC's own writer: the stream is over or
            call.cancel()  # unusable, and its reader says why (a no-op on an ended call)

    def cancel_stream(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()

    async def _handle_response(self, response) -> None:
        self._on_response()
        await super()._handle_response(response)

    @property
    def watching(self) -> bool:
        return bool(self._callbacks) and self._request_handler is not None

    def request_progress(self) -> None:
        """Ask for a progress answer on the stream (no-op without watches)."""
        if self.watching:
            with contextlib.suppress(asyncio.QueueFull):
                self._request_queue.put_nowait(
                    rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))


class EtcdClient(aetcd.Client):
    def __init__(self, host: str, port: int, *, credentials: grpc.ChannelCredentials | None,
                 on_watch_response: Callable[[], None], **kwargs) -> None:
        super().__init__(host, port, **kwargs)
        self._credentials = credentials
        self._on_watch_response = on_watch_response
        self._connect_lock = asyncio.Lock()
        self._shut = False

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._connected.is_set():
                return
            if self._shut:
                raise aetcd_errors.ConnectionFailedError("connection already closed")
            target, options = f"{self._host}:{self._port}", list(self._options.items())
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(target, options=options)
            self.channel = channel
            metadata: tuple[tuple[str, str], ...] = REQUIRE_LEADER
            if self._username is not None:
                try:
                    resp = await rpc.AuthStub(channel).Authenticate(
                        rpc.AuthenticateRequest(name=self._username, password=self._password),
                        timeout=self._timeout)
                except rpc.AioRpcError as e:
                    aetcd_errors._handle_exception(e)
                metadata = (("token", str(resp.token)), *REQUIRE_LEADER)
            self.metadata = metadata
            self.kvstub = rpc.KVStub(channel)
            self.clusterstub = rpc.ClusterStub(channel)
            self.leasestub = rpc.LeaseStub(channel)
            self.maintenancestub = rpc.MaintenanceStub(channel)
            self._watcher = _Watcher(rpc.WatchStub(channel), timeout=self._timeout,
                                     metadata=metadata, on_response=self._on_watch_response)
            self._connected.set()

    @property
    def target(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def closed(self) -> bool:
        """shut() was called: whatever a call on it raises means "gone"."""
        return self._shut

    def request_progress(self) -> None:
        if isinstance(self._watcher, _Watcher):
            self._watcher.request_progress()

    async def shut(self) -> None:
        """Close now: every call still on this connection ends (bounded).
        The watch stream is cancelled first: a channel keeps its TCP
        connection after close() for as long as a stream call object lives,
        and the cancelled call sits in reference cycles (task, exception,
        frame) that only the cycle collector frees: hence one gc.collect()
        per dropped connection (a fail-over is rare; measured, the
        connection then closes at once instead of after ~40 s)."""
        self._shut = True
        channel, watcher = self.channel, self._watcher
        self._init_channel_attrs()
        self._connected.clear()
        if isinstance(watcher, _Watcher):
            watcher.cancel_stream()
        handler = getattr(watcher, "_request_handler", None)
        if handler is not None and not handler.done():
            handler.cancel()
            await asyncio.wait([handler], timeout=SHUT_TIMEOUT)
        if channel is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(channel.close(), SHUT_TIMEOUT)
        del channel, watcher, handler
        gc.collect()
