"""The daemon's Prometheus metrics and the small HTTP server that exposes them.

Every metric object is created here, on the registry passed in, so a test builds a fresh
``CollectorRegistry()`` instead of patching globals. No metric carries a per-series label
unless ``per_series_labels`` is switched on (cardinality grows with the series count).
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from streamlstm.decoding import REASONS as DECODE_REASONS

log = logging.getLogger(__name__)


def build_labels() -> dict[str, str]:
    """``streamlstm_build_info``'s labels: this package's, Python's and torch's versions."""
    from importlib import metadata

    from streamlstm import __version__

    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "none"
    return {"version": __version__, "python": platform.python_version(), "torch": torch}


#: The reason the service gives an event whose timestamp is not after its series' latest.
OUT_OF_ORDER = "out_of_order"
#: The reason for an event whose point the store refused (an HTTP 4xx on its own).
STORE_REJECTED = "store_rejected"
#: The reason for an event of a new series refused during a flood of new series names
#: (``windows.max_new_series_per_poll``).
SERIES_LIMIT = "series_limit"
#: Every ``reason`` label of ``streamlstm_events_rejected_total``: the decoder's reasons and
#: the service's own. Each is created at start, so dashboards show 0 rather than no data.
REJECTION_REASONS = (*DECODE_REASONS, OUT_OF_ORDER, STORE_REJECTED, SERIES_LIMIT)

# Scoring a batch takes from ~0.1 ms (a few windows) to seconds (a cold start on a big poll).
_SCORING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """All of streamlstm's metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, per_series_labels: bool = False) -> None:
        self.registry = registry
        self.per_series_labels = per_series_labels
        # No `*_created` series: process-wide in prometheus_client, so this covers the
        # daemon's registry whatever PROMETHEUS_DISABLE_CREATED_SERIES says.
        disable_created_metrics()
        # The standard process_* (CPU, memory, file descriptors, start time) and python_*
        # (version, garbage collections) families, on this registry rather than the global one.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.build_info = Gauge(
            "streamlstm_build_info",
            "The running build (value 1): streamlstm, Python and torch versions.",
            ["version", "python", "torch"],
            registry=registry,
        )
        self.build_info.labels(**build_labels()).set(1)
        self.last_event_timestamp = Gauge(
            "streamlstm_last_event_timestamp_seconds",
            "Event time of the newest event scored (Unix time); time() minus this is the age "
            "of the freshest score.",
            registry=registry,
        )
        self._newest_event = 0.0
        self.events_consumed = Counter(
            "streamlstm_events_consumed_total",
            "Messages read from Kafka, good or bad.",
            registry=registry,
        )
        self.events_rejected = Counter(
            "streamlstm_events_rejected_total",
            "Messages that could not be decoded, by reason; each goes to the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "streamlstm_dead_letter_messages_total",
            "Messages forwarded to the dead-letter topic.",
            registry=registry,
        )
        self.events_scored = Counter(
            "streamlstm_events_scored_total",
            "Events scored as the last point of a full window.",
            registry=registry,
        )
        self.anomalies = Counter(
            "streamlstm_anomalies_total",
            "Scored events flagged is_anomaly: their score reached the threshold.",
            registry=registry,
        )
        self.alarms = Counter(
            "streamlstm_alarms_total",
            "Alarms: the first flagged event of an incident (a series alarms again after "
            "alarm_hold windows in a row were not flagged).",
            registry=registry,
        )
        self.changes_accepted = Counter(
            "streamlstm_changes_accepted_total",
            "Lasting changes accepted as a series' new normal: flagged stretches that lasted "
            "windows.accept_after windows, after which the series learns them again.",
            registry=registry,
        )
        self.threshold = Gauge(
            "streamlstm_threshold",
            "The global alarm threshold in force: the model's calibration or alarms.threshold "
            "(series matching an alarms.overrides pattern may use another).",
            registry=registry,
        )
        self.retrain_suggested = Gauge(
            "streamlstm_retrain_suggested",
            "1 once the model's reconstruction errors drifted upwards (river ADWIN on the mean "
            "log error of each poll) since the model was loaded; a new model resets it to 0.",
            registry=registry,
        )
        self.error_drifts = Counter(
            "streamlstm_error_drifts_total",
            "Changes detected in the model's error stream, by direction (up: errors grew).",
            ["direction"],
            registry=registry,
        )
        self.points_written = Counter(
            "streamlstm_influx_points_written_total",
            "Score points acknowledged by InfluxDB.",
            registry=registry,
        )
        self.write_failures = Counter(
            "streamlstm_influx_write_failures_total",
            "Failed InfluxDB write attempts (each is retried with backoff).",
            registry=registry,
        )
        self.write_seconds = Histogram(
            "streamlstm_influx_write_seconds",
            "Time to write one batch of score points to InfluxDB.",
            buckets=_WRITE_BUCKETS,
            registry=registry,
        )
        self.sink_up = Gauge(
            "streamlstm_influx_up",
            "1 when the last InfluxDB write succeeded, 0 while writes are failing.",
            registry=registry,
        )
        self.batch_scoring_seconds = Histogram(
            "streamlstm_batch_scoring_seconds",
            "Time to score one batch of windows (normalise, model, calibrate).",
            buckets=_SCORING_BUCKETS,
            registry=registry,
        )
        self.batch_windows = Histogram(
            "streamlstm_batch_windows",
            "Windows scored together in one model batch.",
            buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "streamlstm_consumer_lag_records",
            "Records between the consumer position and the partition's high watermark.",
            ["topic", "partition"],
            registry=registry,
        )
        self.offsets_committed = Counter(
            "streamlstm_offset_commits_total",
            "Offset commits made after the scores they cover were written.",
            registry=registry,
        )
        self.series_tracked = Gauge(
            "streamlstm_series_tracked",
            "Series with window state held in memory.",
            registry=registry,
        )
        self.series_evicted = Counter(
            "streamlstm_series_evicted_total",
            "Series dropped from memory, by reason (idle or capacity).",
            ["reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "streamlstm_model_info",
            "The model in service (value 1), with its version, cell type and training time.",
            ["version", "cell", "trained_at"],
            registry=registry,
        )
        self.model_trained_timestamp = Gauge(
            "streamlstm_model_trained_timestamp_seconds",
            "When the model in service was trained (Unix time).",
            registry=registry,
        )
        self.model_loaded_timestamp = Gauge(
            "streamlstm_model_loaded_timestamp_seconds",
            "When the model in service was loaded (Unix time).",
            registry=registry,
        )
        self.model_reloads = Counter(
            "streamlstm_model_reloads_total",
            "Attempts to switch to a new model, by result (loaded or refused).",
            ["result"],
            registry=registry,
        )
        self.ready = Gauge(
            "streamlstm_ready",
            "1 while the daemon consumes and writes normally, 0 otherwise (see /readyz).",
            registry=registry,
        )
        self.series_score: Gauge | None = None
        self.series_alarms: Counter | None = None
        if per_series_labels:
            self.series_alarms = Counter(
                "streamlstm_series_alarms_total",
                "Alarms per series (only with metrics.per_series_labels; created at 0 when a "
                "series is first scored, so its first alarm is an increase).",
                ["series"],
                registry=registry,
            )
            self.series_score = Gauge(
                "streamlstm_series_score",
                "Latest anomaly score per series (only with metrics.per_series_labels).",
                ["series"],
                registry=registry,
            )
        self.series_warming = Gauge(
            "streamlstm_series_warming",
            "Series held that cannot alarm yet (no kind of evidence past its calibration "
            "warm-up); the rest of streamlstm_series_tracked are warm.",
            registry=registry,
        )
        self.checkpoints = CheckpointMetrics(registry)
        for reason in REJECTION_REASONS:
            self.events_rejected.labels(reason=reason)
        for reason in ("loaded", "refused"):
            self.model_reloads.labels(result=reason)
        for reason in ("idle", "capacity"):
            self.series_evicted.labels(reason=reason)
        for direction in ("up", "down"):
            self.error_drifts.labels(direction=direction)

    def scored_up_to(self, event_timestamp: float) -> None:
        """Note a scored event's time; the gauge keeps the newest (a late series never
        moves it back)."""
        if event_timestamp > self._newest_event:
            self._newest_event = event_timestamp
            self.last_event_timestamp.set(event_timestamp)

    def set_model(self, version: str, cell: str, trained_at: str, trained_ts: float,
                  loaded_ts: float) -> None:
        """Point the model-info metrics at the model now in service."""
        self.model_info.clear()
        self.model_info.labels(version=version, cell=cell, trained_at=trained_at).set(1)
        self.model_trained_timestamp.set(trained_ts)
        self.model_loaded_timestamp.set(loaded_ts)


class CheckpointMetrics:
    """Checkpoints of per-series state (see `streamlstm.checkpoints`)."""

    #: ``outcome`` of a partition's restore at assignment.
    RESTORE_OUTCOMES = ("restored", "refused", "none")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "streamlstm_checkpoints_total",
            "Partition checkpoints taken, by result (written or failed).",
            ["result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "streamlstm_checkpoint_seconds",
            "Time the loop spent taking one checkpoint (every partition due).",
            buckets=_WRITE_BUCKETS,
            registry=registry,
        )
        self.bytes = Gauge(
            "streamlstm_checkpoint_bytes",
            "Size of the last checkpoint (every partition in it).",
            registry=registry,
        )
        self.last_timestamp = Gauge(
            "streamlstm_checkpoint_last_timestamp_seconds",
            "When the last checkpoint was written (Unix time); its age is time() minus this.",
            registry=registry,
        )
        self.restores = Counter(
            "streamlstm_checkpoint_restores_total",
            "Partitions assigned, by what their checkpoint gave: restored, refused (corrupt, "
            "incompatible or ahead of the commit: the partition falls back to the rewind) or none.",
            ["outcome"],
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "streamlstm_checkpoint_restore_seconds",
            "Time to load and restore one partition's checkpoint.",
            buckets=_WRITE_BUCKETS,
            registry=registry,
        )
        self.series_restored = Counter(
            "streamlstm_checkpoint_series_restored_total",
            "Series whose state came back from a checkpoint.",
            registry=registry,
        )
        self.partition_conflicts = Counter(
            "streamlstm_series_partition_conflicts_total",
            "Events of a series that arrived on another partition than the series' earlier "
            "events (its state follows one partition: key events by series).",
            registry=registry,
        )
        for result in ("written", "failed"):
            self.written.labels(result=result)
        for outcome in self.RESTORE_OUTCOMES:
            self.restores.labels(outcome=outcome)


Probe = Callable[[], tuple[bool, str]]

#: The longest reason /healthz and /readyz give, after "not ok: ".
MAX_REASON_CHARS = 120


def short_reason(reason: str) -> str:
    """A probe's reason as one short line of printable text (whatever the probe said)."""
    line = reason.strip().splitlines()[0] if reason.strip() else ""
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` (the process is alive), ``/readyz`` (it is working)
    and ``/series?name=NAME`` (``inspect``: what the daemon holds for one series, as JSON).

    Runs on its own daemon thread; ``health`` and ``ready`` return ``(ok, reason)``; a reason
    is answered as one short line (`short_reason`). A connection that has not sent a complete
    request within ``request_timeout_s`` is closed, so idle clients do not pin threads.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 health: Probe, ready: Probe, request_timeout_s: float = 10.0,
                 inspect: Callable[[str], dict[str, Any] | None] | None = None) -> None:
        self._registry = registry
        self._health = health
        self._ready = ready
        self._inspect = inspect
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = request_timeout_s  # socket timeout for every read and write

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, reason = (server._health if path == "/healthz" else server._ready)()
                    reason = short_reason(reason)
                    body = (("ok" if ok else "not ok") + (f": {reason}" if reason else "") + "\n")
                    self._send(200 if ok else 503, body.encode(), "text/plain; charset=utf-8")
                elif path == "/series" and server._inspect is not None:
                    self._series()
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _series(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                names = query.get("name") or []
                if len(names) != 1:
                    self._send(400, b"ask for one series: /series?name=NAME\n",
                               "text/plain; charset=utf-8")
                    return
                assert server._inspect is not None
                found = server._inspect(names[0])
                if found is None:
                    self._send(404, b"no such series held\n", "text/plain; charset=utf-8")
                    return
                self._send(200, json.dumps(found).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http",
                                        daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound (useful when 0 was asked for)."""
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
