"""Which etcd refusals fail over to the next member, and which do not.

The first rows were captured from Debian's etcd 3.4.23, three members, one
cut off from its peers by iptables (tests/integration/cluster/
test_etcd_ha.py does that cut): what a client connected to the cut member
got, through aetcd as the store sees it. The others are etcd's own
errors of the same kind (api/v3rpc/rpctypes) and genuine request errors,
which must not fail over (another member would answer the same).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aetcd import exceptions as aetcd_errors

from udpoverlay.cluster.store.etcderrors import map_error, member_refused, rpc_status
from udpoverlay.errors import LeaseStoreError, StoreCompacted, StoreDisconnected

C = grpc.StatusCode


def via_aetcd(code: grpc.StatusCode, details: str) -> BaseException:
    """The exception aetcd raises for this gRPC status (its own mapping)."""
    rpc_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                     details=details)
    try:
        aetcd_errors._handle_exception(rpc_error)
    except Exception as e:  # noqa: BLE001 - that is what we want
        return e
    raise AssertionError("aetcd did not raise")


FAIL_OVER = [
    # -- captured from a real cut (member m1 of 3, iptables DROP to/from its peers)
    (C.UNAVAILABLE, "etcdserver: no leader"),          # any call or watch with hasleader, ~3.5 s in
    (C.UNKNOWN, "context deadline exceeded"),          # Range before the member noticed (no hasleader too)
    (C.DEADLINE_EXCEEDED, "Deadline Exceeded"),        # our own deadline: put/refresh/get hung
    # -- etcd's other "this member cannot serve you now" answers
    (C.UNAVAILABLE, "etcdserver: leader changed"),
    (C.UNAVAILABLE, "etcdserver: request timed out"),
    (C.UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure"),
    (C.UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost"),
    (C.UNAVAILABLE, "etcdserver: server stopped"),
    (C.UNAVAILABLE, "etcdserver: unhealthy cluster"),
    (C.UNAVAILABLE, "etcdserver: rpc not supported for learner"),
    (C.UNKNOWN, "etcdserver: request timed out"),
    (C.UNKNOWN, "context canceled"),
    (C.CANCELLED, "context canceled"),
    (C.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    (C.UNAUTHENTICATED, "etcdserver: invalid auth token"),   # expired simple token: reconnect
    (C.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: "
                    "ipv4:198.18.0.201:2379: Failed to connect to remote host: Connection refused"),
]

GENUINE = [   # (code, details, retryable)
    (C.PERMISSION_DENIED, "etcdserver: permission denied", False),
    (C.UNAUTHENTICATED, "etcdserver: authentication failed, invalid user ID or password", False),
    (C.INVALID_ARGUMENT, "etcdserver: key is not provided", False),
    (C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request", False),
    (C.NOT_FOUND, "etcdserver: requested lease not found", True),
    (C.FAILED_PRECONDITION, "etcdserver: lease already exists", True),
    (C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision", True),
    (C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", True),
    (C.UNKNOWN, "etcdserver: some other failure", True),
    (C.INTERNAL, "raft: internal error", True),
]


@pytest.mark.parametrize("code, details", FAIL_OVER)
def test_refusals_of_a_member_that_cannot_serve_fail_over(code, details):
    exc = via_aetcd(code, details)
    assert member_refused(exc)
    error = map_error("lease refresh", "http://198.18.0.201:2379", exc)
    assert type(error) is StoreDisconnected and error.retryable
    assert rpc_status(exc) == (code, details)


@pytest.mark.parametrize("code, details, retryable", GENUINE)
def test_genuine_request_errors_stay_on_the_member(code, details, retryable):
    exc = via_aetcd(code, details)
    assert not member_refused(exc)
    error = map_error("put", "http://198.18.0.201:2379", exc)
    assert type(error) is LeaseStoreError and error.retryable is retryable


@pytest.mark.parametrize("exc, refused", [
    (aetcd_errors.WatchTimeoutError(), True),     # the watch was never created
    (asyncio.TimeoutError(), True),
    (ConnectionRefusedError(111, "refused"), True),
    (StoreDisconnected("already ours"), True),
    (aetcd_errors.RevisionCompactedError(9), False),
    (RuntimeError("surprise"), False),
    (aetcd_errors.ClientError("context deadline exceeded"), True),   # no gRPC cause, same text
    (aetcd_errors.ClientError("permission denied"), False),
])
def test_errors_without_a_grpc_status(exc, refused):
    assert member_refused(exc) is refused


def test_compacted_is_not_a_failover_and_keeps_its_revision():
    error = map_error("watch", "http://198.18.0.201:2379", aetcd_errors.RevisionCompactedError(9))
    assert type(error) is StoreCompacted and error.compact_revision == 9


def test_a_cause_chain_that_loops_is_still_classified():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert rpc_status(a) == (None, "a") and not member_refused(a)
