"""The pure step shared by `run` and `replay`: points in, scores out. No I/O.

    points --WindowStore--> raw windows --SeriesScale--> normalised windows
           --Scorer (one batch)--> errors --ThresholdDetector per series--> Score

Everything per series (window, scale, calibration) is updated in event order, and the model
sees each window independently, so the scores do not depend on how the stream was cut into
polls: replaying a file gives what the daemon gave live.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from streamlstm.calibration import CalibrationSettings, ThresholdDetector
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
        state (windows, scale, calibration) but produce no Score: they were scored before.
        """
        ready = self.store.append(points, now)
        result = StepResult(late=ready.late, evicted_idle=ready.evicted_idle,
                            evicted_capacity=ready.evicted_capacity)
        if len(ready.index) == 0:
            return result
        started = self._clock()
        series = [points[i].series for i in ready.index.tolist()]
        normalised = self.scale.normalise(series, ready.slots, ready.windows)
        errors = self.scorer.errors(normalised)
        version = self.model_version
        for k, (i, slot) in enumerate(zip(ready.index.tolist(), ready.slots.tolist(),
                                          strict=True)):
            detector = self._detector(slot, series[k])
            error = float(errors[k])
            score = detector.score_one(error)
            flagged = detector.is_anomaly(score)
            detector.learn_one(error)
            if warmup is not None and warmup[i]:
                continue
            point = points[i]
            result.positions.append(i)
            result.scores.append(Score(
                series=point.series,
                timestamp=point.timestamp,
                values=point.values,
                error=error,
                score=score,
                threshold=detector.threshold,
                is_anomaly=flagged,
                model_version=version,
            ))
        result.windows = len(ready.index)
        result.scoring_seconds = self._clock() - started
        return result

    def swap_model(self, artifact: Artifact, device: str = "cpu") -> None:
        """Serve ``artifact`` from the next `process` call on.

        Windows survive when the shape is unchanged; scale and calibration restart from the new
        artifact's training state because a new model's errors live on a different scale.
        """
        new_scorer = Scorer(artifact, device=device)
        same_shape = (new_scorer.window == self.scorer.window
                      and new_scorer.n_features == self.scorer.n_features)
        if not same_shape:
            raise ValueError("swap_model needs the same window and features; "
                             "restart the pipeline for a different shape")
        self.scorer = new_scorer
        self._reset_series_state(artifact)

    def reset_state(self) -> None:
        """Forget every series (windows, scale, calibration), e.g. after a rebalance."""
        arch = self.artifact.architecture
        self.store = WindowStore(
            window=arch.window,
            n_features=arch.n_features,
            stride=self.settings.stride,
            max_series=self.settings.max_series,
            idle_evict_s=self.settings.idle_evict_s,
            max_gap_intervals=self.settings.max_gap_intervals,
        )
        self._reset_series_state(self.artifact)

    def _reset_series_state(self, artifact: Artifact) -> None:
        arch = artifact.architecture
        known = artifact.normalisation.get("series_scale", {})
        self.scale = SeriesScale(self.settings.max_series, arch.n_features,
                                 SCALE_FADING_FACTOR, known=known)
        self.calibration = CalibrationSettings.from_dict(artifact.calibration)
        self._detectors: list[tuple[str, ThresholdDetector] | None] = (
            [None] * self.settings.max_series)

    def _detector(self, slot: int, series: str) -> ThresholdDetector:
        held = self._detectors[slot]
        if held is None or held[0] != series:  # a new series, or a slot reused after eviction
            held = (series, ThresholdDetector.from_settings(self.calibration))
            self._detectors[slot] = held
        return held[1]


def score_points(pipeline: Pipeline, points: Sequence[Point],
                 batch_size: int = 4096) -> list[Score | None]:
    """Score ``points`` in batches; one entry per point (None where no window was ready)."""
    out: list[Score | None] = [None] * len(points)
    for start in range(0, len(points), batch_size):
        result = pipeline.process(points[start : start + batch_size], now=0.0)
        for position, score in zip(result.positions, result.scores, strict=True):
            out[start + position] = score
    return out
