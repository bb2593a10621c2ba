"""What an etcd failure means for us: try the next member, or not.

Why one rule: a member cut off from its peers (or without a leader for any
other reason) refuses in many shapes: UNAVAILABLE "etcdserver: no leader"
(when asked with `hasleader`), UNKNOWN "context deadline exceeded" (its own
deadline for reaching the leader ran out before ours did), our own
DEADLINE_EXCEEDED, "etcdserver: request timed out", "leader changed", a
watch that is never created. Treating some of those as "retry on the same
member" kept a lease renewal on the cut-off member while two healthy ones
stood by until the lease was lost (issue 22). So every refusal that says
"this member cannot serve us now" fails over (StoreDisconnected); a genuine
answer to our request (a failed compare, permission denied, invalid
argument, a compacted revision) does not, since another member would give
the same answer.

The shapes were captured from Debian's etcd 3.4 with one member cut off
by iptables (tests/integration/cluster/test_etcd_ha.py) plus etcd's own
list of such errors (api/v3rpc/rpctypes); tests/unit/cluster/
test_etcd_errors.py holds the table.
"""

from __future__ import annotations

import asyncio

import grpc
from aetcd import exceptions as aetcd_errors

from udpoverlay.errors import LeaseStoreError, StoreCompacted, StoreDisconnected

__all__ = ["map_error", "member_refused", "rpc_status", "one_line"]

# Codes that mean "this member (or the way to it) cannot serve us now".
_MEMBER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Codes that carry such a refusal only in their text (etcd wraps plain Go
# errors as UNKNOWN; a cancelled server context comes back as CANCELLED).
_WRAPPING_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED, None})
_MEMBER_TEXTS = (
    "no leader",                    # etcdserver: no leader (hasleader refused)
    "leader changed",               # etcdserver: leader changed
    "request timed out",            # etcdserver: request timed out[, possibly due to ...]
    "context deadline exceeded",    # the member's own deadline to reach the leader
    "context canceled",             # the member cancelled our stream
    "server stopped",               # etcdserver: server stopped
    "unhealthy cluster",            # etcdserver: unhealthy cluster
    "not supported for learner",    # a learner cannot serve this
    "too many requests",            # etcdserver: too many requests (this member overloaded)
    "transport is closing",
    "connection reset",
    "broken pipe",
)
_FATAL_CODES = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
# aetcd's own exceptions for transport failures (it maps the codes above).
_MEMBER_ERRORS = (aetcd_errors.ConnectionFailedError, aetcd_errors.ConnectionTimeoutError,
                  aetcd_errors.WatchTimeoutError, asyncio.TimeoutError, OSError)
_FATAL_ERRORS = (aetcd_errors.UnauthenticatedError, aetcd_errors.InvalidArgumentError)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def rpc_status(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    """The gRPC code and details behind exc (aetcd wraps them), or (None, text)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 5:              # bounded: a cause chain may loop
        if isinstance(e, grpc.aio.AioRpcError):
            return e.code(), e.details() or ""
        e, seen = e.__cause__, seen + 1
    return None, str(exc)


def member_refused(exc: BaseException) -> bool:
    """True when exc says "this member cannot serve us now": try the next one."""
    if isinstance(exc, StoreDisconnected):
        return True
    if isinstance(exc, (LeaseStoreError, aetcd_errors.RevisionCompactedError)):
        return False
    code, details = rpc_status(exc)
    if code in _MEMBER_CODES:
        return True
    text = details.lower()
    if code in _WRAPPING_CODES and any(t in text for t in _MEMBER_TEXTS):
        return True
    if code == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in text:
        return True     # a simple token expired: a new connection authenticates again
    return code is None and isinstance(exc, _MEMBER_ERRORS)


def map_error(what: str, endpoint: object, exc: BaseException) -> LeaseStoreError:
    """Any client failure -> LeaseStoreError: StoreDisconnected (fail over and
    retry), StoreCompacted (re-list), retryable=False (credentials or
    permission: retrying cannot help) or a retryable request error."""
    if isinstance(exc, LeaseStoreError):
        return exc
    message = f"etcd {what} via {endpoint}: {one_line(exc)}"
    if isinstance(exc, aetcd_errors.RevisionCompactedError):
        return StoreCompacted(message, exc.compacted_revision)
    if member_refused(exc):
        return StoreDisconnected(message)
    code, _ = rpc_status(exc)
    if isinstance(exc, _FATAL_ERRORS) or code in _FATAL_CODES:
        return LeaseStoreError(message, retryable=False)
    return LeaseStoreError(message, retryable=True)
