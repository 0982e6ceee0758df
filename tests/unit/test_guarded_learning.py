"""Guarded learning: what is flagged is not learnt as normal, and a lasting change is accepted.

Generated series on the tiny model: a sine on a level (10 +/- 3, noise 0.2, a period of 100
values) with repeated spikes, a sustained offset and a permanent level shift. Each behaviour is
checked against the pipeline without the guard (``accept_after=0``, every window learnt at
once), which fails it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from streamlstm.core.calibration import CalibrationSettings, CalibratorBank, kind_calibration
from streamlstm.core.guard import GUARD_WEIGHT, LearningGuard
from streamlstm.core.memory import WindowMemory
from streamlstm.core.pipeline import Pipeline, PipelineSettings, StepResult
from streamlstm.core.records import Point, Score
from streamlstm.core.snapshot import StateSnapshot
from streamlstm.core.state import SeriesRegistry
from streamlstm.model.artifact import Artifact
from tests.unit.core_helpers import timestamps, to_points

PERIOD = 100
START = 700  # the first incident, well past the calibration warm-up (200 windows)


def settings(accept_after: int) -> PipelineSettings:
    # A season of one period (values every 60 s), a memory of five of them.
    return PipelineSettings(memory_windows=512, season_s=PERIOD * 60.0, accept_after=accept_after)


def wave(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * k / PERIOD) + 0.2 * rng.standard_normal(n)


def replay(artifact: Artifact, values: np.ndarray, accept_after: int, poll: int = 97,
           ) -> tuple[list[Score | None], list[StepResult]]:
    """Scores per point (None while the window fills) and each poll's result."""
    points = to_points("s", timestamps(len(values)), values)
    pipeline = Pipeline(artifact, settings(accept_after))
    out: list[Score | None] = [None] * len(points)
    results = []
    for start in range(0, len(points), poll):
        result = pipeline.process(points[start : start + poll], now=0.0)
        for position, score in zip(result.positions, result.scores, strict=True):
            out[start + position] = score
        results.append(result)
    return out, results


def flags(scores: Sequence[Score | None]) -> np.ndarray:
    return np.array([s is not None and s.is_anomaly for s in scores])


def peak(scores: Sequence[Score | None], at: int, window: int) -> float:
    return max(s.score for s in scores[at : at + window] if s is not None)


@pytest.mark.parametrize("gap", [100, 80])
def test_identical_spikes_are_each_flagged_alike(tiny_artifact: Artifact, gap: int) -> None:
    w = tiny_artifact.architecture.window
    values = wave(START + 3 * gap + 200)
    spikes = [START, START + gap, START + 2 * gap]
    values[spikes] += 25
    guarded, _ = replay(tiny_artifact, values, accept_after=300)
    peaks = [peak(guarded, s, w) for s in spikes]
    flagged = flags(guarded)
    assert min(peaks) >= 0.9 * max(peaks) and min(peaks) > 0.5, peaks
    for s in spikes:  # every window that holds the spike is flagged
        assert flagged[s : s + w].all(), s
    assert not flagged[w:START].any()  # and nothing before them
    # Learning everything at once, the first spike makes the later ones look ordinary.
    plain, _ = replay(tiny_artifact, values, accept_after=0)
    assert peak(plain, spikes[2], w) < 0.7 * peak(plain, spikes[0], w)


def test_a_sustained_deviation_stays_flagged_while_it_lasts(tiny_artifact: Artifact) -> None:
    values = wave(START + 400)
    values[START : START + 150] += 8  # above anything the wave does
    guarded, results = replay(tiny_artifact, values, accept_after=300)
    flagged = flags(guarded)
    assert flagged[START : START + 150].mean() >= 0.9
    assert flagged[START + 200 :].mean() < 0.05  # over when it is over
    assert sum(r.changes_accepted for r in results) == 0  # shorter than accept_after
    plain, _ = replay(tiny_artifact, values, accept_after=0)
    assert flags(plain)[START : START + 150].mean() < 0.5


@pytest.mark.parametrize("accept_after", [150, 300])
def test_a_permanent_shift_becomes_the_new_normal_after_accept_after(
        tiny_artifact: Artifact, accept_after: int) -> None:
    values = wave(START + 900)
    values[START:] += 8
    scores, results = replay(tiny_artifact, values, accept_after=accept_after)
    flagged = flags(scores)
    assert flagged[START : START + accept_after - 10].mean() >= 0.9  # flagged until accepted
    assert flagged[START + accept_after + 100 :].mean() < 0.02  # then normal
    # Accepted once, unless the calibrators' reduced-weight learning absorbed it first.
    accepted = sum(r.changes_accepted for r in results)
    assert accepted == 1 if accept_after == 150 else accepted <= 1
    plain, _ = replay(tiny_artifact, values, accept_after=0)
    assert flags(plain)[START : START + accept_after - 10].mean() < 0.5


