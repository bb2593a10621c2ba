"""The daemon's runtime directory (/run/udpoverlay for root): where the
control sockets and the per-namespace firewall locks live. Created 0700 and
refused when it is not a real directory of ours or others may write it, so
no other user can plant a socket or a lock there."""

from __future__ import annotations

import os
import stat

from udpoverlay.errors import ControlSocketError

__all__ = ["DEFAULT_RUNTIME_DIR", "default_runtime_dir", "prepare_runtime_dir", "who"]

DEFAULT_RUNTIME_DIR = "/run/udpoverlay"


def default_runtime_dir(euid: int | None = None) -> str:
    """/run/udpoverlay for root; a per-user directory under /tmp for anyone
    else (unprivileged test runs only: such a daemon is not a deployment)."""
    euid = os.geteuid() if euid is None else euid
    return DEFAULT_RUNTIME_DIR if euid == 0 else f"/tmp/udpoverlay-{euid}"


def prepare_runtime_dir(path: str, owner: int | None = None) -> None:
    """Create `path` (mode 0700) if missing; refuse one that is not a real
    directory owned by `owner` (default: our user) or that others may write."""
    owner = os.geteuid() if owner is None else owner
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ControlSocketError(f"cannot create the runtime directory {path}: "
                                 f"{exc.strerror or exc}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(f"refusing the runtime directory {path}: not a directory "
                                 "(a symlink or a file)")
    if st.st_uid != owner:
        raise ControlSocketError(f"refusing the runtime directory {path}: owned by uid "
                                 f"{st.st_uid}, not {who(owner)}")
    if st.st_mode & 0o022:
        raise ControlSocketError(f"refusing the runtime directory {path}: group/world-"
                                 f"writable (mode {stat.S_IMODE(st.st_mode):04o})")


def who(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"

