"""The daemon's loop: source -> pipeline -> sink -> commit, one poll at a time.

At-least-once: a poll's offsets are committed only after its dead letters are acknowledged and
its scores are written. While InfluxDB refuses writes the loop stops consuming and retries the
same batch with backoff; /readyz and ``streamlstm_ready`` say so. A crash at any point replays
from the last commit, and because an InfluxDB point is keyed by measurement, tags and time, a
replayed event overwrites its own point instead of adding one.

The service takes its adapters as arguments (see the Protocols below); only the CLI builds them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streamlstm.core.pipeline import Pipeline
from streamlstm.core.records import Rejected, Score, SourceRecord
from streamlstm.errors import ArtifactError, SinkError, SourceError, StreamlstmError
from streamlstm.metrics import Metrics
from streamlstm.model.artifact import Artifact, load_artifact, resolve_model_dir

log = logging.getLogger(__name__)


class Polled(Protocol):
    records: list[SourceRecord]
    rejected: list[Rejected]
    offsets: dict[int, int]


class EventSource(Protocol):
    """What the loop needs from Kafka (see `streamlstm.sources.kafka.KafkaSource`)."""

    def poll(self) -> Polled: ...
    def dead_letter(self, rejected: list[Rejected]) -> None: ...
    def commit(self, offsets: dict[int, int]) -> None: ...
    def lag(self) -> dict[int, int]: ...
    def close(self) -> None: ...


class ScoreSink(Protocol):
    """What the loop needs from InfluxDB (see `streamlstm.sinks.influx.InfluxSink`)."""

    def write(self, scores: Sequence[Score]) -> None: ...
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
class _Readiness:
    ok: bool = False
    reason: str = "starting"
    last_turn: float = field(default_factory=time.monotonic)


class Service:
    """Runs the loop until `stop()`; thread-safe probes for the HTTP endpoint."""

    def __init__(self, source: EventSource, sink: ScoreSink, pipeline: Pipeline,
                 metrics: Metrics, settings: ServiceSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.sink = sink
        self.pipeline = pipeline
        self.metrics = metrics
        self.settings = settings
        self._clock = clock
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._state = _Readiness()
        self._model_dir = pipeline.artifact.path
        self._next_reload_check = 0.0
        self._next_lag_check = 0.0
        self._publish_model(pipeline.artifact)

    # ---- control, callable from signal handlers and other threads ----

    def stop(self) -> None:
        """Finish the batch in hand (write, commit) and return from `run`."""
        self._stop.set()

    def request_reload(self) -> None:
        """Look at the model pointer before the next batch (SIGHUP)."""
        self._reload_requested.set()

    def health(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self._state.last_turn
        if stalled > self.settings.stall_after_s:
            return False, f"loop has not turned for {stalled:.0f}s"
        return True, ""

    def ready(self) -> tuple[bool, str]:
        return self._state.ok, self._state.reason

    # ---- the loop ----

    def run(self) -> None:
        """Consume until stopped. Returns normally after a clean stop."""
        log.info("scoring topic %s with model %s", self.settings.topic,
                 self.pipeline.model_version)
        try:
            while not self._stop.is_set():
                self._state.last_turn = time.monotonic()
                self._maybe_reload()
                self.run_once()
        finally:
            self._set_ready(False, "stopped")

    def run_once(self) -> bool:
        """One poll -> score -> write -> commit turn. False when the batch was not committed."""
        polled = self.source.poll()
        self.metrics.events_consumed.inc(
            sum(1 for r in polled.records if not r.warmup) + len(polled.rejected))
        if not polled.records and not polled.rejected:
            self._update_gauges()
            if not self._stop.is_set():
                self._set_ready(True, "")
            return True
        rejected = list(polled.rejected)
        live = [r for r in polled.records if not r.warmup]
        result = self.pipeline.process(
            [r.point for r in polled.records],
            now=self._clock(),
            warmup=[r.warmup for r in polled.records],
        )
        for position in result.late:
            record = polled.records[position]
            if not record.warmup:
                rejected.append(Rejected("out_of_order",
                                         f"timestamp {record.point.timestamp} is not after the "
                                         f"series' latest", record.raw_key, record.raw_value,
                                         record.partition, record.offset))
        if result.windows:
            self.metrics.batch_scoring_seconds.observe(result.scoring_seconds)
            self.metrics.batch_windows.observe(result.windows)
        self.metrics.series_evicted.labels(reason="idle").inc(result.evicted_idle)
        self.metrics.series_evicted.labels(reason="capacity").inc(result.evicted_capacity)
        for item in rejected:
            self.metrics.events_rejected.labels(reason=item.reason).inc()
        if rejected:
            self.source.dead_letter(rejected)
            self.metrics.dead_letters.inc(len(rejected))
        if not self._write(result.scores):
            log.warning("stopping with %d scores unwritten; they will be replayed from the last "
                        "committed offsets", len(result.scores))
            return False
        if polled.offsets:  # a poll of warm-up records only has nothing new to commit
            self.source.commit(polled.offsets)
            self.metrics.offsets_committed.inc()
        self.metrics.events_scored.inc(len(result.scores))
        anomalies = sum(1 for s in result.scores if s.is_anomaly)
        self.metrics.anomalies.inc(anomalies)
        if self.metrics.series_score is not None:
            for s in result.scores:
                self.metrics.series_score.labels(series=s.series).set(s.score)
        self._update_gauges()
        log.debug("poll: %d live, %d warm-up, %d rejected, %d scored, %d anomalies", len(live),
                  len(polled.records) - len(live), len(rejected), len(result.scores), anomalies)
        return True

    def _write(self, scores: list[Score]) -> bool:
        """Write with exponential backoff until it succeeds or the service is stopped."""
        if not scores:
            return True
        delay = self.settings.retry_initial_s
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                self.sink.write(scores)
            except SinkError as exc:
                attempt += 1
                self.metrics.write_failures.inc()
                self.metrics.sink_up.set(0)
                self._set_ready(False, f"InfluxDB write failing: {exc}")
                if attempt == 1 or math.log2(attempt).is_integer():
                    log.warning("InfluxDB write failed (attempt %d, retrying in %.1fs): %s",
                                attempt, delay, exc)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            self.metrics.write_seconds.observe(time.perf_counter() - started)
            self.metrics.points_written.inc(len(scores))
            self.metrics.sink_up.set(1)
            if attempt:
                log.info("InfluxDB writes succeed again after %d failed attempts", attempt)
            if not self._stop.is_set():
                self._set_ready(True, "")
            return True

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
        except ArtifactError as exc:
            log.warning("model pointer unreadable, keeping %s: %s",
                        self.pipeline.model_version, exc)
            return
        if not forced and self._model_dir is not None and target == self._model_dir:
            return
        try:
            artifact = load_artifact(target)
            self._check_candidate(artifact)
            self.pipeline.swap_model(artifact, device=self.settings.device)
        except (StreamlstmError, ValueError) as exc:
            self.metrics.model_reloads.labels(result="refused").inc()
            log.error("refused model %s, keeping %s: %s", target.name,
                      self.pipeline.model_version, exc)
            self._model_dir = target  # do not retry the same bad model every few seconds
            return
        self.metrics.model_reloads.labels(result="loaded").inc()
        self._model_dir = target
        self._publish_model(artifact)
        log.info("now scoring with model %s", artifact.version)

    def _check_candidate(self, artifact: Artifact) -> None:
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
        from streamlstm.core.scoring import Scorer

        errors = Scorer(artifact, device=self.settings.device).errors(probe)
        if not np.isfinite(errors).all():
            raise ArtifactError("the model gives non-finite errors on a probe batch")

    def _publish_model(self, artifact: Artifact) -> None:
        trained_at = artifact.created_at or ""
        trained_ts = _parse_iso(trained_at)
        self.metrics.set_model(artifact.version, artifact.architecture.cell, trained_at,
                               trained_ts, time.time())

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
        for closer in (self.source.close, self.sink.close):
            try:
                closer()
            except StreamlstmError as exc:
                log.warning("while closing: %s", exc)


def _parse_iso(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
