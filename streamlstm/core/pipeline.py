"""The pure step shared by `run` and `replay`: points in, scores out. No I/O.

    points --SeriesRegistry--> slots --Router--> pushes (interpolated gaps, ready windows)
      pushes --windows + Spread--> normalised windows --Scorer (one batch)--> errors
      per round (the k-th new value of every series together):
        WindowMemory.push --> distances --Evidence kinds--> raw values
        --CalibratorBank--> surprises --Fisher's rule--> score --AlarmState--> Score

Everything a series has learnt lives in the registry's arrays, so a poll's windows from many
series are processed together with numpy, one round per value of a series, and the model sees
all of a poll's windows in one batch. Within a series everything is updated in event order and
the model sees each window independently, so the scores do not depend on how the stream was cut
into polls: replaying a file gives what the daemon gave live. `snapshot` and `restore` move the
whole state of some series out and back in, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from itertools import repeat
from typing import Any

import numpy as np

from streamlstm.core.calibration import (
    SURPRISE_SCALE,
    AlarmPolicy,
    AlarmState,
    CalibrationSettings,
    CalibratorBank,
    SeriesRules,
    combined_surprise,
)
from streamlstm.core.evidence import (
    KINDS,
    SCALE_FADING_FACTOR,
    CoarseNovelty,
    Evidence,
    ModelError,
    Novelty,
    Round,
    Seasonal,
)
from streamlstm.core.guard import LearningGuard
from streamlstm.core.memory import WindowMemory
from streamlstm.core.records import MAX_VALUE, Point, Score
from streamlstm.core.scoring import Scorer, Spread, centre
from streamlstm.core.snapshot import (
    SNAPSHOT_FORMAT,
    StateLayout,
    StateSnapshot,
    layout_digest,
    row_layout,
)
from streamlstm.core.state import SeriesRegistry
from streamlstm.core.timestamps import MAX_TIMESTAMP, MIN_TIMESTAMP
from streamlstm.core.windows import (
    Pushes,
    Router,
    WindowTails,
    rank_within_groups,
    round_blocks,
)
from streamlstm.model.artifact import Artifact

# Below this many windows a period has no phase worth comparing.
MIN_SEASON_WINDOWS = 4
# Windows judged together at most: the series of a round are independent, and a round's
# temporaries (a [rows, memory capacity] distance matrix, the calibrators' histograms) grow
# with it, to 40 MB at 5000 rows, while past a few hundred rows numpy's per-call cost is paid.
ROUND_ROWS = 512
# With the model beside the rounds, it scores about this many windows at a time; the first
# chunk, whose model time nothing hides, a quarter of it.
OVERLAP_WINDOWS = 512


# Settings that bound or age the state but do not shape it: a snapshot restores across them.
_NOT_STATE = frozenset({"max_series", "idle_evict_s", "max_gap_intervals",
                        "max_new_series_per_poll", "accept_after"})


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
    # Which evidence scores, "+"-joined kinds from KINDS (fewer only for ablation).
    evidence: str = "model+memory+seasonal+coarse"
    # Once every slot is taken, at most this many new series per `process` call may evict
    # series held; the points of further new series are refused ("series_limit"). 0: no cap.
    max_new_series_per_poll: int = 0
    # Guarded learning (`streamlstm.core.guard`): what a series flags is not learnt as
    # normal, until a flagged stretch has lasted this many windows and is accepted as the
    # new normal (0: no guard, everything is learnt at once).
    accept_after: int = 300

    def __post_init__(self) -> None:
        kinds = self.evidence.split("+")
        if any(k not in KINDS for k in kinds) or len(set(kinds)) < len(kinds):
            raise ValueError(f"evidence must be '+'-joined kinds from {', '.join(KINDS)}, "
                             f"not {self.evidence!r}")
        if self.season_s < 0 or self.season_periods < 1:
            raise ValueError("need season_s >= 0 and season_periods >= 1")
        if self.stride < 1:
            raise ValueError("stride must be at least 1")
        if self.accept_after < 0:
            raise ValueError("accept_after must be at least 0")

    @property
    def evidence_kinds(self) -> list[str]:
        """The kinds in their canonical order."""
        chosen = set(self.evidence.split("+"))
        return [k for k in KINDS if k in chosen]

    def season_values(self, interval_s: np.ndarray) -> np.ndarray:
        """The season in values of series sampled every ``interval_s``; 0 where it has none."""
        if self.season_s <= 0:
            return np.zeros(len(interval_s), np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            period = np.where(interval_s > 0, np.rint(self.season_s / interval_s), 0)
        period = np.where(period < 2**40, period, 0).astype(np.int64)
        return np.where(period >= MIN_SEASON_WINDOWS * self.stride, period, 0)


@dataclass
class StepResult:
    """What one `Pipeline.process` call produced."""

    scores: list[Score] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # input position of each score
    late: list[int] = field(default_factory=list)  # input positions of out-of-order points
    # (input position, reason) of points refused before they touched any state, in input
    # order: "bad_value" (not finite, beyond float32 or the wrong number of features),
    # "bad_timestamp", or "series_limit" (a new series past max_new_series_per_poll).
    refused: list[tuple[int, str]] = field(default_factory=list)
    windows: int = 0  # windows scored, warm-up ones included
    scoring_seconds: float = 0.0  # the model's share
    seconds: float = 0.0  # the whole step
    evicted_idle: int = 0
    evicted_capacity: int = 0
    # Flagged stretches that lasted accept_after windows and became their series' new normal.
    changes_accepted: int = 0


@dataclass
class _Verdicts:
    """Per ready window of a segment (`Pipeline._rounds`): what was judged of it."""

    scores: np.ndarray  # [k] calibrated anomaly scores
    thresholds: np.ndarray  # [k] the threshold each was judged by
    flagged: np.ndarray  # [k] at or above its threshold (is_anomaly)
    alarms: np.ndarray  # [k] the first flagged window of an incident
    novelty: np.ndarray  # [k] distance to the nearest remembered window (NaN: none)
    parts: np.ndarray  # [k, kinds] surprises (NaN where a kind is not calibrated yet)
    accepted: np.ndarray  # [k] where a flagged stretch was accepted as the new normal

    @classmethod
    def empty(cls, k: int, kinds: int) -> _Verdicts:
        return cls(np.zeros(k), np.zeros(k), np.zeros(k, bool), np.zeros(k, bool),
                   np.full(k, np.nan), np.full((k, kinds), np.nan), np.zeros(k, bool))


@dataclass(frozen=True)
class ModelSwap:
    """A model ready to serve: built and checked by `Pipeline.prepare_swap`."""

    scorer: Scorer
    calibration: CalibrationSettings
    # The settings of each alarm rule under the new model (`AlarmPolicy.resolve`).
    alarm_rules: tuple[CalibrationSettings, ...] = ()


def calibration_settings(data: object) -> CalibrationSettings:
    """An artifact's ``calibration`` as settings, checked field by field.

    ValueError naming the field for anything but a JSON object of finite numbers (integers
    where the default is one) and values that `CalibrationSettings` accepts: a malformed
    ``meta.json`` is refused here, not by a TypeError deep inside a later poll.
    """
    if not isinstance(data, dict):
        raise ValueError(f"calibration must be an object, not {type(data).__name__}")
    defaults = CalibrationSettings()
    for name, value in data.items():
        if name not in CalibrationSettings.__dataclass_fields__:
            continue
        default = getattr(defaults, name)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            if type(value) is not type(default):
                raise ValueError(f"calibration.{name}: expected {type(default).__name__}, "
                                 f"got {value!r:.40}")
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or (
                isinstance(default, int) and not isinstance(value, int)):
            kind = "an integer" if isinstance(default, int) else "a finite number"
            raise ValueError(f"calibration.{name}: expected {kind}, got {value!r:.40}")
    try:
        settings = CalibrationSettings.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"calibration: {exc}") from exc
    if not 0.0 <= settings.threshold <= 1.0 or settings.alarm_hold < 0:
        raise ValueError("calibration: need 0 <= threshold <= 1 and alarm_hold >= 0")
    return settings


class Pipeline:
    """Scores a stream of points with one model artifact, keeping per-series state."""

    def __init__(self, artifact: Artifact, settings: PipelineSettings | None = None,
                 device: str = "cpu", clock: Callable[[], float] = time.perf_counter,
                 alarms: AlarmPolicy | None = None, backend: str = "auto",
                 overlap: bool = True) -> None:
        """``alarms`` overrides the artifact's threshold, alarm hold and warm-up, globally
        and per series (ValueError if a value does not fit the model's calibration);
        ``backend`` picks the model's inference (`Scorer`), for every model it serves;
        ``overlap`` runs the model in a thread of its own beside the rounds (`_rounds`; the
        scores are the same either way)."""
        self.settings = settings or PipelineSettings()
        self.alarm_policy = alarms or AlarmPolicy()
        self._clock = clock
        self.backend = backend
        self.overlap = overlap
        self._executor: ThreadPoolExecutor | None = None
        self.scorer = Scorer(artifact, device=device, backend=backend)
        self.reset_state()

    @property
    def artifact(self) -> Artifact:
        return self.scorer.artifact

    @property
    def model_version(self) -> str:
        return self.artifact.version

    @property
    def window(self) -> int:
        return self.artifact.architecture.window

    def reset_state(self) -> None:
        """Forget every series (windows, spread, memory, calibration)."""
        settings = self.settings
        arch = self.artifact.architecture
        w, f = arch.window, arch.n_features
        self.calibration = calibration_settings(self.artifact.calibration)
        rules = self.alarm_policy.resolve(self.calibration)
        self.registry = SeriesRegistry(settings.max_series, settings.idle_evict_s)
        self.rules = SeriesRules(self.registry, [o.series for o in self.alarm_policy.overrides])
        self.router = Router(self.registry, w, f, settings.stride, settings.max_gap_intervals)
        self.tails = WindowTails(self.registry, w, f)
        known = self.artifact.normalisation.get("series_scale", {})
        self.spread = Spread(self.registry, "spread", f, SCALE_FADING_FACTOR, known=known)
        kinds = settings.evidence_kinds
        remembers = "memory" in kinds or "seasonal" in kinds
        self.memory = (WindowMemory(self.registry, "memory", w, f, settings.memory_windows)
                       if remembers else None)
        builders: dict[str, Callable[[], Evidence]] = {
            "model": ModelError,
            "memory": Novelty,
            "seasonal": lambda: Seasonal(settings.season_periods),
            "coarse": lambda: CoarseNovelty(self.registry, w, f),
        }
        self.evidence = [builders[k]() for k in kinds]
        # The coarse memory is not guarded (see `streamlstm.core.guard`).
        guarded = [(self.memory, 0)] if self.memory is not None else []
        self.guard = LearningGuard(self.registry, guarded, settings.accept_after, quiet_after=w)
        self.bank = CalibratorBank(self.registry,
                                   [e.calibration(rules[0]) for e in self.evidence],
                                   rules[0], self.rules)
        self.alarms = AlarmState(self.registry, rules[0].threshold, rules[0].alarm_hold,
                                 self.rules)
        self._apply_rules(rules)
        self._novelty = kinds.index("memory") if "memory" in kinds else None
        # The latest verdict per series, for `inspect` (why was it flagged?); -1 (state holds
        # nothing non-finite): none yet, or that kind not calibrated.
        self.last_score = self.registry.add("last.score", (), np.float32, fill=-1.0)
        self.last_surprise = self.registry.add("last.surprise", (len(kinds),), np.float32,
                                               fill=-1.0)

    def process(self, points: Sequence[Point], now: float,
                warmup: Sequence[bool] | None = None) -> StepResult:
        """Append ``points`` (in stream order) and score every window that became ready.

        ``now`` is the clock used for idle eviction. Points flagged in ``warmup`` update the
        state (windows, spread, memory, calibration) but produce no Score: they were scored
        before. A point that could poison its series' state (a value not finite or beyond
        float32, a time outside 1970..2262) is refused untouched and listed in ``refused``,
        and so is every point of a new series that would evict a series held beyond
        ``max_new_series_per_poll`` or one that is in this poll (`SeriesRegistry.admit`: a
        flood of names must not wipe the warm series).
        """
        started = self._clock()
        result = StepResult(evicted_idle=self.registry.evict_idle(now))
        result.refused, timestamps, values = self._unfit(points)
        cap = self.settings.max_new_series_per_poll
        if cap > 0:
            unfit = {i for i, _ in result.refused}
            fit = [i for i in range(len(points)) if i not in unfit]
            over = self.registry.admit([points[i].series for i in fit], cap)
            if over:
                result.refused = sorted(result.refused
                                        + [(fit[j], "series_limit") for j in over])
        kept: np.ndarray | None = None
        if result.refused:
            refused = {i for i, _ in result.refused}
            kept = np.array([i for i in range(len(points)) if i not in refused], np.int64)
            points = [points[i] for i in kept.tolist()]
            timestamps, values = timestamps[kept], values[kept]
            if warmup is not None:
                warmup = [warmup[i] for i in kept.tolist()]
        names = [p.series for p in points]
        done = 0
        while done < len(points):
            lookup = self.registry.lookup(names[done:], now)
            result.evicted_capacity += lookup.evicted_capacity
            self._segment(points, done, lookup.slots, timestamps, values, warmup, result)
            done += lookup.done
        if kept is not None:  # positions in the points kept -> positions in the input
            result.positions = kept[np.asarray(result.positions, np.int64)].tolist()
            result.late = kept[np.asarray(result.late, np.int64)].tolist()
        result.seconds = self._clock() - started
        return result

    def _unfit(self, points: Sequence[Point],
               ) -> tuple[list[tuple[int, str]], np.ndarray, np.ndarray]:
        """(position, reason) of every point that must not enter per-series state, and the
        points' timestamps ``[n]`` and values ``[n, F]`` (read once, for the segments too)."""
        n, f = len(points), self.artifact.architecture.n_features
        try:
            values = np.array([p.values for p in points], dtype=np.float64).reshape(n, f)
            shaped = np.ones(n, bool)
        except ValueError:  # some point has another number of features
            shaped = np.fromiter((len(p.values) == f for p in points), bool, n)
            values = np.array([p.values if len(p.values) == f else (0.0,) * f for p in points],
                              dtype=np.float64).reshape(n, f)
        fit = shaped & (np.abs(values) <= MAX_VALUE).all(axis=1)  # NaN compares False
        timestamps = np.fromiter((p.timestamp for p in points), np.float64, n)
        timely = (timestamps >= MIN_TIMESTAMP) & (timestamps <= MAX_TIMESTAMP)
        refused = [] if fit.all() and timely.all() else [
            (i, "bad_value" if not fit[i] else "bad_timestamp")
            for i in np.flatnonzero(~(fit & timely)).tolist()]
        return refused, timestamps, values

    def _segment(self, points: Sequence[Point], offset: int, slots: np.ndarray,
                 timestamps: np.ndarray, values: np.ndarray, warmup: Sequence[bool] | None,
                 result: StepResult) -> None:
        """Process ``points[offset : offset + len(slots)]``, whose series own distinct slots
        (``timestamps`` and ``values`` are of all the points)."""
        n = len(slots)
        part = points[offset : offset + n]
        pushes = self.router.route(slots, timestamps[offset : offset + n],
                                   values[offset : offset + n])
        result.late.extend((pushes.late + offset).tolist())
        ready = np.flatnonzero(pushes.ready)
        result.windows += len(ready)
        if len(pushes.slots) == 0:
            return
        windows = self.tails.cut(pushes)
        scales = np.empty((len(ready), windows.shape[2]))
        centred = centre(windows.astype(np.float64))
        r_slots = pushes.slots[ready]
        for block in round_blocks(pushes.seq[ready]):
            scales[block] = self.spread.update(r_slots[block], centred[block].var(axis=1))
        model = _ModelRun(self.scorer, centred, scales, pushes.point[ready], self._clock)
        verdicts = self._rounds(pushes, ready, scales, model)
        result.scoring_seconds += model.seconds
        if verdicts.accepted.any():
            accepted = pushes.point[ready][verdicts.accepted].tolist()
            result.changes_accepted += sum(1 for i in accepted
                                           if warmup is None or not warmup[offset + i])
        # Windows in input order, as the scores come out.
        order = np.argsort(pushes.point[ready], kind="stable")
        self._emit(part, offset, pushes, ready, order, model, verdicts, warmup, result)

    def _rounds(self, pushes: Pushes, ready: np.ndarray, scales: np.ndarray,
                model: _ModelRun) -> _Verdicts:
        """Memory, evidence, calibration, guarded learning and alarms, one round of pushes at
        a time; what was judged of each ready window.

        The model's errors are independent of the rounds (a window and its spread are known
        before them), so with ``overlap`` the model scores the windows of the next rounds in a
        thread while this one works through the current ones: ONNX Runtime and torch release
        the GIL, and the two cost about the same.
        """
        k = len(ready)
        out = _Verdicts.empty(k, len(self.evidence))
        window_of = np.full(len(pushes.slots), -1)
        window_of[ready] = np.arange(k)
        periods = self.settings.season_values(pushes.interval[ready])
        # Only real points enter the memory: interpolated stretches are not what a series did.
        real = np.flatnonzero(pushes.point >= 0)
        # The k-th real points of every series together, ROUND_ROWS at most at a time.
        blocks = [real[b] for b in round_blocks(rank_within_groups(pushes.slots[real]),
                                                ROUND_ROWS)]
        if self.overlap:
            target, first = OVERLAP_WINDOWS, OVERLAP_WINDOWS // 4
            if blocks and len(blocks[0]) > first:  # the rows of a round are independent
                blocks[:1] = [blocks[0][:first], blocks[0][first:]]
        else:
            target = first = k + 1  # one chunk
        chunks = model_chunks([window_of[b] for b in blocks], target, first)
        thread = self._model_thread() if len(chunks) > 1 else None
        with closing(model.ahead(chunks, thread)) as scored:
            for start, end in scored:
                for block in blocks[start:end]:
                    self._round(pushes, block, window_of[block], periods, scales, model, out)
        return out

    def _round(self, pushes: Pushes, block: np.ndarray, at: np.ndarray, periods: np.ndarray,
               scales: np.ndarray, model: _ModelRun, out: _Verdicts) -> None:
        """One block of a round: the pushes ``block``, ``at`` the ready window of each (-1:
        none), their errors already in ``model``."""
        slots = pushes.slots[block]
        held = (self.memory.push(slots, pushes.values[block])
                if self.memory is not None else None)
        here = at >= 0
        if not here.any():
            return
        at = at[here]
        rnd = Round(slots=slots[here], newest=pushes.values[block][here], scale=scales[at],
                    errors=model.errors[at], periods=periods[at], memory=self.memory,
                    held=None if held is None else held[here])
        raw = np.stack([e.measure(rnd) for e in self.evidence], axis=1)
        # Scored, judged, then learnt at the weight the guard gives what was flagged.
        surprise, pending = self.bank.score(rnd.slots, raw)
        score = np.minimum(combined_surprise(surprise) / SURPRISE_SCALE, 1.0)
        threshold = self.alarms.threshold_of(rnd.slots)
        weight, out.accepted[at] = self.guard.step(rnd.slots, score, threshold)
        self.bank.learn(pending, weight)
        out.scores[at] = score
        out.thresholds[at] = threshold
        out.parts[at] = surprise
        self.last_score[rnd.slots] = score
        self.last_surprise[rnd.slots] = np.where(np.isnan(surprise), -1.0, surprise)
        out.alarms[at] = self.alarms.check(rnd.slots, score)
        out.flagged[at] = score >= threshold
        if self._novelty is not None:
            out.novelty[at] = raw[:, self._novelty]

    def _model_thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="streamlstm-model")
        return self._executor

    def close(self) -> None:
        """Stop the model's thread (if one was started); the pipeline starts another when
        it needs one."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _emit(self, part: Sequence[Point], offset: int, pushes: Pushes, ready: np.ndarray,
              order: np.ndarray, model: _ModelRun, verdicts: _Verdicts,
              warmup: Sequence[bool] | None, result: StepResult) -> None:
        """One Score per ready window, in input order (``order``), but for warm-up points."""
        positions = pushes.point[ready][order]  # each window's point in ``part``
        if warmup is not None:
            live = ~np.asarray(warmup[offset : offset + len(part)], bool)[positions]
            order, positions = order[live], positions[live]
        if not len(order):
            return
        points = [part[i] for i in positions.tolist()]
        novelty = verdicts.novelty[order]
        known = np.isfinite(novelty)
        novelties = (novelty.tolist() if known.all() else
                     [v if ok else None for v, ok in zip(novelty.tolist(), known.tolist(),
                                                         strict=True)])
        features = self.artifact.feature_names
        top_of: Iterable[str | None] = ([features[t] for t in model.tops[order].tolist()]
                                        if len(features) > 1 else repeat(None))
        per_feature: Iterable[tuple[float, ...] | None] = (
            map(tuple, model.feature_errors[order].tolist())
            if model.feature_errors is not None else repeat(None))
        result.positions.extend((positions + offset).tolist())
        # Columns to Score objects without a Python loop per window: Score's fields in order.
        result.scores.extend(map(
            Score, [p.series for p in points], [p.timestamp for p in points],
            [p.values for p in points], model.errors[order].tolist(),
            verdicts.scores[order].tolist(), verdicts.thresholds[order].tolist(),
            verdicts.flagged[order].tolist(), repeat(self.model_version), novelties,
            self._evidence(verdicts.parts[order]), top_of, per_feature,
            verdicts.alarms[order].tolist()))

    def _evidence(self, parts: np.ndarray) -> list[dict[str, float]]:
        """Each window's surprise per calibrated kind (rounded), as ``Score.evidence``."""
        kinds = self.settings.evidence_kinds
        rounded = np.round(parts, 3)
        known = ~np.isnan(rounded)
        if known.all():
            return list(map(dict, map(zip, repeat(kinds), rounded.tolist())))
        # A kind still warming up (NaN) is left out: rows grouped by which kinds they have.
        out: list[dict[str, float]] = [{}] * len(rounded)
        pattern = known @ (1 << np.arange(len(kinds)))
        for which in np.unique(pattern).tolist():
            rows = np.flatnonzero(pattern == which)
            columns = [k for k in range(len(kinds)) if which >> k & 1]
            names = [kinds[k] for k in columns]
            values = rounded[rows][:, columns].tolist()
            for row, evidence in zip(rows.tolist(), map(dict, map(zip, repeat(names), values)),
                                     strict=True):
                out[row] = evidence
        return out

    # ---- model swaps and snapshots ----

    def prepare_swap(self, artifact: Artifact, device: str = "cpu") -> ModelSwap:
        """Build and check everything serving ``artifact`` needs, changing nothing here.

        Raises ValueError (or whatever building the model raises) for an artifact that does
        not fit; `apply_swap` of what it returns cannot fail, so a refused model never leaves
        the pipeline half-swapped.
        """
        calibration = calibration_settings(artifact.calibration)
        new_scorer = Scorer(artifact, device=device, backend=self.backend)
        same_shape = (new_scorer.window == self.scorer.window
                      and new_scorer.n_features == self.scorer.n_features)
        if not same_shape:
            raise ValueError("swap_model needs the same window and features; "
                             "restart the pipeline for a different shape")
        # The new model's calibration is the default; the alarm policy overrides it.
        rules = tuple(self.alarm_policy.resolve(calibration))
        return ModelSwap(new_scorer, calibration, rules)

    def swap_model(self, artifact: Artifact, device: str = "cpu") -> None:
        """Serve ``artifact`` from the next `process` call on (`prepare_swap`, `apply_swap`)."""
        self.apply_swap(self.prepare_swap(artifact, device))

    def apply_swap(self, swap: ModelSwap) -> None:
        """Serve the prepared model from the next `process` call on; only assignments.

        Windows, spread, the memories and their calibrations belong to the input and
        survive; each series' error calibration restarts, because a new model's errors live on
        a different scale (until it has warmed up, the other kinds of evidence score alone).
        """
        self.scorer = swap.scorer
        self.calibration = swap.calibration
        if "model" in self.settings.evidence_kinds:
            self.bank.reset_kind("model")
        self._apply_rules(list(swap.alarm_rules)
                          or self.alarm_policy.resolve(self.calibration))

    @property
    def threshold(self) -> float:
        """The global threshold in force (the series that match no override)."""
        return self.alarms.threshold

    def alarm_rule(self, series: str) -> tuple[float, int]:
        """``(threshold, alarm_hold)`` in force for a series named ``series`` (held or not)."""
        number = self.rules.match(series)
        return (float(self.alarms.thresholds[number]), int(self.alarms.holds[number]))

    def set_alarms(self, policy: AlarmPolicy) -> None:
        """Apply another alarm policy from the next `process` call on; every series held is
        matched again. ValueError, changing nothing, if it does not fit the calibration."""
        rules = policy.resolve(self.calibration)
        self.alarm_policy = policy
        self.rules.compile([o.series for o in policy.overrides])
        self.rules.assign(self.registry.slots(), self.registry.series())
        self._apply_rules(rules)

    def _apply_rules(self, rules: Sequence[CalibrationSettings]) -> None:
        """Each rule's threshold, hold and (per kind of evidence) warm-up."""
        self.alarms.set_rules([r.threshold for r in rules], [r.alarm_hold for r in rules])
        self.bank.set_warmups([[e.calibration(r).warmup for e in self.evidence]
                               for r in rules])

    def inspect(self, series: str) -> dict[str, Any] | None:
        """What the pipeline holds for ``series`` (None when it holds nothing): how far its
        window and each kind's calibration are, and its latest score with its parts."""
        slot = self.registry.slot_of(series)
        if slot is None:
            return None
        kinds = self.settings.evidence_kinds
        warmups = self.bank.warmups_of(np.array([slot]))[0].tolist()
        last = float(self.last_score[slot])
        return {
            "series": series,
            "last_timestamp": float(self.router.last_ts[slot]),
            "window": {"points": int(min(self.router.count[slot], self.window)),
                       "needed": self.window},
            "calibration": {kind: {"learnt": int(self.bank.n[slot, k]), "warmup": warmups[k],
                                   "warm": int(self.bank.n[slot, k]) >= warmups[k]}
                            for k, kind in enumerate(kinds)},
            "threshold": float(self.alarms.threshold_of(np.array([slot]))[0]),
            "last_score": None if last < 0 else round(last, 4),
            "last_evidence": {kind: round(float(v), 3) for kind, v in
                              zip(kinds, self.last_surprise[slot].tolist(), strict=True)
                              if v >= 0},
        }

    def warming(self) -> int:
        """How many series held cannot alarm yet: no kind of evidence has finished its
        calibration warm-up (after a restart without a checkpoint, every series). The slower
        kinds (coarse, seasonal) join later, each when its own warm-up is done."""
        slots = self.registry.slots()
        return int((~self.bank.warm(slots).any(axis=1)).sum()) if len(slots) else 0

    def _layout(self) -> dict[str, Any]:
        arch = self.artifact.architecture
        shaping = {k: v for k, v in asdict(self.settings).items() if k not in _NOT_STATE}
        return {"format": SNAPSHOT_FORMAT, "window": arch.window,
                "n_features": arch.n_features, "settings": shaping}

    def state_layout(self) -> StateLayout:
        """What a snapshot must match to be restored here."""
        meta, rows = self._layout(), row_layout(self.registry.arrays)
        return StateLayout(meta, rows, layout_digest(meta, rows))

    def forget(self, series: Sequence[str]) -> None:
        """Drop the state of ``series`` (e.g. of a partition handed to another consumer)."""
        for name in series:
            self.registry.forget(name)

    def snapshot(self, series: Sequence[str] | None = None) -> StateSnapshot:
        """The complete state of ``series`` (default: every series held)."""
        names, arrays = self.registry.snapshot(series)
        meta = {**self._layout(), "model_version": self.model_version,
                "calibration": self.calibration.to_dict()}
        return StateSnapshot(meta, names, arrays)

    def restore(self, snapshot: StateSnapshot) -> int:
        """Bring back the series of ``snapshot``; returns how many. ValueError if it was taken
        with another window, features, format or settings. Taken under another model, the
        error calibration of those series restarts, as after a hot reload."""
        layout = self._layout()
        for key, wanted in layout.items():
            got = snapshot.meta.get(key)
            if got != wanted:
                raise ValueError(f"snapshot {key} is {got!r}, this pipeline needs {wanted!r}")
        slots = self.registry.restore(snapshot.series, snapshot.arrays)
        self.rules.assign(slots, snapshot.series)  # matched under the alarm settings in force
        if (snapshot.meta.get("model_version") != self.model_version
                and "model" in self.settings.evidence_kinds):
            self.bank.reset_kind_of(slots, "model")
        return len(slots)


