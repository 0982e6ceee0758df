"""The daemon end to end: real tansu broker, real InfluxDB, real Prometheus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from streamlstm import __version__
from streamlstm.devstack import free_port
from streamlstm.metrics import build_labels
from tests.integration.daemon import (
    STEP,
    T0,
    WINDOW,
    RunningDaemon,
    count_points,
    event,
    points_by_series,
    produce,
    settings_for,
    sine,
    train_model,
    wait_until,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    train_model(path)
    return path


def _series_events(names: list[str], n: int, spikes: dict[str, int] | None = None,
                   start: int = 0, stop: int | None = None) -> list[dict]:
    """Events of every series interleaved by time, rows ``start..stop`` of ``n``."""
    values = {name: sine(n, phase=k, seed=100 + k) for k, name in enumerate(names)}
    for name, index in (spikes or {}).items():
        values[name][index] += 8.0  # the sine's amplitude is 3 and its noise 0.1
    return [event(name, i, float(values[name][i]))
            for i in range(start, n if stop is None else stop) for name in names]


def test_scores_every_event_once_and_flags_the_spikes(kafka, influx, prometheus_factory,
                                                      unique_name, models) -> None:
    topic, group, database = unique_name("e2e"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    names = ["host1.cpu", "host2.cpu", "db1.mem"]
    n = 300
    spikes = {"host1.cpu": 150, "host2.cpu": 200, "db1.mem": 260}
    produce(kafka.bootstrap, topic, _series_events(names, n, spikes))
    expected = len(names) * (n - WINDOW + 1)

    settings = settings_for(kafka.bootstrap, topic, group, influx.url, database, models)
    with RunningDaemon(settings) as daemon:
        prometheus = prometheus_factory([f"127.0.0.1:{daemon.server.port}"])
        wait_until(lambda: count_points(influx, database) >= expected, 120, "all scores written")
        assert daemon.get("/healthz")[0] == 200
        wait_until(lambda: daemon.get("/readyz")[0] == 200, 10, "ready")
        scraped = prometheus.wait_for_series(
            f"streamlstm_events_scored_total == {expected}", timeout=30)
        assert scraped, "Prometheus never scraped the final scored count"
        assert daemon.metric("streamlstm_events_consumed_total") == len(names) * n
        assert daemon.metric("streamlstm_events_scored_total") == expected
        assert daemon.metric("streamlstm_series_tracked") == len(names)
        # Event-time freshness: the newest event scored is the last one produced.
        assert daemon.metric("streamlstm_last_event_timestamp_seconds") == T0 + (n - 1) * STEP
        build = build_labels()
        assert build["version"] == __version__
        assert daemon.metric("streamlstm_build_info", **build) == 1
        status, exposition = daemon.get("/metrics")
        assert status == 200 and "streamlstm_build_info{" in exposition
        assert "_created" not in exposition
        version = daemon.service.pipeline.model_version

    points = points_by_series(influx, database)
    assert sorted(points) == sorted(names)
    flagged_total = 0
    for name in names:
        rows = points[name]
        # One point per scored event: every event from the first full window on, exactly once.
        expected_times = [int((T0 + i * STEP) * 1e9) for i in range(WINDOW - 1, n)]
        assert [r["time"] for r in rows] == expected_times
        assert {r["model_version"] for r in rows} == {version}
        assert all(0.0 <= r["score"] <= 1.0 for r in rows)
        assert all(r["threshold"] > 0 and r["error"] >= 0 for r in rows)
        flagged = [int(round(r["time"] / 1e9 - T0) / STEP) for r in rows if r["is_anomaly"]]
        flagged_total += len(flagged)
        spike = spikes[name]
        assert any(spike <= i < spike + WINDOW for i in flagged), (
            f"{name}: spike at {spike} not flagged (flagged: {flagged})")
        outside = [i for i in flagged if not spike <= i < spike + WINDOW]
        assert len(outside) <= 3, f"{name}: false alarms at {outside}"
    assert daemon.metric("streamlstm_anomalies_total") == flagged_total


def test_restart_resumes_from_committed_offsets_without_loss(kafka, influx, unique_name,
                                                             models) -> None:
    topic, group, database = unique_name("restart"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    names = ["a", "b"]
    n, cut = 240, 120
    settings = settings_for(kafka.bootstrap, topic, group, influx.url, database, models)

    produce(kafka.bootstrap, topic, _series_events(names, n, stop=cut))
    first_part = len(names) * (cut - WINDOW + 1)
    with RunningDaemon(settings) as first:
        wait_until(lambda: count_points(influx, database) >= first_part, 120, "first part")
        wait_until(lambda: first.metric("streamlstm_offset_commits_total") > 0, 10, "a commit")

    produce(kafka.bootstrap, topic, _series_events(names, n, start=cut))
    with RunningDaemon(settings) as second:
        expected = len(names) * (n - WINDOW + 1)
        wait_until(lambda: count_points(influx, database) >= expected, 120, "all scores")
        # The second run re-read the tail of the first part to refill its windows, but scored
        # and wrote only the new events: nothing twice, nothing skipped.
        new_events = len(names) * (n - cut)
        wait_until(lambda: second.metric("streamlstm_events_scored_total") == new_events,
                   10, "scored count of the second run")

    points = points_by_series(influx, database)
    for name in names:
        times = [r["time"] for r in points[name]]
        assert times == [int((T0 + i * STEP) * 1e9) for i in range(WINDOW - 1, n)], (
            f"{name}: gap or duplicate around the restart")


def test_bad_messages_go_to_the_dead_letter_topic_and_good_ones_are_all_scored(
        kafka, influx, unique_name, models) -> None:
    topic, group, database = unique_name("bad"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    n = 80
    good = _series_events(["svc.latency"], n)
    bad: list[dict | bytes] = [
        b"{not json",
        json.dumps({"series": "svc.latency", "timestamp": T0}).encode(),  # no value
        json.dumps({"series": "svc.latency", "timestamp": T0, "value": "fast"}).encode(),
        b'{"series": "svc.latency", "timestamp": 1700000000, "value": NaN}',
        json.dumps({"series": "svc.latency", "timestamp": "yesterday", "value": 1}).encode(),
    ]
    late = event("svc.latency", 10, 1.0)  # a timestamp the series has already passed
    messages: list[dict | bytes] = [*good[:40], *bad, *good[40:], late]
    produce(kafka.bootstrap, topic, messages)

    settings = settings_for(kafka.bootstrap, topic, group, influx.url, database, models)
    with RunningDaemon(settings) as daemon:
        wait_until(lambda: count_points(influx, database) >= n - WINDOW + 1, 120, "good scores")
        wait_until(lambda: daemon.metric("streamlstm_dead_letter_messages_total") == 6, 30,
                   "six dead letters")
        reasons = {r: daemon.metric("streamlstm_events_rejected_total", reason=r)
                   for r in ("invalid_json", "missing_field", "bad_value", "bad_timestamp",
                             "out_of_order")}
    assert reasons == {"invalid_json": 1, "missing_field": 1, "bad_value": 2,
                       "bad_timestamp": 1, "out_of_order": 1}
    assert count_points(influx, database) == n - WINDOW + 1

    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5_000)
    dead_letter_topic = f"{topic}.dead-letter"
    partitions = consumer.partitions_for_topic(dead_letter_topic) or set()
    consumer.assign([TopicPartition(dead_letter_topic, p) for p in partitions])
    dead = list(consumer)
    consumer.close()
    assert len(dead) == 6
    header_reasons = sorted(dict(m.headers)["streamlstm-reason"].decode() for m in dead)
    assert header_reasons == sorted(["invalid_json", "missing_field", "bad_value", "bad_value",
                                     "bad_timestamp", "out_of_order"])
    assert b"{not json" in [m.value for m in dead]  # the original bytes, untouched


def test_influx_outage_stops_commits_and_nothing_is_lost(kafka, influx, unique_name,
                                                         models) -> None:
    topic, group, database = unique_name("outage"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    n = 60
    produce(kafka.bootstrap, topic, _series_events(["edge.rps"], n))
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens here

    down = settings_for(kafka.bootstrap, topic, group, dead_url, database, models)
    with RunningDaemon(down) as daemon:
        wait_until(lambda: daemon.metric("streamlstm_influx_write_failures_total") >= 3, 60,
                   "write retries")
        status, body = daemon.get("/readyz")
        assert status == 503 and "InfluxDB" in body
        assert daemon.get("/healthz")[0] == 200  # alive, just not ready
        assert daemon.metric("streamlstm_influx_up") == 0
        assert daemon.metric("streamlstm_offset_commits_total") == 0
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group,
                             enable_auto_commit=False)
    assert consumer.committed(TopicPartition(topic, 0)) is None, "committed past unwritten scores"
    consumer.close()

    up = settings_for(kafka.bootstrap, topic, group, influx.url, database, models)
    with RunningDaemon(up):
        wait_until(lambda: count_points(influx, database) >= n - WINDOW + 1, 120, "replayed scores")
    assert count_points(influx, database) == n - WINDOW + 1


def test_a_file_of_several_columns_produced_to_kafka_scores_one_point_per_row(
        kafka, influx, unique_name, models, tmp_path: Path) -> None:
    """`streamlstm produce` sends a sensor file's rows as `values` objects; the daemon, on a
    one-feature model, scores each column as a series and writes one verdict per row."""
    from streamlstm import cli

    topic, group, database = unique_name("rows"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    n, jump = 300, 200
    columns = {"pressure": sine(n, seed=1), "temperature": sine(n, phase=1.0, seed=2),
               "flow": sine(n, phase=2.0, seed=3)}
    columns["flow"][jump:jump + 20] += 8.0
    source = tmp_path / "rig.csv"
    source.write_text("timestamp," + ",".join(columns) + "\n" + "".join(
        f"{T0 + i * STEP:.0f}," + ",".join(f"{v[i]:.5f}" for v in columns.values()) + "\n"
        for i in range(n)))
    assert cli.main(["produce", "--input", str(source), "--topic", topic,
                     "--bootstrap", kafka.bootstrap]) == 0
    expected = n - WINDOW + 1
    settings = settings_for(kafka.bootstrap, topic, group, influx.url, database, models)
    with RunningDaemon(settings) as daemon:
        wait_until(lambda: count_points(influx, database) >= expected, 120, "all rows scored")
        assert daemon.metric("streamlstm_events_consumed_total") == n
        assert daemon.metric("streamlstm_events_scored_total") == expected
        assert daemon.metric("streamlstm_series_tracked") == len(columns)
        assert daemon.metric("streamlstm_dead_letters_total") == 0

    points = points_by_series(influx, database)
    assert list(points) == ["rig"]
    rows = points["rig"]
    assert [r["time"] for r in rows] == [int((T0 + i * STEP) * 1e9) for i in range(WINDOW - 1, n)]
    assert [r["value_2"] for r in rows[:3]] == pytest.approx(
        [round(v, 5) for v in columns["flow"][WINDOW - 1:WINDOW + 2]])
    flagged = [(int(round(r["time"] / 1e9 - T0) / STEP), r["top_feature"])
               for r in rows if r["is_anomaly"]]
    assert any(jump <= i < jump + 20 and top == "flow" for i, top in flagged), flagged
    assert sum(1 for r in rows if r["alarm"]) >= 1
