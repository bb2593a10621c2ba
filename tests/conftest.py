"""Fixtures every tier shares.

- `impl`: the fast-path twin under test, "python" (the reference) or
  "cython" (the extension), as the core module. Under
  UDPOVERLAY_REQUIRE_EXTENSION=1 (CI) a missing extension fails the cython
  case instead of skipping it.
- `loop`: "asyncio" or "uvloop"; run() in tests.support.asyncutil then runs
  coroutines on that loop (the daemon's default is uvloop).
"""

from __future__ import annotations

import os

import pytest

from tests.support.asyncutil import LOOPS, use_loop
from tests.support.requirements import require

IMPLS = ("python", "cython")


@pytest.fixture(params=IMPLS)
def impl(request):
    from udpoverlay import dataplane
    try:
        return dataplane.twin(request.param)
    except ImportError as exc:
        if os.environ.get("UDPOVERLAY_REQUIRE_EXTENSION") == "1":
            raise
        require(False, f"compiled fast path not built: {exc}")


@pytest.fixture(params=LOOPS)
def loop(request):
    previous = use_loop(request.param)
    try:
        yield request.param
    finally:
        use_loop(previous)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures can print daemon
    logs when the test itself failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
