"""One lock per network namespace for udpoverlay instances that edit the
same firewall chains (issue 21: two networks, two daemons, one host).

Why: each instance reads the chains, decides what to add or delete, and
commits. Two instances deciding at once both see "the jump is missing" and
both append one. flock on a file named by the namespace's inode lets them
take turns; it is released by the kernel if a holder dies. Tools that do
not take it (flanneld, kube-proxy) are covered by the commit itself
failing when the chains changed under it (the caller retries).

The namespace is the calling *thread's* (/proc/thread-self): tests and the
daemon's worker threads may have entered another one with setns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from typing import Iterator

from udpoverlay.errors import FirewallError, UdpOverlayError
from udpoverlay.host.rundir import default_runtime_dir, prepare_runtime_dir

__all__ = ["netns_lock"]

log = logging.getLogger(__name__)

LOCK_WAIT = 30.0
_POLL = 0.02


def _path(runtime_dir: str | None) -> str:
    """The lock file of this thread's namespace, in the runtime directory
    (created 0700 and checked as the control socket's is)."""
    directory = runtime_dir or default_runtime_dir()
    prepare_runtime_dir(directory)
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    return os.path.join(directory, f"net{ino}-firewall.lock")


@contextlib.contextmanager
def netns_lock(runtime_dir: str | None = None, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold this namespace's firewall lock (FirewallError after `wait`
    seconds). Without a usable runtime directory it goes on unlocked: the
    commit-and-retry still keeps the rules right."""
    try:
        path = _path(runtime_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except (OSError, UdpOverlayError) as e:
        log.debug("firewall lock unavailable (%s): going on without it", e)
        yield
        return
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise FirewallError(f"cannot lock {path}: {e.strerror or e}") from None
                if time.monotonic() >= deadline:
                    raise FirewallError(f"{path} held by another process for over "
                                        f"{wait:.0f}s") from None
                time.sleep(_POLL)
        yield
    finally:
        os.close(fd)      # releases the lock
