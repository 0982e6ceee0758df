"""The local servers and the InfluxDB v2 shim, exercised with the clients the daemon uses."""

from __future__ import annotations

import gzip
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from streamlstm.devstack import DevstackError, InfluxDB, Prometheus, TansuBroker
from streamlstm.errors import StreamlstmError

TS = 1_700_000_000_123_456_789  # ns; not a multiple of a microsecond, so precision shows


def _client(url: str, token: str = "", *, gzip: bool = False) -> InfluxDBClient:
    return InfluxDBClient(url=url, token=token, org="-", enable_gzip=gzip, timeout=10_000)


@pytest.mark.parametrize(("token", "use_gzip"), [("", False), ("user:pass", True)])
def test_influxdb_client_writes_through_the_shim(
    influx: InfluxDB, unique_name: Callable[[str], str], token: str, use_gzip: bool
) -> None:
    db = unique_name("db")
    influx.create_database(db)
    points = [
        Point("anomaly")
        .tag("series", "cpu-1")
        .field("score", 0.25)
        .field("is_anomaly", True)
        .field("count", 3)
        .time(TS, WritePrecision.NS),
        Point("anomaly")
        .tag("series", "cpu-2")
        .field("score", 0.75)
        .field("is_anomaly", False)
        .field("count", 4)
        .time(TS + 1, WritePrecision.NS),
    ]
    with _client(influx.url, token, gzip=use_gzip) as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket=db, record=points)

    rows = influx.query('SELECT * FROM "anomaly" ORDER BY time', db=db)
    assert rows == [
        {"time": TS, "series": "cpu-1", "score": 0.25, "is_anomaly": True, "count": 3},
        {"time": TS + 1, "series": "cpu-2", "score": 0.75, "is_anomaly": False, "count": 4},
    ]


def test_retention_policy_in_bucket_and_coarse_precision(
    influx: InfluxDB, unique_name: Callable[[str], str]
) -> None:
    db = unique_name("db")
    influx.create_database(db)
    with _client(influx.url) as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=f"{db}/autogen",
            record="m,series=a value=1 1700000000",
            write_precision=WritePrecision.S,
        )
    assert influx.query('SELECT "value" FROM "m"', db=db) == [
        {"time": 1_700_000_000 * 10**9, "value": 1.0}
    ]


def test_same_measurement_tags_and_time_overwrite(
    influx: InfluxDB, unique_name: Callable[[str], str]
) -> None:
    db = unique_name("db")
    influx.create_database(db)
    with _client(influx.url) as client:
        write_api = client.write_api(write_options=SYNCHRONOUS)
        for score in (0.1, 0.9):
            point = Point("anomaly").tag("series", "s").field("score", score)
            write_api.write(bucket=db, record=point.time(TS, WritePrecision.NS))

    assert influx.query('SELECT "score" FROM "anomaly"', db=db) == [{"time": TS, "score": 0.9}]


def test_write_to_missing_database_raises_api_exception(
    influx: InfluxDB, unique_name: Callable[[str], str]
) -> None:
    with _client(influx.url) as client, pytest.raises(ApiException) as caught:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=unique_name("missing"), record="m value=1"
        )
    assert caught.value.status == 404
    body = json.loads(caught.value.body)
    assert body["code"] == "not found"
    assert "database not found" in body["message"]


def test_bad_line_protocol_is_a_400_invalid(influx: InfluxDB) -> None:
    with _client(influx.url) as client, pytest.raises(ApiException) as caught:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="streamlstm", record="this is not line protocol"
        )
    assert caught.value.status == 400
    assert json.loads(caught.value.body)["code"] == "invalid"


