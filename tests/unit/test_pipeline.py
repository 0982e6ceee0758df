"""Pipeline: causal, batch-independent, deterministic, warm-up, spikes, series independence."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from streamlstm.model.artifact import Artifact
from streamlstm.pipeline import Pipeline, PipelineSettings, score_points
from streamlstm.records import Point, Score
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
    return np.array([getattr(s, field) if s is not None else np.nan for s in scores])


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
        np.testing.assert_allclose(as_array(prefix), as_array(full[:cut]), rtol=0, atol=1e-6)
        np.testing.assert_allclose(as_array(prefix, "error"), as_array(full[:cut], "error"),
                                   rtol=1e-6, atol=0)
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
    scores = score_points(Pipeline(tiny_artifact), spiky_sine(n, [spike]))
    values = as_array(scores)
    errors = as_array(scores, "error")
    around = slice(spike, spike + W)  # the windows that contain the spike
    normal = np.r_[W - 1 : spike, spike + W : n]
    assert np.nanmin(errors[around]) > 3 * np.nanmax(errors[normal])
    assert values[spike] >= tiny_artifact.calibration["threshold"]
    assert values[spike] > np.nanmax(values[normal[normal >= 64 + W]])
    flagged = [i for i, s in enumerate(scores) if s is not None and s.is_anomaly]
    assert spike in flagged
    assert all(spike <= i < spike + W for i in flagged), flagged


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
    assert len(pipeline.store) == 0
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
    assert pipeline.store.series() == ["b", "c"]


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
