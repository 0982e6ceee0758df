"""KafkaSource and read_range against a real tansu broker.

Group joins on tansu wait for the rebalance timeout (max_poll_interval_ms), so the settings
here keep it at 3 s; each test uses its own topic and group.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from streamlstm.config import KafkaSettings
from streamlstm.decoding import JsonDecoder
from streamlstm.sources.kafka import (
    HEADER_DETAIL,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
    KafkaSource,
    Polled,
    read_range,
)

T0 = 1_714_564_800.0


def settings_for(kafka: Any, topic: str, group: str, **overrides: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "topic": topic,
        "group_id": group,
        "client_id": "streamlstm-test",
        "dead_letter_topic": f"{topic}.dead-letter",
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 500,
        "max_poll_interval_ms": 3_000,
        "poll_timeout_ms": 200,
        "max_poll_records": 500,
        "rewind_records": 0,
    }
    values.update(overrides)
    return KafkaSettings(**values)


def create_topic(kafka: Any, name: str, partitions: int = 2) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def event(series: str, ts: float, value: float) -> bytes:
    return json.dumps({"series": series, "timestamp": ts, "value": value}).encode()


def produce(kafka: Any, topic: str, messages: Iterable[tuple[int, bytes | None, bytes]],
            one_by_one: bool = False) -> None:
    """Send (partition, key, value); batched unless ``one_by_one`` (one batch per record)."""
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=20)
    try:
        for partition, key, value in messages:
            future = producer.send(topic, key=key, value=value, partition=partition)
            if one_by_one:
                future.get(timeout=10)
        producer.flush(timeout=10)
    finally:
        producer.close()


def poll_until(source: KafkaSource, done: Callable[[Polled], bool],
               timeout: float = 20.0) -> Polled:
    """Poll, merging the results, until ``done(merged)`` or the timeout."""
    merged = Polled()
    deadline = time.monotonic() + timeout
    while not done(merged):
        assert time.monotonic() < deadline, f"gave up waiting; got {merged}"
        polled = source.poll()
        merged.records += polled.records
        merged.rejected += polled.rejected
        merged.offsets.update(polled.offsets)
    return merged


def count_at_least(n: int) -> Callable[[Polled], bool]:
    return lambda p: len(p.records) + len(p.rejected) >= n


@pytest.fixture
def topic(kafka: Any, unique_name: Callable[[str], str]) -> str:
    name = unique_name("src")
    create_topic(kafka, name)
    return name


def test_poll_decodes_rejects_and_dead_letters(kafka: Any, topic: str,
                                               unique_name: Callable[[str], str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    produce(kafka, topic, [
        (0, None, event("a", T0, 1.0)),
        (0, None, b"{not json"),
        (0, b"keyed", json.dumps({"timestamp": T0 + 1, "value": 2}).encode()),
        (0, None, json.dumps({"series": "a", "value": 3}).encode()),
        (0, None, event("a", T0 + 2, 4.0)),
        (1, b"k1", json.dumps({"series": "b", "timestamp": T0, "value": "high"}).encode()),
        (1, None, event("b", T0, 5.0)),
        (1, None, b"{also not json"),
    ])
    source = KafkaSource(settings_for(kafka, topic, unique_name("g")), JsonDecoder())
    try:
        with caplog.at_level(logging.WARNING, logger="streamlstm.sources.kafka"):
            polled = poll_until(source, count_at_least(8))
        got = sorted((r.partition, r.offset, r.point.series, r.point.timestamp, r.point.values,
                      r.warmup) for r in polled.records)
        assert got == [
            (0, 0, "a", T0, (1.0,), False),
            (0, 2, "keyed", T0 + 1, (2.0,), False),
            (0, 4, "a", T0 + 2, (4.0,), False),
            (1, 1, "b", T0, (5.0,), False),
        ]
        rejected = sorted(polled.rejected, key=lambda r: (r.partition, r.offset))
        assert [(r.partition, r.offset, r.reason) for r in rejected] == [
            (0, 1, "invalid_json"), (0, 3, "missing_field"), (1, 0, "bad_value"),
            (1, 2, "invalid_json")]
        assert polled.offsets == {0: 5, 1: 3}
        # logged once per reason (the second invalid_json is held back for a minute)
        logged = [r.getMessage() for r in caplog.records if "rejected message" in r.getMessage()]
        assert sorted(m.split(": ")[1] for m in logged) == [
            "bad_value", "invalid_json", "missing_field"]

        source.dead_letter(rejected)
        source.commit(polled.offsets)
    finally:
        source.close()

    dead = read_all(kafka, f"{topic}.dead-letter", expected=4)
    by_offset = {(m["headers"][HEADER_PARTITION], m["headers"][HEADER_OFFSET]): m for m in dead}
    assert set(by_offset) == {(b"0", b"1"), (b"0", b"3"), (b"1", b"0"), (b"1", b"2")}
    bad_json = by_offset[(b"0", b"1")]
    assert bad_json["value"] == b"{not json" and bad_json["key"] is None
    assert bad_json["headers"][HEADER_REASON] == b"invalid_json"
    assert bad_json["headers"][HEADER_TOPIC] == topic.encode()
    assert bad_json["headers"][HEADER_DETAIL]
    assert by_offset[(b"1", b"0")]["key"] == b"k1"
    assert by_offset[(b"1", b"0")]["headers"][HEADER_REASON] == b"bad_value"


def read_all(kafka: Any, topic: str, expected: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Every message of ``topic`` with a plain, group-less consumer."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=200).values():
                out += [{"key": m.key, "value": m.value, "headers": dict(m.headers)}
                        for m in messages]
        return out
    finally:
        consumer.close()


def test_a_new_member_resumes_after_the_committed_offset(
        kafka: Any, topic: str, unique_name: Callable[[str], str]) -> None:
    settings = settings_for(kafka, topic, unique_name("g"))
    produce(kafka, topic, [(0, None, event("a", T0 + i, i)) for i in range(6)])
    first = KafkaSource(settings, JsonDecoder())
    try:
        polled = poll_until(first, count_at_least(6))
        assert polled.offsets == {0: 6}
        first.commit({0: 4})  # as if only the first four were written
    finally:
        first.close()

    second = KafkaSource(settings, JsonDecoder())
    try:
        polled = poll_until(second, count_at_least(2))
        assert [(r.offset, r.warmup) for r in polled.records] == [(4, False), (5, False)]
        assert polled.offsets == {0: 6}
    finally:
        second.close()


def test_rewind_on_assignment_replays_warmup_records(
        kafka: Any, topic: str, unique_name: Callable[[str], str]) -> None:
    settings = settings_for(kafka, topic, unique_name("g"), rewind_records=4)
    bad = json.dumps({"series": "a", "timestamp": "never", "value": 1}).encode()
    produce(kafka, topic, [(0, None, bad if i == 7 else event("a", T0 + i, i))
                           for i in range(10)] + [(1, None, event("b", T0, 0))])
    first = KafkaSource(settings, JsonDecoder())
    try:
        polled = poll_until(first, count_at_least(11))
        # nothing was ever committed: no warm-up, everything is new
        assert not any(r.warmup for r in polled.records)
        assert [r.offset for r in polled.rejected] == [7]
        first.commit(polled.offsets)
    finally:
        first.close()

    produce(kafka, topic, [(0, None, event("a", T0 + i, i)) for i in range(10, 13)])
    second = KafkaSource(settings, JsonDecoder())
    try:
        polled = poll_until(second, lambda p: {(0, 12), (1, 0)} <= {
            (r.partition, r.offset) for r in p.records})
        part0 = [(r.offset, r.warmup) for r in polled.records if r.partition == 0]
        # 4 records before the commit at 10 come back as warm-up (the bad one at 7 silently
        # dropped, it was dead-lettered the first time), then the new ones
        assert part0 == [(6, True), (8, True), (9, True), (10, False), (11, False), (12, False)]
        assert polled.rejected == []
        assert polled.offsets[0] == 13
        # partition 1 had one record, committed at 1: rewound to 0, all warm-up, so no offset
        part1 = [(r.offset, r.warmup) for r in polled.records if r.partition == 1]
        assert part1 == [(0, True)]
        assert 1 not in polled.offsets
    finally:
        second.close()


def test_pause_resume_and_lag(kafka: Any, topic: str, unique_name: Callable[[str], str]) -> None:
    settings = settings_for(kafka, topic, unique_name("g"), max_poll_records=3)
    # one batch of ten: tansu's end_offsets() says 1 here, the fetch's high watermark says 10
    produce(kafka, topic, [(0, None, event("a", T0 + i, i)) for i in range(10)])
    source = KafkaSource(settings, JsonDecoder())
    try:
        first = poll_until(source, count_at_least(1))
        assert len(first.records) == 3
        assert source.lag() == {0: 7, 1: 0}
        poll_until(source, count_at_least(7))
        assert source.lag() == {0: 0, 1: 0}

        source.pause()
        produce(kafka, topic, [(1, None, event("b", T0 + i, i)) for i in range(4)],
                one_by_one=True)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert source.poll().records == []
        assert source.lag() == {0: 0, 1: 4}

        source.resume()
        resumed = poll_until(source, count_at_least(4))
        assert [r.offset for r in resumed.records] == [0, 1, 2, 3]
        assert source.lag() == {0: 0, 1: 0}
    finally:
        source.close()


def test_read_range_filters_by_event_time(kafka: Any, topic: str) -> None:
    good = [(i % 2, None, event(f"s{i % 3}", T0 + i, i)) for i in range(100)]
    produce(kafka, topic, [*good[:50], (0, None, b"garbage"), *good[50:]])
    settings = settings_for(kafka, topic, "unused")
    started = time.monotonic()
    points = list(read_range(settings, T0 + 20, T0 + 50, JsonDecoder(), idle_timeout_s=2.0))
    assert time.monotonic() - started < 10
    assert sorted(p.timestamp - T0 for p in points) == list(range(20, 50))
    assert {p.series for p in points} == {"s0", "s1", "s2"}
    assert list(read_range(settings, T0 + 500, T0 + 600, JsonDecoder(), idle_timeout_s=1.0)) == []


def test_rebalance_rewinds_only_partitions_new_to_a_member(
        kafka: Any, topic: str, unique_name: Callable[[str], str]) -> None:
    settings = settings_for(kafka, topic, unique_name("g"), rewind_records=3)
    produce(kafka, topic, [(p, None, event(f"s{p}", T0 + i, i)) for p in (0, 1) for i in range(5)])
    first = KafkaSource(settings, JsonDecoder())
    second: KafkaSource | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        polled = poll_until(first, count_at_least(10))
        first.commit(polled.offsets)
        assert polled.offsets == {0: 5, 1: 5}

        # A second member joins; both keep polling (each in its own thread, as two daemons
        # would) until the group has split the two partitions between them.
        second = KafkaSource(settings, JsonDecoder())
        members = [first, second]
        seen: list[Polled] = [Polled(), Polled()]

        def run(index: int) -> None:
            member = members[index]
            while not stop.is_set():
                polled = member.poll()
                seen[index].records += polled.records
                member.commit(polled.offsets)

        threads += [threading.Thread(target=run, args=(i,), daemon=True) for i in (0, 1)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while not (first.assignment() and second.assignment()):
            assert time.monotonic() < deadline, "the group never split the partitions"
            time.sleep(0.1)
        produce(kafka, topic, [(p, None, event(f"s{p}", T0 + i, i))
                               for p in (0, 1) for i in range(5, 7)])
        while sum(not r.warmup for s in seen for r in s.records) < 4:
            assert time.monotonic() < deadline, f"new records never arrived: {seen}"
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)

        assert len(first.assignment()) == 1 and len(second.assignment()) == 1
        kept, = first.assignment()
        moved, = second.assignment()
        # the first member kept its window state for the partition it kept: no warm-up
        assert [r.offset for r in seen[0].records if r.partition == kept] == [5, 6]
        # the partition new to the second member is rewound 3 records behind the commit
        assert [(r.offset, r.warmup) for r in seen[1].records] == [
            (2, True), (3, True), (4, True), (5, False), (6, False)]
        assert all(r.partition == moved for r in seen[1].records)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        first.close()
        if second is not None:
            second.close()


def test_a_rewind_without_checkpoint_goes_back_until_every_recent_series_is_refilled(
        kafka: Any, topic: str, unique_name: Callable[[str], str]) -> None:
    """A busy series must not crowd a quiet one out of the re-read: the rewind reads the keys
    backwards until every series seen lately has ``refill_points`` points again."""
    settings = settings_for(kafka, topic, unique_name("g"), rewind_records=100_000)
    messages = []
    for i in range(2000):  # "quiet" sends one event for every 20 of "busy"
        messages.append((0, b"busy", event("busy", T0 + i, i)))
        if i % 20 == 0:
            messages.append((0, b"quiet", event("quiet", T0 + i, i)))
    produce(kafka, topic, messages)
    first = KafkaSource(settings, JsonDecoder())
    try:
        polled = poll_until(first, count_at_least(len(messages)))
        first.commit(polled.offsets)
    finally:
        first.close()

    second = KafkaSource(settings, JsonDecoder(), refill_points=8)
    try:
        produce(kafka, topic, [(0, b"busy", event("busy", T0 + 2000, 2000))])
        polled = poll_until(second, lambda p: any(not r.warmup for r in p.records))
        warmup = [r for r in polled.records if r.warmup]
        quiet = sum(1 for r in warmup if r.point.series == "quiet")
        assert quiet >= 8  # refilled, though the last 8 quiet events span 160 busy ones
        assert len(warmup) < len(messages) // 2  # and not by re-reading everything
    finally:
        second.close()
