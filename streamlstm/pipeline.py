"""The pure step shared by `run` and `replay`: points in, scores out. No I/O.

    points --WindowStore--> raw windows --SeriesScale--> normalised windows
           --Scorer (one batch)--> reconstruction errors ---------+
    raw windows --WindowMemory (per series)--> novelty -----------+--TailCalibrator each--> surprise
                 +--WindowMemory--> distance to the same time on earlier days --+
    surprise / SURPRISE_SCALE = anomaly score --ThresholdDetector (alarm hold)--> Score

The model's error says "this shape is unlike ordinary metric windows"; the memory's novelty
says "this window is unlike anything this series did recently"; the seasonal distance says
"this is not what this series does at this time of day"; the coarse memory says "this
stretch, seen at a coarser resolution, is unlike any earlier one". Each is calibrated against
the series' own history, and the tail probabilities of the kinds that have evidence at a
window are combined (Fisher's rule). Everything per series is updated in event order and the
model sees each window independently, so the scores do not depend on how the stream was cut
into polls: replaying a file gives what the daemon gave live.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

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


EVIDENCE_KINDS = ("model", "memory", "seasonal", "coarse")
# A seasonal comparison tolerates the phase being this fraction of the period early or late
# (30 minutes for a daily season), so jitter in when a daily job runs is not an anomaly.
SEASON_SHIFT_FRACTION = 1 / 48
# Below this many windows a period has no phase worth comparing.
MIN_SEASON_WINDOWS = 4
# The coarse memory holds means of this many consecutive windows' newest points, so a window
# of W coarse points spans 8 W windows (256 for the bundled model) ...
COARSE_BLOCK = 8
# ... and remembers this many coarse points (4096 windows).
COARSE_MEMORY = 512


@dataclass(frozen=True)
class PipelineSettings:
    """Window bookkeeping for the pipeline (the window length itself comes from the model)."""

    stride: int = 1
    max_series: int = 10_000
    idle_evict_s: float = 86_400.0
    max_gap_intervals: int = 5
    memory_windows: int = 2048  # past windows each series remembers for novelty
    season_s: float = 86_400.0  # the period a seasonal comparison looks back by (0: none)
    season_periods: int = 7  # how many earlier periods it compares with
    # Which evidence scores, "+"-joined kinds from EVIDENCE_KINDS (fewer only for ablation).
    evidence: str = "model+memory+seasonal+coarse"

    def __post_init__(self) -> None:
        kinds = self.evidence.split("+")
        if any(k not in EVIDENCE_KINDS for k in kinds) or len(set(kinds)) < len(kinds):
            raise ValueError(f"evidence must be '+'-joined kinds from {', '.join(EVIDENCE_KINDS)}, "
                             f"not {self.evidence!r}")
        if self.season_s < 0 or self.season_periods < 1:
            raise ValueError("need season_s >= 0 and season_periods >= 1")

    @property
    def evidence_kinds(self) -> frozenset[str]:
        return frozenset(self.evidence.split("+"))

    def season_windows(self, interval_s: float) -> int:
        """The season in windows of a series sampled every ``interval_s``; 0 where it has none."""
        if self.season_s <= 0 or interval_s <= 0:
            return 0
        period = round(self.season_s / (interval_s * self.stride))
        return period if period >= MIN_SEASON_WINDOWS else 0


def combined_surprise(*surprises: float) -> float:
    """Fisher's rule for independent tail probabilities, in ``-log10`` units.

    Adding surprises multiplies probabilities, and a product of ``k`` uniform probabilities is
    at most ``x`` with probability ``x * sum(i < k) (-ln x)^i / i!``, so the plain sum would
    overstate rarity.
    """
    total = sum(surprises)
    if len(surprises) == 1:
        return total
    log_x = total * math.log(10.0)
    term, tail = 1.0, 1.0
    for i in range(1, len(surprises)):
        term *= log_x / i
        tail += term
    return total - math.log10(tail)


class SeriesState:
    """Everything one series carries between windows besides its window buffer and spread.

    Each kind of evidence has its own calibrator; the score combines the surprises of the
    kinds that have evidence at this window. A kind whose calibrator is still warming up (a
    new series, or a freshly swapped model's errors), a seasonal comparison with no earlier
    period yet and the coarse memory between block ends are left out rather than counted as
    unsurprising, since Fisher's rule charges for every part it combines: counting them would
    mute a series whenever some of its evidence has not started.
    """

    def __init__(self, series: str, window: int, n_features: int, memory_windows: int,
                 calibration: CalibrationSettings,
                 evidence: frozenset[str] = frozenset(EVIDENCE_KINDS),
                 season_periods: int = 7) -> None:
        self.series = series
        self.evidence = evidence
        self.season_periods = season_periods
        self.memory = WindowMemory(window, n_features, memory_windows)
        # Seeded by the series name, so a replay samples exactly as the daemon did.
        self._seed = zlib.crc32(series.encode())
        self.error = self._error_calibrator(calibration)
        self.novelty = new_calibrator(calibration, self._seed + 1)
        self.seasonal = new_calibrator(
            replace(calibration, history=calibration.seasonal_history), self._seed + 2)
        self.coarse = (CoarseMemory(window, n_features, calibration, self._seed + 3)
                       if "coarse" in evidence else None)
        self.detector = ThresholdDetector(calibration.threshold, calibration.alarm_hold)

    def score(self, window: np.ndarray, scale: np.ndarray, error: float, season: int = 0,
              ) -> tuple[float | None, float]:
        """Fold one raw window ``[W, F]``, its model error and the series' season (in
        windows, 0 for none) in; returns ``(novelty or None while the memory fills, score)``."""
        surprises: list[float | None] = []
        if "model" in self.evidence:
            surprises.append(surprise_then_learn(self.error, math.log(max(error, 1e-12))))
        novelty: float | None = None
        if self.evidence & {"memory", "seasonal"}:
            self.memory.append(window[-1])
        if "memory" in self.evidence:
            distance = self.memory.nearest_distance(window, scale)
            novelty = distance if math.isfinite(distance) else None
            surprises.append(surprise_then_learn(self.novelty, distance))
        if "seasonal" in self.evidence:
            distance = float("nan")
            if season:
                distance = self.memory.seasonal_distance(
                    window, scale, season, self.season_periods,
                    shift=max(1, round(season * SEASON_SHIFT_FRACTION)))
            surprises.append(surprise_then_learn(self.seasonal, distance))
        if self.coarse is not None:
            surprises.append(self.coarse.surprise(window[-1]))
        observed = [s for s in surprises if s is not None]
        if not observed:
            return novelty, 0.0
        return novelty, min(combined_surprise(*observed) / SURPRISE_SCALE, 1.0)

    def adopt(self, calibration: CalibrationSettings) -> None:
        """Serve a new model: its errors need a fresh calibrator; the rest carries over."""
        self.error = self._error_calibrator(calibration)
        self.detector.threshold = calibration.threshold
        self.detector.hold = calibration.alarm_hold

    def _error_calibrator(self, calibration: CalibrationSettings) -> TailCalibrator:
        return new_calibrator(
            replace(calibration, tail_fraction=calibration.error_tail_fraction), self._seed)


def new_calibrator(calibration: CalibrationSettings, seed: int) -> TailCalibrator:
    """A `TailCalibrator` with ``calibration``'s horizons, tail and warm-up."""
    return TailCalibrator(calibration.history, calibration.tail_fraction, calibration.warmup,
                          calibration.longterm, calibration.longterm_min_rate, seed)


