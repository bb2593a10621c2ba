"""The one connection to an etcd member (store/etcdclient.py): what shut()
leaves behind. No etcd: the watch stream is a stand-in with grpc.aio's
shape (given a request iterator, a task of its own consumes it; requests
wait until the call's metadata is sent; cancel() does nothing once the
RPC is over)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.asyncutil import run
from udpoverlay.cluster.store.etcdclient import EtcdClient, _Watcher


class _EndedCall:
    """A Watch call the member already ended (it answers "no leader"
    before or after our metadata went out)."""

    def __init__(self, requests, metadata_sent: bool) -> None:
        self.metadata_sent = asyncio.Event()
        if metadata_sent:
            self.metadata_sent.set()
        self.sent: list = []
        if requests is not None:           # grpc.aio's _consume_request_iterator
            asyncio.get_running_loop().create_task(self._consume(requests))

    async def _consume(self, requests) -> None:
        async for request in requests:
            await self.write(request)

    async def write(self, request) -> None:
        await self.metadata_sent.wait()     # grpc.aio's _write: never set on this call
        self.sent.append(request)

    async def done_writing(self) -> None:
        pass

    def cancel(self) -> bool:
        return False                        # the RPC is over: grpc.aio leaves its task alone

    def __aiter__(self):
        return self

    async def __anext__(self):
        raise RuntimeError("etcdserver: no leader")


class _Stub:
    def __init__(self, metadata_sent: bool) -> None:
        self.metadata_sent = metadata_sent
        self.calls: list[_EndedCall] = []

    def Watch(self, requests=None, metadata=None):  # noqa: N802 - gRPC's name
        self.calls.append(_EndedCall(requests, self.metadata_sent))
        return self.calls[-1]


@pytest.mark.parametrize("metadata_sent", [False, True],
                         ids=["ended-before-metadata", "teardown-waits-for-lock"])
def test_no_task_of_the_watch_stream_outlives_shut(metadata_sent):
    """A fail-over shuts the connection while the stream's teardown is
    under way: the member ended the call before our metadata went out (a
    request waits forever), or aetcd's teardown waits for its lock (held
    here as by a watch cancel in progress; the request reader waits on the
    queue). Every task the stream started must end with shut(): one left
    pending was freed by shut()'s gc.collect(), and asyncio logged "Task
    was destroyed but it is pending!" at ERROR (seen in daemons' logs at
    quorum loss, tests/integration/cluster/test_etcd_ha_acceptance.py)."""
    async def main():
        before = asyncio.all_tasks()
        client = EtcdClient("127.0.0.1", 1, credentials=None, on_watch_response=lambda: None)
        await client.connect()                    # a channel: no I/O until a call
        stub = _Stub(metadata_sent)
        watcher = _Watcher(stub, timeout=1, metadata=(), on_response=lambda: None)
        client._watcher = watcher
        await watcher._lock.acquire()
        try:
            await watcher.setup()
            if not metadata_sent:
                await watcher._enqueue_watch_create(b"/k")
            await asyncio.sleep(0.05)             # the stream ended; its tasks are stuck
            assert stub.calls and [t for t in asyncio.all_tasks() - before
                                   if t is not asyncio.current_task()]
            await client.shut()
            await asyncio.sleep(0.05)
            left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
            assert not left, left
        finally:
            watcher._lock.release()
    run(main(), 10)
