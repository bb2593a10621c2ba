"""Fixtures of the laptop tests (see helpers.py)."""

from __future__ import annotations

import pytest

from tests.integration.laptop.helpers import NetnsEtc


@pytest.fixture
def netns_etc():
    """/etc/netns/<ns> files for the test's namespaces, removed at the end."""
    etc = NetnsEtc()
    try:
        yield etc
    finally:
        etc.close()
