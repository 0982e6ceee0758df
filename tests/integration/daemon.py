"""Helpers for running the real daemon against the real servers inside a test."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streamlstm import config
from streamlstm.cli import build_service
from streamlstm.core.calibration import CalibrationSettings
from streamlstm.model.artifact import save_artifact
from streamlstm.training import SeriesHistory, TrainingSettings, fit

WINDOW = 16
T0 = 1_700_000_000.0
STEP = 60.0


def sine(n: int, phase: float = 0.0, seed: int = 0) -> np.ndarray:
    """A noisy daily-ish sine: what the test model learns as normal."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * math.pi * t / 48 + phase) + rng.normal(0, 0.1, n)


def train_model(models_dir: Path, seed: int = 0, epochs: int = 8) -> str:
    """Train a small model on generated sines into ``models_dir``; return its version."""
    history = {f"train{i}": SeriesHistory(T0 + np.arange(600) * STEP,
                                          sine(600, phase=i, seed=seed + i)[:, None])
               for i in range(3)}
    # Short series: a short warm-up, and a strict threshold so that what alarms in 300 events
    # is the injected spike rather than a merely unusual window.
    settings = TrainingSettings(window=WINDOW, hidden_size=16, epochs=epochs, seed=seed,
                                calibration=CalibrationSettings(warmup=32, threshold=0.4))
    artifact = fit(history, ["value"], settings, progress=False)
    save_artifact(artifact, models_dir)
    return artifact.version


def event(series: str, index: int, value: float) -> dict[str, Any]:
    return {"series": series, "timestamp": T0 + index * STEP, "value": value}


def produce(bootstrap: str, topic: str, messages: Iterable[dict[str, Any] | bytes]) -> int:
    """Send JSON events (dicts) or raw bytes, keyed by series so each series keeps its order
    (raw bytes go with the key of the last event before them)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    sent = 0
    key = b"raw"
    for message in messages:
        if isinstance(message, bytes):
            producer.send(topic, key=key, value=message)
        else:
            key = message["series"].encode()
            producer.send(topic, key=key, value=json.dumps(message).encode())
        sent += 1
    producer.flush()
    producer.close()
    return sent


def settings_for(bootstrap: str, topic: str, group: str, influx_url: str, database: str,
                 models: Path, **kafka_overrides: Any) -> config.Settings:
    environ = {
        "STREAMLSTM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMLSTM_KAFKA_TOPIC": topic,
        "STREAMLSTM_KAFKA_GROUP_ID": group,
        "STREAMLSTM_KAFKA_DEAD_LETTER_TOPIC": f"{topic}.dead-letter",
        "STREAMLSTM_MODEL_PATH": str(models),
        "STREAMLSTM_METRICS_PORT": "0",
        "STREAMLSTM_INFLUX_BUCKET": database,
        "INFLUXDB_V2_URL": influx_url,
        "INFLUXDB_V2_ORG": "test",
    }
    settings = config.load(None, environ)
    kafka = replace(settings.kafka, max_poll_interval_ms=3_000, session_timeout_ms=6_000,
                    heartbeat_interval_ms=500, poll_timeout_ms=200,
                    **kafka_overrides)
    influx = replace(settings.influx, retry_initial_s=0.2, retry_max_s=1.0, timeout_ms=3_000)
    model = replace(settings.model, reload_interval_s=0.5)
    # The test events are dated 2023 (T0): the daemon's window around now is off for them.
    decoder = replace(settings.decoder, max_past_s=0.0)
    checkpoint = replace(settings.checkpoint, interval_s=1.0)  # within a test's few seconds
    return replace(settings, kafka=kafka, influx=influx, model=model, decoder=decoder,
                   checkpoint=checkpoint,
                   metrics=replace(settings.metrics, host="127.0.0.1"))


class RunningDaemon:
    """The real service (built by the CLI's wiring) on a thread, with its HTTP endpoint."""

    def __init__(self, settings: config.Settings) -> None:
        self.registry = CollectorRegistry()
        self.service, self.server = build_service(settings, registry=self.registry)
        self.thread = threading.Thread(target=self.service.run, name="daemon", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> RunningDaemon:
        self.server.start()
        original = self.service.run

        def run() -> None:
            try:
                original()
            except BaseException as exc:  # surfaced by stop()
                self.error = exc

        self.thread = threading.Thread(target=run, name="daemon", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the daemon did not stop within 60s"
        self.service.close()
        self.server.stop()
        if self.error is not None:
            raise self.error

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def points_by_series(influx: Any, database: str) -> dict[str, list[dict[str, Any]]]:
    rows = influx.query('SELECT * FROM "anomaly" GROUP BY "series"', db=database)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["series"], []).append(row)
    for rows_of in out.values():
        rows_of.sort(key=lambda r: r["time"])
    return out


def count_points(influx: Any, database: str) -> int:
    rows = influx.query('SELECT count("score") FROM "anomaly"', db=database)
    return int(rows[0]["count"]) if rows else 0


class DaemonProcess:
    """``streamlstm run`` as a child process (so it can be killed with SIGKILL)."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "daemon") -> None:
        import yaml

        from streamlstm.devstack import free_port

        self.port = free_port()
        config = {**config, "metrics": {**config.get("metrics", {}), "host": "127.0.0.1",
                                        "port": self.port}}
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.process: Any = None

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DaemonProcess:
        import os
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLSTM_",
                                                                         "INFLUXDB_V2_"))}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamlstm", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no last commit, no last checkpoint."""
        import signal

        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except Exception:
                self.process.kill()
                raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metric(self, name: str, **labels: str) -> float:
        """A sample from /metrics (0 when absent or not serving yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def daemon_config(bootstrap: str, topic: str, group: str, influx_url: str, database: str,
                  models: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config file's content for `DaemonProcess`, with test-friendly timeouts."""
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": group,
                  "dead_letter_topic": f"{topic}.dead-letter", "max_poll_interval_ms": 10_000,
                  "session_timeout_ms": 6_000, "heartbeat_interval_ms": 500,
                  "poll_timeout_ms": 200},
        "influx": {"url": influx_url, "org": "test", "bucket": database,
                   "retry_initial_s": 0.2, "retry_max_s": 1.0, "timeout_ms": 3_000},
        "model": {"path": str(models), "reload_interval_s": 0.5},
        "decoder": {"max_past_s": 0.0},  # no bound: T0 is in 2023
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config
