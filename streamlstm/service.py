"""The daemon's loop: source -> pipeline -> sink -> commit, one poll at a time.

At-least-once: a poll's offsets are committed only after its dead letters are acknowledged and
its scores are written. While InfluxDB cannot be written to, the loop keeps turning: it pauses
the partitions, keeps polling (so the consumer keeps its group membership and /healthz stays
green) and retries the batch in hand with backoff; /readyz and ``streamlstm_ready`` say why
it is not ready. Points the store refuses (a 4xx about them) are isolated by halving the batch,
dead-lettered as ``store_rejected`` with the server's message, and the rest is written and
committed. A crash at any point replays from the last commit, and because an InfluxDB point is
keyed by measurement, series and time, a replayed event overwrites its own point.

The service takes its adapters as arguments (see the Protocols below); only the CLI builds them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamlstm.checkpoints.checkpointer import Checkpointer
from streamlstm.core.columns import ColumnRow, RowCombiner
from streamlstm.core.pipeline import Pipeline
from streamlstm.core.records import Rejected, Score, SourceRecord
from streamlstm.core.scoring import Scorer
from streamlstm.decoding import RateLimitedLog
from streamlstm.drift import ErrorDrift
from streamlstm.errors import ArtifactError, SinkError, SinkRejected, SourceError, StreamlstmError
from streamlstm.metrics import SERIES_LIMIT, Metrics
from streamlstm.model.artifact import (
    META_FILE,
    WEIGHTS_FILE,
    Artifact,
    load_artifact,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

# While a write is pending the loop polls (paused) at least this often between attempts.
_OUTAGE_TURN_S = 1.0
_SERIES_LIMIT_DETAIL = ("a new series while every slot is taken and this poll already "
                        "admitted windows.max_new_series_per_poll new series")


class Polled(Protocol):
    records: list[SourceRecord]
    rejected: list[Rejected]
    offsets: dict[int, int]


class EventSource(Protocol):
    """What the loop needs from Kafka (see `streamlstm.sources.kafka.KafkaSource`)."""

    def poll(self) -> Polled: ...
    def dead_letter(self, rejected: list[Rejected]) -> None: ...
    def commit(self, offsets: dict[int, int]) -> None: ...
    def pause(self) -> None: ...  # fetch nothing; poll() still keeps the group membership
    def resume(self) -> None: ...
    def lag(self) -> dict[int, int]: ...
    def close(self) -> None: ...


class ScoreSink(Protocol):
    """What the loop needs from InfluxDB (see `streamlstm.sinks.influx.InfluxSink`)."""

    def write(self, scores: Sequence[Score]) -> None: ...  # SinkRejected: refused, else retry
    def close(self) -> None: ...


@dataclass
class ServiceSettings:
    """Loop behaviour that is not the adapters' business."""

    topic: str = "metrics"
    model_path: str = "models"
    device: str = "cpu"
    reload_interval_s: float = 5.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    stall_after_s: float = 120.0  # /healthz fails when the loop has not turned for this long
    lag_interval_s: float = 5.0  # how often the consumer lag (a broker round trip) is read


@dataclass
class _Pending:
    """Scores not written yet, the records they came from and the offsets they cover."""

    scores: list[Score]
    origins: list[SourceRecord]
    offsets: dict[int, int]
    attempts: int = 0
    delay: float = 0.0
    next_try: float = 0.0


@dataclass
class _Readiness:
    ok: bool = False
    reason: str = "starting"
    last_turn: float = field(default_factory=time.monotonic)


