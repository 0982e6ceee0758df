"""Checkpoints aligned with commits: what each partition's series have learnt survives.

A series belongs to the partition its events arrive on (events are keyed by series, so one
series stays on one partition). The `Checkpointer` keeps, per partition, the offset the
pipeline has consumed it up to and the offset last committed, and takes a checkpoint of a
partition only while the first does not pass the second: then its state has seen nothing that
was not scored and written, and a consumer that restores it can re-read from the checkpoint's
offset to the committed offset as warm-up (state updates, no writes) and go on as if it had
never stopped.

The loop calls `observe` after each `Pipeline.process`, `committed` after each commit and
`maybe_checkpoint` on every turn, which takes a checkpoint every ``interval_s`` (or
``interval_events``). The source
calls the rebalance hooks (`PartitionState`): `on_revoked` before partitions are given up
(checkpoint them), `on_released` once they belong to another consumer (forget their series),
`on_assigned` for a new partition (restore it; the source then re-reads from the `Resume`).
They run inside the consumer's poll or close, while the loop waits, so they never race it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamlstm.checkpoints.stores import CheckpointStore, PartitionCheckpoint
from streamlstm.core.pipeline import Pipeline
from streamlstm.core.records import SourceRecord
from streamlstm.errors import CheckpointError
from streamlstm.metrics import CheckpointMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """Where a restored partition is read again from, as warm-up up to its committed offset."""

    offset: int
    # Series whose restored state has seen further than ``offset``: their records below their
    # own offset are skipped (a compacted topic can hold series saved at different offsets).
    ahead: dict[str, int] = field(default_factory=dict)


class PartitionState(Protocol):
    """What a source calls when partitions come and go (see `Checkpointer`)."""

    def on_revoked(self, partitions: set[int]) -> None: ...
    def on_released(self, partitions: set[int]) -> None: ...
    def on_assigned(self, partition: int, committed: int) -> Resume | None: ...


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the loop takes a checkpoint (whichever comes first)."""

    interval_s: float = 60.0
    interval_events: int = 0  # 0: by time only


