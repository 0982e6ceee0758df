"""`streamlstm demo`: the whole daemon on one machine, with nothing to set up.

Starts a tansu broker, an InfluxDB (with the v2 write endpoint) and, when installed, a
Prometheus scraping the daemon; installs the bundled model (pretrained on synthetic series
only, so it has never seen the demo's series) as the current model of the demo's models
directory; replays the series into Kafka; runs the daemon until every event is scored and
written; then prints what it found and where to look.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from importlib import resources
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamlstm import config as config_module
from streamlstm.devstack import InfluxDB, Prometheus, TansuBroker, free_port

log = logging.getLogger(__name__)

DATASETS = (
    "ec2_request_latency_system_failure.csv",
    "art_daily_jumpsup.csv",
    "rogue_agent_key_hold.csv",
)
TOPIC = "metrics"
DATABASE = "streamlstm"


def bundled_files() -> list[Path]:
    """The demo datasets shipped inside the package."""
    root = resources.files("streamlstm") / "data"
    return [Path(str(root / name)) for name in DATASETS]


def run_demo(workdir: Path, keep_running: bool = False, timeout_s: float = 600.0) -> int:
    from streamlstm.cli import build_service
    from streamlstm.sources.files import read_table
    from streamlstm.sources.kafka import produce_points

    workdir.mkdir(parents=True, exist_ok=True)
    files = bundled_files()
    tables = [read_table(path) for path in files]
    models = workdir / "models"
    if not _holds_bundled_model(models):
        # A first run, or a models directory from before this release: start from the
        # shipped model. Afterwards whatever the user made current stays current.
        install_bundled_model(models)

    with TansuBroker() as kafka, InfluxDB(databases=[DATABASE]) as influx:
        metrics_port = free_port()
        environ = {
            "STREAMLSTM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "STREAMLSTM_KAFKA_TOPIC": TOPIC,
            "STREAMLSTM_KAFKA_GROUP_ID": "streamlstm-demo",
            "STREAMLSTM_MODEL_PATH": str(models),
            "STREAMLSTM_METRICS_PORT": str(metrics_port),
            "STREAMLSTM_INFLUX_BUCKET": DATABASE,
            "INFLUXDB_V2_URL": influx.url,
            "INFLUXDB_V2_ORG": "demo",
        }
        settings = config_module.load(None, environ)
        settings = _short_group_timeouts(settings)
        # The bundled series are recorded history (2013-2015): no bound on an event's age.
        settings = dataclasses.replace(
            settings, decoder=dataclasses.replace(settings.decoder, max_past_s=0.0))
        prometheus = _start_prometheus(metrics_port)
        sent = 0
        for table in tables:
            sent += produce_points(kafka.bootstrap, TOPIC, table.points(), table.feature_names)
        print(f"produced {sent} events from {len(tables)} series to topic {TOPIC!r} "
              f"at {kafka.bootstrap}")

        service, server = build_service(settings, registry=CollectorRegistry())
        server.start()
        worker = threading.Thread(target=service.run, name="daemon", daemon=True)
        worker.start()
        registry = service.metrics.registry
        written = _wait_until_consumed(influx, registry, sent, timeout_s)
        try:
            _report(influx, written, sent, settings.metrics.port, prometheus, models)
            if keep_running:
                print("\nservers and daemon keep running; Ctrl-C stops them")
                while worker.is_alive():
                    time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            service.stop()
            worker.join(timeout=30)
            service.close()
            server.stop()
            if prometheus is not None:
                prometheus.stop()
    return 0 if written > 0 else 1


def _holds_bundled_model(models: Path) -> bool:
    """Whether some version under ``models`` has the bundled model's weights."""
    import json

    from streamlstm.cli import BUNDLED_MODEL
    from streamlstm.model.artifact import META_FILE

    def weights_hash(meta: Path) -> str | None:
        try:
            return json.loads(meta.read_text()).get("weights_sha256")
        except (OSError, ValueError):
            return None

    bundled = weights_hash(BUNDLED_MODEL / META_FILE)
    return any(weights_hash(meta) == bundled for meta in models.glob(f"*/{META_FILE}"))