def surprise_then_learn(calibrator: TailCalibrator, value: float) -> float | None:
    """``value``'s surprise before ``calibrator`` learns it; None while the calibrator warms up
    and for NaN (evidence that does not exist yet, which is not learnt either)."""
    if not math.isfinite(value):
        return None
    surprise = calibrator.score_one(value) if calibrator.warm else None
    calibrator.learn_one(value)
    return surprise


class CoarseMemory:
    """Novelty at a coarser resolution: the series' means over blocks of `COARSE_BLOCK`
    windows, in a `WindowMemory` of their own, with their own spread and calibration.

    A slow change (a drift, a daily swing that widens, a gradual leak) looks ordinary in every
    window of W points but not in a window of W block means. It has evidence only at each
    block's end (None in between), so it cannot repeat one block's alarm eight times.
    """

    def __init__(self, window: int, n_features: int, calibration: CalibrationSettings,
                 seed: int) -> None:
        self.memory = WindowMemory(window, n_features, COARSE_MEMORY)
        self.scale = SeriesScale(1, n_features, SCALE_FADING_FACTOR)
        # Its points come COARSE_BLOCK times slower, so it warms up on fewer of them.
        self.calibrator = new_calibrator(
            replace(calibration, warmup=max(1, calibration.warmup // 4)), seed)
        self._block_sum = np.zeros(n_features)
        self._block_n = 0

    def surprise(self, newest: np.ndarray) -> float | None:
        """Fold one window's newest point ``[F]`` in; the surprise at a block end, else None."""
        self._block_sum += newest
        self._block_n += 1
        if self._block_n < COARSE_BLOCK:
            return None
        self.memory.append(self._block_sum / COARSE_BLOCK)
        self._block_sum[:] = 0.0
        self._block_n = 0
        window = self.memory.latest()
        if window is None:
            return None
        _, scales = self.scale.normalise_with_scales([""], np.zeros(1, np.int64), window[None])
        return surprise_then_learn(self.calibrator,
                                   self.memory.nearest_distance(window, scales[0]))


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
            season = self.settings.season_windows(self.store.interval(slot))
            novelty, score = state.score(ready.windows[k], scales[k], error, season)
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

        Windows, spread, the memories and their calibrations belong to the input and
        survive; each series' error calibration restarts, because a new model's errors live on
        a different scale (until it has warmed up, the other kinds of evidence score alone).
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
                                self.settings.evidence_kinds, self.settings.season_periods)
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
