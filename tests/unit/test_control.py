"""The control socket without root: a server on a unique abstract name
answers one JSON document per connection, reports a failing status as an
error document, and the client says clearly when nobody answers."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.support.asyncutil import run
from udpoverlay.control import ControlServer, query_status
from udpoverlay.errors import ControlError


def _name() -> str:
    return "uotest" + secrets.token_hex(4)


def test_serves_status_document(loop):
    iface = _name()
    calls = []

    def status():
        calls.append(1)
        return {"iface": iface, "peers": [{"subnet": "198.19.2.0/24"}], "n": len(calls)}

    async def main():
        server = ControlServer(iface, status)
        await server.start()
        try:
            first = await asyncio.to_thread(query_status, iface, 3.0)
            second = await asyncio.to_thread(query_status, iface, 3.0)
        finally:
            await server.close()
        return first, second

    first, second = run(main())
    assert first == {"iface": iface, "peers": [{"subnet": "198.19.2.0/24"}], "n": 1}
    assert second["n"] == 2       # built afresh for every connection


def test_failing_status_becomes_error_document(loop):
    iface = _name()

    def status():
        raise RuntimeError("engine gone")

    async def main():
        server = ControlServer(iface, status)
        await server.start()
        try:
            return await asyncio.to_thread(query_status, iface, 3.0)
        finally:
            await server.close()

    assert run(main()) == {"error": "engine gone"}


def test_no_daemon_is_a_control_error():
    with pytest.raises(ControlError, match="no udpoverlay daemon"):
        query_status(_name(), 1.0)


def test_closed_server_no_longer_answers(loop):
    iface = _name()

    async def main():
        server = ControlServer(iface, dict)
        await server.start()
        await server.close()
        await server.close()              # idempotent

    run(main())
    with pytest.raises(ControlError):
        query_status(iface, 1.0)
