"""One set of timestamp rules: a Kafka message value and a file column give the same times."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from streamlstm import decoding
from streamlstm.core import timestamps
from streamlstm.errors import DecodeError
from streamlstm.sources import files

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()  # 1714564800.0

# (value, epoch seconds): the forms both paths must read alike.
TRICKY: list[tuple[object, float]] = [
    (int(T0), T0),  # epoch seconds
    (str(int(T0)), T0),
    (T0 + 0.25, T0 + 0.25),
    (" 1714564800 ", T0),
    ("1714564800.5", T0 + 0.5),
    (int(T0) * 1000 + 250, T0 + 0.25),  # epoch milliseconds
    (str(int(T0) * 1000 + 250), T0 + 0.25),
    (100_000_000_000, 100_000_000.0),  # at the milliseconds bound (below it: seconds)
    (int(T0) * 1_000_000 + 250_000, T0 + 0.25),  # microseconds
    (str(int(T0) * 1_000_000_000 + 123_456_000), T0 + 0.123456),  # nanoseconds, as text
    (1714564800_123456_789, 1714564800.123456789),
    (0, 0.0),
    ("2024-05-01T12:00:00Z", T0),  # ISO with Z
    ("2024-05-01T12:00:00z", T0),
    ("2024-05-01 12:00:00Z", T0),
    ("2024-05-01T14:00:00+02:00", T0),  # with an offset
    ("2024-05-01T07:30:00-04:30", T0),
    ("2024-05-01T12:00:00", T0),  # naive means UTC
    ("2024-05-01 12:00", T0),
    ("2024-05-01", T0 - 12 * 3600),
    ("2024-05-01T12:00:00.123456", T0 + 0.123456),  # microseconds
    ("2024-05-01T12:00:00.123456Z", T0 + 0.123456),
    ("2024-05-01T12:00:00.5+00:00", T0 + 0.5),
    ("2024-05-01T12:00:00.123456789Z", T0 + 0.123456),  # beyond µs is dropped
    ("1970-01-01T00:00:00Z", 0.0),
    ("2262-04-11T00:00:00", datetime(2262, 4, 11, tzinfo=UTC).timestamp()),
]
TRICKY_VALUES = [value for value, _ in TRICKY]

# Values neither path accepts.
REFUSED: list[object] = [
    "", " ", "yesterday", "now", "today", "NaT", "nan", "inf", "1e400", "2024-02-30T00:00:00",
    "2024-13-01T00:00:00Z", "2024-05-01Z", "1969-12-31T23:59:59Z", "1969-12-31T23:59:59",
    "2263-01-01T00:00:00", 99_999_999_999, -1, "-1714564800", True, None, float("nan"), 1e30,
]


@pytest.mark.parametrize(("value", "expected"), TRICKY)
def test_the_message_and_the_file_paths_agree(value: object, expected: float) -> None:
    one = decoding.parse_timestamp(value)
    assert one == pytest.approx(expected, abs=1e-6)
    assert files.parse_timestamps([value]).tolist() == [one]
    assert timestamps.parse_timestamps(np.asarray([value])).tolist() == [one]


def test_a_whole_column_of_tricky_values_reads_as_each_value_does() -> None:
    """Mixed columns too: the units are decided per value, never for the whole column."""
    column = files.parse_timestamps(TRICKY_VALUES)
    assert column.tolist() == [decoding.parse_timestamp(v) for v in TRICKY_VALUES]


@pytest.mark.parametrize("kind", ["seconds", "ms", "us", "ns", "naive", "Z", "offset", "float"])
def test_homogeneous_columns_agree_exactly(kind: str) -> None:
    rng = np.random.default_rng(7)
    # From 1973 on, so that milliseconds, microseconds and nanoseconds are told apart.
    seconds = rng.uniform(1e8, 9.2e9, 2000).round(6)
    micros = (seconds * 1e6).astype(np.int64)
    iso = np.datetime_as_string(micros.astype("datetime64[us]")).tolist()
    column: list[object] = {
        "seconds": [str(int(s)) for s in seconds],
        "ms": [int(m) // 1000 for m in micros],
        "us": [str(int(m)) for m in micros],
        "ns": [int(m) * 1000 + 789 for m in micros],
        "naive": [s.replace("T", " ") for s in iso],
        "Z": [s + "Z" for s in iso],
        "offset": [s + "+00:00" for s in iso],
        "float": seconds.tolist(),
    }[kind]
    assert files.parse_timestamps(column).tolist() == [
        decoding.parse_timestamp(v) for v in column]


@pytest.mark.parametrize("value", REFUSED)
def test_the_message_and_the_file_paths_refuse_alike(value: object) -> None:
    with pytest.raises(DecodeError) as info:
        decoding.parse_timestamp(value)
    assert info.value.reason == "bad_timestamp"
    for good in ("2024-05-01T12:00:00", "1714564800"):
        with pytest.raises(files.InputFileError, match=r"row 3: bad timestamp"):
            files.parse_timestamps([good, value, good], where="x.csv")


def test_the_first_bad_row_is_named() -> None:
    with pytest.raises(timestamps.TimestampRowError) as info:
        timestamps.parse_timestamps(["2024-05-01T12:00:00Z", "2024-05-01T12:01:00Z", "soon",
                                     "later"])
    assert (info.value.index, info.value.value, info.value.reason) == (2, "soon",
                                                                       "bad_timestamp")


def test_a_file_reads_as_messages_do(tmp_path: Path) -> None:
    body = "".join(f"{v},1\n" for v in TRICKY_VALUES if "," not in str(v))
    path = tmp_path / "tricky.csv"
    path.write_text("timestamp,value\n" + body)
    expected = [decoding.parse_timestamp(str(v)) for v in TRICKY_VALUES]
    assert files.read_table(path).timestamps.tolist() == expected


def test_twenty_thousand_rows_parse_quickly() -> None:
    n = 20_000
    base = np.datetime64("2024-05-01T00:00:00", "s")
    naive = np.datetime_as_string(base + np.arange(n) * 60).tolist()
    for column in (naive, [s + "Z" for s in naive], [str(int(T0) + 60 * i) for i in range(n)]):
        started = time.perf_counter()
        files.parse_timestamps(column)
        assert time.perf_counter() - started < 0.5
