"""The real daemon (real tansu and InfluxDB) fed 45 kinds of malformed and poisoning messages,
several times each, interleaved with good series: it never stops, every good event has exactly
one point, every bad message is counted by reason and is in the dead-letter topic, the consumer
catches up, and the spikes in the good series are still flagged."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from streamlstm.sources.kafka import HEADER_OFFSET, HEADER_REASON, HEADER_TRUNCATED
from tests.integration.daemon import (
    STEP,
    T0,
    WINDOW,
    RunningDaemon,
    count_points,
    event,
    points_by_series,
    settings_for,
    sine,
    train_model,
    wait_until,
)

GOOD = ["web1.cpu", "db.latency", "queue.depth"]
N = 200  # events per good series
SPIKES = {"web1.cpu": 120, "db.latency": 150, "queue.depth": 175}
REPEATS = 8
DEAD_LETTER_MAX_BYTES = 100_000
OVERSIZE = 300_000  # bytes of one bad message: more than a dead letter may carry


def _ev(**fields: object) -> bytes:
    body: dict[str, object] = {"series": "fuzz.x", "timestamp": T0 + 60, "value": 1.0}
    body.update(fields)
    return json.dumps(body).encode()


def _without(name: str) -> bytes:
    body: dict[str, object] = {"series": "fuzz.x", "timestamp": T0 + 60, "value": 1.0}
    del body[name]
    return json.dumps(body).encode()


_RAW = b'{"series": "fuzz.x", "timestamp": 1700000060, "value": %s}'

#: kind -> (message, the reason it must be rejected with)
BAD: dict[str, tuple[bytes, str]] = {
    "not json": (b"{not json", "invalid_json"),
    "empty body": (b"", "invalid_json"),
    "whitespace": (b"  \n ", "invalid_json"),
    "truncated": (_ev()[:-5], "invalid_json"),
    "invalid utf-8": (b'{"series": "\xff\xfe", "timestamp": 1700000060, "value": 1}',
                      "invalid_json"),
    "deep arrays": (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    "deep objects": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "invalid_json"),
    "oversize body": (b"{" + b"x" * OVERSIZE, "invalid_json"),
    "array": (b"[1, 2, 3]", "not_an_object"),
    "boolean": (b"true", "not_an_object"),
    "null": (b"null", "not_an_object"),
    "string": (b'"hello"', "not_an_object"),
    "number": (b"42", "not_an_object"),
    "no value": (_without("value"), "missing_field"),
    "no timestamp": (_without("timestamp"), "missing_field"),
    "no series, no key": (_without("series"), "missing_field"),
    "value null": (_ev(value=None), "missing_field"),
    "value string": (_ev(value="fast"), "bad_value"),
    "value NaN": (_RAW % b"NaN", "bad_value"),
    "value Infinity": (_RAW % b"Infinity", "bad_value"),
    "value -Infinity": (_RAW % b"-Infinity", "bad_value"),
    "value 1e39": (_ev(value=1e39), "bad_value"),
    "value 3.5e38": (_ev(value=3.5e38), "bad_value"),
    "value 1e400": (_RAW % b"1e400", "bad_value"),
    "value 10**400": (_RAW % (b"9" * 400), "bad_value"),
    "value boolean": (_ev(value=True), "bad_value"),
    "value array": (_ev(value=[1]), "bad_value"),
    "value object": (_ev(value={"x": 1}), "bad_value"),
    "timestamp 0": (_ev(timestamp=0), "timestamp_out_of_range"),
    "timestamp 2261 epoch": (_ev(timestamp=9.2e9), "timestamp_out_of_range"),
    "timestamp next week": (_ev(timestamp=time.time() + 7 * 86_400), "timestamp_out_of_range"),
    "timestamp 2262 text": (_ev(timestamp="2262-04-12T00:00:00Z"), "bad_timestamp"),
    "timestamp negative": (_ev(timestamp=-5), "bad_timestamp"),
    "timestamp string": (_ev(timestamp="yesterday"), "bad_timestamp"),
    "timestamp 1e20": (_ev(timestamp=1e20), "bad_timestamp"),
    "timestamp NaN": (b'{"series": "fuzz.x", "timestamp": NaN, "value": 1}', "bad_timestamp"),
    "timestamp boolean": (_ev(timestamp=True), "bad_timestamp"),
    "series empty": (_ev(series=""), "bad_series"),
    "series lone surrogate": (b'{"series": "\\ud800x", "timestamp": 1700000060, "value": 1}',
                              "bad_series"),
    "series bell": (_ev(series="a\u0007b"), "bad_series"),
    "series newline": (_ev(series="a\nb"), "bad_series"),
    "series DEL": (_ev(series="a\x7fb"), "bad_series"),
    "series too long": (_ev(series="s" * 300), "bad_series"),
    "series backslash end": (_ev(series="x\\"), "bad_series"),
    "series number": (_ev(series=5), "bad_series"),
    "series array": (_ev(series=["a"]), "bad_series"),
}


def _messages() -> tuple[list[tuple[bytes | None, bytes]], dict[int, str], set[int]]:
    """(key, value) in topic order, the reason of each bad offset, the oversize offsets.

    Beside the malformed kinds, two that poison a good series: an event older than the
    series' latest, and a repeat of the event just sent (both out_of_order)."""
    values = {name: sine(N, phase=k, seed=300 + k) for k, name in enumerate(GOOD)}
    for name, index in SPIKES.items():
        values[name][index] += 8.0
    bad = [item for _ in range(REPEATS) for item in BAD.values()]
    out: list[tuple[bytes | None, bytes]] = []
    reasons: dict[int, str] = {}
    oversize: set[int] = set()
    poison = 0
    for i in range(N):
        for name in GOOD:
            out.append((name.encode(), json.dumps(event(name, i, float(values[name][i])))
                        .encode()))
        for _ in range(2):  # two bad messages a row, round robin, until all are sent
            if bad:
                body, reason = bad.pop()
                reasons[len(out)] = reason
                if len(body) > DEAD_LETTER_MAX_BYTES:
                    oversize.add(len(out))
                out.append((None, body))
        if i >= 10 and i % 20 == 0:
            name = GOOD[poison % len(GOOD)]
            poison += 1
            for past in (i - 7, i):  # older than the latest; the same time as the latest
                reasons[len(out)] = "out_of_order"
                out.append((name.encode(), json.dumps(event(name, past, 0.0)).encode()))
    assert not bad
    return out, reasons, oversize


