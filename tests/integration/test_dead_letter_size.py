"""Rejects near the size limit on a real tansu broker: the dead letter (the message plus its
reason headers) would be larger than the producer may send, so its value is cut to fit with a
``streamlstm-truncated`` header, and nothing raises."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from streamlstm.decoding import JsonDecoder
from streamlstm.sources.kafka import (
    HEADER_OFFSET,
    HEADER_REASON,
    HEADER_TRUNCATED,
    KafkaSource,
)
from tests.integration.test_kafka_source import (
    count_at_least,
    create_topic,
    poll_until,
    produce,
    read_all,
    settings_for,
)


@pytest.mark.parametrize(("limit", "sizes"), [
    (4096, [100, 4000, 20_000]),
    # the default: a message just under kafka-python's default 1 MiB request, which the
    # source topic takes, plus reason headers used to raise MessageSizeTooLargeError
    (None, [1_048_450]),
])
def test_rejects_too_large_for_a_dead_letter_are_cut_to_fit(
        kafka: Any, unique_name: Callable[[str], str], limit: int | None,
        sizes: list[int]) -> None:
    topic = unique_name("big")
    create_topic(kafka, topic, partitions=1)
    bodies = [b"{not json " + b"x" * (size - 10) for size in sizes]
    produce(kafka, topic, [(0, b"key", body) for body in bodies], one_by_one=True)
    overrides = {} if limit is None else {"dead_letter_max_bytes": limit}
    settings = settings_for(kafka, topic, unique_name("g"), **overrides)
    source = KafkaSource(settings, JsonDecoder())
    try:
        polled = poll_until(source, count_at_least(len(bodies)), timeout=30)
        assert [r.reason for r in polled.rejected] == ["invalid_json"] * len(bodies)
        source.dead_letter(polled.rejected)  # used to raise MessageSizeTooLargeError
        source.commit(polled.offsets)
    finally:
        source.close()

    dead = read_all(kafka, f"{topic}.dead-letter", expected=len(bodies), timeout=30)
    by_offset = {int(m["headers"][HEADER_OFFSET]): m for m in dead}
    assert sorted(by_offset) == list(range(len(bodies)))
    cap = settings.dead_letter_max_bytes
    for offset, body in enumerate(bodies):
        message = by_offset[offset]
        assert message["headers"][HEADER_REASON] == b"invalid_json"
        assert message["key"] == b"key"
        if len(body) + 400 < cap:
            assert message["value"] == body and HEADER_TRUNCATED not in message["headers"]
        else:
            assert message["headers"][HEADER_TRUNCATED] == str(len(body)).encode()
            assert body.startswith(message["value"]) and len(message["value"]) < cap
            assert len(message["value"]) > cap - 2000
