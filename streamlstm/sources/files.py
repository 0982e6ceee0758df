"""CSV and Parquet readers for `train`, `replay` and `evaluate`.

Accepted layouts:
- NAB's ``timestamp,value``: one series per file, named after the file.
- A ``series`` column: many series in one file.
- Several value columns: one feature each (``timestamp,cpu,mem``), in column order, or the
  columns named by ``features``.

Timestamps are ISO 8601 / RFC 3339 strings (naive means UTC) or epoch seconds, milliseconds,
microseconds or nanoseconds, by the same rules as Kafka messages
(:mod:`streamlstm.core.timestamps`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamlstm.core import timestamps
from streamlstm.core.records import MAX_VALUE, Point
from streamlstm.errors import StreamlstmError
from streamlstm.training import SeriesHistory

TIMESTAMP_COLUMN = "timestamp"
SERIES_COLUMN = "series"


class InputFileError(StreamlstmError):
    """An input file is missing, unreadable or not in a layout we understand."""


@dataclass
class Table:
    """A file's rows in file order: series name, timestamp and feature values per row."""

    series: list[str]
    timestamps: np.ndarray  # float64 epoch seconds
    values: np.ndarray  # float64 [N, F]
    feature_names: list[str]

    def points(self) -> list[Point]:
        return [Point(s, t, tuple(v)) for s, t, v in zip(
            self.series, self.timestamps.tolist(), self.values.tolist(), strict=True)]

    def history(self) -> dict[str, SeriesHistory]:
        """Rows grouped by series, each sorted by time."""
        names = np.asarray(self.series)
        out: dict[str, SeriesHistory] = {}
        for name in dict.fromkeys(self.series):
            mask = names == name
            order = np.argsort(self.timestamps[mask], kind="stable")
            out[name] = SeriesHistory(self.timestamps[mask][order], self.values[mask][order])
        return out


def read_table(path: str | Path, features: Sequence[str] | None = None,
               series_name: str | None = None) -> Table:
    """Read one CSV or Parquet file. ``series_name`` names a single-series file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    columns = _read_columns(path)
    if TIMESTAMP_COLUMN not in columns:
        raise InputFileError(f"{path}: no '{TIMESTAMP_COLUMN}' column "
                             f"(found: {', '.join(columns) or 'none'})")
    value_columns = list(features) if features else [
        c for c in columns if c not in (TIMESTAMP_COLUMN, SERIES_COLUMN)]
    missing = [c for c in value_columns if c not in columns]
    if missing or not value_columns:
        raise InputFileError(f"{path}: missing value column(s) {', '.join(missing) or 'value'}")
    n = len(columns[TIMESTAMP_COLUMN])
    try:
        values = np.column_stack([np.asarray(columns[c], dtype=np.float64) for c in value_columns])
    except (TypeError, ValueError) as exc:
        column = next(c for c in value_columns if _first_non_number(columns[c]) >= 0)
        row = _first_non_number(columns[column])
        raise InputFileError(f"{path}: row {row + 2}: {column} {columns[column][row]!r} "
                             f"is not a number") from exc
    fit = np.abs(values) <= MAX_VALUE  # False for NaN and inf too
    if not fit.all():
        row = int(np.argwhere(~fit)[0][0])
        raise InputFileError(f"{path}: row {row + 2}: value is not a finite number within "
                             f"the float32 range")
    timestamps = parse_timestamps(columns[TIMESTAMP_COLUMN], where=str(path))
    if SERIES_COLUMN in columns:
        series = [str(s) for s in columns[SERIES_COLUMN]]
    else:
        series = [series_name or path.stem] * n
    return Table(series, timestamps, values, value_columns)


def read_tables(paths: Sequence[str | Path], features: Sequence[str] | None = None) -> Table:
    """Several files as one table (rows of each file in order, files one after the other)."""
    tables = [read_table(p, features) for p in paths]
    if not tables:
        raise InputFileError("no input files")
    names = tables[0].feature_names
    for path, table in zip(paths, tables, strict=True):
        if table.feature_names != names:
            raise InputFileError(f"{path}: features {table.feature_names} differ from {names}")
    return Table(
        series=[s for t in tables for s in t.series],
        timestamps=np.concatenate([t.timestamps for t in tables]),
        values=np.concatenate([t.values for t in tables]),
        feature_names=names,
    )


def parse_timestamps(raw: Sequence[object] | np.ndarray, where: str = "input") -> np.ndarray:
    """Timestamps -> float64 epoch seconds (UTC), by
    :func:`streamlstm.core.timestamps.parse_timestamps`.

    The rules are the Kafka decoder's: RFC 3339 / ISO text (naive means UTC) or epoch
    s/ms/µs/ns told apart by magnitude, between 1970 and 2262.
    """
    try:
        return timestamps.parse_timestamps(raw)
    except timestamps.TimestampRowError as exc:
        raise InputFileError(f"{where}: row {exc.index + 2}: bad timestamp: {exc.detail}"
                             ) from exc


def _first_non_number(raw: Sequence[object]) -> int:
    """The index of the first entry that is not a number, or -1."""
    for i, x in enumerate(raw):
        try:
            float(x)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return i
    return -1


def _read_columns(path: Path) -> dict[str, list[object]]:
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise InputFileError(f"{path}: reading Parquet needs pyarrow: pip install "
                                 "'streamlstm[train]' (or convert the file to CSV)") from exc
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow's errors have no common base worth naming
            raise InputFileError(f"{path}: cannot read Parquet: {exc}") from exc
        out: dict[str, list[object]] = {}
        for name in table.column_names:
            column = table.column(name)
            if name == TIMESTAMP_COLUMN and str(column.type).startswith("timestamp"):
                # Stored as integers since the epoch in UTC (naive ones too: naive means UTC);
                # datetime.timestamp() would read a naive value in the local time zone.
                per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[column.type.unit]
                out[name] = [v / per_second if v is not None else None
                             for v in column.cast("int64").to_pylist()]
            else:
                out[name] = column.to_pylist()
        return out
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise InputFileError(f"{path}: empty file")
            header = [h.strip() for h in header]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(f"{path}: cannot read CSV: {exc}") from exc
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise InputFileError(f"{path}: row {number}: {len(row)} fields, "
                                 f"header has {len(header)}")
    return {name: [row[i] for row in rows] for i, name in enumerate(header)}
