"""`streamlstm train` from a Kafka time range and from an InfluxQL query, on real servers.

Each test trains a tiny model through ``cli.main`` and reads the artifact's training data
summary back: it must count exactly the rows the source holds in range.
"""

from __future__ import annotations

import math
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from streamlstm import cli
from streamlstm.core.records import Point
from streamlstm.devstack import InfluxDB
from streamlstm.model.artifact import load_artifact
from streamlstm.sources.kafka import produce_points

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z
STEP = 60.0
TINY = ["--window", "16", "--hidden-size", "8", "--epochs", "2", "--patience", "1",
        "--warmup", "8", "--batch-size", "64"]


def sine(n: int, phase: float = 0.0) -> np.ndarray:
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * math.pi * t / 48 + phase) + 0.01 * (t % 7)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def trained_data(models: Path) -> dict[str, Any]:
    artifact = load_artifact(models)
    return {**artifact.training["data"],
            "names": sorted(artifact.normalisation["series_scale"]),
            "features": artifact.feature_names}


# ---------------------------------------------------------------- Kafka


def create_topic(bootstrap: str, name: str, partitions: int = 2) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


@pytest.fixture
def sine_topic(kafka: Any, unique_name: Callable[[str], str]) -> str:
    """Two series of 400 one-minute points from T0 (interleaved), on a 2-partition topic."""
    topic = unique_name("history")
    create_topic(kafka.bootstrap, topic)
    a, b = sine(400), sine(400, phase=1.0)
    points = [Point(name, T0 + i * STEP, (float(values[i]),))
              for i in range(400) for name, values in (("sine.a", a), ("sine.b", b))]
    assert produce_points(kafka.bootstrap, topic, points, ["value"]) == 800
    return topic


def test_train_from_a_kafka_time_range(kafka: Any, sine_topic: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    start, end = T0 + 100 * STEP, T0 + 350 * STEP  # points 100..349 of each series
    code = cli.main(["train", "--kafka-topic", sine_topic, "--bootstrap", kafka.bootstrap,
                     "--from", iso(start), "--to", str(int(end)), "--output", str(models),
                     *TINY])
    assert code == 0
    data = trained_data(models)
    assert data["series"] == 2
    assert data["rows"] == 2 * 250
    assert data["first_timestamp"] == start
    assert data["last_timestamp"] == end - STEP
    assert data["names"] == ["sine.a", "sine.b"]
    assert data["features"] == ["value"]


def test_an_empty_kafka_range_is_a_clear_error(
        kafka: Any, sine_topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--kafka-topic", sine_topic, "--bootstrap", kafka.bootstrap,
                     "--from", iso(T0 + 1000 * STEP), "--to", iso(T0 + 2000 * STEP),
                     "--output", str(tmp_path / "models"), *TINY])
    assert code == 1
    err = capsys.readouterr().err
    assert f"kafka topic {sine_topic!r}" in err and "no events with timestamps" in err
    assert "2024-05-02T04:40:00Z" in err  # the range, readable
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------- InfluxDB


def write_lines(engine_url: str, db: str, lines: list[str], auth: tuple[str, str] | None = None
                ) -> None:
    """InfluxDB 1.x ``POST /write`` (line protocol, second precision)."""
    params = {"db": db, "precision": "s"}
    if auth:
        params |= {"u": auth[0], "p": auth[1]}
    request = urllib.request.Request(
        f"{engine_url}/write?{urllib.parse.urlencode(params)}",
        data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def host_lines(measurement: str, counts: dict[str, int]) -> list[str]:
    lines = []
    for number, (host, n) in enumerate(counts.items()):
        values = sine(n, phase=number)
        lines += [f"{measurement},host={host} value={float(v)!r},mem={50 + float(v)!r} "
                  f"{int(T0 + i * STEP)}" for i, v in enumerate(values)]
    return lines


@pytest.fixture
def influx_db(influx: Any, unique_name: Callable[[str], str]) -> str:
    db = unique_name("history")
    influx.create_database(db)
    write_lines(influx.engine_url, db, host_lines("cpu", {"a": 300, "b": 200}))
    return db


def test_train_from_an_influxql_query(influx: Any, influx_db: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    code = cli.main(["train", "--influx-query", "SELECT value FROM cpu GROUP BY host",
                     "--influx-url", influx.engine_url, "--influx-db", influx_db,
                     "--output", str(models), *TINY])
    assert code == 0
    data = trained_data(models)
    assert data["series"] == 2
    assert data["rows"] == 300 + 200
    assert data["names"] == ["cpu,host=a", "cpu,host=b"]
    assert data["features"] == ["value"]
    assert data["first_timestamp"] == T0
    assert data["last_timestamp"] == T0 + 299 * STEP


def test_influx_fields_become_features_in_the_order_of_features(
        influx: Any, influx_db: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    query = f"SELECT value, mem FROM cpu WHERE time >= {int(T0 + 100 * STEP)}s GROUP BY host"
    code = cli.main(["train", "--influx-query", query, "--influx-url", influx.url,  # via shim
                     "--influx-db", influx_db, "--features", "mem,value",
                     "--output", str(models), *TINY])
    assert code == 0
    data = trained_data(models)
    assert (data["series"], data["rows"]) == (2, 200 + 100)
    assert data["features"] == ["mem", "value"]


@pytest.mark.parametrize(("query", "db", "expected"), [
    ("SELEC value FROM cpu", "{db}", "HTTP 400"),                    # a parse error
    ("SELECT value FROM cpu", "no_such_db", "database not found"),    # a statement error
    ("SELECT value FROM nothing_here", "{db}", "returned no rows"),   # empty
    ("SELECT * FROM cpu", "{db}", "not a number"),                    # the host tag, selected
])
def test_influx_errors_are_one_clear_line(
        influx: Any, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        query: str, db: str, expected: str) -> None:
    code = cli.main(["train", "--influx-query", query, "--influx-url", influx.engine_url,
                     "--influx-db", db.format(db=influx_db), "--output", str(tmp_path), *TINY])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"streamlstm: error: InfluxDB at {influx.engine_url}")
    assert expected in err
    assert query in err
    assert "\n" not in err and "Traceback" not in err


@pytest.fixture(scope="module")
def secured_influx() -> Iterator[InfluxDB]:
    with InfluxDB(databases=["secured"], username="trainer", password="s3cret") as server:
        write_lines(server.engine_url, "secured", host_lines("load", {"x": 120, "y": 120}),
                    auth=("trainer", "s3cret"))
        yield server


def test_influx_token_and_url_come_from_the_environment(
        secured_influx: InfluxDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("INFLUXDB_V2_URL", secured_influx.engine_url)
    argv = ["train", "--influx-query", "SELECT value FROM load GROUP BY host",
            "--influx-db", "secured", "--output", str(tmp_path / "models"), *TINY]
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", "trainer:wrong")
    assert cli.main(argv) == 1
    assert "HTTP 401" in capsys.readouterr().err

    monkeypatch.setenv("INFLUXDB_V2_TOKEN", "trainer:s3cret")  # basic auth
    assert cli.main(argv) == 0
    data = trained_data(tmp_path / "models")
    assert (data["series"], data["rows"]) == (2, 240)
    assert data["names"] == ["load,host=x", "load,host=y"]
