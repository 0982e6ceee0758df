"""A flood of new series names: capacity eviction stays, but past the free slots at most
``max_new_series_per_poll`` new series a poll may evict the series held; every point of the
others is refused as ``series_limit`` (and the service dead-letters and counts it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamlstm.core.pipeline import Pipeline, PipelineSettings
from streamlstm.core.records import Point, Score
from streamlstm.core.state import SeriesRegistry
from streamlstm.metrics import Metrics
from streamlstm.model.artifact import Artifact
from streamlstm.service import Service, ServiceSettings
from streamlstm.sinks.influx import timestamp_ns
from tests.memory_adapters import FakeClock, MemorySink, MemorySource
from tests.unit.core_helpers import STEP, T0, TINY_WINDOW, sine_values

WARM = [f"warm{k}" for k in range(4)]
N = TINY_WINDOW + 30


def test_new_names_fill_free_slots_then_only_the_cap_may_evict() -> None:
    registry = SeriesRegistry(max_series=6)
    registry.lookup(["a", "b", "c", "d"], now=0.0)
    names = ["a", "x", "y", "x", "b", "z", "w", "z", "v"]
    # two free slots (x, y) plus two evictions (z, w) of c and d, absent from the run; v is
    # refused, every point of it
    assert registry.admit(names, 2) == [8]
    assert registry.admit([*names, "v", "u"], 2) == [8, 9, 10]
    assert registry.admit(names, 5) == [8]  # a bigger cap: still only c and d may go
    assert registry.admit(names, 0) == []  # 0: no cap
    assert len(registry) == 4  # it allocates nothing
    # a and b, in the run, are now the most recently seen: a lookup evicts c and d first
    assert registry.series()[-2:] == ["a", "b"]
    lookup = registry.lookup([n for i, n in enumerate(names) if i != 8], now=1.0)
    assert lookup.evicted_capacity == 2 and "c" not in registry and "d" not in registry
    # held series all in the run: nothing may be evicted, only free slots are filled
    full = SeriesRegistry(max_series=3)
    full.lookup(["a", "b"], now=0.0)
    assert full.admit(["p", "a", "q", "b", "p"], 10) == [2]


def _warm_points(i: int) -> list[Point]:
    values = sine_values(N, seed=3)
    return [Point(name, T0 + i * STEP, (float(values[i]) + k,)) for k, name in enumerate(WARM)]


def _flood(i: int, n: int) -> list[Point]:
    return [Point(f"junk-{i}-{j}", T0 + i * STEP, (1.0,)) for j in range(n)]


def _run(artifact: Artifact, cap: int, flood: bool) -> tuple[Pipeline, list[Score], list]:
    pipeline = Pipeline(artifact, PipelineSettings(max_series=8, max_new_series_per_poll=cap))
    scores: list[Score] = []
    refused: list[tuple[str, str]] = []
    for i in range(N):
        points = _warm_points(i)
        if flood and i >= TINY_WINDOW:  # the warm series are full; a flood of 40 a poll
            points = points[:2] + _flood(i, 40) + points[2:]
        result = pipeline.process(points, now=T0)
        scores += [s for s in result.scores if s.series in WARM]
        refused += [(points[p].series, reason) for p, reason in result.refused]
    return pipeline, scores, refused


def test_a_flood_cannot_wipe_the_warm_series(tiny_artifact: Artifact) -> None:
    _, clean_scores, _ = _run(tiny_artifact, cap=2, flood=False)
    flooded, flooded_scores, refused = _run(tiny_artifact, cap=2, flood=True)

    assert all(name in flooded.registry for name in WARM)
    assert flooded_scores == clean_scores, "the warm series' state was touched by the flood"
    assert len(clean_scores) == len(WARM) * (N - TINY_WINDOW + 1)
    assert refused and {reason for _, reason in refused} == {"series_limit"}
    assert all(name.startswith("junk-") for name, _ in refused)
    # the first flooded poll fills the 4 free slots and may evict none of the warm series,
    # all in the poll: 36 of 40 refused; later polls evict 2 junk series each, refusing 38
    polls = N - TINY_WINDOW
    assert len(refused) == 36 + 38 * (polls - 1)
    assert len(flooded.registry) == 8


def test_without_a_cap_the_flood_evicts_the_warm_series(tiny_artifact: Artifact) -> None:
    flooded, _, refused = _run(tiny_artifact, cap=0, flood=True)
    assert refused == []
    assert not any(name in flooded.registry for name in WARM[:2])


def test_the_service_dead_letters_and_counts_what_the_cap_refuses(
        tiny_artifact: Artifact) -> None:
    source, sink, clock = MemorySource(max_records=10_000), MemorySink(), FakeClock()
    for i in range(N):
        for point in (_warm_points(i) + (_flood(i, 40) if i == N - 1 else [])):
            source.send({"series": point.series, "timestamp": point.timestamp,
                         "value": point.values[0]})
    registry = CollectorRegistry()
    service = Service(source, sink,
                      Pipeline(tiny_artifact, PipelineSettings(max_series=8,
                                                               max_new_series_per_poll=3)),
                      Metrics(registry), ServiceSettings(reload_interval_s=1e9),
                      clock=lambda: T0, monotonic=clock, wait=clock.wait)
    assert service.run_once()

    assert source.committed == source.end_offsets()
    assert {(d.reason, d.raw_value is not None) for d in source.dead} == {("series_limit", True)}
    assert len(source.dead) == 40 - 4  # 8 slots: the 4 warm series and 4 others
    assert registry.get_sample_value("streamlstm_events_rejected_total",
                                     {"reason": "series_limit"}) == len(source.dead)
    assert registry.get_sample_value("streamlstm_dead_letter_messages_total") == len(source.dead)
    assert {(name, timestamp_ns(T0 + i * STEP)) for name in WARM
            for i in range(TINY_WINDOW - 1, N)} <= set(sink.points)
