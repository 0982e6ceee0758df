"""SeriesRegistry: slots, LRU order, capacity and idle eviction, resets, snapshot and restore."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from streamlstm.core.calibration import CalibrationSettings
from streamlstm.core.pipeline import Pipeline, PipelineSettings
from streamlstm.core.records import Point, Score
from streamlstm.core.state import SeriesRegistry
from streamlstm.model.artifact import Artifact
from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder
from tests.unit.core_helpers import TINY_WINDOW, sine_values, timestamps, to_points


def with_arrays(max_series: int, idle_evict_s: float = 86_400.0,
                ) -> tuple[SeriesRegistry, dict[str, np.ndarray]]:
    """A registry with a few arrays of different shapes, dtypes and fills."""
    registry = SeriesRegistry(max_series, idle_evict_s)
    arrays = {
        "t.zero": registry.add("t.zero", (), np.float64),
        "t.minus": registry.add("t.minus", (3,), np.int64, fill=-1),
        "t.inf": registry.add("t.inf", (2, 2), np.float32, fill=-np.inf),
        "t.nan": registry.add("t.nan", (4,), np.float64, fill=np.nan),
    }
    return registry, arrays


FILLS = {"t.zero": 0.0, "t.minus": -1, "t.inf": -np.inf, "t.nan": np.nan}


def dirty(arrays: dict[str, np.ndarray], slot: int, value: float) -> None:
    for array in arrays.values():
        array[slot] = value


def assert_reset(arrays: dict[str, np.ndarray], slot: int) -> None:
    for name, array in arrays.items():
        np.testing.assert_array_equal(array[slot], np.full(array.shape[1:], FILLS[name],
                                                           array.dtype), err_msg=name)


def test_arrays_start_at_their_fill_and_are_registered_once() -> None:
    registry, arrays = with_arrays(5)
    for name, array in arrays.items():
        assert array.shape[0] == 5
        assert registry.arrays[name] is array
        for slot in range(5):
            assert_reset(arrays, slot)
    with pytest.raises(ValueError, match="twice"):
        registry.add("t.zero", (), np.float64)
    with pytest.raises(ValueError):
        SeriesRegistry(0)
    # Per series: the four arrays plus the registry's own last_seen and seed.
    assert registry.nbytes_per_series() == 8 + 3 * 8 + 4 * 4 + 4 * 8 + 8 + 8


def test_lookup_allocates_distinct_slots_and_finds_them_again() -> None:
    registry = SeriesRegistry(4)
    first = registry.lookup(["a", "b", "a", "c"], now=1.0)
    assert first.done == 4
    assert first.new == [0, 1, 3]
    assert first.evicted_capacity == 0
    a, b, again, c = first.slots.tolist()
    assert a == again and len({a, b, c}) == 3
    assert set(first.slots.tolist()) <= set(range(4))
    assert len(registry) == 3 and "b" in registry and "d" not in registry
    assert registry.slot_of("b") == b and registry.slot_of("d") is None
    assert registry.name_of(c) == "c"
    second = registry.lookup(["c", "b"], now=2.0)
    assert second.slots.tolist() == [c, b]
    assert second.new == []
    assert registry.last_seen[[a, b, c]].tolist() == [1.0, 2.0, 2.0]


def test_series_are_ordered_least_recently_seen_first() -> None:
    registry = SeriesRegistry(5)
    registry.lookup(["a", "b", "c"], now=0.0)
    assert registry.series() == ["a", "b", "c"]
    registry.lookup(["b"], now=1.0)
    assert registry.series() == ["a", "c", "b"]
    registry.lookup(["a", "d", "c"], now=2.0)
    assert registry.series() == ["b", "a", "d", "c"]


def test_the_seed_comes_from_the_name_not_the_slot() -> None:
    one = SeriesRegistry(3)
    two = SeriesRegistry(3)
    one.lookup(["x", "y"], now=0.0)
    two.lookup(["y"], now=0.0)
    assert one.slot_of("y") != two.slot_of("y")
    assert one.seed[one.slot_of("y")] == two.seed[two.slot_of("y")]
    assert one.seed[one.slot_of("x")] != one.seed[one.slot_of("y")]


def test_allocation_hooks_see_the_new_slots_and_names() -> None:
    registry = SeriesRegistry(3)
    calls: list[tuple[list[int], list[str]]] = []
    registry.on_allocate(lambda slots, names: calls.append((slots.tolist(), list(names))))
    registry.lookup(["a", "b", "a"], now=0.0)
    registry.lookup(["a"], now=0.0)  # nothing new: no call
    registry.lookup(["c", "b"], now=0.0)
    assert calls == [([registry.slot_of("a"), registry.slot_of("b")], ["a", "b"]),
                     ([registry.slot_of("c")], ["c"])]


def test_capacity_evicts_the_least_recently_seen_and_resets_every_array() -> None:
    registry, arrays = with_arrays(2)
    registry.lookup(["a", "b"], now=0.0)
    registry.lookup(["a"], now=1.0)  # "b" is now the least recently seen
    b = registry.slot_of("b")
    assert b is not None
    dirty(arrays, registry.slot_of("a"), 7)
    dirty(arrays, b, 5)
    got = registry.lookup(["c"], now=2.0)
    assert got.evicted_capacity == 1 and got.done == 1
    assert registry.series() == ["a", "c"]
    assert "b" not in registry
    # "c" reuses the slot of "b", reset in every array; "a" keeps its state.
    assert got.slots.tolist() == [b]
    assert_reset(arrays, b)
    for array in arrays.values():
        assert (array[registry.slot_of("a")] == 7).all()


def test_forget_and_clear_reset_the_slot_in_every_array() -> None:
    registry, arrays = with_arrays(3)
    registry.lookup(["a", "b", "c"], now=0.0)
    for name in ("a", "b", "c"):
        dirty(arrays, registry.slot_of(name), 3)
    slot = registry.slot_of("b")
    assert slot is not None
    registry.forget("b")
    registry.forget("never seen")  # a no-op
    assert "b" not in registry and registry.name_of(slot) is None
    assert_reset(arrays, slot)
    assert registry.last_seen[slot] == 0 and registry.seed[slot] == 0
    for other in ("a", "c"):
        assert (arrays["t.minus"][registry.slot_of(other)] == 3).all()
    registry.clear()
    assert len(registry) == 0
    for s in range(3):
        assert_reset(arrays, s)
    # Every slot is free again.
    assert registry.lookup(["x", "y", "z"], now=1.0).evicted_capacity == 0


def test_idle_series_are_evicted_by_the_clock_passed_in() -> None:
    registry, arrays = with_arrays(4, idle_evict_s=100.0)
    registry.lookup(["a"], now=0.0)
    registry.lookup(["b"], now=50.0)
    a = registry.slot_of("a")
    assert a is not None
    dirty(arrays, a, 9)
    assert registry.evict_idle(99.0) == 0
    # Checked at most every idle_evict_s / 10 (here 10 s): at 105 "a" is idle but not checked.
    assert registry.evict_idle(105.0) == 0 and "a" in registry
    assert registry.evict_idle(110.0) == 1
    assert registry.series() == ["b"]
    assert_reset(arrays, a)
    assert registry.evict_idle(160.0) == 1
    assert len(registry) == 0


def test_seeing_a_series_keeps_it_from_idle_eviction() -> None:
    registry = SeriesRegistry(4, idle_evict_s=100.0)
    registry.lookup(["a", "b"], now=0.0)
    registry.lookup(["a"], now=90.0)
    assert registry.evict_idle(150.0) == 1
    assert registry.series() == ["a"]


def test_lookup_stops_before_evicting_a_series_looked_up_in_the_same_call() -> None:
    registry = SeriesRegistry(2)
    got = registry.lookup(["a", "b", "a", "c", "d"], now=0.0)
    # "c" would evict "a", which this call already returned a slot for.
    assert got.done == 3
    assert len(got.slots) == 3 and got.new == [0, 1]
    assert registry.series() == ["b", "a"]
    rest = registry.lookup(["c", "d"], now=1.0)
    # The caller resumes with the rest: "c" evicts "b" and "d" evicts "a", neither of which
    # was looked up in this second call.
    assert rest.done == 2 and rest.evicted_capacity == 2
    assert registry.series() == ["c", "d"]


def test_lookup_evicts_series_not_looked_up_in_this_call() -> None:
    registry = SeriesRegistry(2)
    registry.lookup(["x", "y"], now=0.0)
    got = registry.lookup(["y", "a"], now=1.0)  # "a" evicts "x", untouched by this call
    assert got.done == 2 and got.evicted_capacity == 1 and got.new == [1]
    assert registry.series() == ["y", "a"]
    again = registry.lookup(["b", "c"], now=2.0)  # "b" evicts "y", then "c" evicts "a"
    assert again.done == 2 and again.evicted_capacity == 2
    assert registry.series() == ["b", "c"]
    blocked = registry.lookup(["d", "e", "f"], now=3.0)
    assert blocked.done == 2  # "f" would evict "d", looked up in this call
    assert registry.series() == ["d", "e"]


def filled_registry() -> tuple[SeriesRegistry, dict[str, np.ndarray]]:
    registry, arrays = with_arrays(4)
    registry.lookup(["a", "b", "c"], now=5.0)
    registry.lookup(["a"], now=6.0)  # order: b, c, a
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        slot = registry.slot_of(name)
        for array in arrays.values():
            array[slot] = rng.integers(-50, 50, array.shape[1:])
    return registry, arrays


def test_snapshot_and_restore_round_trip() -> None:
    registry, _ = filled_registry()
    names, saved = registry.snapshot()
    assert names == ["b", "c", "a"]
    assert set(saved) == set(registry.arrays)
    # Copies, not views.
    saved["t.zero"][:] = 1234
    names, saved = registry.snapshot()
    assert (saved["t.zero"] != 1234).all()

    other, other_arrays = with_arrays(4)
    other.lookup(["zz"], now=0.0)  # a series already held keeps its place before them
    slots = other.restore(names, saved)
    assert len(slots) == 3
    assert other.series() == ["zz", "b", "c", "a"]
    for name, slot in zip(names, slots.tolist(), strict=True):
        assert other.slot_of(name) == slot and other.name_of(slot) == name
        for key in registry.arrays:
            np.testing.assert_array_equal(other.arrays[key][slot],
                                          registry.arrays[key][registry.slot_of(name)])
    assert other_arrays["t.inf"] is other.arrays["t.inf"]  # restored in place

    # A subset, in the order asked for; unknown names are skipped.
    names, part = registry.snapshot(["c", "nobody", "a"])
    assert names == ["c", "a"]
    assert all(len(v) == 2 for v in part.values())


def test_restore_replaces_a_series_of_the_same_name_and_evicts_when_full() -> None:
    registry, _ = filled_registry()
    names, saved = registry.snapshot(["b"])
    target, arrays = with_arrays(2)
    target.lookup(["b", "x"], now=0.0)
    dirty(arrays, target.slot_of("b"), 1)
    target.restore(names, saved)
    assert target.series() == ["x", "b"]
    np.testing.assert_array_equal(arrays["t.minus"][target.slot_of("b")],
                                  registry.arrays["t.minus"][registry.slot_of("b")])
    names, saved = registry.snapshot(["c", "a"])
    target.restore(names, saved)  # full: the least recently seen ("x", then "b") make room
    assert target.series() == ["c", "a"]


def test_restore_refuses_mismatched_arrays() -> None:
    registry, _ = filled_registry()
    names, saved = registry.snapshot()
    target, _ = with_arrays(4)
    missing = {k: v for k, v in saved.items() if k != "t.nan"}
    with pytest.raises(ValueError, match=r"t\.nan"):
        target.restore(names, missing)
    with pytest.raises(ValueError, match="extra"):
        target.restore(names, {**saved, "extra": saved["t.zero"]})
    with pytest.raises(ValueError, match=r"t\.inf"):
        target.restore(names, {**saved, "t.inf": saved["t.inf"].reshape(3, 4)})
    with pytest.raises(ValueError, match=r"t\.minus"):
        target.restore(names, {**saved, "t.minus": saved["t.minus"].astype(np.int32)})
    with pytest.raises(ValueError):
        target.restore(names[:2], saved)  # a row per series
    small, _ = with_arrays(2)
    with pytest.raises(ValueError, match="max_series"):
        small.restore(names, saved)
    assert len(target) == 0 and len(small) == 0  # nothing half-restored


@pytest.fixture(scope="module")
def untrained_artifact() -> Artifact:
    """The tiny model's shape with seeded random weights: deterministic errors in
    milliseconds, where training `tiny_artifact` takes seconds to a minute on a busy machine
    (what a slot holds does not depend on how good the model is)."""
    architecture = Architecture(n_features=1, window=TINY_WINDOW, hidden_size=8)
    torch.manual_seed(0)
    weights = LSTMAutoencoder(architecture).state_dict()
    return Artifact(architecture=architecture, state_dict=weights, feature_names=["value"],
                    normalisation={"series_scale": {}},
                    calibration=CalibrationSettings(warmup=50, history=100).to_dict())


def scores_of(pipeline: Pipeline, points: list[Point]) -> list[Score]:
    result = pipeline.process(points, now=0.0)
    return result.scores


def test_a_reused_slot_never_leaks_the_previous_series_state(
        untrained_artifact: Artifact) -> None:
    n = 130
    a = to_points("a", timestamps(n), 50 + 10 * sine_values(n, seed=1))
    b = to_points("b", timestamps(n, start=timestamps(n)[-1] + 600.0),
                  sine_values(n, seed=2, phase=5))
    settings = PipelineSettings(max_series=1, memory_windows=64)
    shared = Pipeline(untrained_artifact, settings)
    scores_of(shared, a)
    assert shared.registry.series() == ["a"]
    shared_b = scores_of(shared, b)  # "b" evicts "a" and takes its slot
    assert shared.registry.series() == ["b"]
    fresh = Pipeline(untrained_artifact, settings)
    fresh_b = scores_of(fresh, b)
    assert len(shared_b) == len(fresh_b) == n - TINY_WINDOW + 1
    for got, expected in zip(shared_b, fresh_b, strict=True):
        assert dataclasses.astuple(got) == dataclasses.astuple(expected)
    # Past the warm-up "b" scores above 0, so the comparison covers calibrated scores too.
    assert max(s.score for s in fresh_b) > 0
    # And the whole state of the slot is what a fresh pipeline holds, array by array.
    _, shared_state = shared.registry.snapshot()
    _, fresh_state = fresh.registry.snapshot()
    for key, value in fresh_state.items():
        np.testing.assert_array_equal(shared_state[key], value, err_msg=key)
