"""Fixtures for integration tests: real namespaces (udpoverlay.lab.netns),
real TUN devices, real daemon processes (tests.support.overlay)."""

from __future__ import annotations

import pytest

from tests.support.overlay import Overlay
from tests.support.requirements import require_root_tools
from udpoverlay.lab.netns import Lab


@pytest.fixture
def lab():
    require_root_tools()
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


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
