"""The service loop's failure paths, on in-memory adapters: store outages keep the loop turning
and the consumer polling; store refusals are isolated, dead-lettered and the rest committed."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from streamlstm.core.pipeline import Pipeline
from streamlstm.core.records import Score
from streamlstm.metrics import Metrics
from streamlstm.model.artifact import Artifact
from streamlstm.service import Service, ServiceSettings
from streamlstm.sinks.influx import timestamp_ns
from tests.memory_adapters import FakeClock, MemorySink, MemorySource
from tests.unit.core_helpers import STEP, T0, TINY_WINDOW, sine_values

N = TINY_WINDOW + 40  # events per series: 41 scores each


def make_service(artifact: Artifact, source: MemorySource, sink: MemorySink,
                 clock: FakeClock, **settings: float) -> tuple[Service, CollectorRegistry]:
    registry = CollectorRegistry()
    options = {"retry_initial_s": 1.0, "retry_max_s": 8.0, "stall_after_s": 5.0,
               "reload_interval_s": 1e9, **settings}
    service = Service(source, sink, Pipeline(artifact), Metrics(registry),
                      ServiceSettings(**options), clock=lambda: T0,
                      monotonic=clock, wait=clock.wait)
    return service, registry


def fill(source: MemorySource, series: list[str], n: int = N) -> None:
    values = sine_values(n)
    for i in range(n):
        for name in series:
            source.send({"series": name, "timestamp": T0 + i * STEP, "value": float(values[i])},
                        key=name.encode())


def expected_points(series: list[str], n: int = N) -> set[tuple[str, int]]:
    return {(name, timestamp_ns(T0 + i * STEP)) for name in series
            for i in range(TINY_WINDOW - 1, n)}


def rejected(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("streamlstm_events_rejected_total", {"reason": reason})


def test_a_long_outage_keeps_the_loop_turning_polling_and_then_writes_everything(
        tiny_artifact: Artifact) -> None:
    source, sink, clock = MemorySource(max_records=30), MemorySink(), FakeClock()
    names = ["a", "b"]
    fill(source, names)
    service, registry = make_service(tiny_artifact, source, sink, clock)
    health: list[tuple[bool, str]] = []
    readiness: list[tuple[bool, str]] = []
    clock.on_wait = lambda _: (health.append(service.health()),
                               readiness.append(service.ready()))
    sink.down = True

    def scenario(src: MemorySource) -> None:
        health.append(service.health())
        if src.paused_polls == 60:  # a minute or more of fake time without a single write
            sink.down = False
        if src.committed == src.end_offsets():
            service.stop()

    source.on_poll = scenario
    service.run()

    assert source.paused_polls >= 60, "the consumer must keep polling during the outage"
    assert clock.now - 1000.0 > 10 * service.settings.stall_after_s  # the outage was long
    assert health and all(ok for ok, _ in health), [r for ok, r in health if not ok][:3]
    down = [reason for ok, reason in readiness if not ok]
    assert down and all("InfluxDB" in r and len(r) <= 60 for r in down)
    assert not source.paused, "resumed after the outage"
    assert set(sink.points) == expected_points(names)
    assert source.committed == source.end_offsets()
    assert registry.get_sample_value("streamlstm_influx_up") == 1.0
    assert registry.get_sample_value("streamlstm_influx_write_failures_total") >= 5
    assert source.dead == []


def test_nothing_is_committed_while_the_store_is_down(tiny_artifact: Artifact) -> None:
    source, sink, clock = MemorySource(), MemorySink(), FakeClock()
    fill(source, ["a"])
    service, _ = make_service(tiny_artifact, source, sink, clock)
    sink.down = True
    assert service.run_once() is False
    assert source.paused and source.committed == {}
    for _ in range(20):
        assert service.run_once() is False
    assert source.committed == {} and sink.points == {}
    assert service.ready()[0] is False
    sink.down = False
    while not service.run_once():
        pass
    assert source.committed == source.end_offsets()
    assert set(sink.points) == expected_points(["a"])
    assert service.ready() == (True, "")


def test_a_refused_point_is_dead_lettered_and_the_rest_written_and_committed(
        tiny_artifact: Artifact) -> None:
    source, sink, clock = MemorySource(), MemorySink(), FakeClock()
    names = ["a", "b", "c"]
    fill(source, names)
    bad_time = T0 + 30 * STEP
    sink.refuse = lambda s: ('field type conflict: input field "value" is type float'
                             if s.series == "b" and s.timestamp == bad_time else None)
    service, registry = make_service(tiny_artifact, source, sink, clock)
    assert service.run_once() is True

    assert source.committed == source.end_offsets()
    assert set(sink.points) == expected_points(names) - {("b", timestamp_ns(bad_time))}
    (dead,) = source.dead
    assert dead.reason == "store_rejected"
    assert "HTTP 400" in dead.detail and "field type conflict" in dead.detail
    original = json.loads(dead.raw_value or b"")
    assert (original["series"], original["timestamp"]) == ("b", bad_time)
    assert dead.raw_key == b"b" and dead.partition == 0
    assert source.log[0][dead.offset] == (dead.raw_key, dead.raw_value)
    assert rejected(registry, "store_rejected") == 1.0
    assert registry.get_sample_value("streamlstm_dead_letter_messages_total") == 1.0
    assert registry.get_sample_value("streamlstm_events_scored_total") == len(sink.points)


def test_many_refused_points_are_all_isolated(tiny_artifact: Artifact) -> None:
    source, sink, clock = MemorySource(), MemorySink(), FakeClock()
    fill(source, ["a"])
    bad = {T0 + i * STEP for i in (TINY_WINDOW - 1, 20, 21, 33, N - 1)}
    sink.refuse = lambda s: "points beyond retention policy" if s.timestamp in bad else None
    service, registry = make_service(tiny_artifact, source, sink, clock)
    assert service.run_once() is True
    assert sorted(json.loads(d.raw_value or b"")["timestamp"] for d in source.dead) == sorted(bad)
    assert set(sink.points) == expected_points(["a"]) - {("a", timestamp_ns(t)) for t in bad}
    assert source.committed == source.end_offsets()
    assert rejected(registry, "store_rejected") == len(bad)


def test_a_body_too_large_is_split_until_it_fits(tiny_artifact: Artifact) -> None:
    source, sink, clock = MemorySource(), MemorySink(), FakeClock()
    names = ["a", "b"]
    fill(source, names)
    sink.max_points = 7
    service, _ = make_service(tiny_artifact, source, sink, clock)
    assert service.run_once() is True
    assert set(sink.points) == expected_points(names)
    assert source.dead == [] and source.committed == source.end_offsets()


def test_a_single_point_too_large_is_dead_lettered(tiny_artifact: Artifact) -> None:
    source, sink, clock = MemorySource(), MemorySink(), FakeClock()
    fill(source, ["a"])
    sink.max_points = 0
    service, _ = make_service(tiny_artifact, source, sink, clock)
    assert service.run_once() is True
    assert len(source.dead) == N - TINY_WINDOW + 1
    assert {d.reason for d in source.dead} == {"store_rejected"}
    assert all("HTTP 413" in d.detail for d in source.dead)
    assert source.committed == source.end_offsets()


def test_an_outage_during_the_bisection_retries_the_whole_batch(tiny_artifact: Artifact) -> None:
    source, sink, clock = MemorySource(), MemorySink(), FakeClock()
    fill(source, ["a"])
    bad_time = T0 + 40 * STEP
    sink.refuse = lambda s: "bad point" if s.timestamp == bad_time else None
    calls: list[int] = []

    def flaky(scores: object) -> None:
        calls.append(1)
        sink.down = len(calls) == 3  # the third request, in the middle of the halving, fails

    sink.on_write = flaky
    service, _ = make_service(tiny_artifact, source, sink, clock)
    assert service.run_once() is False
    assert source.dead == [] and source.committed == {}
    while not service.run_once():
        pass
    assert [json.loads(d.raw_value or b"")["timestamp"] for d in source.dead] == [bad_time]
    assert set(sink.points) == expected_points(["a"]) - {("a", timestamp_ns(bad_time))}
    assert source.committed == source.end_offsets()


def test_records_polled_while_paused_are_kept_with_the_pending_batch(
        tiny_artifact: Artifact) -> None:
    """A source may still hand over records fetched before the pause: none may be lost."""
    source, sink, clock = MemorySource(max_records=20), MemorySink(), FakeClock()
    fill(source, ["a"])
    service, _ = make_service(tiny_artifact, source, sink, clock)
    sink.down = True
    assert service.run_once() is False
    source.paused = False  # a source whose pause has not taken hold yet
    for _ in range(5):
        assert service.run_once() is False
    assert source.position[0] == N  # everything was polled into the pending batch
    sink.down = False
    while not service.run_once():
        pass
    assert set(sink.points) == expected_points(["a"])
    assert source.committed == source.end_offsets()


@pytest.mark.parametrize("bad", [1e39, -1e39, "1e39", 3.5e38])
def test_a_value_beyond_float32_is_dead_lettered_and_changes_nothing(
        tiny_artifact: Artifact, bad: object) -> None:
    values = sine_values(80)
    values[60] += 20.0  # a spike after the bad value

    def run(with_bad: bool) -> tuple[dict[int, Score], MemorySource]:
        source, sink, clock = MemorySource(), MemorySink(), FakeClock()
        for i in range(80):
            if with_bad and i == 30:
                source.send({"series": "a", "timestamp": T0 + 29.5 * STEP, "value": bad},
                            key=b"a")
            source.send({"series": "a", "timestamp": T0 + i * STEP, "value": float(values[i])},
                        key=b"a")
        service, _ = make_service(tiny_artifact, source, sink, clock)
        assert service.run_once() is True
        assert source.committed == source.end_offsets()
        return {ns: s for (_, ns), s in sink.points.items()}, source

    clean, _ = run(False)
    poisoned, source = run(True)
    assert [d.reason for d in source.dead] == ["bad_value"]
    assert poisoned == clean  # the series' state never saw it: every later score is the same
    spike = poisoned[timestamp_ns(T0 + 60 * STEP)]  # still seen (the calibration is warming)
    assert spike.error > 10 * max(s.error for ns, s in poisoned.items()
                                  if ns < timestamp_ns(T0 + 60 * STEP))