class Checkpointer:
    """Takes and restores per-partition checkpoints of ``pipeline``'s state in ``store``."""

    def __init__(self, pipeline: Pipeline, store: CheckpointStore, metrics: CheckpointMetrics,
                 policy: CheckpointPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.pipeline = pipeline
        self.store = store
        self.metrics = metrics
        self.policy = policy or CheckpointPolicy()
        self._clock = clock
        self._wall_clock = wall_clock
        self._owner: dict[str, int] = {}  # series -> the partition its events arrive on
        self._consumed: dict[int, int] = {}  # partition -> next offset not in the state
        self._committed: dict[int, int] = {}  # partition -> last committed offset
        self._saved: dict[int, int] = {}  # partition -> consumed offset at its last checkpoint
        self._ahead: dict[int, dict[str, int]] = {}  # from a restore, until consumed passes
        self._events_since = 0
        self._next_due = clock() + self.policy.interval_s

    # ---- the loop ----

    def observe(self, records: Sequence[SourceRecord]) -> None:
        """Note what a processed poll consumed (call after `Pipeline.process`)."""
        owner, consumed = self._owner, self._consumed
        conflicts = 0
        for record in records:
            series, partition = record.point.series, record.partition
            previous = owner.get(series)
            if previous != partition:
                if previous is not None:
                    conflicts += 1
                owner[series] = partition
            consumed[partition] = record.offset + 1
        if conflicts:
            self.metrics.partition_conflicts.inc(conflicts)
            log.warning("%d events arrived on another partition than their series' earlier "
                        "events; key events by series so each series stays on one partition",
                        conflicts)
        self._events_since += len(records)

    def committed(self, offsets: dict[int, int]) -> None:
        """Note a commit (partition -> next offset)."""
        self._committed.update(offsets)

    def maybe_checkpoint(self) -> int:
        """Take a checkpoint if one is due (call every turn of the loop, idle ones too, so
        the last state before a quiet spell is saved). Returns the bytes written."""
        events = self.policy.interval_events
        if self._clock() >= self._next_due or (events and self._events_since >= events):
            return self.checkpoint()
        return 0

    def checkpoint(self, partitions: Iterable[int] | None = None) -> int:
        """Checkpoint ``partitions`` (default: all held) whose state is consistent with their
        commit and changed since their last checkpoint. Returns the bytes written."""
        started = self._clock()
        self._next_due = started + self.policy.interval_s
        self._events_since = 0
        members, forgotten = self._members()
        wanted = set(self._consumed) if partitions is None else set(partitions)
        written = 0
        for partition in sorted(wanted):
            consumed = self._consumed.get(partition)
            committed = self._committed.get(partition)
            if consumed is None or committed is None or consumed > committed:
                continue  # a batch in hand is not written yet: its state is ahead of the commit
            gone = forgotten.get(partition, [])
            if self._saved.get(partition) == consumed and not gone:
                continue
            snapshot = self.pipeline.snapshot(members.get(partition, []))
            ahead = self._ahead.get(partition, {})
            offsets = np.fromiter((max(consumed, ahead.get(s, 0)) for s in snapshot.series),
                                  np.int64, len(snapshot.series))
            try:
                written += self.store.save(
                    PartitionCheckpoint(partition, consumed, snapshot, offsets), gone)
            except CheckpointError as exc:
                self.metrics.written.labels(result="failed").inc()
                log.error("checkpoint of partition %d failed (the previous one stays): %s",
                          partition, exc)
                continue
            self._saved[partition] = consumed
            self.metrics.written.labels(result="written").inc()
        if written:
            self.metrics.bytes.set(written)
            self.metrics.last_timestamp.set(self._wall_clock())
            self.metrics.seconds.observe(self._clock() - started)
            log.debug("checkpoint: %d bytes in %.3fs", written, self._clock() - started)
        return written

    def _members(self) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
        """The series held per partition, and those evicted since (dropped from ownership)."""
        held = self.pipeline.registry
        members: dict[int, list[str]] = {}
        forgotten: dict[int, list[str]] = {}
        for series, partition in list(self._owner.items()):
            if series in held:
                members.setdefault(partition, []).append(series)
            else:
                forgotten.setdefault(partition, []).append(series)
                del self._owner[series]
        return members, forgotten

    def close(self) -> None:
        """Release the store (the source's close has checkpointed through `on_revoked`)."""
        try:
            self.store.close()
        except CheckpointError as exc:
            log.warning("while closing the checkpoint store: %s", exc)

    # ---- rebalance hooks (PartitionState) ----

    def on_revoked(self, partitions: set[int]) -> None:
        """Checkpoint partitions about to be given up, for whoever gets them next."""
        if partitions & set(self._consumed):
            self.checkpoint(partitions)

    def on_released(self, partitions: set[int]) -> None:
        """Forget the series of partitions now owned by another consumer."""
        gone = [s for s, p in self._owner.items() if p in partitions]
        self.pipeline.forget(gone)
        for series in gone:
            del self._owner[series]
        tables: list[dict[int, Any]] = [self._consumed, self._committed, self._saved,
                                        self._ahead]
        for table in tables:
            for partition in partitions:
                table.pop(partition, None)

    def on_assigned(self, partition: int, committed: int) -> Resume | None:
        """Restore a newly assigned partition; None when there is no usable checkpoint (the
        source then falls back to its rewind)."""
        started = self._clock()
        self._committed[partition] = committed
        try:
            parts = self.store.load(partition, self.pipeline.state_layout())
            if not parts:
                self.metrics.restores.labels(outcome="none").inc()
                log.info("partition %d: no checkpoint in %s", partition, self.store.location)
                return None
            furthest = max(int(p.offsets.max()) if len(p.offsets) else p.offset for p in parts)
            if furthest > committed:
                raise CheckpointError(f"it has consumed up to offset {furthest}, past the "
                                      f"committed {committed}")
            restored = 0
            for part in parts:
                restored += self.pipeline.restore(part.snapshot)
        except (CheckpointError, ValueError) as exc:
            self.metrics.restores.labels(outcome="refused").inc()
            log.warning("partition %d: checkpoint in %s refused, falling back to the rewind: %s",
                        partition, self.store.location, exc)
            return None
        offset = min(p.offset for p in parts)
        ahead: dict[str, int] = {}
        for part in parts:
            for series, own in zip(part.snapshot.series, part.offsets.tolist(), strict=True):
                self._owner[series] = partition
                if own > offset:
                    ahead[series] = own
        self._consumed[partition] = offset
        self._saved[partition] = offset
        if ahead:
            self._ahead[partition] = ahead
        seconds = self._clock() - started
        self.metrics.restores.labels(outcome="restored").inc()
        self.metrics.series_restored.inc(restored)
        self.metrics.restore_seconds.observe(seconds)
        log.info("partition %d: restored %d series from %s in %.2fs; re-reading from offset %d "
                 "to the committed %d as warm-up", partition, restored, self.store.location,
                 seconds, offset, committed)
        return Resume(offset, ahead)