def _read_dead_letters(bootstrap: str, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list = []
        deadline = time.monotonic() + 60
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                out += batch
        return out
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("fuzz-models")
    train_model(models)
    return models


def test_the_daemon_survives_hostile_input_and_loses_nothing(
        kafka, influx, unique_name, models) -> None:
    assert len(BAD) + 1 >= 30  # malformed kinds, plus the poisoning out-of-order ones
    topic, group, database = unique_name("fuzz"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])  # one partition: offsets are list indices
    finally:
        admin.close()
    messages, reasons, oversize = _messages()
    assert oversize and len(reasons) > 8 * 46
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=5,
                             max_in_flight_requests_per_connection=1)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    settings = settings_for(kafka.bootstrap, topic, group, influx.url, database, models,
                            dead_letter_max_bytes=DEAD_LETTER_MAX_BYTES)
    # The events are dated 2023: accept them, but nothing a month before them or a day
    # after now, so timestamp 0, 2261 and next week are out of range.
    settings = replace(settings, decoder=replace(
        settings.decoder, max_past_s=time.time() - T0 + 30 * 86_400))
    expected_points = len(GOOD) * (N - WINDOW + 1)
    with RunningDaemon(settings) as daemon:
        wait_until(lambda: daemon.error is not None or (
            daemon.metric("streamlstm_dead_letter_messages_total") >= len(reasons)
            and count_points(influx, database) >= expected_points), 60,
            "every message handled")
        assert daemon.error is None and daemon.thread.is_alive(), "the daemon stopped"
        wait_until(lambda: daemon.metric("streamlstm_consumer_lag_records", topic=topic,
                                         partition="0") == 0
                   and daemon.metric("streamlstm_offset_commits_total") > 0, 30,
                   "the consumer caught up")
        assert daemon.metric("streamlstm_events_consumed_total") == len(messages)
        counted = {reason: daemon.metric("streamlstm_events_rejected_total", reason=reason)
                   for reason in set(reasons.values())}
        assert daemon.metric("streamlstm_dead_letter_messages_total") == len(reasons)
        assert daemon.thread.is_alive()
    assert counted == dict(Counter(reasons.values()))

    points = points_by_series(influx, database)
    assert sorted(points) == sorted(GOOD), "only the good series have points"
    for name in GOOD:
        rows = points[name]
        assert [r["time"] for r in rows] == [int((T0 + i * STEP) * 1e9)
                                             for i in range(WINDOW - 1, N)], name
        flagged = [WINDOW - 1 + k for k, r in enumerate(rows) if r["is_anomaly"]]
        spike = SPIKES[name]
        assert any(spike <= i < spike + WINDOW for i in flagged), (
            f"{name}: the spike at {spike} was not flagged (flagged: {flagged})")

    dead = _read_dead_letters(kafka.bootstrap, f"{topic}.dead-letter", len(reasons))
    got = {int(dict(m.headers)[HEADER_OFFSET]): m for m in dead}
    assert len(dead) == len(reasons) and set(got) == set(reasons)
    for offset, message in got.items():
        headers = dict(message.headers)
        assert headers[HEADER_REASON].decode() == reasons[offset], offset
        original = messages[offset][1]
        if offset in oversize:
            assert headers[HEADER_TRUNCATED] == str(len(original)).encode()
            assert original.startswith(message.value) and len(message.value) < len(original)
        else:
            assert message.value == original and HEADER_TRUNCATED not in headers