@dataclass(frozen=True)
class ModelChunk:
    """Consecutive round blocks ``first:end`` whose ready windows (``windows``) the model
    scores in one call."""

    first: int
    end: int
    windows: np.ndarray


def model_chunks(ready_of_blocks: Sequence[np.ndarray], target: int,
                 first: int) -> list[ModelChunk]:
    """Blocks grouped in order so that each group holds at least ``target`` ready windows
    (the last what is left), the first group at least ``first``; ``ready_of_blocks`` holds
    each block's window indices (-1: the push readies none)."""
    chunks: list[ModelChunk] = []
    start, held = 0, 0
    for b, at in enumerate(ready_of_blocks):
        held += int((at >= 0).sum())
        if held >= (target if chunks else first) or b == len(ready_of_blocks) - 1:
            windows = np.concatenate([a[a >= 0] for a in ready_of_blocks[start : b + 1]])
            chunks.append(ModelChunk(start, b + 1, windows))
            start, held = b + 1, 0
    return chunks


class _ModelRun:
    """The model's errors for a segment's ready windows, scored a chunk at a time, maybe in
    another thread: each chunk writes its own rows only and the rounds read a chunk's rows
    once it is scored."""

    def __init__(self, scorer: Scorer, centred: np.ndarray, scales: np.ndarray,
                 positions: np.ndarray, clock: Callable[[], float]) -> None:
        self._scorer, self._centred, self._scales = scorer, centred, scales
        self._positions, self._clock = positions, clock
        k, n_features = len(centred), centred.shape[2]
        self.errors = np.empty(k)
        self.tops = np.zeros(k, np.int64)  # the feature reconstructed worst
        self.feature_errors = np.empty((k, n_features)) if n_features > 1 else None
        self.seconds = 0.0

    def score(self, at: np.ndarray) -> None:
        """Score the windows ``at``."""
        if not len(at):
            return
        started = self._clock()
        # In input order, whatever slots the series hold: a restored pipeline scores bit for
        # bit as the one that never stopped even where a batch rounds by position.
        at = at[np.argsort(self._positions[at], kind="stable")]
        normalised = (self._centred[at] / self._scales[at][:, None, :]).astype(np.float32)
        if self.feature_errors is not None:
            per_feature = self._scorer.errors(normalised, per_feature=True)
            self.errors[at] = per_feature.mean(axis=1)
            self.tops[at] = per_feature.argmax(axis=1)
            self.feature_errors[at] = per_feature
        else:
            self.errors[at] = self._scorer.errors(normalised)
        self.seconds += self._clock() - started

    def ahead(self, chunks: Sequence[ModelChunk],
              thread: ThreadPoolExecutor | None) -> Generator[tuple[int, int], None, None]:
        """Each chunk's blocks ``(first, end)`` once its windows are scored, the next chunk's
        scored in ``thread`` meanwhile (None: each in turn, here)."""
        future: Future[None] | None = None
        try:
            for c, chunk in enumerate(chunks):
                if future is None:
                    self.score(chunk.windows)
                else:
                    future.result()
                future = (thread.submit(self.score, chunks[c + 1].windows)
                          if thread is not None and c + 1 < len(chunks) else None)
                yield chunk.first, chunk.end
        finally:
            if future is not None:  # the rounds failed: let the thread finish first
                future.exception()


def score_points(pipeline: Pipeline, points: Sequence[Point],
                 batch_size: int = 4096) -> list[Score | None]:
    """Score ``points`` in batches; one entry per point (None where no window was ready)."""
    out: list[Score | None] = [None] * len(points)
    for start in range(0, len(points), batch_size):
        result = pipeline.process(points[start : start + batch_size], now=0.0)
        for position, score in zip(result.positions, result.scores, strict=True):
            out[start + position] = score
    return out
