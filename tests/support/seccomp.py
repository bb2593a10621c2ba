"""Run a command under a seccomp allow-list as systemd's
`SystemCallFilter=<groups>` + `SystemCallErrorNumber=EPERM` builds it: the
groups expanded by `systemd-analyze syscall-filter`, every other system call
failing with EPERM. No systemd is needed (this machine has none as PID 1):
libseccomp through ctypes, then exec.

    python -m tests.support.seccomp ALLOWED_FILE -- COMMAND...

ALLOWED_FILE: one system call name per line (allowed_syscalls() writes it).
The filter is inherited by everything the command starts, as under systemd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import sys

SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def available() -> bool:
    return (shutil.which("systemd-analyze") is not None
            and ctypes.util.find_library("seccomp") is not None)


def allowed_syscalls(*groups: str) -> set[str]:
    """The system calls of systemd's groups (`@system-service`), expanded."""
    names: set[str] = set()
    seen: set[str] = set()
    todo = list(groups)
    while todo:
        group = todo.pop()
        if group in seen:
            continue
        seen.add(group)
        out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        for line in out.splitlines()[1:]:
            item = line.strip()
            if not item or item.startswith("#"):
                continue
            if item.startswith("@"):
                todo.append(item)
            else:
                names.add(item)
    return names


def _load(names: list[str]) -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(scmp_act_errno(errno.EPERM))
    if not ctx:
        raise OSError("seccomp_init failed")
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:          # not a system call of this architecture
            continue
        rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add {name}")
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m tests.support.seccomp ALLOWED_FILE -- COMMAND...")
    with open(argv[0], encoding="ascii") as f:
        names = [line.strip() for line in f if line.strip()]
    command = argv[2:]
    exe = shutil.which(command[0]) or command[0]
    _load(names)
    os.execv(exe, command)


if __name__ == "__main__":
    main(sys.argv[1:])
