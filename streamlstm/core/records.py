"""Small value types that travel along the event path. They import nothing of ours."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The largest magnitude a feature value may have: per-series state keeps float32 windows, where
#: anything larger would become inf and poison the series for good.
MAX_VALUE = float(np.finfo(np.float32).max)


# Point, SourceRecord and Score are built once per event: not frozen, because a frozen
# dataclass's __init__ costs three times as much (~1 µs an event each, measured).
@dataclass(slots=True)
class Point:
    """One decoded event: a series, its timestamp (epoch seconds, UTC) and its feature values."""

    series: str
    timestamp: float
    values: tuple[float, ...]


def column_series(series: str, column: str) -> str:
    """The series one column of ``series``' rows scores as, where a one-feature model scores
    several value columns (`streamlstm.core.columns`)."""
    return f"{series}/{column}"


@dataclass(slots=True)
class SourceRecord:
    """A point together with where it came from, so offsets can be committed after the write."""

    point: Point
    partition: int
    offset: int
    # True for records re-read below the committed offset after a (re)assignment: they refill
    # the windows and calibration but were already scored and written, so they are not again.
    warmup: bool = False
    # The message as it arrived, for the dead-letter topic if the point is refused later on.
    raw_key: bytes | None = None
    raw_value: bytes | None = None
    # The series of the row this point is one column of (`JsonDecoder.decode_row`), else None.
    row: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that could not be decoded; it goes to the dead-letter topic with its reason."""

    reason: str
    detail: str
    raw_key: bytes | None
    raw_value: bytes | None
    partition: int
    offset: int


@dataclass(slots=True)
class Score:
    """The verdict on one event: the last point of a full window."""

    series: str
    timestamp: float
    values: tuple[float, ...]
    error: float  # the model's reconstruction error of the window
    score: float  # calibrated anomaly score in [0, 1]
    threshold: float
    is_anomaly: bool
    model_version: str
    novelty: float | None = None  # distance to the series' nearest past window, in its spread
    # Why: each calibrated kind of evidence's surprise, -log10 of how rare this window is for
    # the series by that kind (model, memory, seasonal, coarse); the score combines them.
    evidence: dict[str, float] = field(default_factory=dict)
    top_feature: str | None = None  # multi-feature models: the worst reconstructed feature
    # Multi-feature models: the reconstruction error of each feature, in the model's feature
    # order (``error`` is their mean).
    feature_errors: tuple[float, ...] | None = None
    # The first flagged point of an incident: flagged (``is_anomaly``) when none of the
    # series' previous ``alarm_hold`` windows was. Pages and NAB-style scoring use this;
    # ``is_anomaly`` flags every point whose score reaches the threshold.
    alarm: bool = False


@dataclass(frozen=True, slots=True)
class WindowBatch:
    """Windows ready for the model: ``windows`` is float32 ``[B, W, F]``, already normalised."""

    series: list[str]
    timestamps: np.ndarray  # float64 [B], timestamp of each window's last point
    last_values: list[tuple[float, ...]]  # raw values of each window's last point
    windows: np.ndarray

    def __len__(self) -> int:
        return len(self.series)
