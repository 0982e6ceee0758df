"""The Kafka source: a consumer-group member that decodes, rewinds, dead-letters and commits.

One :meth:`KafkaSource.poll` is one ``KafkaConsumer.poll``; the service writes the scores of a
poll and only then calls :meth:`KafkaSource.commit` with the poll's offsets, so a crash
replays (idempotently) instead of losing events.

On assignment each partition is rewound up to ``rewind_records`` before its committed offset,
so the windows fill up again; the records below the committed offset come back with
``warmup=True`` and are neither written nor committed again.

Notes on brokers, learnt from tansu (the broker the tests run against):

* ``end_offsets()`` can be short: tansu returns the base offset of the last record *batch* + 1,
  so a batch of ten records reads as one. The high watermark from fetch responses
  (``consumer.highwater``) is right, so :meth:`KafkaSource.lag` and :func:`read_range` prefer it.
* ``offsets_for_times()`` ignores the timestamp and returns offset 0, so :func:`read_range`
  filters every record by its own (decoded) timestamp rather than trusting the seek.
* kafka-python 3 runs rebalance listeners on its IO thread, where blocking calls such as
  ``committed()`` are refused; the listener therefore only pauses the new partitions and
  :meth:`KafkaSource.poll` does the lookups and seeks on the caller's thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.record.default_records import DefaultRecordBatchBuilder

from streamlstm.checkpoints.checkpointer import PartitionState
from streamlstm.config import KafkaSettings
from streamlstm.core.records import Point, Rejected, SourceRecord
from streamlstm.decoding import JsonDecoder, RateLimitedLog
from streamlstm.errors import DecodeError, SourceError

log = logging.getLogger(__name__)

#: Header names on dead-lettered messages (values are UTF-8 bytes).
HEADER_REASON = "streamlstm-reason"
HEADER_DETAIL = "streamlstm-detail"
HEADER_TOPIC = "streamlstm-source-topic"
HEADER_PARTITION = "streamlstm-source-partition"
HEADER_OFFSET = "streamlstm-source-offset"

#: On a dead letter cut to fit: the size in bytes of the value (or key) before the cut.
HEADER_TRUNCATED = "streamlstm-truncated"
HEADER_KEY_TRUNCATED = "streamlstm-key-truncated"

_DEAD_LETTER_TIMEOUT_S = 30.0
_DETAIL_MAX_BYTES = 1024  # a reason's detail header is cut to this
_KEY_MAX_SHARE = 4  # a key too large keeps a quarter of the limit
_SIZE_SLACK = 16  # record varints may grow by a few bytes when a length crosses 2^7k

Headers = list[tuple[str, bytes]]


def _record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """What kafka-python's producer compares with ``max_request_size`` for one record."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers))


def _headers(r: Rejected, source_topic: str) -> Headers:
    return [
        (HEADER_REASON, r.reason.encode()),
        (HEADER_DETAIL, r.detail.encode("utf-8", "replace")[:_DETAIL_MAX_BYTES]),
        (HEADER_TOPIC, source_topic.encode()),
        (HEADER_PARTITION, str(r.partition).encode()),
        (HEADER_OFFSET, str(r.offset).encode()),
    ]