def test_a_new_shape_becomes_the_new_normal(tiny_artifact: Artifact) -> None:
    values = wave(START + 900)
    k = np.arange(len(values) - START)
    rng = np.random.default_rng(1)
    # Five times faster from START on, in the same range.
    values[START:] = 10 + 3 * np.sin(2 * np.pi * k / 20) + 0.2 * rng.standard_normal(len(k))
    scores, results = replay(tiny_artifact, values, accept_after=150)
    flagged = flags(scores)
    assert flagged[START : START + 150].mean() >= 0.9
    assert flagged[START + 250 :].mean() < 0.02
    assert sum(r.changes_accepted for r in results) == 1
    plain, _ = replay(tiny_artifact, values, accept_after=0)
    assert flags(plain)[START : START + 150].mean() < 0.5


def test_guarded_scores_do_not_depend_on_how_the_stream_is_cut(tiny_artifact: Artifact) -> None:
    values = wave(START + 500)
    values[[START, START + 90]] += 25
    values[START + 200 : START + 350] += 8
    one, _ = replay(tiny_artifact, values, accept_after=100, poll=len(values))
    many, _ = replay(tiny_artifact, values, accept_after=100, poll=13)
    assert one == many


def test_a_snapshot_inside_a_guarded_stretch_restores_bit_identically(
        tiny_artifact: Artifact) -> None:
    values = wave(START + 500)
    values[START] += 25
    values[START + 100 : START + 400] += 8
    points: list[Point] = to_points("s", timestamps(len(values)), values)
    cut = START + 180  # inside the sustained stretch, before it is accepted
    whole = Pipeline(tiny_artifact, settings(200))
    reference = whole.process(points, now=0.0)
    first = Pipeline(tiny_artifact, settings(200))
    before = first.process(points[:cut], now=0.0)
    slot = first.registry.slot_of("s")
    assert first.guard.run[slot] >= 0 and first.memory is not None
    assert (first.memory.guards[slot, :, 1] > first.memory.guards[slot, :, 0]).any()
    snapshot = first.snapshot()
    assert {"guard.run", "guard.quiet", "guard.accepted", "memory.guards", "memory.count"} <= set(
        snapshot.arrays)
    second = Pipeline(tiny_artifact, settings(200))
    assert second.restore(StateSnapshot.from_bytes(snapshot.to_bytes())) == 1
    after = second.process(points[cut:], now=0.0)
    assert before.scores + after.scores == reference.scores
    assert before.changes_accepted + after.changes_accepted == reference.changes_accepted == 1


def test_warm_up_points_do_not_count_accepted_changes(tiny_artifact: Artifact) -> None:
    values = wave(START + 400)
    values[START:] += 8
    points = to_points("s", timestamps(len(values)), values)
    live = Pipeline(tiny_artifact, settings(150)).process(points, now=0.0)
    assert live.changes_accepted == 1
    result = Pipeline(tiny_artifact, settings(150)).process(points, now=0.0,
                                                            warmup=[True] * len(points))
    assert result.changes_accepted == 0 and not result.scores


def test_settings_refuse_a_negative_accept_after() -> None:
    with pytest.raises(ValueError, match="accept_after"):
        PipelineSettings(accept_after=-1)


# ---------------------------------------------------------------- the parts


def test_learning_at_weight_zero_leaves_the_calibrator_as_it_was() -> None:
    registry = SeriesRegistry(4)
    calibration = CalibrationSettings()
    kinds = [kind_calibration(calibration, "a"), kind_calibration(calibration, "b")]
    bank = CalibratorBank(registry, kinds, calibration)
    slots = np.array([0, 1, 2])
    rng = np.random.default_rng(0)
    for _ in range(50):
        bank.score_then_learn(slots, rng.random((3, 2)))
    before = {name: array.copy() for name, array in registry.arrays.items()}
    probe = np.full((3, 2), 5.0)
    surprise, pending = bank.score(slots, probe)
    bank.learn(pending, np.array([0.0, 1.0, 0.5]))
    unchanged = [np.array_equal(registry.arrays["calibration.hist"][s],
                                before["calibration.hist"][s]) for s in range(3)]
    assert unchanged == [True, False, False]
    assert bank.n[slots].tolist() == [[50, 50], [51, 51], [51, 51]]
    # score then learn at full weight is score_then_learn
    other = SeriesRegistry(4)
    twin = CalibratorBank(other, kinds, calibration)
    for name, array in before.items():
        other.arrays[name][:] = array
    np.testing.assert_array_equal(twin.score_then_learn(slots, probe), surprise)
    for name, array in registry.arrays.items():  # slot 1 learnt the probe at weight 1
        np.testing.assert_array_equal(other.arrays[name][1], array[1])


