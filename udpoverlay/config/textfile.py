"""Reading a small configuration file (env file, peers file) whole, safely.

These files decide where pod traffic goes, so they are held to the status
socket's rule (control.py): what is read must be a regular file owned by
root (or by the user the daemon runs as) and not writable by group or
others, and the directory holding it likewise (a sticky directory such as
/tmp may be world-writable: nobody can replace a file there they do not
own). Symlinks are followed; the check is made on the file actually
opened (fstat of the descriptor), so a swap between check and read is
impossible, and on the directory the resolved path names.

Why: a file someone else can write hands them the peer table (their own
socket receives the pods' packets after one SIGHUP).

Never blocking: the file is opened with O_NONBLOCK and anything but a
regular file is refused, so a FIFO (or a device) is one clear error, not a
read that never returns (/dev/null alone is accepted, as empty). A size
cap: a file pointed at a log must give a one-line error, not eat memory on
every SIGHUP. And off_loop() runs a read on a daemon thread with a time
limit, so a read that hangs anyway (a dead network file system) neither
stalls the event loop nor keeps the process from exiting.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from typing import Any, Callable, TypeVar

from udpoverlay.errors import ConfigError

__all__ = ["read_text", "check_owner", "off_loop", "READ_TIMEOUT"]

READ_TIMEOUT = 5.0      # seconds for reading (and parsing) a file on SIGHUP
_DEV_NULL = os.makedev(1, 3)

T = TypeVar("T")


def _who(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def check_owner(st: os.stat_result, what: str, euid: int | None = None) -> None:
    """ValueError unless `st` is owned by root or `euid` (default: ours) and
    not writable by group or others (a sticky directory excepted)."""
    euid = os.geteuid() if euid is None else euid
    if st.st_uid not in (0, euid):
        raise ValueError(f"{what}owned by uid {st.st_uid}, not {_who(euid)}")
    sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if st.st_mode & 0o022 and not sticky_dir:
        raise ValueError(f"{what}writable by group or others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o})")


def read_text(path: str, limit: int, euid: int | None = None) -> str:
    """The UTF-8 text of `path`; ValueError with the reason (without the
    path: callers say which file it was and what it is for)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_NULL:
            return ""
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"refused: not a regular file ({_kind(st.st_mode)})")
        check_owner(st, "refused: ", euid)
        real = os.path.realpath(path)
        try:
            same = os.stat(real)
            parent = os.stat(os.path.dirname(real) or "/")
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
        if (same.st_dev, same.st_ino) != (st.st_dev, st.st_ino):
            raise ValueError("refused: it was replaced while being read")
        check_owner(parent, f"refused: its directory {os.path.dirname(real)} is ", euid)
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


async def off_loop(fn: Callable[..., T], *args: Any, what: str,
                   timeout: float = READ_TIMEOUT) -> T:
    """fn(*args) on a daemon thread, awaited for at most `timeout` seconds
    (ConfigError naming `what` after that; the thread is left to finish or
    to die with the process). Not asyncio.to_thread: the default executor's
    threads are joined at exit, so a read that never returns would keep a
    stopped daemon alive."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def work() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:        # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=work, name="udpoverlay-read", daemon=True).start()
    try:
        async with asyncio.timeout(timeout):
            return await fut
    except TimeoutError:
        raise ConfigError(f"{what}: not read within {timeout:g} s (a hung file system?); "
                          f"not waiting for it") from None