def install_bundled_model(models: Path) -> Path:
    """Save the bundled model as a new version under ``models`` and make it current."""
    from streamlstm.cli import BUNDLED_MODEL
    from streamlstm.model.artifact import load_artifact, save_artifact

    artifact = load_artifact(BUNDLED_MODEL)  # checks the weights' checksum
    target = save_artifact(artifact, models)
    print(f"installed the bundled model (pretrained on synthetic series) as {artifact.version} "
          f"in {target}")
    return target


def _short_group_timeouts(settings: config_module.Settings) -> config_module.Settings:
    from dataclasses import replace

    # A one-member group on a local broker: join quickly instead of waiting out 5 minutes (a
    # stale member of an earlier run expires after the session timeout). A poll may take a few
    # seconds on a busy machine while the first series warm up: at a 3 s poll interval the
    # demo's own consumer was dropped from the group mid-run and skipped a commit.
    kafka = replace(settings.kafka, max_poll_interval_ms=30_000, session_timeout_ms=6_000,
                    heartbeat_interval_ms=500)
    return replace(settings, kafka=kafka)


def _start_prometheus(metrics_port: int) -> Prometheus | None:
    if shutil.which("prometheus") is None:
        print("prometheus is not installed (scripts/setup installs it); skipping it")
        return None
    prometheus = Prometheus(targets=[f"127.0.0.1:{metrics_port}"])
    prometheus.start()
    return prometheus


def _wait_until_consumed(influx: InfluxDB, registry: CollectorRegistry, sent: int,
                         timeout_s: float) -> int:
    """Wait until the daemon consumed every event sent and the written count settled."""
    deadline = time.monotonic() + timeout_s
    count, settled = -1, 0
    while time.monotonic() < deadline and settled < 3:
        consumed = registry.get_sample_value("streamlstm_events_consumed_total") or 0.0
        rows = influx.query('SELECT count("score") FROM "anomaly"', db=DATABASE)
        now = int(rows[0]["count"]) if rows else 0
        settled = settled + 1 if consumed >= sent and now == count else 0
        count = now
        print(f"\rconsumed {consumed:.0f}/{sent}, scored and written {count}", end="", flush=True)
        time.sleep(1)
    print()
    return count


def _report(influx: InfluxDB, written: int, sent: int, metrics_port: int,
            prometheus: Prometheus | None, models: Path) -> None:
    names = [row["value"] for row in influx.query(
        'SHOW TAG VALUES FROM "anomaly" WITH KEY = "series"', db=DATABASE)]
    print(f"\n{'series':45} {'points':>8} {'flagged':>8} {'alarms':>7}")
    for series in names:
        points, flagged, alarms = _series_counts(influx, series)
        print(f"{series:45} {points:>8} {flagged:>8} {alarms:>7}")
    print(f"\n{written} of {sent} events scored and written to InfluxDB (the first events of "
          "each series, and those after a long gap, fill the window; repeated timestamps go to "
          "the dead-letter topic).")
    print("(flagged: points whose score reached the threshold; alarms: the first flagged point "
          "of each incident)\nfirst alarms:")
    for row in influx.query('SELECT "score", "value", "series" FROM "anomaly" '
                            'WHERE "alarm" = true LIMIT 10', db=DATABASE):
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["time"] / 1e9))
        print(f"  {stamp}  {row['series']:40} value={row['value']:<10.4g} "
              f"score={row['score']:.4f}")
    print("\nwhere to look while it runs (streamlstm demo --keep-running):")
    print(f"  metrics:    curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^streamlstm_")
    print(f"  InfluxQL:   curl -sG {influx.url}/query --data-urlencode db={DATABASE} "
          "--data-urlencode 'q=SELECT * FROM anomaly WHERE is_anomaly = true LIMIT 5'")
    if prometheus is not None:
        print(f"  Prometheus: {prometheus.url}/graph?g0.expr=streamlstm_events_scored_total")
    print(f"  model:      streamlstm models list --models {models}")


def _series_counts(influx: InfluxDB, series: str) -> tuple[int, int, int]:
    """Points, flagged points and alarms of ``series``."""
    escaped = series.replace("'", "\\'")
    where = f'WHERE "series" = \'{escaped}\''
    counts = []
    for extra in ("", ' AND "is_anomaly" = true', ' AND "alarm" = true'):
        rows = influx.query(f'SELECT count("score") FROM "anomaly" {where}{extra}', db=DATABASE)
        counts.append(int(rows[0]["count"]) if rows else 0)
    return counts[0], counts[1], counts[2]