def test_windows_holding_guarded_values_count_as_not_remembered() -> None:
    w, capacity = 4, 40
    registry = SeriesRegistry(2)
    memory = WindowMemory(registry, "m", w, 1, capacity)
    slots = np.array([0, 1])
    values = np.sin(np.arange(100) / 3.0)
    scale = np.ones((2, 1))
    for i, x in enumerate(values):
        newest = memory.push(slots, np.full((2, 1), x))
        if i == 59:
            memory.guard_open(slots[:1])  # value 59 of series 0 on
        if i == 64:
            memory.guard_close(slots[:1])  # ... to value 64 only (marked last at 59)
            memory.guard_mark(slots[:1])
    d2 = memory.distances(slots, newest, scale).squared()
    newest_index = len(values) - 1
    # Column i is the window ending at newest - w - i: it holds value 59 for i in 36..39.
    ends = newest_index - w - np.arange(capacity)
    holds = (ends >= 59) & (ends - w + 1 <= 59)
    assert np.isinf(d2[0][holds]).all() and np.isfinite(d2[0][~holds]).all()
    assert np.isfinite(d2[1]).all()
    memory.guard_release(slots[:1])
    np.testing.assert_array_equal(memory.distances(slots, newest, scale).squared()[0], d2[1])


def steps(guard: LearningGuard, scores: Sequence[float], threshold: float = 0.25,
          ) -> tuple[list[float], list[bool]]:
    """One series' windows through ``guard``: the weight and the acceptance of each."""
    slot = np.array([0])
    weights, accepts = [], []
    for score in scores:
        weight, accepted = guard.step(slot, np.array([score]), np.array([threshold]))
        assert weight is not None
        weights.append(float(weight[0]))
        accepts.append(bool(accepted[0]))
    return weights, accepts


def test_a_clearly_flagged_window_opens_a_stretch_and_a_barely_flagged_one_does_not() -> None:
    # Threshold 0.25: 0.40 (a fifth of the way to 1) opens a stretch, learnt at GUARD_WEIGHT;
    # 0.28 (flagged, just past the threshold) and 0.20 (not flagged) are learnt as usual.
    guard = LearningGuard(SeriesRegistry(3), [], accept_after=300, quiet_after=4)
    slots = np.array([0, 1, 2])
    threshold = np.full(3, 0.25)
    weight, accepted = guard.step(slots, np.array([0.40, 0.28, 0.20]), threshold)
    assert weight is not None and not accepted.any()
    assert weight.tolist() == [GUARD_WEIGHT, 1.0, 1.0]
    # Once open, a window just past the threshold keeps it open (and guarded).
    weight, _ = guard.step(slots, np.array([0.28, 0.28, 0.20]), threshold)
    assert weight is not None and weight.tolist() == [GUARD_WEIGHT, 1.0, 1.0]


def test_a_stretch_resumed_soon_after_the_last_one_counts_on_towards_acceptance() -> None:
    accept_after, quiet = 20, 4
    strong, flagged, calm = 0.5, 0.3, 0.1
    # 12 windows flagged, then quiet (the stretch ends after 4), and again 3 windows after.
    first = [strong] + [flagged] * 11 + [calm] * quiet
    gap = [calm] * 3
    again = [strong] + [flagged] * 10
    weights, accepts = steps(LearningGuard(SeriesRegistry(1), [], accept_after, quiet),
                             first + gap + again)
    # Accepted once, accept_after windows after the first stretch began, gap included.
    assert accepts.index(True) == accept_after and sum(accepts) == 1
    assert weights[len(first) : len(first) + 3] == [1.0] * 3  # the gap is learnt as usual
    assert weights[accept_after - 1] == GUARD_WEIGHT and weights[accept_after] == 1.0
    # The same second stretch after a longer gap is a new one: nothing accepted.
    _, accepts = steps(LearningGuard(SeriesRegistry(1), [], accept_after, quiet),
                       first + [calm] * quiet + again)
    assert not any(accepts)


def test_a_stretch_resuming_an_accepted_one_is_not_guarded_nor_accepted_again() -> None:
    accept_after, quiet = 10, 4
    registry = SeriesRegistry(1)
    memory = WindowMemory(registry, "memory", 4, 1, 64)
    guard = LearningGuard(registry, [(memory, 0)], accept_after, quiet)
    slot = np.array([0])
    sequence = [0.5] + [0.3] * 14 + [0.1] * quiet + [0.1] * 2 + [0.5] + [0.3] * 5
    accepts = []
    for score in sequence:
        memory.push(slot, np.array([[score]]))
        weight, accepted = guard.step(slot, np.array([score]), np.array([0.25]))
        accepts.append(bool(accepted[0]))
    assert sum(accepts) == 1 and weight is not None and weight[0] == 1.0
    # Nothing left guarded in the memory: the accepted change is remembered.
    assert not (memory.guards[0, :, 0] < memory.guards[0, :, 1]).any()
