"""`streamlstm train`'s history sources without servers: the InfluxQL JSON -> table
conversion, Kafka points -> table, and the option checks (exactly one source)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamlstm import cli
from streamlstm.core.records import Point
from streamlstm.devstack import free_port
from streamlstm.sources.influx_history import (
    InfluxHistoryQuery,
    InfluxQueryError,
    auth_headers,
    fetch,
    parse_documents,
    series_name,
    table_from_results,
)
from streamlstm.sources.kafka_history import table_from_points

NS = 1_000_000_000
T0 = 1_714_564_800


def document(*series: dict[str, Any], statement: int = 0) -> dict[str, Any]:
    return {"results": [{"statement_id": statement, "series": list(series)}]}


def cpu(host: str, rows: list[list[Any]], columns: tuple[str, ...] = ("time", "value"),
        partial: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "cpu", "tags": {"host": host}, "columns": list(columns),
                             "values": rows}
    if partial:
        entry["partial"] = True
    return entry


# ---------------------------------------------------------------- InfluxQL JSON -> table


def test_each_series_is_named_by_measurement_and_sorted_tags() -> None:
    assert series_name("cpu", {"host": "a", "dc": "eu"}) == "cpu,dc=eu,host=a"
    assert series_name("cpu", None) == "cpu"
    assert series_name("cpu", {"host": ""}) == "cpu,host="


def test_chunks_of_one_series_are_joined_in_order() -> None:
    chunks = [
        document(cpu("a", [[T0 * NS, 1.0], [(T0 + 60) * NS, 2.0]], partial=True)),
        document(cpu("a", [[(T0 + 120) * NS, 3.0]]), cpu("b", [[T0 * NS, 7]])),
    ]
    table = table_from_results(chunks)
    assert table.feature_names == ["value"]
    history = table.history()
    assert list(history) == ["cpu,host=a", "cpu,host=b"]
    assert history["cpu,host=a"].timestamps.tolist() == [T0, T0 + 60, T0 + 120]
    assert history["cpu,host=a"].values[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert history["cpu,host=b"].values.tolist() == [[7.0]]  # integers are numbers too


def test_rows_with_a_null_are_dropped_and_time_strings_are_read() -> None:
    rows = [["2024-05-01T12:00:00Z", 1.0, 5.0], ["2024-05-01T12:01:00Z", None, 6.0],
            ["2024-05-01T12:02:00.5Z", 3.0, 7.0]]
    table = table_from_results([document(cpu("a", rows, ("time", "mean", "max")))])
    assert table.feature_names == ["mean", "max"]
    assert table.timestamps.tolist() == [T0, T0 + 120.5]
    assert table.values.tolist() == [[1.0, 5.0], [3.0, 7.0]]


def test_features_reorder_the_columns_and_must_match_them() -> None:
    rows = [[T0 * NS, 1.0, 2.0]]
    documents = [document(cpu("a", rows, ("time", "cpu", "mem")))]
    table = table_from_results(documents, ["mem", "cpu"])
    assert table.feature_names == ["mem", "cpu"]
    assert table.values.tolist() == [[2.0, 1.0]]
    with pytest.raises(InfluxQueryError, match="returns the fields cpu, mem but --features "
                                               "names cpu, disk"):
        table_from_results(documents, ["cpu", "disk"])
    with pytest.raises(InfluxQueryError, match=r"--features names cpu$"):
        table_from_results(documents, ["cpu"])


@pytest.mark.parametrize(("documents", "message"), [
    ([{"results": [{"statement_id": 0}]}], "returned no rows"),
    ([document(cpu("a", []))], "returned no rows"),
    ([document(cpu("a", [[T0 * NS, None]]))], "no rows without nulls"),
    ([document(cpu("a", [[T0 * NS, "web1"]]))], r"row 1: column 'value' holds 'web1'"),
    ([document(cpu("a", [[T0 * NS, 1.0]]), cpu("b", [[T0 * NS, 1.0, 2.0]],
                                                 ("time", "value", "mem")))],
     "series 'cpu,host=b' has columns"),
    ([document(cpu("a", [[T0 * NS, 1.0, 2.0]], ("time", "mean", "mean")))], "duplicate columns"),
    ([document(cpu("a", [[T0 * NS]], ("time",)))], "selects no fields"),
    ([document(cpu("a", [["yesterday", 1.0]]))], "unreadable time values"),
])
def test_unusable_results_are_one_clear_error(documents: list[dict[str, Any]],
                                              message: str) -> None:
    with pytest.raises(InfluxQueryError, match=message):
        table_from_results(documents)


def test_chunked_and_plain_bodies_parse() -> None:
    one = {"results": [{"statement_id": 0}]}
    assert parse_documents(json.dumps(one)) == [one]
    assert parse_documents(json.dumps(one) + "\n" + json.dumps(one) + "\n") == [one, one]
    with pytest.raises(ValueError):
        parse_documents("")
    with pytest.raises(ValueError):
        parse_documents("[1, 2]")


def test_tokens_map_to_basic_or_token_auth() -> None:
    assert auth_headers("") == {}
    assert auth_headers("user:pa:ss") == {
        "Authorization": "Basic " + base64.b64encode(b"user:pa:ss").decode()}
    assert auth_headers("abc==") == {"Authorization": "Token abc=="}


def test_an_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(InfluxQueryError, match=rf"InfluxDB at {url} \(db 'x'\): cannot query"):
        fetch(InfluxHistoryQuery(url=url, query="SELECT value FROM cpu", database="x",
                                 timeout_s=5))


# ---------------------------------------------------------------- Kafka points -> table


def test_points_become_a_table_and_duplicates_count_once() -> None:
    points = [Point("a", T0 + 60, (2.0, 20.0)), Point("b", T0, (5.0, 50.0)),
              Point("a", T0, (1.0, 10.0)), Point("a", T0 + 60, (3.0, 30.0))]
    table = table_from_points(points, ["cpu", "mem"])
    assert len(table.series) == 3
    history = table.history()
    assert history["a"].timestamps.tolist() == [T0, T0 + 60]
    assert history["a"].values.tolist() == [[1.0, 10.0], [3.0, 30.0]]  # the later duplicate
    empty = table_from_points([], ["value"])
    assert empty.series == [] and empty.values.shape == (0, 1)


# ---------------------------------------------------------------- option checks


@pytest.mark.parametrize(("argv", "message"), [
    ([], "one of the arguments --input --kafka-topic --influx-query --synthetic is required"),
    (["--input", "a.csv", "--kafka-topic", "t"], "--kafka-topic: not allowed with argument "
                                                 "--input"),
    (["--kafka-topic", "t", "--influx-query", "SELECT 1"], "--influx-query: not allowed with"),
    (["--input", "a.csv", "--from", "2024-05-01"], "--from only goes with --kafka-topic"),
    (["--influx-query", "q", "--bootstrap", "h:1"], "--bootstrap only goes with --kafka-topic"),
    (["--kafka-topic", "t", "--from", "0", "--influx-db", "d"],
     "--influx-db only goes with --influx-query"),
    (["--kafka-topic", "t"], "--kafka-topic needs --from"),
    (["--kafka-topic", "t", "--from", "noon"], "--from/--to: not RFC 3339 or epoch time"),
    (["--kafka-topic", "t", "--from", "2024-05-02", "--to", "2024-05-01T00:00:00Z"],
     "--from must be before --to"),
])
def test_train_takes_exactly_one_source(argv: list[str], message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--output", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "streamlstm train: error:" in err and message in err


def test_files_still_train(tmp_path: Path) -> None:
    csv = tmp_path / "h.csv"
    t = np.arange(120)
    csv.write_text("timestamp,value\n" + "".join(
        f"{T0 + 60 * i},{np.sin(i / 8):.4f}\n" for i in t))
    code = cli.main(["train", "--input", str(csv), "--output", str(tmp_path / "m"),
                     "--window", "16", "--hidden-size", "4", "--epochs", "1"])
    assert code == 0
    meta = json.loads(next((tmp_path / "m").glob("*/meta.json")).read_text())
    assert meta["training"]["data"]["rows"] == 120


def test_train_init_from_fine_tunes_a_saved_model_keeping_its_shape_and_alarms(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "h.csv"
    csv.write_text("timestamp,value\n" + "".join(
        f"{T0 + 60 * i},{np.sin(i / 8):.4f}\n" for i in range(400)))
    models = tmp_path / "m"
    assert cli.main(["train", "--input", str(csv), "--output", str(models), "--window", "16",
                     "--hidden-size", "4", "--epochs", "1", "--threshold", "0.4"]) == 0
    first = (models / "current").read_text().strip()
    capsys.readouterr()
    other = tmp_path / "other.csv"
    other.write_text("timestamp,value\n" + "".join(
        f"{T0 + 60 * i},{3 * np.sin(i / 3) + (i % 7) / 3:.4f}\n" for i in range(400)))
    assert cli.main(["train", "--input", str(other), "--output", str(models),
                     "--init-from", str(models), "--epochs", "2", "--window", "32"]) == 0
    assert f"for {first}" in capsys.readouterr().out
    second = (models / "current").read_text().strip()
    assert second != first
    meta = json.loads((models / second / "meta.json").read_text())
    assert meta["architecture"]["window"] == 16 and meta["architecture"]["hidden_size"] == 4
    assert meta["calibration"]["threshold"] == 0.4  # the initial model's, not the default
    assert meta["training"]["initial_model"] == first
    assert cli.main(["train", "--input", str(other), "--output", str(models),
                     "--init-from", str(tmp_path / "nowhere")]) != 0
    assert "nowhere: no such model directory" in capsys.readouterr().err
