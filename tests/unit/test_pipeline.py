"""Pipeline: causal, batch-independent, deterministic, warm-up, spikes, series independence,
the evidence combination, ablation settings, what a model swap keeps, snapshot and restore."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pytest

from streamlstm.core.calibration import (
    SURPRISE_SCALE,
    CalibrationSettings,
    CalibratorBank,
    combined_surprise,
    kind_calibration,
)
from streamlstm.core.evidence import COARSE_BLOCK
from streamlstm.core.pipeline import Pipeline, PipelineSettings, StateSnapshot, score_points
from streamlstm.core.records import Point, Score
from streamlstm.core.state import SeriesRegistry
from streamlstm.model.artifact import Artifact
from streamlstm.training import fit
from tests.unit.core_helpers import (
    STEP,
    T0,
    TINY_SETTINGS,
    TINY_WINDOW,
    sine_history,
    sine_values,
    timestamps,
    to_points,
)

W = TINY_WINDOW


def feed(pipeline: Pipeline, points: Sequence[Point], batch: int,
         warmup: Sequence[bool] | None = None) -> list[Score | None]:
    """Process ``points`` in batches of ``batch``; one entry per point."""
    out: list[Score | None] = [None] * len(points)
    for start in range(0, len(points), batch):
        flags = None if warmup is None else warmup[start : start + batch]
        result = pipeline.process(points[start : start + batch], now=0.0, warmup=flags)
        assert len(result.positions) == len(result.scores)
        for position, score in zip(result.positions, result.scores, strict=True):
            out[start + position] = score
    return out


def as_array(scores: Sequence[Score | None], field: str = "score") -> np.ndarray:
    """One float per entry: NaN where there is no score, or the field is None (novelty)."""
    values = [getattr(s, field) if s is not None else None for s in scores]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def interleave(*streams: list[Point]) -> list[Point]:
    return [p for group in zip(*streams, strict=True) for p in group]


def spiky_sine(n: int, spike_at: Sequence[int], name: str = "sine", seed: int = 7,
               height: float = 3.0) -> list[Point]:
    values = sine_values(n, seed=seed, phase=3)
    for i in spike_at:
        values[i] += height
    return to_points(name, timestamps(n), values)


def mixed_stream(n: int = 300) -> list[Point]:
    """Three series at different levels and scales, interleaved, with a spike in one."""
    a = to_points("sine", timestamps(n), sine_values(n, seed=1))
    b_values = 100 + 20 * sine_values(n, seed=2, phase=7)
    b_values[200] += 80
    b = to_points("b", timestamps(n), b_values)
    c = to_points("c", timestamps(n, start=T0 + 30), sine_values(n, seed=3, period=30))
    return interleave(a, b, c)


def test_score_points_gives_none_until_the_window_is_full(tiny_artifact: Artifact) -> None:
    points = spiky_sine(40, [])
    scores = score_points(Pipeline(tiny_artifact), points)
    assert len(scores) == len(points)
    assert scores[: W - 1] == [None] * (W - 1)
    assert all(s is not None for s in scores[W - 1 :])
    first = scores[W - 1]
    assert first is not None
    assert first.series == "sine"
    assert first.timestamp == points[W - 1].timestamp
    assert first.values == points[W - 1].values
    assert first.model_version == tiny_artifact.version
    assert first.threshold == tiny_artifact.calibration["threshold"]
    assert 0.0 <= first.score <= 1.0 and first.error > 0


def test_scores_of_a_prefix_do_not_change_when_rows_are_appended(
        tiny_artifact: Artifact) -> None:
    points = mixed_stream()
    full = score_points(Pipeline(tiny_artifact), points)
    for cut in (50, 451, 700):
        prefix = score_points(Pipeline(tiny_artifact), points[:cut])
        # A float32 matmul rounds a row by where it sits in the batch: errors agree to ~1e-6.
        np.testing.assert_allclose(as_array(prefix), as_array(full[:cut]), rtol=0, atol=1e-5)
        np.testing.assert_allclose(as_array(prefix, "error"), as_array(full[:cut], "error"),
                                   rtol=1e-5, atol=0)
        assert [s is None for s in prefix] == [s is None for s in full[:cut]]


def test_scores_do_not_depend_on_the_batch_size(tiny_artifact: Artifact) -> None:
    points = mixed_stream()
    reference = feed(Pipeline(tiny_artifact), points, batch=1)
    for batch in (7, 500):
        other = feed(Pipeline(tiny_artifact), points, batch=batch)
        assert [s is None for s in other] == [s is None for s in reference]
        np.testing.assert_allclose(as_array(other), as_array(reference), rtol=0, atol=1e-5)
        np.testing.assert_allclose(as_array(other, "error"), as_array(reference, "error"),
                                   rtol=1e-5, atol=1e-7)
        assert [s.is_anomaly for s in other if s] == [s.is_anomaly for s in reference if s]


def test_two_pipelines_give_identical_scores(tiny_artifact: Artifact) -> None:
    points = mixed_stream()
    first = score_points(Pipeline(tiny_artifact), points, batch_size=64)
    second = score_points(Pipeline(tiny_artifact), points, batch_size=64)
    assert first == second


def test_warmup_records_change_state_like_live_ones_but_give_no_score(
        tiny_artifact: Artifact) -> None:
    points = mixed_stream()
    live = feed(Pipeline(tiny_artifact), points, batch=50)
    # Warm-up flags on the first 400 points, and scattered over the rest.
    warmup = [i < 400 or i % 5 == 0 for i in range(len(points))]
    replayed = feed(Pipeline(tiny_artifact), points, batch=50, warmup=warmup)
    for i, (flag, a, b) in enumerate(zip(warmup, live, replayed, strict=True)):
        if flag:
            assert b is None, i
        else:
            assert a == b, i
    assert sum(s is not None for s in replayed) > 300


def test_warmup_flags_still_count_windows(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    points = spiky_sine(W + 4, [])
    result = pipeline.process(points, now=0.0, warmup=[True] * len(points))
    assert result.scores == [] and result.positions == []
    assert result.windows == 5


def test_a_spike_scores_clearly_higher_and_is_flagged_after_warmup(
        tiny_artifact: Artifact) -> None:
    n, spike = 400, 300
    # A strict threshold: the claim is that the spike stands out, not that 0.2 is quiet on a
    # series with only 100 windows of history.
    strict = dataclasses.replace(tiny_artifact,
                                 calibration=dict(tiny_artifact.calibration, threshold=0.4))
    scores = score_points(Pipeline(strict), spiky_sine(n, [spike]))
    values = as_array(scores)
    errors = as_array(scores, "error")
    around = slice(spike, spike + W)  # the windows that contain the spike
    normal = np.r_[W - 1 : spike, spike + W : n]
    assert np.nanmin(errors[around]) > 3 * np.nanmax(errors[normal])
    assert values[spike] >= 0.4
    assert values[spike] > np.nanmax(values[normal[normal >= 64 + W]])
    flagged = [i for i, s in enumerate(scores) if s is not None and s.is_anomaly]
    assert spike in flagged
    assert all(spike <= i < spike + W for i in flagged), flagged
    # One incident, one alarm: its first flagged point.
    assert [i for i, s in enumerate(scores) if s is not None and s.alarm] == [flagged[0]]


def test_is_anomaly_flags_every_point_at_the_threshold_and_alarm_the_first_of_an_incident(
        tiny_artifact: Artifact) -> None:
    """A spike lives on in the windows that hold it: each of them at or above the threshold
    is flagged (no hold), and the incident alarms once."""
    strict = dataclasses.replace(tiny_artifact,
                                 calibration=dict(tiny_artifact.calibration, threshold=0.4))
    scores = score_points(Pipeline(strict), spiky_sine(400, [300]))
    flagged = [i for i, s in enumerate(scores) if s is not None and s.is_anomaly]
    assert flagged == [i for i, s in enumerate(scores) if s is not None and s.score >= 0.4]
    assert len(flagged) >= 2
    assert [i for i, s in enumerate(scores) if s is not None and s.alarm] == [flagged[0]]


def test_a_spike_during_calibration_warmup_is_not_flagged(tiny_artifact: Artifact) -> None:
    spike = W + 10  # the 11th window: well inside the calibration warm-up
    assert tiny_artifact.calibration["warmup"] > 11 + W
    scores = score_points(Pipeline(tiny_artifact), spiky_sine(120, [spike]))
    spiked = scores[spike]
    errors = as_array(scores, "error")
    # The model sees the spike, but a series has no history to rank it against yet.
    assert spiked is not None and spiked.error > 3 * np.nanmedian(errors)
    assert spiked.score == 0.0
    assert not any(s.is_anomaly for s in scores if s is not None)


def test_interleaved_series_are_scored_independently(tiny_artifact: Artifact) -> None:
    n = 300
    streams = {
        "sine": to_points("sine", timestamps(n), sine_values(n, seed=1)),
        "b": to_points("b", timestamps(n), 100 + 20 * sine_values(n, seed=2, phase=7)),
        "c": to_points("c", timestamps(n, start=T0 + 30), sine_values(n, seed=3, period=30)),
    }
    together = score_points(Pipeline(tiny_artifact), interleave(*streams.values()), batch_size=97)
    for k, (name, points) in enumerate(streams.items()):
        alone = score_points(Pipeline(tiny_artifact), points)
        mine = together[k :: len(streams)]
        assert all(s is None or s.series == name for s in mine)
        np.testing.assert_allclose(as_array(mine), as_array(alone), rtol=0, atol=1e-5)


def test_scores_ignore_the_level_and_scale_of_a_series(tiny_artifact: Artifact) -> None:
    n = 200
    base = sine_values(n, seed=4)
    small = score_points(Pipeline(tiny_artifact), to_points("x", timestamps(n), base))
    large = score_points(Pipeline(tiny_artifact), to_points("x", timestamps(n), 500 + 40 * base))
    np.testing.assert_allclose(as_array(large, "error"), as_array(small, "error"), rtol=1e-3)


def test_late_points_are_reported_and_not_scored(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    points = spiky_sine(W, [])
    pipeline.process(points, now=0.0)
    again = [points[-1], Point("sine", points[-1].timestamp + STEP, (0.1,)), points[3]]
    result = pipeline.process(again, now=0.0)
    assert result.late == [0, 2]
    assert result.positions == [1]


def test_reset_state_forgets_every_series(tiny_artifact: Artifact) -> None:
    points = mixed_stream(250)
    pipeline = Pipeline(tiny_artifact)
    first = score_points(pipeline, points)
    pipeline.reset_state()
    assert len(pipeline.registry) == 0
    second = score_points(pipeline, points)
    assert second == first  # as from a fresh pipeline: windows, scale and calibration restarted
    # Without the reset, the same rows would all be late.
    assert len(pipeline.process(points, now=0.0).late) == len(points)


def test_idle_series_restart_their_window(tiny_artifact: Artifact) -> None:
    settings = PipelineSettings(idle_evict_s=100.0)
    pipeline = Pipeline(tiny_artifact, settings)
    points = spiky_sine(W + 5, [])
    pipeline.process(points[:W], now=0.0)
    result = pipeline.process(points[W:], now=1000.0)
    assert result.evicted_idle == 1
    assert result.scores == []  # the window must fill again


def test_max_series_evicts_the_least_recently_seen(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact, PipelineSettings(max_series=2))
    n = W + 2
    a, b, c = (to_points(name, timestamps(n), sine_values(n, seed=k))
               for k, name in enumerate("abc"))
    pipeline.process(a + b, now=0.0)
    result = pipeline.process(c, now=1.0)
    assert result.evicted_capacity == 1
    assert len(result.scores) == 3  # "c" got "a"'s slot and was scored on its own windows
    assert pipeline.registry.series() == ["b", "c"]


def test_a_slot_reused_within_one_batch_starts_the_new_series_afresh(
        tiny_artifact: Artifact) -> None:
    n = W + 20
    a = to_points("a", timestamps(n), 50 + 10 * sine_values(n, seed=1))
    c = to_points("c", timestamps(n), sine_values(n, seed=2, phase=5))
    pipeline = Pipeline(tiny_artifact, PipelineSettings(max_series=1))
    result = pipeline.process(a + c, now=0.0)  # "c" evicts "a" half-way through the batch
    assert result.evicted_capacity == 1
    alone = score_points(Pipeline(tiny_artifact), c)
    mine = [s for s in result.scores if s.series == "c"]
    np.testing.assert_allclose([s.score for s in mine], [s.score for s in alone if s],
                               rtol=0, atol=1e-5)


def test_swap_model_keeps_windows_when_the_shape_matches(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    points = spiky_sine(W + 1, [])
    pipeline.process(points[:W], now=0.0)
    other = dataclasses.replace(tiny_artifact, version="other")
    pipeline.swap_model(other)
    result = pipeline.process(points[W:], now=0.0)
    assert [s.model_version for s in result.scores] == ["other"]


def test_swap_model_refuses_another_window_length(tiny_artifact: Artifact) -> None:
    wider = fit(sine_history(200), ["value"],
                dataclasses.replace(TINY_SETTINGS, window=W + 4, epochs=1), progress=False)
    pipeline = Pipeline(tiny_artifact)
    with pytest.raises(ValueError, match="same window"):
        pipeline.swap_model(wider)
    assert pipeline.scorer.artifact is tiny_artifact


# ---------------------------------------------------------------- evidence and its combination


def test_unknown_or_repeated_evidence_is_refused() -> None:
    for bad in ("nope", "both", "model+model", "model+", ""):
        with pytest.raises(ValueError, match="evidence"):
            PipelineSettings(evidence=bad)
    for evidence in ("model", "memory", "seasonal", "model+memory", "seasonal+model"):
        kinds = PipelineSettings(evidence=evidence).evidence_kinds
        assert set(kinds) == set(evidence.split("+")) and len(kinds) == len(set(kinds))
    assert PipelineSettings().evidence_kinds == ["model", "memory", "seasonal", "coarse"]


@pytest.mark.parametrize(("interval", "stride", "expected"), [
    (300.0, 1, 288), (3600.0, 1, 24), (300.0, 2, 288), (21_600.0, 1, 4), (21_600.0, 2, 0),
    (86_400.0, 1, 0), (0.0, 1, 0),
])
def test_the_season_in_values_follows_the_sampling_interval(
        interval: float, stride: int, expected: int) -> None:
    # A season needs at least four windows (of ``stride`` values each) to have a phase.
    assert PipelineSettings(stride=stride).season_values(np.array([interval])).tolist() == [
        expected]
    assert PipelineSettings(season_s=0).season_values(np.array([interval])).tolist() == [0]


def replay_surprises(values: Sequence[float | None], calibration: CalibrationSettings,
                     errors: bool = False) -> list[float | None]:
    """What a calibrator of its own says of each value before learning it, one value at a
    time: None for no value and while it has not seen ``warmup`` values; ``errors``:
    calibrated as model errors are (in log, with their own tail fraction)."""
    kind = (kind_calibration(calibration, "model", log_domain=True,
                             tail_fraction=calibration.error_tail_fraction)
            if errors else kind_calibration(calibration, "memory"))
    bank = CalibratorBank(SeriesRegistry(1), [kind], calibration)
    slot = np.zeros(1, np.int64)
    out: list[float | None] = []
    for value in values:
        raw = np.array([[np.nan if value is None else value]])
        surprise = float(bank.score_then_learn(slot, raw)[0, 0])
        out.append(None if math.isnan(surprise) else surprise)
    return out


def test_model_and_memory_scores_are_the_combined_surprise_of_error_and_novelty(
        tiny_artifact: Artifact) -> None:
    n = 500
    # Unguarded: every window is learnt at full weight, as replay_surprises learns them.
    pipeline = Pipeline(tiny_artifact, PipelineSettings(evidence="model+memory", accept_after=0))
    scores = [s for s in score_points(pipeline, spiky_sine(n, [320, 420])) if s is not None]
    calibration = CalibrationSettings.from_dict(tiny_artifact.calibration)
    error_s = replay_surprises([s.error for s in scores], calibration, errors=True)
    novelty_s = replay_surprises([s.novelty for s in scores], calibration)
    checked = alone = 0
    for s, e, m in zip(scores, error_s, novelty_s, strict=True):
        parts = [p for p in (e, m) if p is not None]  # a kind still warming up is left out
        total = float(combined_surprise(parts)) if parts else 0.0
        assert s.score == pytest.approx(min(total / SURPRISE_SCALE, 1.0), abs=1e-12)
        checked += m is not None and m > 0 and e is not None and e > 0
        alone += m is None and e is not None and e > 0
    assert checked > 50  # both parts were live for a good stretch
    # and the error scored alone while the novelty calibrator warmed up (its values start
    # W - 1 windows after the first window, so it is warm W - 1 windows later)
    assert alone >= W - 2


def test_model_evidence_does_not_depend_on_the_memory(tiny_artifact: Artifact) -> None:
    points = spiky_sine(500, [330])
    # Unguarded (accept_after=0), so that the model-only scores replay below as learnt in full.
    model = score_points(Pipeline(tiny_artifact, PipelineSettings(evidence="model",
                                                                  accept_after=0)), points)
    forgetful = score_points(Pipeline(tiny_artifact, PipelineSettings(
        evidence="model", memory_windows=1, accept_after=0)), points)
    both = score_points(Pipeline(tiny_artifact, PipelineSettings(evidence="model+memory")),
                        points)
    both_forgetful = score_points(Pipeline(tiny_artifact, PipelineSettings(
        evidence="model+memory", memory_windows=1)), points)
    # The memory's size matters to novelty (one past window against 2048) and so to the
    # combined score ...
    assert not np.allclose(as_array(both, "novelty"), as_array(both_forgetful, "novelty"),
                           equal_nan=True)
    assert np.nanmax(np.abs(as_array(both) - as_array(both_forgetful))) > 0.01
    # ... but not to the model-only score, which also differs from the combined one.
    np.testing.assert_array_equal(as_array(model), as_array(forgetful))
    assert np.nanmax(np.abs(as_array(model) - as_array(both))) > 0.01
    # Model-only scores are the calibrated error alone.
    calibration = CalibrationSettings.from_dict(tiny_artifact.calibration)
    scored = [s for s in model if s is not None]
    surprises = replay_surprises([s.error for s in scored], calibration, errors=True)
    expected = [0.0 if e is None else min(e / SURPRISE_SCALE, 1.0) for e in surprises]
    np.testing.assert_allclose([s.score for s in scored], expected, rtol=0, atol=1e-12)


def test_memory_evidence_is_the_calibrated_novelty_alone(tiny_artifact: Artifact) -> None:
    # A short warm-up, so the error calibration is warm before the memory has a past window.
    quick = dataclasses.replace(tiny_artifact, calibration=dict(tiny_artifact.calibration,
                                                                warmup=5))
    points = spiky_sine(500, [20, 330])
    scores = [s for s in score_points(Pipeline(quick, PipelineSettings(
        evidence="memory")), points) if s is not None]
    calibration = CalibrationSettings.from_dict(quick.calibration)
    surprises = replay_surprises([s.novelty for s in scores], calibration)
    assert surprises[20 - (W - 1)] is None  # the spike at row 20 comes before any novelty
    for s, m in zip(scores, surprises, strict=True):
        # While the memory holds no non-overlapping past window there is nothing to score.
        expected = 0.0 if m is None else min(m / SURPRISE_SCALE, 1.0)
        assert s.score == pytest.approx(expected, abs=1e-12)
    assert max(s.score for s in scores) > 0.1
    # The model did see the early spike: it is the memory setting that keeps it out.
    both = score_points(Pipeline(quick), points)
    assert max(s.score for s in both[W - 1 : 2 * W] if s is not None) > 0.1


def test_novelty_appears_once_a_non_overlapping_past_window_exists(
        tiny_artifact: Artifact) -> None:
    scores = score_points(Pipeline(tiny_artifact), spiky_sine(4 * W, []))
    novelty = [s.novelty if s is not None else None for s in scores]
    assert novelty[: 2 * W - 1] == [None] * (2 * W - 1)  # not 2W rows yet: no room for two
    assert all(v is not None and v >= 0.0 for v in novelty[3 * W - 2 :])


# ---------------------------------------------------------------- model swaps


def test_swap_model_restarts_only_the_error_calibration(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    pipeline.process(mixed_stream(300), now=0.0)
    bank = pipeline.bank
    model, memory = bank.index("model"), bank.index("memory")
    slots = np.array([pipeline.registry.slot_of(s) for s in ("sine", "b", "c")])
    novelty_state = bank.hist[slots, memory].copy()
    ring = pipeline.memory.values[slots].copy()
    assert (bank.n[slots, model] > 0).all() and (bank.n[slots, memory] > 0).all()
    calibration = dict(tiny_artifact.calibration, threshold=0.25, alarm_hold=7, warmup=20)
    pipeline.swap_model(dataclasses.replace(tiny_artifact, version="new",
                                            calibration=calibration))
    assert (bank.n[slots, model] == 0).all() and (bank.hist[slots, model] == 0).all()
    np.testing.assert_array_equal(bank.hist[slots, memory], novelty_state)
    np.testing.assert_array_equal(pipeline.memory.values[slots], ring)
    assert (pipeline.alarms.threshold, pipeline.alarms.hold) == (0.25, 7)
    assert bank.warm(slots)[:, model].tolist() == [False] * 3


def swapped_run(artifact: Artifact, other: Artifact, points: list[Point], cut: int,
                evidence: str = "model+memory+seasonal", swap: bool = True,
                ) -> list[Score | None]:
    pipeline = Pipeline(artifact, PipelineSettings(evidence=evidence))
    out: list[Score | None] = [None] * len(points)
    for start, stop in ((0, cut), (cut, len(points))):
        if start == cut and swap:
            pipeline.swap_model(other)
        result = pipeline.process(points[start:stop], now=0.0)
        for position, score in zip(result.positions, result.scores, strict=True):
            out[start + position] = score
    return out


def test_swap_model_keeps_each_series_memory_and_restarts_error_scoring(
        tiny_artifact: Artifact) -> None:
    cut, n = 400, 700
    points = interleave(spiky_sine(n, [], name="a", seed=11),
                        to_points("b", timestamps(n), 100 + 20 * sine_values(n, seed=12)))
    calibration = dict(tiny_artifact.calibration, threshold=0.35)
    other = dataclasses.replace(tiny_artifact, version="other", calibration=calibration)
    warmup = CalibrationSettings.from_dict(calibration).warmup

    swapped = swapped_run(tiny_artifact, other, points, 2 * cut)
    kept = swapped_run(tiny_artifact, other, points, 2 * cut, swap=False)
    memory_only = swapped_run(tiny_artifact, other, points, 2 * cut,
                              evidence="memory+seasonal")

    for name in ("a", "b"):
        mine = [(s, k, m) for s, k, m in zip(swapped[2 * cut :], kept[2 * cut :],
                                              memory_only[2 * cut :], strict=True)
                if s is not None and s.series == name]
        assert len(mine) == n - cut
        first = mine[0][0]
        assert first.model_version == "other" and first.threshold == 0.35
        # The memory carried over: novelty continues where it was, as if nothing happened.
        assert first.novelty is not None
        assert [s.novelty for s, _, _ in mine] == [k.novelty for _, k, _ in mine]
        # The error calibration restarted: until it warms up the score is the memory's
        # evidence alone, exactly as a pipeline scoring without the model gives it.
        for s, _, m in mine[:warmup]:
            assert s.score == pytest.approx(m.score, abs=1e-12)
        # Without the swap the error was warm and took part in the score.
        assert any(abs(k.score - s.score) > 1e-3 for s, k, _ in mine[:warmup])
        # Once the new calibration has warmed up, the error scores again.
        assert any(abs(s.score - m.score) > 1e-3 for s, _, m in mine[warmup:])


def test_seasonal_evidence_catches_a_daily_peak_that_does_not_come(
        tiny_artifact: Artifact) -> None:
    # Minute samples and a 24-minute "day", so forty days replay in a blink.
    day, days, missing = 24, 40, 35
    rng = np.random.default_rng(3)
    values = np.tile(np.where((np.arange(day) >= 10) & (np.arange(day) < 14), 3.0, 0.0), days)
    values += 0.1 * rng.standard_normal(len(values))
    values[missing * day + 10 : missing * day + 14] = 0.1 * rng.standard_normal(4)
    points = to_points("daily", timestamps(len(values)), values)
    settings = {"season_s": day * STEP}

    def scores(evidence: str) -> np.ndarray:
        pipeline = Pipeline(tiny_artifact, PipelineSettings(evidence=evidence, **settings))
        return as_array(score_points(pipeline, points))

    seasonal, memory = scores("seasonal"), scores("memory")
    gap = slice(missing * day + 10, missing * day + 16)  # the rows where the peak should be
    elsewhere = np.ones(len(values), dtype=bool)
    elsewhere[: 12 * day] = False  # the calibrators' warm-up
    elsewhere[missing * day : (missing + 1) * day] = False
    # Only the comparison with the same time on earlier days ranks the missing peak first.
    assert np.nanmax(seasonal[gap]) > np.nanmax(seasonal[elsewhere])
    assert np.nanmax(memory[gap]) < np.nanmax(memory[elsewhere])
    # Without a season (0 s) the seasonal evidence never scores.
    off = Pipeline(tiny_artifact, PipelineSettings(evidence="seasonal", season_s=0))
    assert np.nanmax(as_array(score_points(off, points))) == 0.0


def test_coarse_evidence_scores_at_block_ends_and_sees_a_slow_climb(
        tiny_artifact: Artifact) -> None:
    # White noise, then a climb of 0.004 a sample: about 0.06 across a 16-point window, lost
    # in the noise (sd 1) of every window, but 1.5 noise sds across the 128 samples that 16
    # coarse points span.
    n, start = 4000, 3000
    rng = np.random.default_rng(5)
    values = rng.standard_normal(n)
    values[start:] += 0.004 * np.arange(n - start)
    points = to_points("climb", timestamps(n), values)
    coarse = as_array(score_points(Pipeline(tiny_artifact, PipelineSettings(evidence="coarse")),
                                   points))
    scored = np.flatnonzero(np.nan_to_num(coarse) > 0)
    assert len(scored) > 100
    # Scored rows are block ends: whole blocks of COARSE_BLOCK windows apart.
    assert np.all(np.diff(scored) % COARSE_BLOCK == 0)
    assert np.nanmax(coarse[start + 500 :]) > 2 * np.nanmax(coarse[1000:start])


def test_kinds_without_evidence_yet_do_not_mute_those_that_have_it(
        tiny_artifact: Artifact) -> None:
    # With a short warm-up the error calibration is warm long before the memory holds a
    # non-overlapping past window, a season has passed or a coarse block is full: until then
    # every kind but the model is left out, so the default scores exactly as the model alone.
    quick = dataclasses.replace(tiny_artifact, calibration=dict(tiny_artifact.calibration,
                                                                warmup=5))
    points = spiky_sine(3 * W, [W + 10])
    default = as_array(score_points(Pipeline(quick), points))
    model = as_array(score_points(Pipeline(quick, PipelineSettings(evidence="model")), points))
    early = slice(W - 1, 2 * W - 1)
    assert np.nanmax(model[early]) > 0.1  # the spike is seen
    np.testing.assert_array_equal(default[early], model[early])


# ---------------------------------------------------------------- snapshot and restore


def run(pipeline: Pipeline, points: Sequence[Point], cuts: Sequence[int]) -> list[Score]:
    out: list[Score] = []
    for start, stop in zip([0, *cuts], [*cuts, len(points)], strict=True):
        out.extend(pipeline.process(points[start:stop], now=0.0).scores)
    return out


def test_restored_state_scores_bit_identically_to_a_pipeline_that_never_stopped(
        tiny_artifact: Artifact) -> None:
    points = mixed_stream(700)
    cuts = [600, 1300, 1800]
    reference = run(Pipeline(tiny_artifact), points, cuts)
    first = Pipeline(tiny_artifact)
    before = run(first, points[:1300], cuts[:1])
    snapshot = StateSnapshot.from_bytes(first.snapshot().to_bytes())
    second = Pipeline(tiny_artifact)
    assert second.restore(snapshot) == 3
    after = run(second, points[1300:], [c - 1300 for c in cuts[2:]])
    assert before + after == reference  # every field of every Score, exactly
    assert sum(s.is_anomaly for s in reference) >= 0 and len(reference) > 1800


def test_a_snapshot_covers_only_the_series_asked_for(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    pipeline.process(mixed_stream(250), now=0.0)
    part = pipeline.snapshot(["b", "nope"])
    assert part.series == ["b"]
    assert all(len(a) == 1 for a in part.arrays.values())
    fresh = Pipeline(tiny_artifact)
    fresh.restore(part)
    assert fresh.registry.series() == ["b"]
    # The restored series continues; the others start afresh.
    late = fresh.process([Point("b", T0 + 250 * STEP, (100.0,)), Point("b", T0, (1.0,))], 0.0)
    assert late.late == [1] and len(late.scores) == 1


def test_restore_refuses_a_snapshot_of_another_shape(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    pipeline.process(mixed_stream(250), now=0.0)
    snapshot = pipeline.snapshot()
    other = Pipeline(tiny_artifact, PipelineSettings(memory_windows=512))
    with pytest.raises(ValueError, match="settings"):
        other.restore(snapshot)
    newer = StateSnapshot(dict(snapshot.meta, format=99), snapshot.series, snapshot.arrays)
    with pytest.raises(ValueError, match="format"):
        Pipeline(tiny_artifact).restore(newer)
    with pytest.raises(ValueError, match="not a state snapshot"):
        StateSnapshot.from_bytes(b"PK\x03\x04 truncated")


def test_a_snapshot_restored_under_another_model_restarts_the_error_calibration(
        tiny_artifact: Artifact) -> None:
    points = mixed_stream(400)
    pipeline = Pipeline(tiny_artifact)
    pipeline.process(points[:900], now=0.0)
    other = Pipeline(dataclasses.replace(tiny_artifact, version="other"))
    other.restore(pipeline.snapshot())
    slots = np.array([other.registry.slot_of(s) for s in ("sine", "b", "c")])
    model, memory = other.bank.index("model"), other.bank.index("memory")
    assert (other.bank.n[slots, model] == 0).all()
    assert (other.bank.n[slots, memory] > 0).all()
    scores = other.process(points[900:], now=0.0).scores
    assert scores and all(s.model_version == "other" for s in scores)


def many_series(n_series: int, n: int, features: int = 1) -> list[Point]:
    """``n_series`` sines, interleaved; a spike in every seventh."""
    streams = []
    for k in range(n_series):
        values = np.stack([sine_values(n, seed=k + f, phase=k % 24) for f in range(features)],
                          axis=1)
        if k % 7 == 0:
            values[n // 2, k % features] += 4.0
        streams.append(to_points(f"s{k}", timestamps(n), values))
    return interleave(*streams)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_model_beside_the_rounds_scores_as_the_model_before_them(
        tiny_artifact: Artifact, backend: str) -> None:
    # 700 series x 3 points a poll: 3 rounds of 700 rows, the model in 5 chunks beside them.
    points = many_series(700, 3 * W)
    inline = feed(Pipeline(tiny_artifact, backend=backend, overlap=False), points, batch=2100)
    beside = Pipeline(tiny_artifact, backend=backend)
    before = Pipeline(tiny_artifact, backend=backend, overlap=False)
    assert feed(before, points[:2100], batch=2100)
    assert before._executor is None  # one chunk, no thread
    overlapped = feed(beside, points, batch=2100)
    assert beside._executor is not None  # the model did run in its thread
    assert sum(s is not None for s in inline) == 700 * (2 * W + 1)
    assert overlapped == inline
    beside.close()
    assert beside._executor is None
    assert feed(beside, points[:2100], batch=2100) == feed(
        Pipeline(tiny_artifact, backend=backend, overlap=False), points[:2100], batch=2100)


def test_the_model_beside_the_rounds_keeps_each_features_error(tmp_path) -> None:
    from streamlstm.training import SeriesHistory

    history = {"h": SeriesHistory(timestamps(600), np.stack(
        [sine_values(600, seed=1), sine_values(600, seed=2)], axis=1))}
    artifact = fit(history, ["a", "b"], TINY_SETTINGS, progress=False)
    points = many_series(400, 2 * W, features=2)
    inline = feed(Pipeline(artifact, overlap=False), points, batch=1600)
    overlapped = feed(Pipeline(artifact), points, batch=1600)
    assert overlapped == inline
    scored = [s for s in overlapped if s is not None]
    assert {s.top_feature for s in scored} == {"a", "b"}
    assert all(s.feature_errors is not None and len(s.feature_errors) == 2 for s in scored)


def test_model_chunks_cover_every_ready_window_once_in_round_order() -> None:
    from streamlstm.core.pipeline import model_chunks

    blocks, start = [], 0
    for size in (128, 384, 512, 100, 512, 3):
        blocks.append(np.arange(start, start + size))
        start += size
    blocks[2][::2] = -1  # pushes that ready no window: 256 windows in that block
    chunks = model_chunks(blocks, 512, 128)
    assert [(c.first, c.end) for c in chunks] == [(0, 1), (1, 3), (3, 5), (5, 6)]
    windows = np.concatenate([c.windows for c in chunks])
    expected = np.concatenate([b[b >= 0] for b in blocks])
    np.testing.assert_array_equal(windows, expected)
    assert model_chunks([], 512, 128) == []
    (whole,) = model_chunks(blocks, 10**6, 10**6)
    assert (whole.first, whole.end) == (0, 6)


def test_a_model_failing_in_its_thread_fails_the_call_and_the_next_one_scores(
        tiny_artifact: Artifact) -> None:
    points = many_series(700, W + 2)
    pipeline = Pipeline(tiny_artifact)
    pipeline.process(points[: 700 * (W - 1)], now=0.0)
    real_errors = pipeline.scorer.errors
    calls = []

    def errors_failing_on_the_second_call(windows, per_feature=False):
        calls.append(len(windows))
        if len(calls) == 2:
            raise RuntimeError("model broke")
        return real_errors(windows, per_feature)

    pipeline.scorer.errors = errors_failing_on_the_second_call  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="model broke"):
        pipeline.process(points[700 * (W - 1) : 700 * W], now=0.0)
    assert len(calls) >= 2
    result = pipeline.process(points[700 * W :], now=0.0)
    assert len(result.scores) == 1400


def test_scores_do_not_depend_on_the_batch_size_when_the_sampling_is_irregular(
        tiny_artifact: Artifact) -> None:
    # Gaps of one to three steps: the series' interval (the median of its latest gaps), and
    # with it the period its seasonal comparison looks back by, moves within a batch.
    rng = np.random.default_rng(5)
    n = 900
    ts = T0 + np.cumsum(rng.choice([STEP, STEP, STEP, 2 * STEP, 3 * STEP], n))
    points = to_points("irregular", ts, sine_values(n, seed=4))
    settings = PipelineSettings(season_s=24 * STEP, season_periods=2)
    reference = feed(Pipeline(tiny_artifact, settings), points, batch=1)
    assert sum("seasonal" in s.evidence for s in reference if s) > 300
    for batch in (7, 4096):
        other = feed(Pipeline(tiny_artifact, settings), points, batch=batch)
        assert [s is None for s in other] == [s is None for s in reference]
        assert [s.evidence.keys() for s in other if s] == [
            s.evidence.keys() for s in reference if s]
        np.testing.assert_allclose(as_array(other), as_array(reference), rtol=0, atol=1e-5)
