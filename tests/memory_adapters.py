"""In-memory adapters for the service loop, for fast tests of its failure paths.

`MemorySource` is a topic in a list (one partition per list), decoded by the real decoder, with
pause/resume, commits and a dead-letter list. `MemorySink` stores scores keyed as InfluxDB keys
points (series + time), and refuses or fails writes on demand: ``down`` for an outage
(retryable ``SinkError``), ``refuse`` for points the store rejects (a 400 after writing the
rest, as InfluxDB's partial writes do), ``max_points`` for a body too large (413).
`FakeClock` is a monotonic clock whose ``wait`` advances it instead of sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from streamlstm.core.records import Rejected, Score, SourceRecord
from streamlstm.decoding import JsonDecoder
from streamlstm.errors import DecodeError, SinkError, SinkRejected
from streamlstm.sinks.influx import timestamp_ns
from streamlstm.sources.kafka import Polled


class MemorySource:
    """An `EventSource` over messages held in memory (see the module docstring)."""

    def __init__(self, decoder: JsonDecoder | None = None, partitions: int = 1,
                 max_records: int = 1000) -> None:
        self.decoder = decoder or JsonDecoder()
        self.log: list[list[tuple[bytes | None, bytes]]] = [[] for _ in range(partitions)]
        self.position = [0] * partitions
        self.committed: dict[int, int] = {}
        self.dead: list[Rejected] = []
        self.max_records = max_records
        self.paused = False
        self.polls = 0
        self.paused_polls = 0
        self.on_poll: Callable[[MemorySource], None] | None = None

    def send(self, value: dict[str, Any] | bytes, key: bytes | None = None,
             partition: int = 0) -> int:
        """Append a message (a dict is sent as JSON); returns its offset."""
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.log[partition].append((key, raw))
        return len(self.log[partition]) - 1

    def end_offsets(self) -> dict[int, int]:
        return {p: len(messages) for p, messages in enumerate(self.log) if messages}

    def poll(self) -> Polled:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self)
        polled = Polled()
        if self.paused:
            self.paused_polls += 1
            return polled
        for partition, messages in enumerate(self.log):
            start = self.position[partition]
            batch = messages[start:start + self.max_records]
            for offset, (key, value) in enumerate(batch, start=start):
                try:
                    row, points = self.decoder.decode_row(key, value)
                except DecodeError as exc:
                    polled.rejected.append(Rejected(exc.reason, exc.detail, key, value,
                                                    partition, offset))
                    continue
                polled.records.extend(SourceRecord(point, partition, offset, False, key, value,
                                                   row) for point in points)
            if batch:
                self.position[partition] = start + len(batch)
                polled.offsets[partition] = start + len(batch)
        return polled

    def dead_letter(self, rejected: list[Rejected]) -> None:
        self.dead.extend(rejected)

    def commit(self, offsets: dict[int, int]) -> None:
        self.committed.update(offsets)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def lag(self) -> dict[int, int]:
        return {p: len(m) - self.position[p] for p, m in enumerate(self.log)}

    def close(self) -> None:
        pass


class MemorySink:
    """A `ScoreSink` keeping one score per (series, nanosecond time), like InfluxDB."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, int], Score] = {}
        self.calls = 0
        self.down = False
        self.refuse: Callable[[Score], str | None] = lambda score: None
        self.max_points: int | None = None
        self.on_write: Callable[[Sequence[Score]], None] | None = None

    def write(self, scores: Sequence[Score]) -> None:
        self.calls += 1
        if self.on_write is not None:
            self.on_write(scores)
        if self.down:
            raise SinkError("memory sink: down")
        if self.max_points is not None and len(scores) > self.max_points:
            raise SinkRejected("memory sink: HTTP 413", 413, "request too large")
        refused = None
        for score in scores:
            message = self.refuse(score)
            if message is None:
                self.points[(score.series, timestamp_ns(score.timestamp))] = score
            elif refused is None:
                refused = message
        if refused is not None:
            raise SinkRejected(f"memory sink: HTTP 400: {refused}", 400, refused)

    def close(self) -> None:
        pass


class FakeClock:
    """A monotonic clock for the service: ``wait(s)`` moves it on by ``s`` at once."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.on_wait: Callable[[float], None] | None = None

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.now += seconds
        if self.on_wait is not None:
            self.on_wait(seconds)
        return False
