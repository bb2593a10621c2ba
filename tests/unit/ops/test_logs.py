"""Log set-up: flanneld's -v levels (changed live), no duplicate timestamp
under journald (JOURNAL_STREAM = stderr's dev:inode) with the syslog
priority prefix journald understands, and --log-format json one object per
line, even for tracebacks and multi-line messages."""

from __future__ import annotations

import json
import logging
import os

import pytest

from udpoverlay.ops import logs


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("udpoverlay").level)
    yield
    if logs.current.handler is not None:
        root.removeHandler(logs.current.handler)
        logs.current.handler = None
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("udpoverlay").setLevel(saved[2])


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_levels_as_flanneld_and_live_change(tmp_path, restore_logging):
    out = tmp_path / "err"
    with open(out, "w") as f:
        logs.setup(0, "text", f)
        ours, other = logging.getLogger("udpoverlay.x"), logging.getLogger("aetcd.y")
        ours.debug("hidden-0"), other.debug("hidden-0b"), ours.info("shown-0")
        logs.set_verbosity(1)
        ours.debug("shown-1"), other.debug("hidden-1")
        logs.set_verbosity(2)
        other.debug("shown-2")
        logs.set_verbosity(0)
        ours.debug("hidden-again")
        logs.setup(0, "text", f)          # again (a reload): no duplicate lines
        ours.warning("once")
    text = out.read_text()
    assert "hidden" not in text
    for word in ("shown-0", "shown-1", "shown-2"):
        assert word in text
    assert text.count("once") == 1
    assert _lines(out)[0].split(" ", 2)[2].startswith("udpoverlay INFO shown-0")


def test_journald_stream_drops_the_timestamp(tmp_path, restore_logging, monkeypatch):
    out = tmp_path / "journal"
    with open(out, "w") as f:
        st = os.fstat(f.fileno())
        assert not logs.journald_stream(f, {"JOURNAL_STREAM": "1:2"})
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.journald_stream(f)
        logs.setup(0, "text", f)
        log = logging.getLogger("udpoverlay.t")
        log.warning("store down")
        log.info("peer added: 198.19.2.0/24 via 198.18.0.2:8285")
        log.error("two\nlines")
    assert _lines(out) == ["<4>WARNING store down",
                           "<6>INFO peer added: 198.19.2.0/24 via 198.18.0.2:8285",
                           "<3>ERROR two | lines"]


def test_json_one_object_per_line_and_live_switch(tmp_path, restore_logging):
    out = tmp_path / "json"
    with open(out, "w") as f:
        logs.setup(0, "json", f)
        log = logging.getLogger("udpoverlay.j")
        log.info("multi\nline %s", "arg")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        logs.set_format("text")
        log.info("plain again")
    lines = _lines(out)
    assert len(lines) == 3
    a, b = json.loads(lines[0]), json.loads(lines[1])
    assert a["msg"] == "multi\nline arg" and a["level"] == "info" and a["logger"] == "udpoverlay.j"
    assert a["time"].endswith("Z")
    assert b["level"] == "error" and "ValueError: boom" in b["exc"]
    assert lines[2].endswith("udpoverlay INFO plain again")


def test_a_librarys_lines_carry_its_own_name_never_ours():
    """-v 2 lets pyroute2's and gRPC's debug through: in text and journald
    form their lines say whose they are."""
    from udpoverlay.ops.logs import JournalFormatter, TextFormatter

    def record(name: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.DEBUG, __file__, 1, "hello %s", ("x",), None)
    assert " udpoverlay DEBUG hello x" in TextFormatter().format(record("udpoverlay.daemon"))
    text = TextFormatter().format(record("pyroute2.netlink"))
    assert " pyroute2.netlink DEBUG hello x" in text and "udpoverlay" not in text
    assert JournalFormatter().format(record("udpoverlay.cli")) == "<7>DEBUG hello x"
    assert JournalFormatter().format(record("pyroute2")) == "<7>DEBUG [pyroute2] hello x"
