"""Shared by the control-socket tests: where a lab host's daemon listens,
running a command as an unprivileged user (uid 65534) in a host's namespace,
and removing the socket files a killed daemon leaves behind."""

from __future__ import annotations

import glob
import os
import shutil

import pytest

from tests.support.requirements import require
from udpoverlay.control import DEFAULT_RUNTIME_DIR, socket_path

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"     # readable by anyone, unlike a venv under /root
HOSTILE = os.path.join(os.path.dirname(__file__), "hostile.py")


def netns_inode(netns: str) -> int:
    return os.stat(f"/run/netns/{netns}").st_ino


def daemon_socket(host, iface: str = "udpov0") -> str:
    return socket_path(iface, DEFAULT_RUNTIME_DIR, netns=netns_inode(host.netns))


def as_nobody(cmd: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]


@pytest.fixture
def ov(overlay2):
    """overlay2, plus: the tools these tests need, and at the end no socket
    file left in the runtime dir for its namespaces (a SIGKILLed daemon
    leaves one)."""
    require(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    require(os.access(SYSTEM_PYTHON, os.X_OK), f"needs {SYSTEM_PYTHON}")
    inodes = [netns_inode(h.netns) for h in overlay2.hosts.values()]
    try:
        yield overlay2
    finally:
        for d in overlay2.daemons:
            overlay2.stop(d)
        for ino in inodes:
            for path in glob.glob(os.path.join(DEFAULT_RUNTIME_DIR, f"net{ino}-*.sock")):
                os.unlink(path)