def fit_dead_letter(r: Rejected, source_topic: str, limit: int,
                    ) -> tuple[bytes | None, bytes | None, Headers]:
    """Key, value and headers of ``r``'s dead letter, no larger than ``limit`` bytes.

    The message as it came when it fits; else the value is cut (bytes, so a UTF-8 character
    may be split) and ``streamlstm-truncated`` says its original size, and a key too large to
    leave room is cut the same way (``streamlstm-key-truncated``).
    """
    key, value, headers = r.raw_key, r.raw_value, _headers(r, source_topic)
    if _record_size(key, value, headers) <= limit:
        return key, value, headers
    if value is not None:
        headers.append((HEADER_TRUNCATED, str(len(value)).encode()))
    room = limit - _record_size(key, b"", headers) - _SIZE_SLACK
    if key is not None and room < 0:
        headers.append((HEADER_KEY_TRUNCATED, str(len(key)).encode()))
        key = key[: max(0, limit // _KEY_MAX_SHARE)]
        room = limit - _record_size(key, b"", headers) - _SIZE_SLACK
    if value is not None:
        value = value[: max(0, room)]
    return key, value, headers


def _without_value(r: Rejected, source_topic: str,
                   ) -> tuple[bytes | None, bytes | None, Headers]:
    """``r``'s dead letter with an empty value and a short key, for a broker that refused it."""
    headers = _headers(r, source_topic)
    headers[1] = (HEADER_DETAIL, headers[1][1][:256])
    headers.append((HEADER_TRUNCATED, str(len(r.raw_value or b"")).encode()))
    key = r.raw_key
    if key is not None and len(key) > 256:
        headers.append((HEADER_KEY_TRUNCATED, str(len(key)).encode()))
        key = key[:256]
    return key, b"", headers
_LOOKUP_TIMEOUT_MS = 30_000
# A commit can fail this way when the group rebalanced since the poll; the new owner of the
# partition replays from the last commit, and writes are idempotent, so nothing is lost.
_REBALANCE_ERRORS = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError,
                     UnknownMemberIdError)


@dataclass
class Polled:
    """What one poll brought: decoded records, rejects, and the offsets that cover both.

    ``offsets`` maps partition -> next offset to commit once the records are written; it
    never covers warm-up records (those are below the committed offset already).
    """

    records: list[SourceRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """The connection and security options shared by the consumer and the producer."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",")],
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        # What bounds the wait for a first broker (request_timeout_ms does not; measured).
        "bootstrap_timeout_ms": settings.connect_timeout_ms,
    }
    for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                 "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, name)
        if value is not None:
            config[name] = value
    return config


def consumer_config(settings: KafkaSettings) -> dict[str, Any]:
    """Everything the daemon's group consumer is built with (offsets are committed by hand)."""
    return {
        **client_config(settings),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "max_poll_records": settings.max_poll_records,
    }


def _source_error(what: str, settings: KafkaSettings, exc: BaseException) -> SourceError:
    if isinstance(exc, KafkaTimeoutError) and "bootstrap" in str(exc):
        return SourceError(
            f"kafka at {settings.bootstrap_servers}: {what} failed: no broker answered within "
            f"{settings.connect_timeout_ms / 1000:g} s (kafka.connect_timeout_ms); "
            "is the address right and the broker up?")
    return SourceError(f"kafka at {settings.bootstrap_servers}: {what} failed: {exc}")


class _Listener(ConsumerRebalanceListener):
    """Notes which partitions need a rewind; runs on kafka-python's IO thread, so no I/O here."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._source._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._source._on_assigned(set(assigned))


class KafkaSource:
    """A consumer-group member on ``settings.topic`` plus a producer for the dead-letter topic.

    Rejections are logged here, once per reason per minute (``clock`` is for tests); counting
    them, like every other metric, is the service's job.
    """

    def __init__(self, settings: KafkaSettings, decoder: JsonDecoder,
                 clock: Callable[[], float] = time.monotonic,
                 partition_state: PartitionState | None = None,
                 refill_points: int | None = None) -> None:
        self.settings = settings
        self._decoder = decoder
        self._partition_state = partition_state
        # With it, a rewind goes back only as far as every recently active series needs to
        # have this many points again (up to rewind_records); without, rewind_records exactly.
        self._refill_points = refill_points
        self._scanner: KafkaConsumer | None = None
        # partition -> {series: offset}: restored series whose state has seen further than
        # the partition's re-read start; their warm-up records below it are skipped.
        self._ahead: dict[int, dict[str, int]] = {}
        self._reject_log = RateLimitedLog(log, 60.0, clock)
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._held: set[TopicPartition] = set()  # owned after the last assignment
        self._revoked: set[TopicPartition] = set()
        self._to_rewind: set[TopicPartition] = set()
        # partition -> committed offset found at assignment; records below it are warm-up
        self._warmup_until: dict[int, int] = {}
        self._paused = False
        try:
            self._consumer = KafkaConsumer(**consumer_config(settings))
            self._consumer.subscribe([settings.topic], listener=_Listener(self))
        except KafkaError as exc:
            raise _source_error("connecting the consumer", settings, exc) from exc

    # -- rebalance bookkeeping (IO thread) ---------------------------------------------------

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        with self._lock:
            self._revoked |= revoked
        if self._partition_state is not None:
            # Runs inside poll() or close(), before the partitions are given up: a checkpoint
            # taken now is there for the next owner.
            self._partition_state.on_revoked({tp.partition for tp in revoked})

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        with self._lock:
            # Partitions kept through an eager rebalance keep their window state; only
            # partitions new to this member need their windows refilled.
            fresh = assigned - self._held
            released = self._revoked - assigned
            self._held = (self._held - self._revoked) | assigned
            self._revoked = set()
            if self.settings.rewind_records > 0 or self._partition_state is not None:
                self._to_rewind |= fresh
            for tp in fresh | released:
                self._warmup_until.pop(tp.partition, None)
                self._ahead.pop(tp.partition, None)
            # Paused until poll() has seeked them; all of them while the source is paused.
            hold = assigned if self._paused else fresh & self._to_rewind
        if hold:
            self._consumer.pause(*hold)
        if released and self._partition_state is not None:
            self._partition_state.on_released({tp.partition for tp in released})

    def _rewind(self) -> tuple[set[int], set[int]]:
        """Seek freshly assigned partitions back before their committed offsets: to where
        their restored checkpoint stops (``partition_state``) or, without one, by
        ``rewind_records``.

        Returns (partitions waiting for a rewind, partitions seeked). A failed lookup leaves
        them paused and queued; the next poll tries again.
        """
        with self._lock:
            self._to_rewind &= self._consumer.assignment()
            todo = set(self._to_rewind)
        waiting = {tp.partition for tp in todo}
        if not todo:
            return waiting, set()
        parts = sorted(todo)
        try:
            beginnings = self._consumer.beginning_offsets(parts, timeout_ms=_LOOKUP_TIMEOUT_MS)
            committed = {tp: self._consumer.committed(tp, timeout_ms=_LOOKUP_TIMEOUT_MS)
                         for tp in parts}
        except KafkaError as exc:
            log.warning("looking up committed offsets for the rewind failed, will retry: %s",
                        exc)
            return waiting, set()
        seeked: set[int] = set()
        for tp in parts:
            offset = committed[tp]
            if offset is None:  # never committed: auto_offset_reset decides
                continue
            resume = (self._partition_state.on_assigned(tp.partition, offset)
                      if self._partition_state is not None else None)
            if resume is not None:
                start = max(beginnings.get(tp, 0), resume.offset)
                if resume.ahead:
                    self._ahead[tp.partition] = resume.ahead
            else:
                start = self._rewind_start(tp, beginnings.get(tp, 0), offset)
            if start < offset:
                self._warmup_until[tp.partition] = offset
                self._consumer.seek(tp, start)
                seeked.add(tp.partition)
                log.info("re-reading %s[%d] from %d to the committed %d as warm-up (%s)",
                         tp.topic, tp.partition, start, offset,
                         "from its checkpoint" if resume is not None else "refilling windows")
        with self._lock:
            self._to_rewind -= todo
        if not self._paused:
            self._consumer.resume(*parts)
        return waiting, seeked

    def _rewind_start(self, tp: TopicPartition, beginning: int, committed: int) -> int:
        """Where a rewind without a checkpoint starts re-reading ``tp``.

        Reads the keys (the series) backwards from the committed offset in doubling chunks
        until every series seen in the first chunk has ``refill_points`` records, the
        partition's beginning or ``rewind_records`` back. A failed scan rewinds the bound.
        """
        bound = max(beginning, committed - self.settings.rewind_records)
        need = self._refill_points
        if need is None or bound >= committed:
            return bound
        counts: dict[bytes | None, int] = {}
        recent: set[bytes | None] | None = None
        start, step = committed, max(100, 8 * need)
        try:
            scanner = self._scanner or KafkaConsumer(
                **client_config(self.settings), group_id=None, enable_auto_commit=False)
            self._scanner = scanner
            scanner.assign([tp])
            while start > bound:
                chunk = max(bound, start - step)
                keys = [m.key for m in records_between(scanner, tp, chunk, start)]
                for key in keys:
                    counts[key] = counts.get(key, 0) + 1
                recent = set(keys) if recent is None else recent
                start, step = chunk, step * 2
                if all(counts[k] >= need for k in recent):
                    break
        except KafkaError as exc:
            log.warning("scanning %s[%d] for the rewind failed, re-reading %d records: %s",
                        tp.topic, tp.partition, committed - bound, exc)
            return bound
        short = sum(1 for k in recent or () if counts[k] < need)
        if short:
            log.warning("%s[%d]: %d series have fewer than %d points in the %d records the "
                        "rewind may re-read (kafka.rewind_records); they start with a short "
                        "window", tp.topic, tp.partition, short, need, committed - start)
        return start

    # -- the loop ----------------------------------------------------------------------------

    def poll(self) -> Polled:
        """One consumer poll, decoded. Bad messages come back in ``rejected`` (not sent yet)."""
        settings = self.settings
        consumer = self._consumer
        try:
            if self._paused:
                consumer.pause(*consumer.assignment())
            batches = consumer.poll(timeout_ms=settings.poll_timeout_ms,
                                    max_records=settings.max_poll_records)
        except KafkaError as exc:
            raise _source_error("poll", settings, exc) from exc
        waiting, seeked = self._rewind() if self._to_rewind else (set(), set())
        polled = Polled()
        records, rejected, offsets = polled.records, polled.rejected, polled.offsets
        decode = self._decoder.decode_row
        for tp, messages in batches.items():
            partition = tp.partition
            if not messages:
                continue
            if partition in waiting:
                # Fetched before its rewind (the listener pauses new partitions, so this is
                # only a safety net): drop it and make sure it is fetched again.
                if partition not in seeked:
                    consumer.seek(tp, messages[0].offset)
                continue
            boundary = self._warmup_until.get(partition)
            ahead = self._ahead.get(partition)
            for message in messages:
                offset = message.offset
                warmup = boundary is not None and offset < boundary
                try:
                    row, points = decode(message.key, message.value)
                except DecodeError as exc:
                    if not warmup:  # a warm-up reject was dead-lettered the first time
                        rejected.append(Rejected(exc.reason, exc.detail, message.key,
                                                 message.value, partition, offset))
                    continue
                for point in points:  # one, or a row's columns
                    if ahead and offset < ahead.get(point.series, -1):
                        continue  # its restored state has seen this one
                    records.append(SourceRecord(point, partition, offset, warmup,
                                                message.key, message.value, row))
            last = messages[-1].offset
            if boundary is None or last >= boundary:
                offsets[partition] = last + 1
                if boundary is not None:
                    del self._warmup_until[partition]
                    self._ahead.pop(partition, None)
        for reject in rejected:
            self._reject_log.warning(
                reject.reason, "rejected message at %s[%d]@%d: %s: %s", settings.topic,
                reject.partition, reject.offset, reject.reason, reject.detail)
        return polled

    def dead_letter(self, rejected: list[Rejected]) -> None:
        """Send rejects to the dead-letter topic and wait until the broker has them all.

        A reject that would not fit in ``kafka.dead_letter_max_bytes`` with its headers (the
        producer's ``max_request_size``) goes with its value cut to fit and a
        ``streamlstm-truncated: <original size>`` header (`fit_dead_letter`); one the broker
        still refuses as too large is sent again with an empty value, so an oversize message
        never stops the loop.
        """
        topic = self.settings.dead_letter_topic
        if not topic or not rejected:
            return
        limit = self.settings.dead_letter_max_bytes
        try:
            producer = self._dead_letter_producer()
            letters = [fit_dead_letter(r, self.settings.topic, limit) for r in rejected]
            futures = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in letters]
            producer.flush(timeout=_DEAD_LETTER_TIMEOUT_S)
            again = []
            for future, r in zip(futures, rejected, strict=True):
                try:
                    future.get(timeout=_DEAD_LETTER_TIMEOUT_S)
                except MessageSizeTooLargeError:  # the broker's limit is below ours
                    again.append(producer.send(topic, *_without_value(r, self.settings.topic)))
            if again:
                log.warning("the broker refused %d dead letters as too large (is "
                            "kafka.dead_letter_max_bytes above its message.max.bytes?); sent "
                            "them with empty values", len(again))
                producer.flush(timeout=_DEAD_LETTER_TIMEOUT_S)
                for future in again:
                    future.get(timeout=_DEAD_LETTER_TIMEOUT_S)
        except KafkaError as exc:
            raise _source_error(f"dead-lettering to {topic!r}", self.settings, exc) from exc

    def _dead_letter_producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(**client_config(self.settings), acks="all",
                                           linger_ms=5,
                                           max_request_size=self.settings.dead_letter_max_bytes)
        return self._producer

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit exactly these offsets (partition -> next offset), synchronously."""
        if not offsets:
            return
        topic = self.settings.topic
        to_commit = {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1)
                     for p, o in offsets.items()}
        try:
            self._consumer.commit(to_commit)
        except _REBALANCE_ERRORS as exc:
            log.warning("commit of %s skipped, the group rebalanced (the new owner replays "
                        "from the last commit): %s", offsets, exc)
            return
        except KafkaError as exc:
            raise _source_error("commit", self.settings, exc) from exc

    # -- flow control and observation --------------------------------------------------------

    def pause(self) -> None:
        """Stop fetching from every assigned partition; poll() keeps the membership alive."""
        self._paused = True
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        """Fetch again (partitions still waiting for their rewind stay paused until then)."""
        self._paused = False
        with self._lock:
            waiting = set(self._to_rewind)
        self._consumer.resume(*(self._consumer.assignment() - waiting))

    def assignment(self) -> set[int]:
        """The partitions this member owns now."""
        return {tp.partition for tp in self._consumer.assignment()}

    def lag(self) -> dict[int, int]:
        """Records between position and high watermark, per assigned partition.

        The high watermark is the larger of the one in the last fetch response (exact, but
        stale while paused) and ``end_offsets()`` (fresh, but tansu answers it with the last
        batch's base offset + 1, which undercounts). One broker round trip: call it every
        few seconds, not every poll.
        """
        try:
            assigned = sorted(self._consumer.assignment())
            if not assigned:
                return {}
            ends = self._consumer.end_offsets(assigned, timeout_ms=_LOOKUP_TIMEOUT_MS)
            lags: dict[int, int] = {}
            for tp in assigned:
                position = self._consumer.position(tp, timeout_ms=_LOOKUP_TIMEOUT_MS)
                high = max(self._consumer.highwater(tp) or 0, ends.get(tp) or 0)
                if position is not None:
                    lags[tp.partition] = max(0, high - position)
        except KafkaError as exc:
            raise _source_error("reading the lag", self.settings, exc) from exc
        return lags

    def close(self) -> None:
        """Leave the group (without committing) and close the dead-letter producer."""
        try:
            self._consumer.close(autocommit=False)
            if self._scanner is not None:
                self._scanner.close(autocommit=False)
            if self._producer is not None:
                self._producer.close(timeout=_DEAD_LETTER_TIMEOUT_S)
        except KafkaError as exc:
            raise _source_error("close", self.settings, exc) from exc


def records_between(consumer: KafkaConsumer, tp: TopicPartition, start: int,
                    stop: int | None = None, timeout_s: float = _LOOKUP_TIMEOUT_MS / 1000,
                    ) -> Iterator[Any]:
    """The records of ``tp`` (assigned to ``consumer``) from offset ``start`` up to ``stop``,
    or with None up to the partition's end: the high watermark the fetches report, which is
    exact where tansu's ``end_offsets()`` is short. KafkaError if that takes ``timeout_s``."""
    consumer.seek(tp, start)
    if stop is None:
        stop = consumer.end_offsets([tp], timeout_ms=_LOOKUP_TIMEOUT_MS)[tp]
        if stop <= start:
            return
        dynamic = True
    else:
        dynamic = False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for message in consumer.poll(timeout_ms=500, max_records=10_000).get(tp, []):
            if not dynamic and message.offset >= stop:
                return
            yield message
        if dynamic:
            stop = max(stop, consumer.highwater(tp) or 0)
        if consumer.position(tp, timeout_ms=_LOOKUP_TIMEOUT_MS) >= stop:
            return
    raise KafkaError(f"reading {tp.topic}[{tp.partition}] from {start} to {stop} timed out")


def read_range(settings: KafkaSettings, start_ts: float, end_ts: float,
               decoder: JsonDecoder, idle_timeout_s: float = 5.0) -> Iterator[Point]:
    """Points with ``start_ts <= timestamp < end_ts`` from the whole topic, for training.

    Reads without a group (no commits), from ``offsets_for_times(start_ts)`` up to the end
    each partition had when reading began. Every point is filtered by its own timestamp,
    because the seek is only a hint (tansu returns offset 0; record times can differ from
    event times). A partition is done at the first high watermark a fetch reported; if
    none arrives, after ``idle_timeout_s`` without records once past ``end_offsets()``.
    Undecodable messages are skipped and counted in one log line at the end.
    """
    try:
        consumer = KafkaConsumer(**client_config(settings), group_id=None,
                                 enable_auto_commit=False,
                                 max_poll_records=settings.max_poll_records)
    except KafkaError as exc:
        raise _source_error("connecting for read_range", settings, exc) from exc
    skipped: dict[str, int] = {}
    try:
        try:
            parts = [TopicPartition(settings.topic, p)
                     for p in sorted(consumer.partitions_for_topic(settings.topic))]
            if not parts:
                raise SourceError(f"kafka at {settings.bootstrap_servers}: topic "
                                  f"{settings.topic!r} does not exist")
            consumer.assign(parts)
            begins = consumer.beginning_offsets(parts, timeout_ms=_LOOKUP_TIMEOUT_MS)
            ends = consumer.end_offsets(parts, timeout_ms=_LOOKUP_TIMEOUT_MS)
            starts = consumer.offsets_for_times(
                {tp: max(0, int(start_ts * 1000)) for tp in parts}, timeout_ms=_LOOKUP_TIMEOUT_MS)
        except KafkaError as exc:
            raise _source_error("looking up offsets for read_range", settings, exc) from exc
        remaining: dict[TopicPartition, int] = {}  # partition -> offset where reading stops
        for tp in parts:
            found = starts.get(tp)
            if found is None or ends[tp] <= begins[tp]:
                continue  # nothing at or after start_ts, or an empty partition
            consumer.seek(tp, max(found.offset, begins[tp]))
            remaining[tp] = ends[tp]
        consumer.pause(*(set(parts) - set(remaining)))
        confirmed: set[TopicPartition] = set()  # end taken from a fetch's high watermark
        last_data = time.monotonic()
        while remaining:
            try:
                batches = consumer.poll(timeout_ms=settings.poll_timeout_ms)
            except KafkaError as exc:
                raise _source_error("read_range poll", settings, exc) from exc
            now = time.monotonic()
            for tp, messages in batches.items():
                stop = remaining.get(tp)
                if stop is None:
                    continue
                last_data = now
                for message in messages:
                    if tp in confirmed and message.offset >= stop:
                        break
                    try:
                        _, points = decoder.decode_row(message.key, message.value)
                    except DecodeError as exc:
                        skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
                        continue
                    if start_ts <= points[0].timestamp < end_ts:
                        yield from points  # one, or a row's columns, each a series
            idle = now - last_data >= idle_timeout_s
            for tp in list(remaining):
                high = consumer.highwater(tp)
                if high is not None and tp not in confirmed:
                    confirmed.add(tp)
                    remaining[tp] = max(remaining[tp], high)
                try:
                    position = consumer.position(tp, timeout_ms=_LOOKUP_TIMEOUT_MS)
                except KafkaError as exc:
                    raise _source_error("read_range position", settings, exc) from exc
                if position is None:
                    continue
                if position >= remaining[tp] and (tp in confirmed or idle):
                    del remaining[tp]
                    consumer.pause(tp)
                elif idle and now - last_data >= 3 * idle_timeout_s:
                    log.warning("read_range: %s[%d] stalled at %d before %d; stopping",
                                tp.topic, tp.partition, position, remaining[tp])
                    del remaining[tp]
    finally:
        consumer.close(autocommit=False)
    if skipped:
        log.warning("read_range skipped undecodable messages: %s", skipped)


def produce_points(bootstrap: str, topic: str, points: Sequence[Point],
                   feature_names: Sequence[str], rate: float = 0.0,
                   restamp: bool = False, clock: Callable[[], float] = time.time,
                   connect_timeout_ms: int = KafkaSettings.connect_timeout_ms) -> int:
    """Send ``points`` as JSON events keyed by series (so each series keeps its order).

    ``rate`` limits events per second (0: as fast as the broker takes them); ``restamp``
    stamps each event with the time it is sent instead of its recorded time, so dashboards
    that show recent data see it (live demos).
    """
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                 bootstrap_timeout_ms=connect_timeout_ms)
    except KafkaError as exc:
        settings = KafkaSettings(bootstrap_servers=bootstrap, connect_timeout_ms=connect_timeout_ms)
        raise _source_error("connecting the producer", settings, exc) from exc
    started = clock()
    sent = 0
    try:
        for point in points:
            if rate > 0:
                delay = started + sent / rate - clock()
                if delay > 0:
                    time.sleep(delay)
            timestamp = clock() if restamp else point.timestamp
            body: dict[str, Any] = {"series": point.series, "timestamp": timestamp}
            if len(feature_names) == 1:
                body["value"] = point.values[0]
            else:
                body["values"] = dict(zip(feature_names, point.values, strict=True))
            producer.send(topic, key=point.series.encode(), value=json.dumps(body).encode())
            sent += 1
        producer.flush()
    except KafkaError as exc:
        raise SourceError(f"kafka at {bootstrap}: producing to {topic} failed: {exc}") from exc
    finally:
        producer.close()
    return sent