class Service:
    """Runs the loop until `stop()`; thread-safe probes for the HTTP endpoint."""

    def __init__(self, source: EventSource, sink: ScoreSink, pipeline: Pipeline,
                 metrics: Metrics, settings: ServiceSettings,
                 clock: Callable[[], float] = time.time,
                 checkpointer: Checkpointer | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], object] | None = None,
                 drift: ErrorDrift | None = None) -> None:
        """``clock`` is wall time (idle eviction); ``monotonic`` and ``wait`` (default: sleep
        until stopped) pace write retries and tell a stalled loop, so tests can fake them.
        ``drift`` watches the model's errors for a change (default: `ErrorDrift()`)."""
        self.source = source
        self.drift = drift if drift is not None else ErrorDrift()
        self.sink = sink
        self.pipeline = pipeline
        self.metrics = metrics
        self.checkpointer = checkpointer
        self.settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._reload_requested = threading.Event()
        self._state = _Readiness(last_turn=monotonic())
        self._pending: _Pending | None = None  # a batch whose write failed, being retried
        self._paused = False
        self._reject_log = RateLimitedLog(log, 60.0, monotonic)
        path = pipeline.artifact.path
        self._model_key = _model_key(path) if path is not None else None
        self._next_reload_check = 0.0
        self._next_lag_check = 0.0
        # Rows of columns (`JsonDecoder.decode_row`): one verdict per row, for the row's series.
        self._rows = RowCombiner(lambda series: self.pipeline.alarm_rule(series),
                                 capacity=pipeline.settings.max_series)
        self._publish_model(pipeline.artifact)

    # ---- control, callable from signal handlers and other threads ----

    def stop(self) -> None:
        """Finish the batch in hand (write, commit) and return from `run`."""
        self._stop.set()

    def request_reload(self) -> None:
        """Look at the model pointer before the next batch (SIGHUP)."""
        self._reload_requested.set()

    def health(self) -> tuple[bool, str]:
        """Liveness: the loop turns. A store outage does not fail it (`ready` says so)."""
        stalled = self._monotonic() - self._state.last_turn
        if stalled > self.settings.stall_after_s:
            return False, f"loop has not turned for {stalled:.0f}s"
        return True, ""

    def inspect(self, series: str) -> dict[str, Any] | None:
        """What the pipeline holds for ``series`` (the ``/series`` endpoint); None if nothing.
        Called from the HTTP thread: a read of arrays the loop may be updating (a debugging
        view, not a consistent snapshot)."""
        found = self.pipeline.inspect(series)
        if found is not None:
            found["model_version"] = self.pipeline.model_version
        return found

    def ready(self) -> tuple[bool, str]:
        return self._state.ok, self._state.reason

    # ---- the loop ----

    def run(self) -> None:
        """Consume until stopped. Returns normally after a clean stop."""
        log.info("scoring topic %s with model %s", self.settings.topic,
                 self.pipeline.model_version)
        try:
            while not self._stop.is_set():
                self._state.last_turn = self._monotonic()
                self._maybe_reload()
                self.run_once()
                if self.checkpointer is not None and self._pending is None:
                    self.checkpointer.maybe_checkpoint()  # idle turns too: a quiet spell
        finally:
            if self._pending is not None:
                log.warning("stopping with %d scores unwritten; they will be replayed from the "
                            "last committed offsets", len(self._pending.scores))
            self._set_ready(False, "stopped")

    def run_once(self) -> bool:
        """One turn: poll -> score -> write -> commit. False when nothing was committed.

        While a write is pending (the store is down) a turn polls the paused source, which
        keeps the consumer in its group, and retries the write once its backoff is over.
        """
        if self._pending is not None:
            return self._retry_pending()
        polled = self.source.poll()
        if not polled.records and not polled.rejected:
            self._update_gauges()
            if not self._stop.is_set():
                self._set_ready(True, "")
            return True
        return self._deliver(self._score(polled))

    def _score(self, polled: Polled) -> _Pending:
        """Score a poll and dead-letter what it rejects; the scores still to be written."""
        records = polled.records
        self.metrics.events_consumed.inc(_messages(records) + len(polled.rejected))
        rejected = list(polled.rejected)
        result = self.pipeline.process(
            [r.point for r in records],
            now=self._clock(),
            warmup=[r.warmup for r in records],
        )
        if self.checkpointer is not None:
            self.checkpointer.observe(polled.records)
        self._watch_errors(result.scores)
        told: set[tuple[int, int]] = set()  # a row's message is dead-lettered once
        for position in result.late:
            record = records[position]
            if not record.warmup and _first_telling(record, told):
                rejected.append(Rejected("out_of_order",
                                         f"timestamp {record.point.timestamp} is not after the "
                                         f"series' latest", record.raw_key, record.raw_value,
                                         record.partition, record.offset))
        for position, reason in result.refused:  # a flood's surplus, or the core's guard
            record = records[position]
            if not record.warmup and _first_telling(record, told):
                detail = (_SERIES_LIMIT_DETAIL if reason == SERIES_LIMIT else
                          "refused by the pipeline: a value not finite or beyond float32, or "
                          "a time outside 1970..2262")
                rejected.append(Rejected(reason, detail, record.raw_key, record.raw_value,
                                         record.partition, record.offset))
        if result.windows:
            self.metrics.batch_scoring_seconds.observe(result.scoring_seconds)
            self.metrics.batch_windows.observe(result.windows)
        self.metrics.series_evicted.labels(reason="idle").inc(result.evicted_idle)
        self.metrics.series_evicted.labels(reason="capacity").inc(result.evicted_capacity)
        self.metrics.changes_accepted.inc(result.changes_accepted)
        self._dead_letter(rejected, logged=len(polled.rejected))  # the source logs its own
        live = sum(1 for r in records if not r.warmup)
        log.debug("poll: %d live, %d warm-up, %d rejected, %d scored", live,
                  len(records) - live, len(rejected), len(result.scores))
        scores, origins = result.scores, [records[p] for p in result.positions]
        if any(r.row is not None for r in origins):
            scores, origins = self._combine_rows(records, dict(zip(result.positions, scores,
                                                                   strict=True)))
        return _Pending(scores, origins, dict(polled.offsets))

    def _combine_rows(self, records: list[SourceRecord], scored: dict[int, Score],
                      ) -> tuple[list[Score], list[SourceRecord]]:
        """The poll's scores (``scored``: by record position) with each row's column scores
        replaced by the row's one verdict (`RowCombiner`), in stream order, and the record each
        comes from (a row's first column's, whose message is the row's)."""
        out: list[Score | ColumnRow] = []
        origins: list[SourceRecord] = []
        rows: list[ColumnRow] = []
        start = 0
        while start < len(records):
            record = records[start]
            if record.row is None:
                if start in scored:
                    out.append(scored[start])
                    origins.append(record)
                start += 1
                continue
            end = start + 1
            while end < len(records) and records[end].row == record.row and (
                    records[end].offset == record.offset
                    and records[end].partition == record.partition):
                end += 1
            group = range(start, end)
            if any(i in scored for i in group):
                prefix = len(record.row) + 1
                rows.append(ColumnRow(
                    record.row, record.point.timestamp,
                    tuple(records[i].point.series[prefix:] for i in group),
                    tuple(records[i].point.values[0] for i in group),
                    tuple(scored.get(i) for i in group)))
                out.append(rows[-1])
                origins.append(record)
            start = end
        verdicts = iter(self._rows.combine(rows))
        kept_scores: list[Score] = []
        kept_origins: list[SourceRecord] = []
        for item, origin in zip(out, origins, strict=True):
            score = item if isinstance(item, Score) else next(verdicts)
            if score is not None:  # a row none of whose columns has a full window yet
                kept_scores.append(score)
                kept_origins.append(origin)
        return kept_scores, kept_origins

    def _dead_letter(self, rejected: list[Rejected], logged: int = 0) -> None:
        """Count, log (but the first ``logged``, logged already) and dead-letter ``rejected``."""
        if not rejected:
            return
        for i, item in enumerate(rejected):
            self.metrics.events_rejected.labels(reason=item.reason).inc()
            if i >= logged:
                self._reject_log.warning(item.reason, "rejected event at partition %d offset "
                                         "%d: %s: %s", item.partition, item.offset,
                                         item.reason, item.detail)
        self.source.dead_letter(rejected)
        self.metrics.dead_letters.inc(len(rejected))

    def _retry_pending(self) -> bool:
        pending = self._pending
        assert pending is not None
        polled = self.source.poll()  # paused: fetches nothing, keeps the group membership
        if polled.records or polled.rejected:  # fetched before the pause took hold
            more = self._score(polled)
            pending.scores += more.scores
            pending.origins += more.origins
            pending.offsets.update(more.offsets)
        left = pending.next_try - self._monotonic()
        if left > 0:
            self._wait(min(left, _OUTAGE_TURN_S))
            return False
        return self._deliver(pending)

    def _deliver(self, batch: _Pending) -> bool:
        """Write ``batch`` (dead-lettering points the store refuses), then commit its offsets.

        A write that fails for any other reason keeps the batch pending and the source paused.
        """
        try:
            refused = self._write(batch.scores)
        except SinkError as exc:
            self._write_failed(batch, exc)
            return False
        self._pending = None
        self.metrics.sink_up.set(1)
        if batch.attempts:
            log.info("InfluxDB writes succeed again after %d failed attempts", batch.attempts)
        if refused:
            self._dead_letter([self._store_rejected(batch.origins[i], exc)
                               for i, exc in refused])
        if self._paused:
            self.source.resume()
            self._paused = False
        if not self._stop.is_set():
            self._set_ready(True, "")
        if batch.offsets:  # a poll of warm-up records only has nothing new to commit
            self.source.commit(batch.offsets)
            self.metrics.offsets_committed.inc()
            if self.checkpointer is not None:
                self.checkpointer.committed(batch.offsets)
        gone = {i for i, _ in refused}
        scores = [s for i, s in enumerate(batch.scores) if i not in gone] if gone else batch.scores
        self.metrics.events_scored.inc(len(scores))
        if scores:
            self.metrics.scored_up_to(max(s.timestamp for s in scores))
        self.metrics.anomalies.inc(sum(1 for s in scores if s.is_anomaly))
        self.metrics.alarms.inc(sum(1 for s in scores if s.alarm))
        if self.metrics.series_score is not None:
            for s in scores:
                self.metrics.series_score.labels(series=s.series).set(s.score)
        if self.metrics.series_alarms is not None:
            for s in scores:  # inc(0) creates a series' counter at 0 before its first alarm
                self.metrics.series_alarms.labels(series=s.series).inc(int(s.alarm))
        self._update_gauges()
        return True

    def _write(self, scores: list[Score]) -> list[tuple[int, SinkRejected]]:
        """Write ``scores``; returns (index, refusal) of each point the store refused on its own.

        A refused write is halved until each refusal is down to one point (a 413 splits the
        batch the same way); the halves that succeed are written. Any other SinkError is
        raised: the caller retries the whole batch later (rewriting a point is harmless).
        """
        refused: list[tuple[int, SinkRejected]] = []
        todo = [(0, len(scores))] if scores else []
        while todo:
            lo, hi = todo.pop()
            started = time.perf_counter()
            try:
                self.sink.write(scores[lo:hi])
            except SinkRejected as exc:
                if hi - lo == 1:
                    refused.append((lo, exc))
                else:
                    mid = (lo + hi) // 2
                    todo += [(mid, hi), (lo, mid)]
                continue
            self.metrics.write_seconds.observe(time.perf_counter() - started)
            self.metrics.points_written.inc(hi - lo)
        return sorted(refused, key=lambda item: item[0])

    def _write_failed(self, batch: _Pending, exc: SinkError) -> None:
        """Keep ``batch`` pending, pause the source and schedule the next attempt."""
        batch.attempts += 1
        batch.delay = (self.settings.retry_initial_s if batch.attempts == 1
                       else min(batch.delay * 2, self.settings.retry_max_s))
        batch.next_try = self._monotonic() + batch.delay
        self._pending = batch
        self.metrics.write_failures.inc()
        self.metrics.sink_up.set(0)
        if not self._paused:
            self.source.pause()
            self._paused = True
        status = getattr(exc, "status", None)
        self._set_ready(False, "InfluxDB write failing" + (f" (HTTP {status})" if status else "")
                        + ", consuming paused")
        if batch.attempts == 1 or math.log2(batch.attempts).is_integer():
            log.warning("InfluxDB write failed (attempt %d, retrying in %.1fs, partitions "
                        "paused): %s", batch.attempts, batch.delay, exc)

    @staticmethod
    def _store_rejected(record: SourceRecord, exc: SinkRejected) -> Rejected:
        status = f"HTTP {exc.status}: " if exc.status is not None else ""
        return Rejected("store_rejected", f"{status}{exc.message}"[:300], record.raw_key,
                        record.raw_value, record.partition, record.offset)

    # ---- model hot reload ----

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        forced = self._reload_requested.is_set()
        if not forced and now < self._next_reload_check:
            return
        self._reload_requested.clear()
        self._next_reload_check = now + self.settings.reload_interval_s
        try:
            target = resolve_model_dir(self.settings.model_path)
        except (ArtifactError, OSError) as exc:
            log.warning("model pointer unreadable, keeping %s: %s",
                        self.pipeline.model_version, exc)
            return
        key = _model_key(target)
        if not forced and key == self._model_key:
            return
        # Everything the swap needs is built and checked first; only then is it applied, by
        # assignments that cannot fail, so a refused model leaves the running one untouched.
        try:
            artifact = load_artifact(target)
            swap = self.pipeline.prepare_swap(artifact, device=self.settings.device)
            self._check_candidate(artifact, swap.scorer)
        except Exception as exc:  # a model's files can fail in any way; none may stop the loop
            self.metrics.model_reloads.labels(result="refused").inc()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.error("refused model %s, keeping %s: %s: %s", target.name,
                      self.pipeline.model_version, type(exc).__name__, detail)
            # Not retried every few seconds, but again once its files change (mtime, size).
            self._model_key = key
            return
        self.pipeline.apply_swap(swap)
        self.metrics.model_reloads.labels(result="loaded").inc()
        self._model_key = key
        self._publish_model(artifact)
        log.info("now scoring with model %s", artifact.version)

    def _check_candidate(self, artifact: Artifact, scorer: Scorer) -> None:
        current = self.pipeline.artifact.architecture
        new = artifact.architecture
        if new.n_features != current.n_features or (
                artifact.feature_names != self.pipeline.artifact.feature_names):
            raise ArtifactError(f"features {artifact.feature_names} do not match the configured "
                                f"{self.pipeline.artifact.feature_names}")
        if new.window != current.window:
            raise ArtifactError(f"window {new.window} differs from the running {current.window}; "
                                "restart the daemon to change the window length")
        probe = np.random.default_rng(0).standard_normal(
            (8, new.window, new.n_features)).astype(np.float32)
        errors = scorer.errors(probe)
        if not np.isfinite(errors).all():
            raise ArtifactError("the model gives non-finite errors on a probe batch")

    def _publish_model(self, artifact: Artifact) -> None:
        trained_at = artifact.created_at or ""
        trained_ts = _parse_iso(trained_at)
        self.metrics.set_model(artifact.version, artifact.architecture.cell, trained_at,
                               trained_ts, time.time())
        self.metrics.threshold.set(self.pipeline.threshold)
        self.drift.reset()  # a new model, a new error stream
        self.metrics.retrain_suggested.set(0)

    def _watch_errors(self, scores: Sequence[Score]) -> None:
        """Feed the poll's model errors to the drift detector; say when they changed."""
        direction = self.drift.update([s.error for s in scores])
        if direction is None:
            return
        self.metrics.error_drifts.labels(direction=direction).inc()
        if direction == "up":
            self.metrics.retrain_suggested.set(1)
            log.warning("retrain suggested: the errors of model %s drifted upwards (ADWIN on "
                        "the mean log error per poll, now %.3g, %d polls since it was loaded); "
                        "the stream no longer looks like its training data",
                        self.pipeline.model_version, math.exp(self.drift.detector.estimation),
                        self.drift.polls)
        else:
            log.info("the errors of model %s drifted downwards (now %.3g)",
                     self.pipeline.model_version, math.exp(self.drift.detector.estimation))

    # ---- bookkeeping ----

    def _set_ready(self, ok: bool, reason: str) -> None:
        self._state.ok = ok
        self._state.reason = reason
        self.metrics.ready.set(1 if ok else 0)

    def _update_gauges(self) -> None:
        self.metrics.series_tracked.set(len(self.pipeline.registry))
        now = time.monotonic()
        if now < self._next_lag_check:
            return
        self._next_lag_check = now + self.settings.lag_interval_s
        self.metrics.series_warming.set(self.pipeline.warming())
        try:
            lag = self.source.lag()
        except SourceError as exc:
            log.debug("lag unavailable: %s", exc)
            return
        for partition, records in lag.items():
            self.metrics.consumer_lag.labels(topic=self.settings.topic,
                                             partition=str(partition)).set(records)

    def close(self) -> None:
        """Release the adapters (after `run` returned)."""
        closers = [self.source.close, self.sink.close]  # the source's close checkpoints
        if self.checkpointer is not None:
            closers.append(self.checkpointer.close)
        closers.append(self.pipeline.close)  # the model's thread, once nothing scores
        for closer in closers:
            try:
                closer()
            except StreamlstmError as exc:
                log.warning("while closing: %s", exc)


ModelKey = tuple[Path, tuple[tuple[str, int, int], ...]]


def _messages(records: Sequence[SourceRecord]) -> int:
    """How many messages ``records`` (warm-up ones left out) came from: a row's columns are
    records of one message."""
    live = [r for r in records if not r.warmup]
    rows = [r for r in live if r.row is not None]
    if not rows:
        return len(live)
    return len(live) - len(rows) + len({(r.partition, r.offset) for r in rows})


def _first_telling(record: SourceRecord, told: set[tuple[int, int]]) -> bool:
    """Whether ``record``'s message is not dead-lettered yet in this poll (a row's columns
    share one message); notes it."""
    if record.row is None:
        return True
    key = (record.partition, record.offset)
    if key in told:
        return False
    told.add(key)
    return True


def _model_key(directory: Path) -> ModelKey:
    """A model version as the reload sees it: its directory and each file's mtime and size,
    so a refused version is tried again once its files are replaced or fixed in place."""
    files = []
    for name in (META_FILE, WEIGHTS_FILE):
        try:
            stat = (directory / name).stat()
        except OSError:
            files.append((name, -1, -1))
        else:
            files.append((name, stat.st_mtime_ns, stat.st_size))
    return directory, tuple(files)


def _parse_iso(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
