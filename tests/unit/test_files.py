"""CSV and Parquet readers: layouts, timestamp forms, and errors that name the row."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamlstm.core.records import Point
from streamlstm.sources.files import InputFileError, parse_timestamps, read_table, read_tables
from tests.nab_sample import nab_file

NAB_FILE = nab_file("realKnownCause/ec2_request_latency_system_failure.csv")
T0 = datetime(2014, 3, 7, 3, 41, tzinfo=UTC).timestamp()  # 1394163660.0


def write(tmp_path: Path, text: str, name: str = "input.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def file_error(path: Path, *args: object) -> str:
    with pytest.raises(InputFileError) as info:
        read_table(path, *args)  # type: ignore[arg-type]
    text = str(info.value)
    assert str(path) in text
    return text


@pytest.fixture
def eastern_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a local time zone far from UTC, so local-time mistakes show."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_nab_file_is_one_series_named_after_the_file() -> None:
    table = read_table(NAB_FILE)
    assert table.feature_names == ["value"]
    assert set(table.series) == {"ec2_request_latency_system_failure"}
    assert len(table.timestamps) == 4032
    assert table.values.shape == (4032, 1)
    assert table.timestamps[0] == T0  # "2014-03-07 03:41:00", naive means UTC
    assert table.values[0, 0] == pytest.approx(45.868)
    assert table.timestamps[1] - table.timestamps[0] == 300.0


def test_series_name_can_be_given(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,value\n2014-03-07 03:41:00,1\n")
    assert read_table(path, series_name="host1.cpu").series == ["host1.cpu"]


def test_naive_timestamps_are_utc_whatever_the_local_zone(tmp_path: Path,
                                                         eastern_local_time: None) -> None:
    path = write(tmp_path, "timestamp,value\n2014-03-07 03:41:00,1\n2014-03-07T03:46:00,2\n")
    np.testing.assert_array_equal(read_table(path).timestamps, [T0, T0 + 300])


def test_a_series_column_holds_many_series(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([
        "timestamp,series,value",
        "2014-03-07 03:41:00,b,1.5",
        "2014-03-07 03:41:00,a,10",
        "2014-03-07 03:46:00,b,2.5",
        "2014-03-07 03:36:00,a,9",  # out of order within "a"
    ]) + "\n")
    table = read_table(path)
    assert table.series == ["b", "a", "b", "a"]
    assert table.values[:, 0].tolist() == [1.5, 10, 2.5, 9]
    assert table.points()[1] == Point("a", T0, (10.0,))
    history = table.history()
    assert list(history) == ["b", "a"]
    np.testing.assert_array_equal(history["a"].timestamps, [T0 - 300, T0])  # sorted by time
    np.testing.assert_array_equal(history["a"].values[:, 0], [9, 10])
    np.testing.assert_array_equal(history["b"].values[:, 0], [1.5, 2.5])


def test_several_value_columns_are_features_in_column_order(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,cpu,mem,disk\n2014-03-07 03:41:00,0.5,70,3\n"
                           "2014-03-07 03:46:00,0.6,71,4\n")
    table = read_table(path)
    assert table.feature_names == ["cpu", "mem", "disk"]
    np.testing.assert_array_equal(table.values, [[0.5, 70, 3], [0.6, 71, 4]])
    assert table.points()[0].values == (0.5, 70.0, 3.0)


def test_features_can_be_chosen_and_ordered(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,cpu,mem,disk\n2014-03-07 03:41:00,0.5,70,3\n")
    table = read_table(path, ["mem", "cpu"])
    assert table.feature_names == ["mem", "cpu"]
    np.testing.assert_array_equal(table.values, [[70, 0.5]])


def test_a_missing_feature_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,cpu\n2014-03-07 03:41:00,0.5\n")
    assert "gpu" in file_error(path, ["gpu"])


def test_parquet_with_series_and_features(tmp_path: Path) -> None:
    path = tmp_path / "metrics.parquet"
    stamps = [datetime(2014, 3, 7, 3, 41, tzinfo=UTC), datetime(2014, 3, 7, 3, 46, tzinfo=UTC),
              datetime(2014, 3, 7, 3, 41, tzinfo=UTC)]
    pq.write_table(pa.table({
        "timestamp": pa.array(stamps, type=pa.timestamp("ms", tz="UTC")),
        "series": ["a", "a", "b"],
        "cpu": [0.5, 0.6, 0.7],
        "mem": pa.array([70, 71, 72], type=pa.int64()),
    }), path)
    table = read_table(path)
    assert table.series == ["a", "a", "b"]
    assert table.feature_names == ["cpu", "mem"]
    np.testing.assert_array_equal(table.timestamps, [T0, T0 + 300, T0])
    np.testing.assert_array_equal(table.values, [[0.5, 70], [0.6, 71], [0.7, 72]])


def test_parquet_naive_timestamps_are_utc(tmp_path: Path, eastern_local_time: None) -> None:
    path = tmp_path / "naive.parquet"
    pq.write_table(pa.table({
        "timestamp": pa.array([datetime(2014, 3, 7, 3, 41), datetime(2014, 3, 7, 3, 46)],
                              type=pa.timestamp("us")),
        "value": [1.0, 2.0],
    }), path)
    np.testing.assert_array_equal(read_table(path).timestamps, [T0, T0 + 300])


def test_parquet_epoch_and_string_timestamps(tmp_path: Path) -> None:
    epoch = tmp_path / "epoch.parquet"
    pq.write_table(pa.table({"timestamp": [T0, T0 + 60], "value": [1.0, 2.0]}), epoch)
    np.testing.assert_array_equal(read_table(epoch).timestamps, [T0, T0 + 60])
    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"timestamp": ["2014-03-07T03:41:00Z", "2014-03-07T04:46:00+01:00"],
                             "value": [1.0, 2.0]}), text)
    np.testing.assert_array_equal(read_table(text).timestamps, [T0, T0 + 300])


def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,value\n", name="fake.parquet")
    assert "Parquet" in file_error(path)


def test_epoch_seconds_and_milliseconds(tmp_path: Path) -> None:
    seconds = write(tmp_path, f"timestamp,value\n{T0:.0f},1\n{T0 + 60:.0f},2\n", "s.csv")
    np.testing.assert_array_equal(read_table(seconds).timestamps, [T0, T0 + 60])
    millis = write(tmp_path, f"timestamp,value\n{T0 * 1000:.0f},1\n{T0 * 1000 + 60500:.0f},2\n",
                   "ms.csv")
    np.testing.assert_array_equal(read_table(millis).timestamps, [T0, T0 + 60.5])
    fractional = write(tmp_path, f"timestamp,value\n{T0 + 0.25},1\n", "f.csv")
    assert read_table(fractional).timestamps[0] == T0 + 0.25


@pytest.mark.parametrize(("stamps", "expected"), [
    (["2014-03-07T03:41:00Z", "2014-03-07T03:46:00Z"], [T0, T0 + 300]),
    (["2014-03-07T04:41:00+01:00", "2014-03-06T22:46:00-05:00"], [T0, T0 + 300]),
    (["2014-03-07T09:11:00.500+05:30", "2014-03-07T03:46:00+00:00"], [T0 + 0.5, T0 + 300]),
    (["2014-03-07T03:41:00", "2014-03-07T04:46:00+01:00"], [T0, T0 + 300]),
    (["2014-03-07T03:41:00+00:00", "2014-03-07T03:46:00"], [T0, T0 + 300]),
])
def test_rfc3339_with_offsets(stamps: list[str], expected: list[float]) -> None:
    np.testing.assert_array_equal(parse_timestamps(stamps), expected)


def test_read_tables_concatenates_files_in_order(tmp_path: Path) -> None:
    first = write(tmp_path, "timestamp,value\n2014-03-07 03:41:00,1\n", "first.csv")
    second = write(tmp_path, "timestamp,value\n2014-03-07 03:41:00,2\n", "second.csv")
    table = read_tables([first, second])
    assert table.series == ["first", "second"]
    assert table.values[:, 0].tolist() == [1, 2]


def test_read_tables_refuses_files_with_different_features(tmp_path: Path) -> None:
    first = write(tmp_path, "timestamp,value\n2014-03-07 03:41:00,1\n", "first.csv")
    second = write(tmp_path, "timestamp,cpu\n2014-03-07 03:41:00,2\n", "second.csv")
    with pytest.raises(InputFileError, match="differ"):
        read_tables([first, second])
    with pytest.raises(InputFileError):
        read_tables([])


@pytest.mark.parametrize(("body", "row"), [
    ("2014-03-07 03:41:00,1\n2014-03-07 03:46:00,abc\n", 3),  # not a number
    ("2014-03-07 03:41:00,1\n2014-03-07 03:46:00,\n2014-03-07 03:51:00,3\n", 3),  # empty value
    ("2014-03-07 03:41:00,1\n2014-03-07 03:46:00,nan\n", 3),  # not finite
    ("2014-03-07 03:41:00,1\n2014-03-07 03:46:00,inf\n", 3),
    ("2014-03-07 03:41:00,1\n2014-03-07 03:46:00,2,3\n", 3),  # too many fields
    ("2014-03-07 03:41:00,1\n2014-03-07 03:46:00\n", 3),  # too few fields
    ("2014-03-07 03:41:00,1\n2014-03-07 03:46:00,2\nyesterday,3\n", 4),  # bad timestamp
    ("2014-03-07T03:41:00Z,1\n2014-13-07T03:46:00Z,2\n", 3),  # month 13
    ("1394163660,1\n1394163720,2\nsoon,3\n", 4),  # an epoch column with a word in it
    ("1394163660,1\n,2\n", 3),  # a missing epoch timestamp
    ("1394163660,1\nnan,2\n", 3),  # an epoch timestamp that is not finite
])
def test_bad_rows_are_named(tmp_path: Path, body: str, row: int) -> None:
    text = file_error(write(tmp_path, "timestamp,value\n" + body))
    assert f"row {row}" in text, text


def test_structural_problems_are_input_file_errors(tmp_path: Path) -> None:
    assert "no such file" in file_error(tmp_path / "absent.csv")
    assert "empty" in file_error(write(tmp_path, "", "empty.csv"))
    assert "'timestamp'" in file_error(write(tmp_path, "time,value\n1,2\n", "t.csv"))
    assert "value" in file_error(write(tmp_path, "timestamp\n1394163660\n", "v.csv"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"timestamp,value\n\xff\xfe,1\n")
    assert "cannot read" in file_error(binary)


def test_a_header_only_file_is_an_empty_table(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "timestamp,value\n"))
    assert len(table.timestamps) == 0
    assert table.values.shape == (0, 1)