def test_health_and_v1_passthrough(influx: InfluxDB, unique_name: Callable[[str], str]) -> None:
    db = unique_name("db")
    influx.create_database(db)
    with _client(influx.url) as client:
        assert client.ping()
    with urllib.request.urlopen(f"{influx.url}/health", timeout=5) as response:
        assert response.status == 200
        assert json.load(response)["status"] == "pass"
    # v1 write and query through the shim's URL, gzip and all.
    request = urllib.request.Request(
        f"{influx.url}/write?db={db}&precision=s",
        data=gzip.compress(b"passthrough,series=x value=7 1700000000"),
        headers={"Content-Encoding": "gzip"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204
    query = f"q=SELECT+value+FROM+passthrough&db={db}&epoch=s"
    with urllib.request.urlopen(f"{influx.url}/query?{query}", timeout=5) as response:
        series = json.load(response)["results"][0]["series"][0]
    assert series["values"] == [[1_700_000_000, 7]]


def test_health_fails_when_the_engine_is_down(tmp_path: Path) -> None:
    server = InfluxDB(workdir=tmp_path).start()
    try:
        assert server.pid is not None
        os.kill(server.pid, 9)
        time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{server.url}/health", timeout=5)
        assert caught.value.code == 503
        assert json.load(caught.value)["status"] == "fail"
    finally:
        server.stop()


def test_token_user_password_with_auth_enabled(tmp_path: Path) -> None:
    with InfluxDB(["db"], username="admin", password="s3cret", workdir=tmp_path) as server:
        with _client(server.url, "admin:s3cret") as client:
            client.write_api(write_options=SYNCHRONOUS).write(bucket="db", record="m value=1 1")
        assert server.query('SELECT "value" FROM "m"', db="db") == [{"time": 1, "value": 1.0}]
        with _client(server.url, "admin:wrong") as client, pytest.raises(ApiException) as caught:
            client.write_api(write_options=SYNCHRONOUS).write(bucket="db", record="m value=2 2")
        assert caught.value.status == 401


def test_tansu_round_trip_with_a_committing_consumer_group(
    kafka: TansuBroker, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    try:
        producer.send(topic, key=b"cpu-1", value=b'{"value": 1.5}').get(timeout=10)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # tansu answers a JoinGroup after about half the session timeout (23 s at the
        # kafka-python default of 45 s), so tests keep it short.
        session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
    )
    try:
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        assert [(r.key, r.value) for r in records] == [(b"cpu-1", b'{"value": 1.5}')]
        consumer.commit()
        partition = TopicPartition(topic, records[0].partition)
        assert consumer.committed(partition) == records[0].offset + 1
    finally:
        consumer.close()

    # A new member of the group sees the committed position.
    again = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group)
    try:
        assert again.committed(partition) == records[0].offset + 1
    finally:
        again.close()


def test_prometheus_scrapes_a_client_endpoint(
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    registry = CollectorRegistry()
    Gauge("streamlstm_devstack_probe", "A value for the scrape test.", registry=registry).set(42)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        prometheus = prometheus_factory([f"127.0.0.1:{server.server_port}"])
        result = prometheus.wait_for_series("streamlstm_devstack_probe", timeout=30)
        assert float(result[0]["value"][1]) == 42.0
        assert prometheus.query("streamlstm_devstack_probe")[0]["metric"]["job"] == "streamlstm"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_failed_start_raises_with_the_server_log(tmp_path: Path) -> None:
    rules = tmp_path / "broken.rules.yml"
    rules.write_text("groups: [{name: g, rules: [{record: x, expr: 'sum(('}]}]\n")
    with pytest.raises(StreamlstmError) as caught:
        Prometheus([], rule_files=[rules], workdir=tmp_path / "prom").start()
    assert isinstance(caught.value, DevstackError)
    assert "exited with code" in str(caught.value)
    assert "broken.rules.yml" in str(caught.value)


def test_stop_ends_the_process_and_removes_the_temp_dir() -> None:
    with TansuBroker() as broker:
        pid, workdir = broker.pid, broker.workdir
        assert pid is not None and workdir is not None and workdir.is_dir()
        assert broker.running
    assert not broker.running
    assert not workdir.exists()
    assert not Path(f"/proc/{pid}").exists()
