"""Online calibration: a raw reconstruction error becomes a score in [0, 1] and a flag.

Following river's habits, the calibrator learns and scores one error at a time
(`learn_one` / `score_one`) and the alarm rule is a separate wrapper around it
(`ThresholdDetector`), like river's ``ThresholdFilter`` around an anomaly detector.

The calibrator keeps an exponentially weighted Gaussian of the log-error per series
(``river.stats.EWMean`` / ``EWVar``). Until a series has history of its own, the estimate leans
on the prior fitted on the training run's validation errors, weighted by how much the series'
own exponential average has accumulated. The score is the Gaussian CDF of the (optionally
smoothed) log-error: 0.5 is an ordinary window, 0.999 is about three deviations above normal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from river import stats

_LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class CalibrationSettings:
    """How errors are turned into scores and alarms; stored with the model artifact."""

    fading_factor: float = 0.002  # weight of each new error: memory of ~500 windows
    smoothing: int = 1  # average the log-error over this many latest windows
    min_std: float = 0.05  # floor of the log-error deviation (flat, noiseless series)
    threshold: float = 0.999  # score at or above which a window is anomalous
    warmup: int = 64  # windows a series must have been scored before it may alarm
    prior_mean: float = 0.0  # log-error distribution of the validation data
    prior_std: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ErrorCalibrator:
    """Per-series calibration of reconstruction errors into [0, 1]."""

    def __init__(self, fading_factor: float = 0.002, smoothing: int = 1, min_std: float = 0.05,
                 prior_mean: float = 0.0, prior_std: float = 1.0) -> None:
        self.fading_factor = fading_factor
        self.smoothing = smoothing
        self.min_std = min_std
        self.prior_mean = prior_mean
        self.prior_std = prior_std
        self._mean = stats.EWMean(fading_factor)
        self._var = stats.EWVar(fading_factor)
        self._recent: deque[float] = deque(maxlen=smoothing)
        self._own_weight = 0.0  # 1 - (1 - a)^n: how much the series' history counts
        self.n_learnt = 0

    def learn_one(self, error: float) -> None:
        """Fold ``error`` into this series' error distribution."""
        x = math.log(max(error, _LOG_FLOOR))
        self._mean.update(x)
        self._var.update(x)
        self._recent.append(x)
        self._own_weight += self.fading_factor * (1.0 - self._own_weight)
        self.n_learnt += 1

    def score_one(self, error: float) -> float:
        """The calibrated score of ``error`` against what was learnt so far."""
        x = math.log(max(error, _LOG_FLOOR))
        if self.smoothing > 1 and self._recent:
            previous = list(self._recent)[-(self.smoothing - 1):]
            x = (x + sum(previous)) / (len(previous) + 1)
        mean, std = self.distribution()
        return 0.5 * math.erfc(-(x - mean) / (std * math.sqrt(2.0)))

    def distribution(self) -> tuple[float, float]:
        """Mean and deviation of the log-error: the series' own blended with the prior."""
        w = self._own_weight if self.n_learnt > 1 else 0.0
        if w <= 0.0:
            return self.prior_mean, max(self.prior_std, self.min_std)
        # The series' own EW estimate is normalised by the weight it has accumulated.
        own_mean = self._mean.get()
        own_var = self._var.get()
        mean = w * own_mean + (1 - w) * self.prior_mean
        var = (w * (own_var + (own_mean - mean) ** 2)
               + (1 - w) * (self.prior_std**2 + (self.prior_mean - mean) ** 2))
        return mean, max(math.sqrt(max(var, 0.0)), self.min_std)


class ThresholdDetector:
    """Flags a window when its calibrated score reaches ``threshold`` after ``warmup`` windows."""

    def __init__(self, calibrator: ErrorCalibrator, threshold: float = 0.999,
                 warmup: int = 64) -> None:
        self.calibrator = calibrator
        self.threshold = threshold
        self.warmup = warmup

    def learn_one(self, error: float) -> None:
        self.calibrator.learn_one(error)

    def score_one(self, error: float) -> float:
        return self.calibrator.score_one(error)

    def is_anomaly(self, score: float) -> bool:
        return self.calibrator.n_learnt >= self.warmup and score >= self.threshold

    @classmethod
    def from_settings(cls, settings: CalibrationSettings) -> ThresholdDetector:
        calibrator = ErrorCalibrator(
            fading_factor=settings.fading_factor,
            smoothing=settings.smoothing,
            min_std=settings.min_std,
            prior_mean=settings.prior_mean,
            prior_std=settings.prior_std,
        )
        return cls(calibrator, threshold=settings.threshold, warmup=settings.warmup)
