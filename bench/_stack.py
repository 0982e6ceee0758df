"""Helpers for ``bench/throughput.py``: local servers, the event stream, a bare consumer, and
thin timing proxies around the daemon's adapters (the adapters themselves are not touched).

Everything here goes through public entry points (``TansuBroker``, ``InfluxDB``,
``KafkaSource``, ``InfluxSink``, ``Service.run_once``, ``Pipeline.process``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

T0 = 1_700_000_000.0  # epoch seconds of every series' first event
STEP_S = 60.0  # one-minute events
DAY_S = 86_400.0


# ------------------------------------------------------------------------ the event stream


class Stream:
    """``n_series`` one-minute series: a daily wave (per-series level, amplitude and phase)
    plus noise. Row ``k`` holds every series' ``k``-th value, so a poll of rows interleaves
    the series as a broker delivers keyed events."""

    def __init__(self, n_series: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n_series = n_series
        self.names = [f"host{s:06d}.cpu" for s in range(n_series)]
        self._level = rng.uniform(5.0, 50.0, n_series)
        self._amplitude = self._level * rng.uniform(0.05, 0.3, n_series)
        self._phase = rng.uniform(0.0, 2 * math.pi, n_series)
        self._noise = self._amplitude * 0.05
        self._seed = seed

    def timestamp(self, k: int) -> float:
        return T0 + k * STEP_S

    def row(self, k: int) -> np.ndarray:
        """Every series' value at step ``k`` (reproducible per step)."""
        rng = np.random.default_rng((self._seed, k))
        wave = np.sin(2 * math.pi * self.timestamp(k) / DAY_S + self._phase)
        return self._level + self._amplitude * wave + self._noise * rng.standard_normal(
            self.n_series)

    def points(self, k_start: int, k_stop: int, point_type: Any) -> Iterator[Any]:
        """Points of rows ``k_start..k_stop-1``, row by row (interleaved series)."""
        names = self.names
        for k in range(k_start, k_stop):
            ts = self.timestamp(k)
            for name, value in zip(names, self.row(k).tolist(), strict=True):
                yield point_type(name, ts, (value,))

    def messages(self, k_start: int, k_stop: int) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` Kafka messages: JSON ``{"series", "timestamp", "value"}``."""
        names = self.names
        for k in range(k_start, k_stop):
            ts = self.timestamp(k)
            for name, value in zip(names, self.row(k).tolist(), strict=True):
                body = json.dumps({"series": name, "timestamp": ts, "value": value})
                yield name.encode(), body.encode()


def polls(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """``items`` cut into lists of ``size``."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ------------------------------------------------------------------------ servers and Kafka


@contextlib.contextmanager
def servers(influx: bool, database: str) -> Iterator[tuple[Any, Any]]:
    """A tansu broker and (unless ``influx`` is false) an InfluxDB with ``database``; both
    stopped again on exit, also on errors (the devstack's context managers)."""
    from streamlstm.devstack import InfluxDB, TansuBroker

    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(TansuBroker())
        store = stack.enter_context(InfluxDB(databases=[database])) if influx else None
        yield broker, store


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamlstm-bench")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, partitions: int,
            messages: Iterator[tuple[bytes, bytes]]) -> dict[int, int]:
    """Send keyed messages as fast as the broker takes them; returns records per partition.

    Each key's partition is the default partitioner's (murmur2 of the key, as the Java client),
    computed once per key here rather than once per message in kafka-python's pure Python.
    """
    from kafka import KafkaProducer
    from kafka.partitioner.default import murmur2

    counts: dict[int, int] = {}
    where: dict[bytes, int] = {}
    failures: list[BaseException] = []
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="streamlstm-bench",
                             linger_ms=20, batch_size=512 * 1024, acks=1)
    try:
        for key, value in messages:
            partition = where.get(key)
            if partition is None:
                partition = where[key] = (murmur2(key) & 0x7FFFFFFF) % partitions
            counts[partition] = counts.get(partition, 0) + 1
            producer.send(topic, key=key, value=value, partition=partition).add_errback(
                failures.append)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
    if failures:
        raise RuntimeError(f"{len(failures)} messages were not produced: {failures[0]!r}")
    return counts


def kafka_settings(bootstrap: str, topic: str, group: str) -> Any:
    """The daemon's default Kafka settings (fetch and poll sizes, offsets reset) on this
    topic, with the short group timeouts ``streamlstm demo`` uses for a one-member group, so
    the join does not take half of the 10 s default session timeout on tansu."""
    from streamlstm.config import KafkaSettings

    return dataclasses.replace(
        KafkaSettings(), bootstrap_servers=bootstrap, topic=topic, group_id=group,
        client_id="streamlstm-bench", dead_letter_topic=f"{topic}.dead-letter",
        session_timeout_ms=6_000, heartbeat_interval_ms=500)


@dataclass
class Window:
    """A measured stretch: what came in after the group was joined, and how long it took."""

    events: int = 0
    seconds: float = 0.0
    wall_s: float = 0.0  # from the first poll, group join included

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def raw_read(settings: Any, total: int, stall_s: float = 60.0) -> tuple[Window, dict[int, int]]:
    """A bare ``KafkaConsumer`` in a fresh group reads ``total`` records (no decoding, no
    commits) with the daemon's consumer settings. Timing starts with the first poll made once
    the group has assigned partitions; the records of earlier polls are not counted."""
    from kafka import KafkaConsumer

    from streamlstm.sources.kafka import consumer_config

    consumer = KafkaConsumer(**consumer_config(settings))
    ends: dict[int, int] = {}
    window = Window()
    try:
        consumer.subscribe([settings.topic])
        began = time.perf_counter()
        last_data = began
        seen = 0
        started: float | None = None
        while seen < total:
            turn = time.perf_counter()
            if started is None and consumer.assignment():
                started = turn
            batches = consumer.poll(timeout_ms=settings.poll_timeout_ms,
                                    max_records=settings.max_poll_records)
            now = time.perf_counter()
            got = 0
            for tp, messages in batches.items():
                if messages:
                    got += len(messages)
                    ends[tp.partition] = max(ends.get(tp.partition, 0), messages[-1].offset + 1)
            seen += got
            if got:
                last_data = now
                if started is not None:
                    window.events += got
                    window.seconds = now - started
            elif now - last_data > stall_s:
                raise RuntimeError(f"raw read stalled at {seen} of {total} records")
        window.wall_s = time.perf_counter() - began
    finally:
        consumer.close(autocommit=False)
    return window, ends


# ------------------------------------------------------------------------ timing proxies


@dataclass
class Stage:
    calls: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.calls += 1
        self.seconds += seconds


@dataclass
class Timings:
    """Seconds per stage, and the sums of any ``*_seconds`` attributes the pipeline's results
    report (whatever the current core exposes)."""

    stages: dict[str, Stage] = field(default_factory=dict)
    reported: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        return self.stages.setdefault(name, Stage())

    def reset(self) -> None:
        self.stages.clear()
        self.reported.clear()


def reported_seconds(result: Any) -> dict[str, float]:
    """Numeric timing attributes of a pipeline result (``*_seconds``, ``*_s``, or a
    ``timings`` mapping), read with getattr so a changing result type does not break this."""
    out: dict[str, float] = {}
    if dataclasses.is_dataclass(result):
        names = [f.name for f in dataclasses.fields(result)]
    else:
        names = [n for n in dir(result) if not n.startswith("_")]
    for name in names:
        if name == "seconds" or name.endswith(("_seconds", "_s")):
            value = getattr(result, name, None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[name] = float(value)
    timings = getattr(result, "timings", None)
    if isinstance(timings, Mapping):
        for key, value in timings.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"timings[{key}]"] = float(value)
    return out


class TimedSource:
    """Wraps a ``KafkaSource``: times poll (fetch + decode), dead_letter, commit and lag."""

    def __init__(self, source: Any, timings: Timings) -> None:
        self._source = source
        self._timings = timings
        self.live = 0  # records polled that are not warm-up
        self.committed: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def _timed(self, stage: str, call: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self._timings.stage(stage).add(time.perf_counter() - started)

    def poll(self) -> Any:
        polled = self._timed("source.poll", self._source.poll)
        self.live += sum(1 for r in polled.records if not getattr(r, "warmup", False))
        return polled

    def dead_letter(self, rejected: list[Any]) -> None:
        self._timed("source.dead_letter", self._source.dead_letter, rejected)

    def commit(self, offsets: dict[int, int]) -> None:
        self._timed("source.commit", self._source.commit, offsets)
        for partition, offset in offsets.items():
            self.committed[partition] = max(self.committed.get(partition, 0), offset)

    def lag(self) -> dict[int, int]:
        result: dict[int, int] = self._timed("source.lag", self._source.lag)
        return result

    def close(self) -> None:
        self._source.close()


class TimedPipeline:
    """Wraps a ``Pipeline``: times process() and sums what its results report."""

    def __init__(self, pipeline: Any, timings: Timings) -> None:
        self._pipeline = pipeline
        self._timings = timings
        self.scores = 0
        self.windows = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def process(self, points: Sequence[Any], now: float, warmup: Any = None) -> Any:
        started = time.perf_counter()
        result = self._pipeline.process(points, now=now, warmup=warmup)
        self._timings.stage("pipeline.process").add(time.perf_counter() - started)
        self.scores += len(result.scores)
        self.windows += int(getattr(result, "windows", 0) or 0)
        reported = self._timings.reported
        for name, value in reported_seconds(result).items():
            reported[name] = reported.get(name, 0.0) + value
        return result


class TimedSink:
    """Wraps a sink: times write() (line protocol + HTTP + InfluxDB's ingest)."""

    def __init__(self, sink: Any, timings: Timings) -> None:
        self._sink = sink
        self._timings = timings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)

    def write(self, scores: Sequence[Any]) -> None:
        started = time.perf_counter()
        try:
            self._sink.write(scores)
        finally:
            self._timings.stage("sink.write").add(time.perf_counter() - started)

    def close(self) -> None:
        self._sink.close()


class LinesSink:
    """An in-process sink that builds the line-protocol bodies the InfluxDB sink would send
    (the sink's own ``to_lines`` and chunking) and drops them: the store's cost left out."""

    def __init__(self, measurement: str = "anomaly") -> None:
        influx = importlib.import_module("streamlstm.sinks.influx")
        self._to_lines = getattr(influx, "to_lines", None)
        self._chunk = int(getattr(influx, "CHUNK_LINES", 5000))
        self.measurement = measurement
        self.bytes = 0
        self.lines = 0

    @property
    def formatter(self) -> str:
        return ("streamlstm.sinks.influx.to_lines" if self._to_lines is not None
                else "a stand-in formatter (the sink has no to_lines)")

    def write(self, scores: Sequence[Any]) -> None:
        if self._to_lines is not None:
            lines = self._to_lines(scores, self.measurement)
        else:
            lines = [f"{self.measurement},series={s.series} score={float(s.score)!r},"
                     f"error={float(s.error)!r} {round(float(s.timestamp) * 1e6) * 1000}"
                     for s in scores]
        for start in range(0, len(lines), self._chunk):
            self.bytes += len("\n".join(lines[start:start + self._chunk]))
        self.lines += len(lines)

    def close(self) -> None:
        pass


@dataclass
class DaemonRun:
    window: Window
    timings: Timings
    scored: int
    windows: int
    turns: int
    service_seconds: float  # time inside run_once during the measured window


def run_daemon(settings: Any, sink: Any, pipeline: Any, ends: Mapping[int, int],
               stall_s: float = 90.0) -> DaemonRun:
    """The daemon's loop (``Service.run_once``, as ``Service.run`` turns it) with the real
    ``KafkaSource`` until every partition's records up to ``ends`` are committed.

    As in :func:`raw_read`, timing starts with the first turn made once the group has
    assigned partitions; the stage timings cover the same turns.
    """
    from prometheus_client import CollectorRegistry

    from streamlstm.decoding import JsonDecoder
    from streamlstm.metrics import Metrics
    from streamlstm.service import Service, ServiceSettings
    from streamlstm.sources.kafka import KafkaSource

    timings = Timings()
    decoder = JsonDecoder(_decoder_settings(), pipeline.artifact.feature_names)
    source = TimedSource(KafkaSource(settings, decoder), timings)
    timed_pipeline = TimedPipeline(pipeline, timings)
    service = Service(source, TimedSink(sink, timings), timed_pipeline,  # type: ignore[arg-type]
                      Metrics(CollectorRegistry()),
                      ServiceSettings(topic=settings.topic, retry_initial_s=0.2, retry_max_s=2.0))
    stalled = threading.Event()
    done = threading.Event()
    progress = [time.monotonic()]

    def watchdog() -> None:  # a write retried forever would otherwise hang the benchmark
        while not done.wait(1.0):
            if time.monotonic() - progress[0] > stall_s:
                stalled.set()
                service.stop()
                return

    guard = threading.Thread(target=watchdog, name="bench-watchdog", daemon=True)
    guard.start()
    window = Window()
    turns = 0
    inside = 0.0
    try:
        began = time.perf_counter()
        started: float | None = None
        counted_from = 0
        while any(source.committed.get(p, 0) < end for p, end in ends.items()):
            turn = time.perf_counter()
            if started is None and source.assignment():
                started = turn
                timings.reset()
                counted_from = source.live
                timed_pipeline.scores = timed_pipeline.windows = 0
            before = dict(source.committed)
            ok = service.run_once()
            now = time.perf_counter()
            if started is not None:
                turns += 1
                inside += now - turn
                window.events = source.live - counted_from
                window.seconds = now - started
            if source.committed != before:
                progress[0] = time.monotonic()
            if not ok or stalled.is_set():
                raise RuntimeError(f"the daemon made no progress for {stall_s:.0f} s "
                                   f"(committed {source.committed}, want {dict(ends)})")
        window.wall_s = time.perf_counter() - began
    finally:
        done.set()
        service.close()
    return DaemonRun(window, timings, timed_pipeline.scores, timed_pipeline.windows, turns,
                     inside)


def _decoder_settings() -> Any:
    from streamlstm.config import DecoderSettings

    return DecoderSettings()


# ------------------------------------------------------------------------ process memory


def statm() -> tuple[int, int]:
    """``(virtual, resident)`` bytes of this process, from /proc/self/statm (Linux), after a
    garbage collection and glibc's ``malloc_trim`` (freed heap counts no more)."""
    import ctypes
    import gc
    import os
    import resource

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)

    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/statm") as handle:
            size, resident = (int(x) for x in handle.read().split()[:2])
        return size * page, resident * page
    except OSError:  # not Linux: peak RSS is what there is
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak
