"""The pure step shared by `run` and `replay`: points in, scores out. No I/O.

    points --WindowStore--> raw windows --SeriesScale--> normalised windows
           --Scorer (one batch)--> reconstruction errors --+
    raw windows --WindowMemory (per series)--> novelty ----+--TailCalibrator each--> surprise
    surprise / SURPRISE_SCALE = anomaly score --ThresholdDetector (alarm hold)--> Score

The model's error says "this shape is unlike ordinary metric windows"; the memory's novelty
says "this window is unlike anything this series did recently". Each is calibrated against the
series' own history and the two tail probabilities are combined. Everything per series is
updated in event order and the model sees each window independently, so the scores do not
depend on how the stream was cut into polls: replaying a file gives what the daemon gave live.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamlstm.calibration import (
    SURPRISE_SCALE,
    CalibrationSettings,
    TailCalibrator,
    ThresholdDetector,
)
from streamlstm.memory import WindowMemory
from streamlstm.model.artifact import Artifact
from streamlstm.records import Point, Score
from streamlstm.scoring import Scorer, SeriesScale
from streamlstm.windows import WindowStore

# The running spread of each series forgets with this weight per window (~1000 windows).
SCALE_FADING_FACTOR = 0.001


@dataclass(frozen=True)
class PipelineSettings:
    """Window bookkeeping for the pipeline (the window length itself comes from the model)."""

    stride: int = 1
    max_series: int = 10_000
    idle_evict_s: float = 86_400.0
    max_gap_intervals: int = 5
    memory_windows: int = 2048  # past windows each series remembers for novelty
    # Which evidence scores: "both", or one alone for ablation ("model" error, "memory").
    evidence: str = "both"

    def __post_init__(self) -> None:
        if self.evidence not in ("both", "model", "memory"):
            raise ValueError(f"evidence must be both, model or memory, not {self.evidence!r}")


def combined_surprise(first: float, second: float) -> float:
    """Fisher's rule for two independent tail probabilities, in ``-log10`` units.

    Adding surprises multiplies probabilities, and a product of two uniform probabilities is
    at most ``x`` with probability ``x (1 - ln x)``, so the plain sum would overstate rarity.
    """
    total = first + second
    return total - math.log10(1.0 + total * math.log(10.0))


class SeriesState:
    """Everything one series carries between windows besides its window buffer and spread."""

    def __init__(self, series: str, window: int, n_features: int, memory_windows: int,
                 calibration: CalibrationSettings, evidence: str = "both") -> None:
        self.series = series
        self.evidence = evidence
        self.memory = WindowMemory(window, n_features, memory_windows)
        # Seeded by the series name, so a replay samples exactly as the daemon did.
        self._seed = zlib.crc32(series.encode())
        self.error = self._calibrator(calibration, self._seed)
        self.novelty = self._calibrator(calibration, self._seed + 1)
        self.detector = ThresholdDetector(calibration.threshold, calibration.alarm_hold)

    def score(self, window: np.ndarray, scale: np.ndarray, error: float,
              ) -> tuple[float | None, float]:
        """Fold one raw window ``[W, F]`` and its model error in; returns
        ``(novelty or None while the memory fills, anomaly score)``."""
        log_error = math.log(max(error, 1e-12))
        error_warm = self.error.warm
        surprise = self.error.score_one(log_error) if self.evidence != "memory" else 0.0
        self.error.learn_one(log_error)
        if self.evidence == "model":
            return None, min(surprise / SURPRISE_SCALE, 1.0)
        self.memory.append(window[-1])
        novelty = self.memory.nearest_distance(window, scale)
        if not math.isfinite(novelty):
            return None, min(surprise / SURPRISE_SCALE, 1.0)
        if self.evidence == "both" and error_warm:
            surprise = combined_surprise(surprise, self.novelty.score_one(novelty))
        else:  # memory alone, or a new model's error calibration is still warming up
            surprise = self.novelty.score_one(novelty)
        self.novelty.learn_one(novelty)
        return novelty, min(surprise / SURPRISE_SCALE, 1.0)

    def adopt(self, calibration: CalibrationSettings) -> None:
        """Serve a new model: its errors need a fresh calibrator; the rest carries over."""
        self.error = self._calibrator(calibration, self._seed)
        self.detector.threshold = calibration.threshold
        self.detector.hold = calibration.alarm_hold

    @staticmethod
    def _calibrator(calibration: CalibrationSettings, seed: int) -> TailCalibrator:
        return TailCalibrator(calibration.history, calibration.tail_fraction, calibration.warmup,
                              calibration.longterm, calibration.longterm_min_rate, seed)


@dataclass
class StepResult:
    """What one `Pipeline.process` call produced."""

    scores: list[Score] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # input position of each score
    late: list[int] = field(default_factory=list)  # input positions of out-of-order points
    windows: int = 0  # windows scored, warm-up ones included
    scoring_seconds: float = 0.0
    evicted_idle: int = 0
    evicted_capacity: int = 0


class Pipeline:
    """Scores a stream of points with one model artifact, keeping per-series state."""

    def __init__(self, artifact: Artifact, settings: PipelineSettings | None = None,
                 device: str = "cpu", clock: Callable[[], float] = time.perf_counter) -> None:
        self.settings = settings or PipelineSettings()
        self._clock = clock
        self.scorer = Scorer(artifact, device=device)
        self.reset_state()

    @property
    def artifact(self) -> Artifact:
        return self.scorer.artifact

    @property
    def model_version(self) -> str:
        return self.artifact.version

    def process(self, points: Sequence[Point], now: float,
                warmup: Sequence[bool] | None = None) -> StepResult:
        """Append ``points`` (in stream order) and score every window that became ready.

        ``now`` is the clock used for idle eviction. Points flagged in ``warmup`` update the
        state (windows, spread, memory, calibration) but produce no Score: they were scored
        before.
        """
        ready = self.store.append(points, now)
        result = StepResult(late=ready.late, evicted_idle=ready.evicted_idle,
                            evicted_capacity=ready.evicted_capacity)
        if len(ready.index) == 0:
            return result
        started = self._clock()
        series = [points[i].series for i in ready.index.tolist()]
        normalised, scales = self.scale.normalise_with_scales(series, ready.slots, ready.windows)
        errors = self.scorer.errors(normalised)
        version = self.model_version
        for k, (i, slot) in enumerate(zip(ready.index.tolist(), ready.slots.tolist(),
                                          strict=True)):
            state = self._state(slot, series[k])
            error = float(errors[k])
            novelty, score = state.score(ready.windows[k], scales[k], error)
            flagged = state.detector.check(score)
            if warmup is not None and warmup[i]:
                continue
            point = points[i]
            result.positions.append(i)
            result.scores.append(Score(
                series=point.series,
                timestamp=point.timestamp,
                values=point.values,
                error=error,
                novelty=novelty,
                score=score,
                threshold=state.detector.threshold,
                is_anomaly=flagged,
                model_version=version,
            ))
        result.windows = len(ready.index)
        result.scoring_seconds = self._clock() - started
        return result

    def swap_model(self, artifact: Artifact, device: str = "cpu") -> None:
        """Serve ``artifact`` from the next `process` call on.

        Windows, spread, window memories and novelty calibration belong to the input and
        survive; each series' error calibration restarts, because a new model's errors live on
        a different scale (until it has warmed up, novelty alone scores, uncombined).
        """
        new_scorer = Scorer(artifact, device=device)
        same_shape = (new_scorer.window == self.scorer.window
                      and new_scorer.n_features == self.scorer.n_features)
        if not same_shape:
            raise ValueError("swap_model needs the same window and features; "
                             "restart the pipeline for a different shape")
        self.scorer = new_scorer
        self.calibration = CalibrationSettings.from_dict(artifact.calibration)
        for state in self._states:
            if state is not None:
                state.adopt(self.calibration)

    def reset_state(self) -> None:
        """Forget every series (windows, spread, memory, calibration), e.g. after a rebalance."""
        arch = self.artifact.architecture
        self.store = WindowStore(
            window=arch.window,
            n_features=arch.n_features,
            stride=self.settings.stride,
            max_series=self.settings.max_series,
            idle_evict_s=self.settings.idle_evict_s,
            max_gap_intervals=self.settings.max_gap_intervals,
        )
        known = self.artifact.normalisation.get("series_scale", {})
        self.scale = SeriesScale(self.settings.max_series, arch.n_features,
                                 SCALE_FADING_FACTOR, known=known)
        self.calibration = CalibrationSettings.from_dict(self.artifact.calibration)
        # Filled lazily: a series costs its memory only once it is seen.
        self._states: list[SeriesState | None] = [None] * self.settings.max_series

    def _state(self, slot: int, series: str) -> SeriesState:
        state = self._states[slot]
        if state is None or state.series != series:  # a new series, or a slot reused
            arch = self.artifact.architecture
            state = SeriesState(series, arch.window, arch.n_features,
                                self.settings.memory_windows, self.calibration,
                                self.settings.evidence)
            self._states[slot] = state
        return state


def score_points(pipeline: Pipeline, points: Sequence[Point],
                 batch_size: int = 4096) -> list[Score | None]:
    """Score ``points`` in batches; one entry per point (None where no window was ready)."""
    out: list[Score | None] = [None] * len(points)
    for start in range(0, len(points), batch_size):
        result = pipeline.process(points[start : start + batch_size], now=0.0)
        for position, score in zip(result.positions, result.scores, strict=True):
            out[start + position] = score
    return out
