"""``workers: 2``: one ``streamlstm run`` supervising two daemon processes, on tansu and InfluxDB.

Every event is scored exactly once (the workers share the partitions of one consumer group),
the supervisor's endpoint shows both workers' metrics labelled ``worker``, its probes speak for
both, a worker that dies is started again, and SIGTERM stops them all cleanly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import (
    STEP,
    T0,
    WINDOW,
    DaemonProcess,
    count_points,
    daemon_config,
    event,
    points_by_series,
    produce,
    sine,
    train_model,
    wait_until,
)
from tests.integration.test_kafka_source import create_topic

N_SERIES, EVENTS = 80, 60


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    train_model(path, epochs=2)
    return path


def events(start: int, stop: int) -> list[dict[str, Any]]:
    curves = [sine(EVENTS * 2, phase=k % 5, seed=k) for k in range(N_SERIES)]
    return [event(f"w{k:02d}", i, float(curves[k][i]))
            for i in range(start, stop) for k in range(N_SERIES)]


def worker_pids(daemon: DaemonProcess) -> list[int]:
    """The supervisor's children (Linux /proc)."""
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children")
    return [int(pid) for pid in children.read_text().split()]


def test_two_workers_share_the_partitions_behind_one_endpoint(kafka, influx, unique_name,
                                                               models, tmp_path) -> None:
    topic, group, database = unique_name("workers"), unique_name("g"), unique_name("db")
    create_topic(kafka, topic, partitions=4)
    influx.create_database(database)
    config = daemon_config(kafka.bootstrap, topic, group, influx.url, database, models,
                           checkpoint={"store": "directory",
                                       "directory": str(tmp_path / "checkpoints")})
    config["workers"] = 2
    produce(kafka.bootstrap, topic, events(0, EVENTS))
    expected = N_SERIES * (EVENTS - WINDOW + 1)
    daemon = DaemonProcess(config, tmp_path, "supervisor").start()
    try:
        wait_until(lambda: count_points(influx, database) >= expected or not daemon.alive(),
                   180, "every event scored")
        assert daemon.alive(), daemon.log_tail()
        points = points_by_series(influx, database)
        assert len(points) == N_SERIES
        times = [int((T0 + i * STEP) * 1e9) for i in range(WINDOW - 1, EVENTS)]
        for name, rows in points.items():
            assert [r["time"] for r in rows] == times, f"{name}: a gap or a duplicate"

        # Both workers consumed, each its own partitions; the endpoint labels them.
        def scored(worker: str) -> float:
            return daemon.metric("streamlstm_events_scored_total", worker=worker)

        wait_until(lambda: scored("0") + scored("1") == expected, 30, "both workers' counts")
        assert scored("0") > 0 and scored("1") > 0
        assert daemon.metric("streamlstm_worker_up", worker="0") == 1.0
        assert daemon.metric("streamlstm_worker_up", worker="1") == 1.0

        def lag_partitions() -> set[int]:  # each partition's lag comes from its worker
            return {p for worker in ("0", "1") for p in range(4)
                    if has_sample(daemon, "streamlstm_consumer_lag_records", worker=worker,
                                  partition=str(p))}

        wait_until(lambda: lag_partitions() == {0, 1, 2, 3}, 30, "every partition's lag")
        status, body = get(daemon, "/readyz")
        assert status == 200, body
        status, body = get(daemon, "/series?name=w07")
        assert status == 200 and '"worker"' in body

        # A worker that dies is started again, and the probes say so meanwhile.
        first = worker_pids(daemon)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: len(set(worker_pids(daemon)) - set(first)) == 1, 30,
                   "the killed worker started again")
        wait_until(lambda: daemon.metric("streamlstm_worker_restarts_total", worker="0")
                   + daemon.metric("streamlstm_worker_restarts_total", worker="1") == 1, 30,
                   "a restart counted")
        wait_until(lambda: get(daemon, "/readyz")[0] == 200, 90, "both workers ready again")

        # What arrives after the restart is scored once too.
        produce(kafka.bootstrap, topic, events(EVENTS, EVENTS + 10))
        wait_until(lambda: count_points(influx, database) >= expected + 10 * N_SERIES, 120,
                   "the events after the restart")
        assert count_points(influx, database) == expected + 10 * N_SERIES
    finally:
        children = worker_pids(daemon) if daemon.alive() else []
        daemon.stop()
    assert daemon.process.returncode == 0, daemon.log_tail()
    for pid in children:  # the workers stopped with the supervisor
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text().lower()
    log = daemon.log_path.read_text()
    assert "worker 0 " in log and "worker 1 " in log  # each worker's lines name it


def has_sample(daemon: DaemonProcess, name: str, **labels: str) -> bool:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = get(daemon, "/metrics")
    return status == 200 and any(
        sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        for family in text_string_to_metric_families(text) for sample in family.samples)


def get(daemon: DaemonProcess, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}{path}",
                                    timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
