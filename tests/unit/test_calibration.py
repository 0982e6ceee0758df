"""TailCalibrator, ThresholdDetector and alarm_rows: surprise, warm-up, forgetting, alarm hold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamlstm.calibration import (
    CalibrationSettings,
    TailCalibrator,
    ThresholdDetector,
    alarm_rows,
)


def learnt(values: np.ndarray, **kwargs: float) -> TailCalibrator:
    calibrator = TailCalibrator(**kwargs)  # type: ignore[arg-type]
    for v in values:
        calibrator.learn_one(float(v))
    return calibrator


def test_scores_zero_until_warm() -> None:
    calibrator = TailCalibrator(history=100, warmup=50)
    for v in range(49):
        calibrator.learn_one(float(v))
    assert calibrator.score_one(1e9) == 0.0
    calibrator.learn_one(0.0)
    assert calibrator.score_one(1e9) > 3.0


def test_surprise_is_the_empirical_tail_below_the_cut() -> None:
    calibrator = learnt(np.arange(1000.0), history=1000, warmup=10, tail_fraction=0.02)
    # 100 of the 1000 held values are >= 900: P = 0.1, surprise 1.
    assert calibrator.score_one(900.0) == pytest.approx(1.0)
    assert calibrator.score_one(-5.0) == pytest.approx(0.0)


def test_surprise_grows_without_bound_in_the_fitted_tail() -> None:
    rng = np.random.default_rng(1)
    calibrator = learnt(rng.exponential(1.0, 2000), history=2000, warmup=10)
    edge = calibrator.score_one(4.0)
    far = calibrator.score_one(20.0)
    # An exponential tail: each unit of excess over the cut costs log10(e) / mean excess.
    assert far > edge + 4.0
    assert calibrator.score_one(20.0) == pytest.approx(20 / math.log(10), rel=0.15)


def test_the_same_rarity_means_the_same_surprise_whatever_the_noise_level() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=3000)
    quiet = learnt(base * 0.01, history=3000, warmup=10)
    noisy = learnt(base * 100.0, history=3000, warmup=10)
    assert quiet.score_one(0.03) == pytest.approx(noisy.score_one(300.0))


def test_memory_is_bounded_and_forgets_the_oldest() -> None:
    calibrator = learnt(np.full(500, 1000.0), history=100, warmup=10, longterm=0)
    assert calibrator.n_held == 100
    for _ in range(100):
        calibrator.learn_one(1.0)
    # Every 1000.0 has been forgotten: a value of 2 is now beyond all held values.
    assert calibrator.score_one(2.0) > 2.0
    assert calibrator.n_learnt == 600


def test_sorted_copies_stay_consistent_with_the_held_values() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=3000)
    calibrator = learnt(values, history=250, warmup=10, longterm=300, longterm_min_rate=0.1)
    recent = calibrator._recent
    assert np.array_equal(recent.sorted[: recent.n], np.sort(values[-250:]))
    sample = calibrator._sample
    assert sample is not None and sample.n == 300
    assert np.array_equal(sample.sorted, np.sort(sample.slots))
    assert set(sample.slots.tolist()) <= set(values.tolist())


def test_the_long_horizon_remembers_rare_but_normal_values() -> None:
    rng = np.random.default_rng(5)
    history = rng.normal(size=5000)
    history[rng.choice(4000, 40, replace=False)] = 10.0  # 1% spikes, then a quiet stretch
    recent_only = learnt(history, history=1000, warmup=100, longterm=0)
    both = learnt(history, history=1000, warmup=100, longterm=1000, seed=1)
    # The last 1000 values hold no spike: alone they call 10.0 extreme ...
    assert recent_only.score_one(10.0) > 6.0
    # ... while the sample of the whole past knows it happens about once in a hundred.
    assert both.score_one(10.0) < recent_only.score_one(10.0) - 2.0
    assert both.score_one(0.0) == pytest.approx(recent_only.score_one(0.0), abs=0.1)


def test_the_sample_is_uniform_over_the_past_unless_it_must_renew() -> None:
    values = np.arange(60_000.0)
    uniform = learnt(values, history=100, warmup=10, longterm=500, longterm_min_rate=0.0)
    renewing = learnt(values, history=100, warmup=10, longterm=500, longterm_min_rate=0.05)
    assert uniform._sample is not None and renewing._sample is not None
    assert abs(uniform._sample.slots.mean() - 30_000) < 3_000
    # Renewing at least 5% per value, a sampled value is on average about 500 / 0.05 old.
    assert abs((60_000 - renewing._sample.slots.mean()) - 10_000) < 2_500


def test_scores_are_reproducible_for_a_seed() -> None:
    values = np.random.default_rng(6).exponential(size=4000)
    a = learnt(values, seed=7)
    b = learnt(values, seed=7)
    probes = [0.5, 2.0, 6.0, 12.0]
    assert [a.score_one(v) for v in probes] == [b.score_one(v) for v in probes]


@pytest.mark.parametrize("kwargs", [{"tail_fraction": 0.0}, {"tail_fraction": 1.0},
                                    {"history": 10, "warmup": 20}, {"warmup": 0},
                                    {"longterm": 50, "warmup": 100},
                                    {"longterm_min_rate": 1.5}])
def test_rejects_impossible_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TailCalibrator(**kwargs)  # type: ignore[arg-type]


def test_threshold_detector_holds_quiet_after_an_alarm() -> None:
    detector = ThresholdDetector(threshold=0.5, hold=3)
    verdicts = [detector.check(s) for s in [0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.9]]
    assert verdicts == [True, False, False, False, True, False, False]


def test_alarm_rows_matches_the_detector_row_by_row() -> None:
    rng = np.random.default_rng(4)
    scores = rng.uniform(size=2000) ** 4
    scores[rng.integers(0, 2000, 50)] = np.nan
    for hold in (0, 1, 7, 40):
        detector = ThresholdDetector(threshold=0.6, hold=hold)
        expected = [detector.check(-math.inf if math.isnan(s) else s) for s in scores]
        assert alarm_rows(scores, 0.6, hold).tolist() == expected


def test_settings_round_trip_and_ignore_unknown_keys() -> None:
    settings = CalibrationSettings(threshold=0.4, alarm_hold=12)
    data = settings.to_dict() | {"prior_mean": 1.0}  # a key from an older artifact
    assert CalibrationSettings.from_dict(data) == settings
