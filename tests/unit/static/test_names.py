"""Name resolution: re-resolution on a schedule, sooner after failures, the
last good address kept through an outage, round-robin answers not flapping.
A scripted lookup stands in for the system resolver (one test uses the
real one on `localhost`)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from tests.support.asyncutil import FakeClock, run
from udpoverlay.static.names import Names, system_lookup


class Script:
    """Answers per name: a list of addresses or an exception; counts calls."""

    def __init__(self, **answers) -> None:
        self.answers = dict(answers)
        self.calls: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        answer = self.answers[host.replace(".", "_")]
        if isinstance(answer, BaseException):
            raise answer
        if answer == "hang":
            await asyncio.sleep(60)
        return list(answer)


def _names(script, clock=None, interval=60.0, **kw) -> Names:
    clock = clock or FakeClock()
    return Names(interval, lookup=script, clock=clock, wall=clock, **kw)


def test_resolves_due_names_and_reports_changes():
    clock = FakeClock()
    script = Script(bob=["198.18.0.2"])
    names = _names(script, clock)
    names.track(["bob"])
    assert names.address("bob") is None and names.delay() == 0
    assert run(names.resolve()) is True
    assert names.address("bob") == ipaddress.IPv4Address("198.18.0.2")
    assert names.delay() == 60
    assert run(names.resolve()) is False and script.calls == ["bob"]    # nothing due
    clock.advance(60)
    assert run(names.resolve()) is False and script.calls == ["bob", "bob"]  # same address
    script.answers["bob"] = ["198.18.0.12"]
    clock.advance(60)
    assert run(names.resolve()) is True
    assert str(names.address("bob")) == "198.18.0.12"
    (st,) = names.status()
    assert st["address"] == "198.18.0.12" and st["error"] is None and st["resolved_ago"] == 0


def test_failures_retry_sooner_and_keep_the_last_good_address():
    clock = FakeClock()
    script = Script(bob=["198.18.0.2"])
    names = _names(script, clock, interval=30)
    names.track(["bob"])
    run(names.resolve())
    script.answers["bob"] = socket.gaierror(-2, "Name or service not known")
    clock.advance(30)
    delays = []
    for _ in range(7):
        assert run(names.resolve()) is False
        delays.append(names.delay())
        clock.advance(names.delay())
    assert delays == [1, 2, 4, 8, 16, 30, 30]              # doubling, capped at the interval
    assert str(names.address("bob")) == "198.18.0.2"      # kept through the outage
    (st,) = names.status()
    assert st["failures"] == 7 and "not known" in st["error"] and st["resolved_ago"] > 60
    script.answers["bob"] = ["198.18.0.2"]
    run(names.resolve())
    assert names.status()[0]["failures"] == 0 and names.status()[0]["error"] is None
    assert names.lookup_failures == 7 and names.lookups == 9


def test_a_hung_lookup_times_out_and_empty_or_bad_answers_fail():
    names = _names(Script(slow="hang", none=[], odd=["not-an-address"]), timeout=0.05)
    names.track(["slow", "none", "odd"])
    assert run(names.resolve()) is False
    errors = {s["host"]: s["error"] for s in names.status()}
    assert "no answer within 0.05 s" in errors["slow"]
    assert "no IPv4 address" in errors["none"]
    assert errors["odd"] and all(names.address(h) is None for h in errors)


def test_round_robin_answers_keep_the_address_in_use():
    clock = FakeClock()
    script = Script(rr=["198.18.0.2", "198.18.0.3"])
    names = _names(script, clock)
    names.track(["rr"])
    run(names.resolve())
    script.answers["rr"] = ["198.18.0.3", "198.18.0.2"]
    assert run(names.resolve(every=True)) is False and str(names.address("rr")) == "198.18.0.2"


def test_track_adds_and_forgets_and_only_new_resolves_the_new_ones():
    script = Script(a=["198.18.0.2"], b=["198.18.0.3"])
    names = _names(script)
    names.track(["a"])
    run(names.resolve())
    names.track(["a", "b"])
    run(names.resolve(only_new=True))
    assert script.calls == ["a", "b"]
    names.track(["b"])
    assert names.address("a") is None and [s["host"] for s in names.status()] == ["b"]


def test_system_lookup_resolves_localhost_off_the_loop():
    assert "127.0.0.1" in run(system_lookup("localhost"))
