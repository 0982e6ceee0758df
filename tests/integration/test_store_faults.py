"""Store faults on the real servers: a long outage, refusals (4xx), a replay under a new model."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from streamlstm.devstack import InfluxV2Shim, free_port
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


def _events(name: str, start: int, stop: int, t0: float = T0, step: float = STEP) -> list[dict]:
    values = sine(stop, seed=7)
    return [{**event(name, i, float(values[i])), "timestamp": t0 + i * step}
            for i in range(start, stop)]


def _committed(bootstrap: str, topic: str, group: str) -> int:
    """The group's committed offsets, summed over the topic's partitions."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in partitions)
    finally:
        consumer.close()


def _dead_letters(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5_000)
    partitions = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    dead = list(consumer)
    consumer.close()
    return dead


def test_a_long_outage_keeps_the_daemon_alive_in_its_group_and_loses_nothing(
        kafka, influx, unique_name, models) -> None:
    topic, group, database = unique_name("longout"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    # A shim of our own in front of the engine: pointed at a dead port, every write is
    # answered 503 (the client's keep-alive connection to it stays up, as behind a proxy).
    shim = InfluxV2Shim(influx.engine_url).start()
    engine_port = shim.upstream_port
    n, cut = 120, 60
    produce(kafka.bootstrap, topic, _events("edge.rps", 0, cut))
    settings = settings_for(kafka.bootstrap, topic, group, shim.url, database, models)
    # Liveness fails after 2 s without a turn; the group drops a member silent for 3 s
    # (kafka.max_poll_interval_ms in settings_for). The outage lasts longer than both.
    settings = replace(settings, metrics=replace(settings.metrics, stall_after_s=2.0))
    try:
        with RunningDaemon(settings) as daemon:
            wait_until(lambda: _committed(kafka.bootstrap, topic, group) == cut, 60,
                       "the first part written and committed")
            first = count_points(influx, database)
            assert first == cut - WINDOW + 1
            shim.upstream_port = free_port()
            produce(kafka.bootstrap, topic, _events("edge.rps", cut, n))
            health: list[int] = []

            def outage_lasted() -> bool:
                health.append(daemon.get("/healthz")[0])
                return daemon.metric("streamlstm_influx_write_failures_total") >= 8

            wait_until(outage_lasted, 60, "eight failed writes (several seconds of outage)")
            status, reason = daemon.get("/readyz")
            assert status == 503 and "InfluxDB" in reason and len(reason) < 80
            assert set(health) == {200}, "liveness must not fail while the store is down"
            assert _committed(kafka.bootstrap, topic, group) == cut

            shim.upstream_port = engine_port
            wait_until(lambda: _committed(kafka.bootstrap, topic, group) == n, 60,
                       "everything committed after the outage")
            wait_until(lambda: daemon.get("/readyz")[0] == 200, 10, "ready again")
            # Each score written exactly once: had the consumer left its group, the batch in
            # hand would have been replayed (and written again) by the rejoined member.
            assert daemon.metric("streamlstm_influx_points_written_total") == n - WINDOW + 1
            assert daemon.metric("streamlstm_offset_commits_total") >= 2
    finally:
        shim.stop()
    rows = points_by_series(influx, database)["edge.rps"]
    assert [r["time"] for r in rows] == [int((T0 + i * STEP) * 1e9) for i in range(WINDOW - 1, n)]


def test_points_beyond_retention_are_dead_lettered_and_the_rest_committed(
        kafka, influx, unique_name, models) -> None:
    topic, group, database = unique_name("retention"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    influx._execute(f'CREATE RETENTION POLICY "hour" ON "{database}" DURATION 1h REPLICATION 1 '
                    "DEFAULT")
    now = time.time()
    n = 60
    fresh = _events("fresh", 0, n, t0=now - 1200, step=10)
    stale = _events("stale", 0, n, t0=now - 3 * 3600, step=10)  # older than the policy keeps
    produce(kafka.bootstrap, topic, [e for pair in zip(fresh, stale, strict=True) for e in pair])
    settings = settings_for(kafka.bootstrap, topic, group, influx.url, database, models)
    # Isolating 45 refusals among 90 points takes some 180 requests: more than the 3 s
    # without a poll that settings_for allows (300 s by default).
    settings = replace(settings, kafka=replace(settings.kafka, max_poll_interval_ms=60_000))
    with RunningDaemon(settings) as daemon:
        wait_until(lambda: _committed(kafka.bootstrap, topic, group) == 2 * n, 120,
                   "everything committed")
        refused = n - WINDOW + 1
        wait_until(lambda: daemon.metric("streamlstm_events_rejected_total",
                                         reason="store_rejected") == refused, 10, "counted")
        assert daemon.get("/readyz")[0] == 200
    assert sorted(points_by_series(influx, database)) == ["fresh"]
    assert count_points(influx, database) == n - WINDOW + 1
    dead = _dead_letters(kafka.bootstrap, f"{topic}.dead-letter")
    assert len(dead) == refused
    for message in dead:
        headers = dict(message.headers)
        assert headers["streamlstm-reason"] == b"store_rejected"
        assert b"HTTP 400" in headers["streamlstm-detail"]
        assert b"retention" in headers["streamlstm-detail"]
        assert message.key == b"stale" and b'"stale"' in message.value  # the original message


def test_a_replay_under_a_new_model_replaces_the_points(kafka, influx, unique_name,
                                                       tmp_path) -> None:
    topic, database = unique_name("models"), unique_name("db")
    influx.create_database(database)
    n = 80
    produce(kafka.bootstrap, topic, _events("svc", 0, n))
    expected = n - WINDOW + 1
    first_version = train_model(tmp_path, seed=0, epochs=2)
    with RunningDaemon(settings_for(kafka.bootstrap, topic, unique_name("g"), influx.url,
                                    database, tmp_path)):
        wait_until(lambda: count_points(influx, database) >= expected, 120, "first scoring")
    second_version = train_model(tmp_path, seed=1, epochs=2)  # now the current model
    assert second_version != first_version
    # A new group reads the topic again from the start: every event is scored and written
    # a second time, by the other model.
    with RunningDaemon(settings_for(kafka.bootstrap, topic, unique_name("g"), influx.url,
                                    database, tmp_path)) as daemon:
        wait_until(lambda: daemon.metric("streamlstm_influx_points_written_total") >= expected, 120,
                   "second scoring")
    rows = points_by_series(influx, database)["svc"]
    assert len(rows) == expected, "one point per event, whichever model scored it"
    assert {r["model_version"] for r in rows} == {second_version}
