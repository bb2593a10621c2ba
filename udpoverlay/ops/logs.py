"""Logging set-up: flanneld's -v levels, a journald-aware text format and a
JSON format for log pipelines, both changeable while running (SIGHUP).

Why like this:
- -v N as flanneld's (klog) -v: 0 (default) INFO and up; 1 adds our own
  DEBUG messages; 2 or more adds everyone's (gRPC, aetcd, pyroute2).
- Under systemd, stderr is a journald stream and journald stamps every line
  itself, so a timestamp in the text would be printed twice. systemd says
  how to recognise that case: $JOURNAL_STREAM holds "DEV:INODE" of the
  stream, equal to stderr's fstat. Then each line starts with the syslog
  priority in angle brackets ("<4>"), which journald strips and stores, so
  `journalctl -p warning` works.
- --log-format json writes one JSON object per line (time in UTC ISO 8601,
  level, logger, msg, exc when there is a traceback), never a multi-line
  record, so a collector can split on newlines.
- One handler on the root logger, owned here; setup() replaces it, so
  calling it again (a reload) never duplicates lines.
- An error that ends the process (fatal()) is one line in the same form:
  "<3>ERROR ..." under journald (priority err, so `journalctl -p err`
  shows why a start failed), a JSON object with "exit_status" under
  --log-format json, and "udpoverlay: error: ..." on a terminal or in a
  file. It is written straight to stderr, also before setup() ran (the
  CLI passes the format the command line or environment asks for) and
  whatever -v says.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import IO

__all__ = ["setup", "set_verbosity", "set_format", "journald_stream", "JsonFormatter",
           "JournalFormatter", "TextFormatter", "TEXT_FORMAT", "current", "fatal"]

TEXT_FORMAT = "%(asctime)s %(source)s %(levelname)s %(message)s"
_OURS = "udpoverlay"
# syslog priorities (sd-daemon.h's SD_ERR, SD_WARNING, ...) by logging level
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
             (logging.INFO, 6))


class _State:
    handler: logging.Handler | None = None
    verbosity = 0
    fmt = "text"


current = _State()


def journald_stream(stream: IO | None = None, environ=None) -> bool:
    """Is `stream` (default stderr) the journald stream $JOURNAL_STREAM names?"""
    environ = os.environ if environ is None else environ
    want = environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


def _source(record: logging.LogRecord) -> str:
    """"udpoverlay" for our lines; a library's own name for its lines (-v 2),
    so pyroute2's or gRPC's debug is never taken for ours."""
    name = record.name
    return _OURS if name == _OURS or name.startswith(_OURS + ".") else name


class TextFormatter(logging.Formatter):
    """'TIME udpoverlay LEVEL message' (a library's line: its logger name)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.source = _source(record)
        return super().format(record)


class JournalFormatter(logging.Formatter):
    """'<4>WARNING message': no timestamp (journald adds its own); a
    library's line carries its logger name in brackets."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for level, p in _PRIORITY if record.levelno >= level), 7)
        source = _source(record)
        tag = "" if source == _OURS else f"[{source}] "
        line = super().format(record)
        if tag:
            level, _, rest = line.partition(" ")
            line = f"{level} {tag}{rest}"
        # A traceback's lines would each become an entry at the default
        # priority: keep the record on one line.
        return f"<{prio}>" + line.replace("\n", " | ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        doc = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        exit_status = getattr(record, "exit_status", None)
        if exit_status is not None:
            doc["exit_status"] = exit_status
        return json.dumps(doc, default=str)


def _formatter(fmt: str, stream: IO) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if journald_stream(stream):
        return JournalFormatter()
    return TextFormatter()


def setup(verbosity: int = 0, fmt: str = "text", stream: IO | None = None) -> None:
    """Our handler on the root logger (replacing an earlier one), at -v."""
    stream = stream or sys.stderr
    root = logging.getLogger()
    if current.handler is not None:
        root.removeHandler(current.handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter(fmt, stream))
    root.addHandler(handler)
    current.handler, current.fmt = handler, fmt
    set_verbosity(verbosity)


def set_verbosity(verbosity: int) -> None:
    """flanneld's -v, live: 0 info, 1 our debug, 2+ everyone's debug."""
    logging.getLogger().setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    logging.getLogger(_OURS).setLevel(logging.DEBUG if verbosity >= 1 else logging.NOTSET)
    current.verbosity = verbosity


def set_format(fmt: str) -> None:
    """--log-format, live (text or json) on our handler."""
    handler = current.handler
    if handler is None:
        setup(current.verbosity, fmt)
        return
    stream = getattr(handler, "stream", sys.stderr)
    handler.setFormatter(_formatter(fmt, stream))
    current.fmt = fmt


def fatal(message: str, exit_status: int | None = None, fmt: str | None = None,
          stream: IO | None = None) -> None:
    """One line for an error that ends the process (see the module notes);
    fmt defaults to the format set up, else text."""
    stream = stream or sys.stderr
    fmt = fmt or current.fmt
    record = logging.LogRecord(_OURS, logging.ERROR, __file__, 0, message, None, None)
    record.exit_status = exit_status
    if fmt == "json":
        line = JsonFormatter().format(record)
    elif journald_stream(stream):
        line = JournalFormatter().format(record)
    else:
        line = f"{_OURS}: error: {message}"
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass        # stderr gone: the exit status still tells
