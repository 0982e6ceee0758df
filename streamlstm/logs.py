"""Log output: one handler on stderr, plain lines with UTC ISO-8601 times or JSON objects.

``configure(level, fmt)`` is called by the CLI, first from ``--log-level`` and the
environment, then again by `streamlstm run` once the config file is read.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

FORMATS = ("plain", "json")


def utc_iso(created: float) -> str:
    """``2026-11-23T10:00:00.123Z``: a record's time in UTC, to the millisecond."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class PlainFormatter(logging.Formatter):
    """``2026-11-23T10:00:00.123Z INFO streamlstm.service: message`` (``INFO worker 1
    streamlstm.service`` in a supervised worker)."""

    def __init__(self, worker: int | None = None) -> None:
        who = "" if worker is None else f"worker {worker} "
        super().__init__(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_iso(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC ISO-8601), ``level``, ``logger``, ``message``
    and, when there is one, ``exception`` (the traceback as one string); ``worker`` in a
    supervised worker."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _Handler(logging.StreamHandler):
    """The handler this module installs (so a second `configure` replaces it). It writes to
    whatever ``sys.stderr`` is when a record comes, so a redirected stderr sees it too."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # always sys.stderr


def configure(level: str = "INFO", fmt: str = "plain", worker: int | None = None) -> None:
    """Send records at ``level`` and above to stderr in ``fmt`` (``plain`` or ``json``),
    naming ``worker`` in each when given (`streamlstm.workers`).

    kafka-python's own records are shown only at DEBUG: it logs every reconnect attempt,
    and the failure that matters reaches the user as one line from streamlstm itself.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler()
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else PlainFormatter(worker))
    root.addHandler(handler)
    root.setLevel(level.upper())
    kafka_level = logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL + 1
    logging.getLogger("kafka").setLevel(kafka_level)


def json_enabled() -> bool:
    """Whether the installed handler writes JSON (the CLI's last words then do too)."""
    return any(isinstance(h, _Handler) and isinstance(h.formatter, JsonFormatter)
               for h in logging.getLogger().handlers)
