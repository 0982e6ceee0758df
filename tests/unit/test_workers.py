"""The supervisor of ``workers: N`` with fake child processes and a fake clock (the real
processes on tansu and InfluxDB: tests/integration/test_workers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamlstm import workers
from streamlstm.workers import Supervisor, merge_families


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = 0 if self.returncode is None else self.returncode
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(n: int = 2) -> tuple[Supervisor, list[FakeProcess], list[dict[str, str]], Clock]:
    spawned: list[FakeProcess] = []
    environments: list[dict[str, str]] = []
    clock = Clock()

    def spawn(command: list[str], env: dict[str, str], **_: Any) -> FakeProcess:
        environments.append(env)
        spawned.append(FakeProcess(100 + len(spawned)))
        return spawned[-1]

    supervisor = Supervisor(["streamlstm", "run"], n, "127.0.0.1", 0, {"KEEP": "1"},
                            spawn=spawn, clock=clock)
    return supervisor, spawned, environments, clock


def serve(supervisor: Supervisor, index: int, port: int = 1) -> None:
    """What a worker does once its endpoint is up: write its port."""
    Path(supervisor.workers[index].port_file).write_text(str(port))


def test_each_worker_is_told_its_index_and_where_to_write_its_port() -> None:
    supervisor, _, environments, _ = make(3)
    for worker in supervisor.workers:
        supervisor._start(worker)
    assert [e[workers.WORKER_ENV] for e in environments] == ["0/3", "1/3", "2/3"]
    assert all(e["KEEP"] == "1" for e in environments)
    assert len({e[workers.PORT_FILE_ENV] for e in environments}) == 3
    assert workers.worker_index({workers.WORKER_ENV: "2/3"}) == 2
    assert workers.worker_index({}) is None
    serve(supervisor, 1, port=4321)
    supervisor.check()
    assert [w.port for w in supervisor.workers] == [None, 4321, None]
    supervisor.close()


def test_a_worker_that_exits_is_started_again_after_a_growing_backoff() -> None:
    supervisor, spawned, _, clock = make(2)
    for worker in supervisor.workers:
        supervisor._start(worker)
    serve(supervisor, 0)
    supervisor.check()
    waits = []
    for _ in range(4):
        spawned[-2 if len(spawned) == 2 else -1].returncode = 1  # worker 0's latest process
        supervisor.check()
        first = supervisor.workers[0]
        assert first.process is None
        waits.append(first.next_start - clock.now)
        clock.now += waits[-1] - 0.01
        supervisor.check()
        assert first.process is None  # not before its backoff is over
        clock.now += 0.02
        supervisor.check()
        assert first.process is not None and first.process is spawned[-1]
        clock.now += 1
    assert waits == [2.0, 4.0, 8.0, 16.0]
    assert supervisor.workers[0].restarts == 4 and supervisor.workers[1].restarts == 0
    # One that ran for a minute before it exited waits the initial backoff again.
    clock.now += workers.STEADY_S
    spawned[-1].returncode = 1
    supervisor.check()
    assert supervisor.workers[0].next_start - clock.now == workers.BACKOFF_INITIAL_S
    supervisor.close()


def test_a_worker_that_fails_before_it_ever_served_stops_everything() -> None:
    supervisor, spawned, _, _ = make(2)
    for worker in supervisor.workers:
        supervisor._start(worker)
    spawned[1].returncode = 2  # e.g. its model did not load
    supervisor.check()
    supervisor.run()  # returns at once: stopping
    supervisor.close()
    assert supervisor.exit_status == 2
    assert len(spawned) == 2  # not started again
    assert spawned[0].signals  # the other one was asked to stop


def test_stop_passes_sigterm_and_reload_passes_sighup() -> None:
    import signal

    supervisor, spawned, _, _ = make(2)
    for worker in supervisor.workers:
        supervisor._start(worker)
    supervisor.request_reload()
    supervisor.check()
    supervisor.stop()
    supervisor.close()
    assert all(signal.SIGHUP in p.signals and signal.SIGTERM in p.signals for p in spawned)
    assert supervisor.exit_status == 0


def exposition(scored: float, lag: dict[str, float]) -> str:
    registry = CollectorRegistry()
    Counter("streamlstm_events_scored_total", "Events scored.", registry=registry).inc(scored)
    gauge = Gauge("streamlstm_consumer_lag_records", "Lag.", ["partition"], registry=registry)
    for partition, value in lag.items():
        gauge.labels(partition).set(value)
    return generate_latest(registry).decode()


def test_merged_metrics_keep_each_family_once_with_a_worker_label() -> None:
    families: dict[str, Any] = {}
    for worker, text in (("0", exposition(5, {"0": 1.0})), ("1", exposition(7, {"1": 2.0}))):
        merge_families(text, worker, families)

    class Merged:
        def collect(self) -> Any:
            yield from families.values()

    registry = CollectorRegistry()
    registry.register(Merged())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert text.count("# TYPE streamlstm_events_scored_total counter") == 1
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("streamlstm_events_scored_total", (("worker", "0"),))] == 5
    assert samples[("streamlstm_events_scored_total", (("worker", "1"),))] == 7
    assert samples[("streamlstm_consumer_lag_records",
                    (("partition", "1"), ("worker", "1")))] == 2.0


def test_probes_name_the_worker_that_is_not_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor, _, _, _ = make(2)
    for worker in supervisor.workers:
        supervisor._start(worker)
    answers = {0: (200, b"ok\n"), 1: (503, b"not ok: InfluxDB write failing (HTTP 503)\n")}
    monkeypatch.setattr(supervisor, "fetch", lambda worker, path: answers.get(worker.index))
    assert supervisor.ready() == (False, "worker 1: InfluxDB write failing (HTTP 503)")
    answers[1] = (200, b"ok\n")
    assert supervisor.ready() == (True, "")
    del answers[0]
    assert supervisor.health() == (False, "worker 0 not answering yet")
    supervisor.close()


def test_one_worker_is_no_supervisor() -> None:
    with pytest.raises(ValueError):
        Supervisor(["x"], 1, "127.0.0.1", 0, {})
