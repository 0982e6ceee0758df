"""ErrorCalibrator and ThresholdDetector: range, learnt distribution, prior, floor, warm-up."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from streamlstm.calibration import CalibrationSettings, ErrorCalibrator, ThresholdDetector


def lognormal_errors(n: int, mean: float = math.log(0.02), std: float = 0.3,
                     seed: int = 0) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(mean, std, n))


def learnt(errors: np.ndarray, **kwargs: float) -> ErrorCalibrator:
    calibrator = ErrorCalibrator(**kwargs)  # type: ignore[arg-type]
    for e in errors:
        calibrator.learn_one(float(e))
    return calibrator


def test_scores_stay_in_the_unit_interval() -> None:
    calibrator = learnt(lognormal_errors(300), fading_factor=0.05)
    for error in [0.0, 1e-30, 1e-6, 0.02, 1.0, 1e6, 1e300, float("inf")]:
        score = calibrator.score_one(error)
        assert 0.0 <= score <= 1.0, (error, score)


def test_far_above_the_learnt_distribution_scores_near_one_and_typical_near_half() -> None:
    # The prior sits far from the data: only the learnt distribution can make these hold.
    calibrator = learnt(lognormal_errors(2000), fading_factor=0.01, prior_mean=5.0, prior_std=3.0)
    mean, std = calibrator.distribution()
    assert mean == pytest.approx(math.log(0.02), abs=0.1)
    assert std == pytest.approx(0.3, abs=0.08)
    assert calibrator.score_one(0.02) == pytest.approx(0.5, abs=0.1)
    assert calibrator.score_one(0.02 * math.exp(6 * 0.3)) > 0.999
    assert calibrator.score_one(0.02 * math.exp(-6 * 0.3)) < 0.001


def test_score_grows_with_the_error() -> None:
    calibrator = learnt(lognormal_errors(500), fading_factor=0.02)
    scores = [calibrator.score_one(e) for e in np.geomspace(1e-4, 10, 30)]
    assert all(b >= a for a, b in itertools.pairwise(scores))
    assert scores[0] < 0.01 and scores[-1] > 0.99


def test_the_prior_is_used_before_any_learning() -> None:
    calibrator = ErrorCalibrator(prior_mean=math.log(0.5), prior_std=0.2)
    assert calibrator.distribution() == (pytest.approx(math.log(0.5)), pytest.approx(0.2))
    assert calibrator.score_one(0.5) == pytest.approx(0.5)
    # One standard deviation above the prior mean: Phi(1).
    assert calibrator.score_one(0.5 * math.exp(0.2)) == pytest.approx(0.8413, abs=1e-3)
    # Another prior, another score for the same error.
    other = ErrorCalibrator(prior_mean=math.log(5.0), prior_std=0.2)
    assert other.score_one(0.5) < 1e-6


def test_the_prior_fades_as_the_series_history_accumulates() -> None:
    errors = lognormal_errors(50, mean=math.log(0.02), std=0.02)
    slow = learnt(errors, fading_factor=0.001, prior_mean=math.log(0.5), prior_std=0.2)
    fast = learnt(errors, fading_factor=0.2, prior_mean=math.log(0.5), prior_std=0.2)
    # Little weight of its own yet: the slow one still leans on the prior.
    assert slow.distribution()[0] == pytest.approx(math.log(0.5), abs=0.2)
    assert fast.distribution()[0] == pytest.approx(math.log(0.02), abs=0.05)


def test_min_std_floors_the_deviation_of_a_constant_error() -> None:
    calibrator = learnt(np.full(500, 0.01), fading_factor=0.1, min_std=0.05, prior_std=0.01)
    mean, std = calibrator.distribution()
    assert mean == pytest.approx(math.log(0.01), abs=1e-6)
    assert std == pytest.approx(0.05)
    # One floor-deviation above: Phi(1), not a certain alarm for a tiny wobble.
    assert calibrator.score_one(0.01 * math.exp(0.05)) == pytest.approx(0.8413, abs=1e-3)


def test_min_std_floors_a_tiny_prior_too() -> None:
    calibrator = ErrorCalibrator(prior_mean=0.0, prior_std=1e-9, min_std=0.5)
    assert calibrator.distribution()[1] == pytest.approx(0.5)
    assert calibrator.score_one(math.exp(0.5)) == pytest.approx(0.8413, abs=1e-3)


def test_warmup_suppresses_flags_until_enough_windows_were_learnt() -> None:
    calibrator = ErrorCalibrator(prior_mean=math.log(0.02), prior_std=0.3, fading_factor=0.05)
    detector = ThresholdDetector(calibrator, threshold=0.99, warmup=10)
    huge = 100.0
    for _ in range(10):
        score = detector.score_one(huge)
        assert score >= 0.99
        assert not detector.is_anomaly(score)
        detector.learn_one(0.02)
    score = detector.score_one(huge)
    assert detector.is_anomaly(score)
    assert not detector.is_anomaly(detector.score_one(0.02))


def test_threshold_is_inclusive() -> None:
    detector = ThresholdDetector(ErrorCalibrator(), threshold=0.7, warmup=0)
    assert detector.is_anomaly(0.7)
    assert not detector.is_anomaly(0.6999)


def test_smoothing_averages_the_log_error_over_recent_windows() -> None:
    base = lognormal_errors(400, std=0.2)
    plain = learnt(base, fading_factor=0.02, smoothing=1)
    smooth = learnt(base, fading_factor=0.02, smoothing=4)
    assert plain.distribution() == pytest.approx(smooth.distribution())
    spike = 0.02 * math.exp(3.0)
    # A single high error is diluted by the three typical ones before it.
    assert smooth.score_one(spike) < plain.score_one(spike)
    recent = [math.log(e) for e in base[-3:]]
    expected_x = (math.log(spike) + sum(recent)) / 4
    mean, std = smooth.distribution()
    expected = 0.5 * math.erfc(-(expected_x - mean) / (std * math.sqrt(2.0)))
    assert smooth.score_one(spike) == pytest.approx(expected, rel=1e-9)


def test_smoothing_lets_a_sustained_rise_through() -> None:
    calibrator = learnt(lognormal_errors(400, std=0.2), fading_factor=0.02, smoothing=4)
    high = 0.02 * math.exp(3.0)
    first = calibrator.score_one(high)
    for _ in range(3):
        calibrator.learn_one(high)
    assert calibrator.score_one(high) > first


def test_from_settings_carries_every_parameter() -> None:
    settings = CalibrationSettings(fading_factor=0.01, smoothing=3, min_std=0.1, threshold=0.95,
                                   warmup=7, prior_mean=-3.0, prior_std=0.4)
    detector = ThresholdDetector.from_settings(settings)
    assert detector.threshold == 0.95
    assert detector.warmup == 7
    calibrator = detector.calibrator
    assert (calibrator.fading_factor, calibrator.smoothing, calibrator.min_std) == (0.01, 3, 0.1)
    assert (calibrator.prior_mean, calibrator.prior_std) == (-3.0, 0.4)


def test_calibration_settings_round_trip_and_ignore_unknown_keys() -> None:
    settings = CalibrationSettings(threshold=0.9, prior_mean=-2.0)
    assert CalibrationSettings.from_dict(settings.to_dict()) == settings
    assert CalibrationSettings.from_dict({"threshold": 0.8, "future_key": 1}).threshold == 0.8
