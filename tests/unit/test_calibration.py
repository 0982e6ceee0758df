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
    calibrator = learnt(np.full(500, 1000.0), history=100, warmup=10)
    assert calibrator.n_held == 100
    for _ in range(100):
        calibrator.learn_one(1.0)
    # Every 1000.0 has been forgotten: a value of 2 is now beyond all held values.
    assert calibrator.score_one(2.0) > 2.0
    assert calibrator.n_learnt == 600


def test_sorted_copy_stays_consistent_with_arrival_order() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=700)
    calibrator = learnt(values, history=250, warmup=10)
    held = np.sort(values[-250:])
    assert np.array_equal(calibrator._sorted[: calibrator.n_held], held)


@pytest.mark.parametrize("kwargs", [{"tail_fraction": 0.0}, {"tail_fraction": 1.0},
                                    {"history": 10, "warmup": 20}, {"warmup": 0}])
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
