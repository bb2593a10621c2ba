"""Fixtures for integration tests: real namespaces (lab.netns),
real TUN devices, real daemon processes (tests.support.overlay)."""

from __future__ import annotations

import contextlib
import glob
import os

import pytest

from lab.netns import Lab
from tests.support.overlay import Overlay
from tests.support.requirements import require_root_tools
from udpoverlay.control import DEFAULT_RUNTIME_DIR


@pytest.fixture
def lab():
    require_root_tools()
    lab = Lab()
    try:
        yield lab
    finally:
        # A daemon the test SIGKILLed leaves its control socket file behind,
        # and the firewall leaves its lock file (both keyed by the namespace's
        # inode): remove those of our namespaces.
        inodes = []
        for netns in lab.namespaces():
            try:
                inodes.append(os.stat(f"/run/netns/{netns}").st_ino)
            except OSError:
                pass
        lab.close()
        for ino in inodes:
            for path in [*glob.glob(os.path.join(DEFAULT_RUNTIME_DIR, f"net{ino}-*.sock")),
                         os.path.join(DEFAULT_RUNTIME_DIR, f"net{ino}-firewall.lock")]:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _make_overlay(lab, tmp_path, request, n):
    ov = Overlay(lab, tmp_path, n)
    yield ov
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(ov.dump_logs())


@pytest.fixture
def overlay2(lab, tmp_path, request):
    """Two hosts, h1 and h2, no daemons yet."""
    yield from _make_overlay(lab, tmp_path, request, 2)


@pytest.fixture
def overlay3(lab, tmp_path, request):
    """Three hosts, h1..h3, no daemons yet."""
    yield from _make_overlay(lab, tmp_path, request, 3)
