"""Static mode's peer table: flags merged with the peers file, names
resolved, waiting peers, what a reload does (and refuses), and that an
unchanged peer is handed over as the same object (the engine's cache)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from tests.support.asyncutil import FakeClock, run
from tests.unit.static.test_names import Script
from udpoverlay.config.options import build_config
from udpoverlay.errors import ConfigError
from udpoverlay.static.names import Names
from udpoverlay.static.peers import StaticPeers

NOT_KNOWN = socket.gaierror(-2, "Name or service not known")


def _static(tmp_path, flags=(), file_text=None, strict=False, **answers):
    path = None
    if file_text is not None:
        path = tmp_path / "peers.toml"
        path.write_text(file_text)
    opts = build_config(public_ip="198.18.0.1", subnet="198.19.1.0/24",
                        network="198.19.0.0/16", peers=list(flags),
                        peers_file=None if path is None else str(path), strict_peers=strict)
    clock = FakeClock()
    script = Script(**answers)
    sp = StaticPeers(opts, Names(opts.resolve_interval, lookup=script, clock=clock, wall=clock))
    applied: list[list] = []

    async def apply(table):
        applied.append(list(table))
    sp.apply = apply
    return sp, path, clock, script, applied


def _entry(host, subnet, extra=""):
    return f'[[peer]]\nhost = "{host}"\nsubnet = "{subnet}"\n{extra}\n'


def test_flags_and_file_merged_names_resolved_unresolved_wait(tmp_path):
    sp, _, _, _, _ = _static(tmp_path, ["bob=198.19.2.0/24", "198.18.0.3=198.19.3.0/24"],
                             _entry("carol", "198.19.4.0/24", "keepalive = 5")
                             + _entry("dave", "198.19.5.0/24"),
                             bob=["198.18.0.2"], carol=["198.18.0.4"], dave=NOT_KNOWN)
    table = run(sp.start())
    assert [(str(p.public_ip), p.host, str(p.subnet), p.keepalive) for p in table] == [
        ("198.18.0.2", "bob", "198.19.2.0/24", None),
        ("198.18.0.3", None, "198.19.3.0/24", None),
        ("198.18.0.4", "carol", "198.19.4.0/24", 5)]
    (w,) = sp.status()["waiting"]
    assert (w["host"], w["subnet"]) == ("dave", "198.19.5.0/24") and "not known" in w["reason"]
    assert w["origin"].endswith("peers.toml:5")
    details = sp.peer_details()
    assert details["198.19.2.0/24"]["host"] == "bob" and "198.19.5.0/24" not in details
    assert details["198.19.3.0/24"]["host"] is None


def test_strict_peers_make_an_unresolved_name_an_error(tmp_path):
    sp, *_ = _static(tmp_path, ["bob=198.19.2.0/24"], strict=True, bob=NOT_KNOWN)
    with pytest.raises(ConfigError, match=r"peer bob:8285=198.19.2.0/24 \(--peer\): "
                                          r"does not resolve: .*--strict-peers"):
        run(sp.start())


@pytest.mark.parametrize("answer, reason", [
    (["198.18.0.1"], "our own address"),          # a name for ourselves
    (["198.18.0.3"], "same address as peer 198.18.0.3"),
])
def test_a_name_that_lands_on_us_or_on_another_peer_waits(tmp_path, answer, reason):
    sp, *_ = _static(tmp_path, ["198.18.0.3=198.19.3.0/24", "bob=198.19.2.0/24"], bob=answer)
    table = run(sp.start())
    assert [str(p.subnet) for p in table] == ["198.19.3.0/24"]
    assert reason in sp.status()["waiting"][0]["reason"]


def test_a_bad_file_at_start_is_a_config_error(tmp_path):
    sp, *_ = _static(tmp_path, ["198.18.0.3=198.19.2.0/24"], _entry("bob", "198.19.2.0/25"))
    with pytest.raises(ConfigError, match=r"peer subnets overlap: .*\(--peer\) .*peers.toml:1"):
        run(sp.start())


def test_reload_adds_removes_keeps_unchanged_peers_as_the_same_objects(tmp_path):
    sp, path, _, script, applied = _static(
        tmp_path, ["198.18.0.3=198.19.3.0/24"], _entry("bob", "198.19.2.0/24"),
        bob=["198.18.0.2"], carol=["198.18.0.4"])
    first = run(sp.start())
    path.write_text(_entry("carol", "198.19.4.0/24"))
    run(sp.reload())
    (table,) = applied
    assert [str(p.subnet) for p in table] == ["198.19.3.0/24", "198.19.4.0/24"]
    assert table[0] is first[0]                 # unchanged: the very same Peer
    assert script.calls == ["bob", "carol"]
    run(sp.reload())                            # nothing changed: nothing handed over
    assert len(applied) == 1 and sp.reloads == 2
    assert script.calls == ["bob", "carol", "carol"]   # every name re-resolved on SIGHUP


def test_bad_content_on_reload_is_one_error_line_and_the_table_stays(tmp_path, caplog):
    sp, path, _, _, applied = _static(tmp_path, [], _entry("bob", "198.19.2.0/24"),
                                      bob=["198.18.0.2"])
    run(sp.start())
    for bad in ("[[peer]\n", _entry("bob", "198.19.1.0/24"), _entry("b!b", "198.19.2.0/24")):
        path.write_text(bad)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="udpoverlay"):
            run(sp.reload())
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and "running peers kept" in errors[0].getMessage()
        assert sp.status()["reload_error"] and not applied
    assert [str(p.subnet) for p in sp.table] == ["198.19.2.0/24"]
    path.unlink()
    run(sp.reload())
    assert "No such file" in sp.status()["reload_error"] and not applied


def test_re_resolution_moves_a_peer_and_a_late_name_joins(tmp_path):
    sp, _, clock, script, applied = _static(
        tmp_path, ["bob=198.19.2.0/24", "carol=198.19.4.0/24"],
        bob=["198.18.0.2"], carol=NOT_KNOWN)
    run(sp.start())
    script.answers.update(bob=["198.18.0.12"], carol=["198.18.0.4"])
    clock.advance(60)

    async def one_round():
        task = asyncio.create_task(sp.run())
        for _ in range(50):
            if applied:
                break
            await asyncio.sleep(0.01)
        task.cancel()
    run(one_round())
    assert [(str(p.public_ip), str(p.subnet)) for p in applied[-1]] == [
        ("198.18.0.12", "198.19.2.0/24"), ("198.18.0.4", "198.19.4.0/24")]
    assert sp.waiting == {}
