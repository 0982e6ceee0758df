"""NAB-style evaluation of anomaly scores against labelled anomaly windows.

This is a reimplementation of the Numenta Anomaly Benchmark (NAB) scoring rules, written from
their published description, with window precision/recall/F1 and plots alongside.

The rules, for one file of ``n`` rows with labelled windows (each a run of consecutive rows):

* A *detection* is a row whose ``anomaly_score >= threshold`` (a flagged row) with no flagged
  row among the ``hold`` rows before it: the first row of an incident, which lasts while
  flagged rows come at most ``hold`` rows apart (the daemon's alarm,
  `streamlstm.core.calibration.alarm_rows`, which is what ``evaluate`` scores; with
  ``hold = 0`` it is every flagged row, ``detections_at``). A flagged row that is no detection
  still extends the incident. The hold runs through probation too: a flagged row there is not
  scored, but it still silences the rows after it, as it would in the daemon. A row whose
  score is NaN (not scored yet, e.g. while a window fills) is never a detection.
* The first ``min(floor(0.15 * n), 750)`` rows are the *probation* period: detections there are
  ignored, and a window with no row after probation is neither credited nor penalised.
* A window's credit comes from its earliest detection only, at row ``i`` of a window spanning
  rows ``left..right`` (width ``w = right - left + 1``): relative position
  ``y = -(right - i + 1) / w`` (``-1`` at the left edge, ``-1/w`` at the right edge), and
  credit ``A_TP * sigma(y) / sigma(-1)`` with the scaled sigmoid
  ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` (``-1`` when ``y >= 3``). Dividing by ``sigma(-1)``
  (= 0.98661) makes a detection at the left edge worth exactly ``A_TP``; at the right edge it
  is worth about ``A_TP * 2.5 / w``.
* Every detection outside all windows costs ``A_FP * sigma(y)`` (``sigma`` is negative there)
  with ``y = (i - right_prev) / (w_prev - 1)`` relative to the closest preceding window; one
  right after a window costs little, one three window-widths or more after it, or before the
  first window, costs the full ``A_FP``.
* A window with no detection costs ``A_FN``.
* Corpus score: the raw scores of all files are summed and normalised,
  ``100 * (raw - null) / (perfect - null)``, where *null* is a detector that never fires
  (``-A_FN`` per window) and *perfect* earns ``A_TP`` per window (a detection at each
  window's left edge, nothing else).
* The threshold is optimised once over the whole corpus, per profile. Without a hold this is an
  exact sweep over every distinct score (every threshold that changes the set of detections).
  With a hold, lowering the threshold can remove detections as well as add them (a newly
  flagged row can start an incident earlier), but a row is a detection exactly for the
  thresholds in ``(gap, score]``, ``gap`` being the highest score among the ``hold`` rows before
  it, so the outcome changes only at scores: every distinct score is tried, all together
  (``_HoldSweep``), and this is exact too.

Where this differs from NAB's code, by choice: *perfect* counts the windows that have rows after
probation (NAB counts every labelled window; on nab-dev no window lies within probation, so the
two agree); windows are placed on rows by timestamp without requiring an exact match; a one-row
window would make NAB divide by zero, so the FP distance divides by at least 1.

Everything here is pure computation except ``load_windows`` (reads labels), ``plot_series`` and
``EvaluationReport.write_json`` (write what they are asked to).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamlstm.core.calibration import alarm_rows
from streamlstm.errors import StreamlstmError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

PROBATION_FRACTION = 0.15
# NAB caps probation at probationPercent * 5000 rows, i.e. 750 for the default 15%.
PROBATION_MAX_ROWS = 750
# A threshold above every valid score: the detector never fires. NAB's sweep starts here too.
NEVER_FIRE = 1.1
@dataclass(frozen=True)
class Profile:
    """NAB application profile: weights of a true positive, a false positive, a false negative."""

    tp: float
    fp: float
    fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_fp": Profile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_fn": Profile(tp=1.0, fp=0.11, fn=2.0),
}


def timestamp_to_epoch(text: str) -> float:
    """``"2014-04-10 07:15:00[.ffffff]"`` (UTC when no offset is given) to epoch seconds."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class LabelsError(StreamlstmError, ValueError):
    """A labels file (NAB ``windows.json``) is missing, not JSON or not file -> windows."""


def load_windows(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Read a NAB ``windows.json``: file key (``"CATEGORY/NAME.csv"``) to its windows.

    Each window is ``(start, end)`` in epoch seconds (UTC), both ends inclusive, sorted by start.
    Every problem raises :class:`LabelsError` with a one-line message naming the file.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read the labels: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise LabelsError(f"{path}: expected a JSON object of file -> windows")
    windows: dict[str, list[tuple[float, float]]] = {}
    for key, pairs in raw.items():
        if not isinstance(pairs, list):
            raise LabelsError(f"{path}: {key}: expected a list of [start, end] windows")
        parsed = []
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise LabelsError(f"{path}: {key}: a window needs [start, end], got {pair!r}")
            try:
                start, end = timestamp_to_epoch(pair[0]), timestamp_to_epoch(pair[1])
            except (TypeError, ValueError, AttributeError) as exc:
                raise LabelsError(f"{path}: {key}: bad window time in {pair!r}") from exc
            if end < start:
                raise LabelsError(f"{path}: {key}: window ends before it starts: {pair!r}")
            parsed.append((start, end))
        windows[key] = sorted(parsed)
    return windows


@dataclass(frozen=True, eq=False)
class ScoredSeries:
    """One labelled series with the detector's scores, row-aligned.

    ``timestamps`` are epoch seconds (float64) in file order; ``scores`` are
    ``anomaly_score`` values in ``[0, 1]``, NaN for rows that were not scored; ``windows`` are
    ``(start, end)`` epoch seconds, inclusive. The arrays are converted to float64 on creation.

    As in NAB, scoring goes by row position, and timestamps only place the windows: real NAB
    files are not strictly increasing (a few repeat a timestamp, one repeats an hour).
    """

    name: str
    timestamps: np.ndarray
    values: np.ndarray
    scores: np.ndarray
    windows: list[tuple[float, float]]

    def __post_init__(self) -> None:
        timestamps = np.asarray(self.timestamps, dtype=np.float64)
        values = np.asarray(self.values, dtype=np.float64)
        scores = np.asarray(self.scores, dtype=np.float64)
        if timestamps.ndim != 1 or not values.shape == scores.shape == timestamps.shape:
            raise ValueError(
                f"{self.name}: timestamps, values and scores must be 1-D and of one length, "
                f"got shapes {timestamps.shape}, {values.shape}, {scores.shape}"
            )
        if not np.all(np.isfinite(timestamps)):
            raise ValueError(f"{self.name}: timestamps must be finite")
        scored = scores[~np.isnan(scores)]
        if scored.size and (scored.min() < 0.0 or scored.max() > 1.0):
            raise ValueError(f"{self.name}: anomaly scores must lie in [0, 1]")
        object.__setattr__(self, "timestamps", timestamps)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "windows", sorted((float(a), float(b)) for a, b in self.windows))


def detections_at(scores: npt.ArrayLike, threshold: float) -> BoolArray:
    """NAB's detections: rows whose ``anomaly_score >= threshold`` (NaN is never a detection).

    This is the alarm rule without a hold; ``alarm_rows(scores, threshold, hold)`` (from
    `streamlstm.core.calibration`) is the daemon's rule with one, and equals this for ``hold = 0``.
    """
    return alarm_rows(scores, threshold)


def probation_rows(n_rows: int) -> int:
    """Length of the probation period of a file of ``n_rows`` rows (NAB: 15%, at most 750)."""
    return min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_MAX_ROWS)


def _scaled_sigmoid(position: FloatArray) -> FloatArray:
    """NAB's ``2 / (1 + exp(5 y)) - 1``, exactly ``-1`` from ``y >= 3`` on."""
    clipped = np.minimum(position, 3.0)
    return np.where(position >= 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * clipped)) - 1.0)


_MAX_TP = float(_scaled_sigmoid(np.array([-1.0]))[0])


@dataclass(frozen=True, eq=False)
class _Layout:
    """Where a file's rows stand relative to its windows; independent of scores and profile."""

    n_rows: int
    probation: int
    bounds: IntArray  # [K, 2] first and last row of each window that holds rows
    window_of_row: IntArray  # index into bounds, -1 outside every window
    # Per row, the sigmoid factor before the profile weight: the TP credit in (0, 1] inside a
    # window (already divided by sigma(-1)), the FP factor in [-1, 0) outside.
    factor: FloatArray

    @property
    def scored_windows(self) -> BoolArray:
        """Windows with at least one row after probation: the ones that earn or cost."""
        return np.asarray(self.bounds[:, 1] >= self.probation, dtype=np.bool_)


def _window_rows(ts: FloatArray, start: float, end: float) -> tuple[int, int]:
    """First and last row of a window; ``right < left`` when no row falls inside.

    The window opens at the first row at or after ``start`` and closes at the first later row
    at ``end`` (or just before one beyond it). On NAB's files, whose window edges are row
    timestamps, that is the rows NAB itself scores, even where timestamps repeat.
    """
    opened = np.flatnonzero(ts >= start)
    if opened.size == 0:
        return 0, -1
    left = int(opened[0])
    beyond = np.flatnonzero(ts[left:] >= end)
    if beyond.size == 0:
        return left, ts.size - 1
    right = left + int(beyond[0])
    return left, right if ts[right] == end else right - 1


def _layout(series: ScoredSeries) -> _Layout:
    ts = series.timestamps
    n = ts.size
    rows = np.arange(n)
    bounds_list: list[tuple[int, int]] = []
    for start, end in series.windows:
        left, right = _window_rows(ts, start, end)
        if right < left:
            continue  # no row falls inside: nothing can be detected or missed there
        if bounds_list and left <= bounds_list[-1][1]:
            raise ValueError(f"{series.name}: labelled windows overlap")
        bounds_list.append((left, right))
    bounds = np.array(bounds_list, dtype=np.int64).reshape(-1, 2)

    window_of_row = np.full(n, -1, dtype=np.int64)
    for k, (left, right) in enumerate(bounds):
        window_of_row[left : right + 1] = k
    inside = window_of_row >= 0
    widths = (bounds[:, 1] - bounds[:, 0] + 1).astype(np.float64)

    position = np.full(n, 3.0)
    k_in = window_of_row[inside]
    position[inside] = -(bounds[k_in, 1] - rows[inside] + 1) / widths[k_in]
    # Outside: relative to the closest window that ended before the row; none -> full FP cost.
    prev = np.searchsorted(bounds[:, 1], rows, side="left") - 1
    after = ~inside & (prev >= 0)
    k_prev = prev[after]
    # NAB divides by (width - 1); a one-row window would divide by zero, so floor it at 1.
    position[after] = (rows[after] - bounds[k_prev, 1]) / np.maximum(widths[k_prev] - 1.0, 1.0)

    sigma = _scaled_sigmoid(position)
    factor = np.where(inside, sigma / _MAX_TP, sigma)
    return _Layout(n, probation_rows(n), bounds, window_of_row, factor)


@dataclass(frozen=True)
class FileScore:
    """The NAB outcome of one file under one profile and one set of detections.

    ``tp``: windows detected; ``fp``: detections outside every window; ``fn``: windows missed
    (all after probation). ``null`` and ``perfect`` are the raw scores of a detector that never
    fires and of one that fires exactly at each window's left edge.
    """

    name: str
    raw: float
    tp: int
    fp: int
    fn: int
    null: float
    perfect: float

    @property
    def windows(self) -> int:
        """Windows scored in this file (those with rows after probation)."""
        return self.tp + self.fn


def _raw_score(
    name: str, layout: _Layout, detections: npt.ArrayLike, profile: Profile
) -> FileScore:
    detected = np.asarray(detections, dtype=np.bool_)
    if detected.shape != (layout.n_rows,):
        raise ValueError(f"{name}: {detected.size} detections for {layout.n_rows} rows")
    rows = np.flatnonzero(detected)
    rows = rows[rows >= layout.probation]
    windows = layout.window_of_row[rows]

    outside = rows[windows < 0]
    fp_cost = float(np.sum(profile.fp * layout.factor[outside]))
    # rows is ascending, so the first occurrence of each window is its earliest detection.
    hit_windows, first = np.unique(windows[windows >= 0], return_index=True)
    earliest = rows[windows >= 0][first]
    tp_credit = float(np.sum(profile.tp * layout.factor[earliest]))

    n_windows = int(np.count_nonzero(layout.scored_windows))
    fn = n_windows - hit_windows.size
    return FileScore(
        name=name,
        raw=tp_credit + fp_cost - profile.fn * fn,
        tp=int(hit_windows.size),
        fp=int(outside.size),
        fn=int(fn),
        null=-profile.fn * n_windows,
        perfect=profile.tp * n_windows,
    )


def nab_raw_score(series: ScoredSeries, detections: npt.ArrayLike, profile: Profile) -> FileScore:
    """Score one file's boolean ``detections`` (one per row) under ``profile`` by NAB's rules."""
    return _raw_score(series.name, _layout(series), detections, profile)


def _sweep(
    series_list: Sequence[ScoredSeries],
    layouts: Sequence[_Layout],
    profile: Profile,
    candidates: FloatArray,
) -> FloatArray:
    """Corpus raw score at each candidate threshold, all at once.

    Lowering the threshold admits rows in order of decreasing score. Each admitted row changes
    the corpus score by a fixed amount: its FP cost outside windows; inside a window, how much
    it raises the window's best credit so far (from ``-A_FN`` when it is the first). Credit
    falls with position, so a window's best credit is its earliest detection's, as NAB's rules
    want. The score at a threshold is then the null score plus a prefix sum of those changes.
    """
    row_scores: list[FloatArray] = []
    deltas: list[FloatArray] = []
    null = 0.0
    for series, layout in zip(series_list, layouts, strict=True):
        live = np.arange(layout.n_rows) >= layout.probation
        live &= ~np.isnan(series.scores)
        outside = live & (layout.window_of_row < 0)
        row_scores.append(series.scores[outside])
        deltas.append(profile.fp * layout.factor[outside])
        for k in np.flatnonzero(layout.scored_windows):
            null -= profile.fn
            members = np.flatnonzero(live & (layout.window_of_row == k))
            order = np.argsort(-series.scores[members], kind="stable")
            credit = profile.tp * layout.factor[members[order]]
            best = np.maximum.accumulate(np.concatenate(([-profile.fn], credit)))
            row_scores.append(series.scores[members[order]])
            deltas.append(np.diff(best))

    all_scores = np.concatenate(row_scores) if row_scores else np.empty(0)
    all_deltas = np.concatenate(deltas) if deltas else np.empty(0)
    order = np.argsort(-all_scores, kind="stable")
    descending = all_scores[order]
    prefix = np.concatenate(([0.0], np.cumsum(all_deltas[order])))
    # Rows with score >= t are the first `admitted` of the descending order.
    admitted = np.searchsorted(-descending, -candidates, side="right")
    return np.asarray(null + prefix[admitted], dtype=np.float64)


def optimise_threshold(
    series_list: Sequence[ScoredSeries],
    profile: Profile,
    thresholds: Iterable[float] | None = None,
    hold: int = 0,
) -> tuple[float, float]:
    """The threshold maximising the corpus raw score under ``profile``, and that raw score.

    Detections follow the alarm rule with ``hold`` (see the module docstring). With
    ``thresholds=None`` every distinct score is tried, plus ``NEVER_FIRE``: this is exact, with
    a hold or without. Given ``thresholds``, only
    those candidates are tried. Ties go to the highest threshold (fewest alarms).
    """
    return _optimise(
        series_list, [_layout(s) for s in series_list], profile, thresholds, _check_hold(hold)
    )


def _check_hold(hold: int) -> int:
    if isinstance(hold, bool) or not isinstance(hold, int | np.integer) or hold < 0:
        raise ValueError(f"hold must be a whole number of rows >= 0, got {hold!r}")
    return int(hold)


def _candidate_pool(thresholds: Iterable[float]) -> FloatArray:
    pool = np.asarray(list(thresholds), dtype=np.float64)
    if pool.ndim != 1 or pool.size == 0 or np.isnan(pool).any():
        raise ValueError("thresholds must be a non-empty sequence of numbers")
    return pool


def _optimise(
    series_list: Sequence[ScoredSeries],
    layouts: Sequence[_Layout],
    profile: Profile,
    thresholds: Iterable[float] | None,
    hold: int = 0,
    held: _HoldSweep | None = None,
) -> tuple[float, float]:
    if hold:
        if held is None:
            held = _HoldSweep(series_list, layouts, hold)
        if thresholds is None:
            return held.search(profile)
        return held.best(profile, _candidate_pool(thresholds))
    if thresholds is None:
        distinct = [np.unique(s.scores[~np.isnan(s.scores)]) for s in series_list]
        pool = np.concatenate([np.array([NEVER_FIRE]), *distinct])
    else:
        pool = _candidate_pool(thresholds)
    candidates = np.unique(pool)[::-1]
    raws = _sweep(series_list, layouts, profile, candidates)
    best = int(np.argmax(raws))
    return float(candidates[best]), float(raws[best])


class _HoldSweep:
    """The corpus outcome of the alarm rule with a hold, at many thresholds at once.

    A row is a detection at threshold ``t`` when its score reaches ``t`` and no row among the
    ``hold`` before it (in its file) does, i.e. when ``gap < t <= score`` with ``gap`` the
    highest score of those rows: each row detects over an interval of thresholds that does not
    depend on the other detections. So the false-positive cost at every threshold is a
    difference of two running sums over rows sorted by ``score`` and by ``gap``, and a window's
    credit (from its earliest detection) is found for a block of thresholds at once from a
    ``[thresholds, rows in windows]`` mask.

    What is found is kept as sums that do not depend on the profile (credit and FP factors,
    windows hit), so the three profiles share it; the results are cached by threshold.
    """

    # Thresholds per block of the window mask.
    BLOCK = 64

    def __init__(
        self, series_list: Sequence[ScoredSeries], layouts: Sequence[_Layout], hold: int
    ) -> None:
        self.hold = hold
        scores, gaps, factor, window, live = [], [], [], [], []
        windows_before = 0
        self.n_windows = 0
        for series, layout in zip(series_list, layouts, strict=True):
            file_scores = np.nan_to_num(np.asarray(series.scores, np.float64), nan=-np.inf)
            # gap[i]: the highest score among the hold rows before row i (-inf: none)
            gap = np.full(len(file_scores), -np.inf)
            if hold and len(file_scores):
                padded = np.concatenate((np.full(hold, -np.inf), file_scores))
                gap = np.lib.stride_tricks.sliding_window_view(padded[:-1], hold).max(axis=1)
            scores.append(file_scores)
            gaps.append(gap)
            factor.append(layout.factor)
            window.append(np.where(layout.window_of_row >= 0,
                                   layout.window_of_row + windows_before, -1))
            live.append(np.arange(layout.n_rows) >= layout.probation)
            windows_before += len(layout.bounds)
            self.n_windows += int(np.count_nonzero(layout.scored_windows))
        score = np.concatenate([*scores, np.zeros(0)])
        gap = np.concatenate([*gaps, np.zeros(0)])
        valid = score[np.isfinite(score)]
        # The rows some threshold makes a detection (after probation).
        rows = np.flatnonzero(np.concatenate([*live, np.zeros(0, np.bool_)]) & (score > gap))
        all_factor = np.concatenate([*factor, np.zeros(0)])
        all_window = np.concatenate([*window, np.zeros(0, np.int64)])
        outside = rows[all_window[rows] < 0]
        # cost(t) = sum of factor over outside rows with gap < t <= score
        #         = (sum where score >= t) - (sum where gap >= t), as gap < score there.
        self._by_score = self._running(score[outside], all_factor[outside])
        self._by_gap = self._running(gap[outside], all_factor[outside])
        inside = rows[all_window[rows] >= 0]  # in row order, so a window's rows are together
        self._in_score, self._in_gap = score[inside], gap[inside]
        self._in_factor = all_factor[inside]
        ids = all_window[inside]
        self._group_starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1]))) \
            if ids.size else np.zeros(0, np.int64)
        self._distinct = np.unique(valid)
        # threshold -> (credit factor sum, FP factor sum, windows hit), over the corpus
        self._cache: dict[float, tuple[float, float, int]] = {}

    @staticmethod
    def _running(keys: FloatArray, values: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Sorted ``keys`` and, at each position, the sum of ``values`` from there on."""
        order = np.argsort(keys, kind="stable")
        suffix = np.concatenate((np.cumsum(values[order][::-1])[::-1], [0.0]))
        return keys[order], suffix

    @staticmethod
    def _at_least(running: tuple[FloatArray, FloatArray], t: FloatArray) -> FloatArray:
        keys, suffix = running
        return np.asarray(suffix[np.searchsorted(keys, t, side="left")], np.float64)

    def _walk(self, thresholds: FloatArray) -> None:
        """The outcome at each of ``thresholds``; cached."""
        cost = self._at_least(self._by_score, thresholds) - self._at_least(self._by_gap,
                                                                           thresholds)
        credit = np.zeros(thresholds.size)
        hits = np.zeros(thresholds.size, np.int64)
        n_inside = self._in_score.size
        if n_inside:
            index = np.arange(n_inside)
            ends = np.append(self._group_starts[1:], n_inside)
            for start in range(0, thresholds.size, self.BLOCK):
                t = thresholds[start : start + self.BLOCK, None]
                detects = (self._in_gap < t) & (t <= self._in_score)  # [T, rows in windows]
                first = np.minimum.reduceat(np.where(detects, index, n_inside),
                                            self._group_starts, axis=1)
                found = first < ends
                factor = np.where(found, self._in_factor[np.minimum(first, n_inside - 1)], 0.0)
                credit[start : start + self.BLOCK] = factor.sum(axis=1)
                hits[start : start + self.BLOCK] = found.sum(axis=1)
        for threshold, outcome in zip(thresholds.tolist(), zip(
                credit.tolist(), cost.tolist(), hits.tolist(), strict=True), strict=True):
            self._cache[threshold] = outcome

    def raws(self, profile: Profile, thresholds: FloatArray) -> FloatArray:
        """The corpus raw score under ``profile`` at each of ``thresholds``."""
        todo = np.array([t for t in np.unique(thresholds).tolist() if t not in self._cache])
        if todo.size:
            self._walk(todo.astype(np.float64))
        outcomes = np.array([self._cache[t] for t in thresholds.tolist()]).reshape(-1, 3)
        credit, cost, hits = outcomes.T
        return np.asarray(
            profile.tp * credit + profile.fp * cost - profile.fn * (self.n_windows - hits),
            dtype=np.float64,
        )

    def best(self, profile: Profile, thresholds: FloatArray) -> tuple[float, float]:
        """The best of ``thresholds`` and its raw score; ties go to the highest threshold."""
        candidates = np.unique(thresholds)[::-1]
        raws = self.raws(profile, candidates)
        at = int(np.argmax(raws))
        return float(candidates[at]), float(raws[at])

    def search(self, profile: Profile) -> tuple[float, float]:
        """The optimiser without given thresholds (see ``optimise_threshold``): exact."""
        return self.best(profile, np.append(self._distinct, NEVER_FIRE))


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class WindowMetrics:
    """Window-level detection quality, after probation.

    * ``windows``: labelled windows with rows after probation; ``detected``: those holding at
      least one detection (several detections in one window count once).
    * ``fp``: detections outside every window.
    * ``precision = detected / (detected + fp)`` (NaN with no detection at all);
      ``recall = detected / windows`` (NaN without windows); ``f1`` their harmonic mean
      (NaN if either is NaN, 0 if both are 0).
    """

    windows: int
    detected: int
    fp: int

    @property
    def precision(self) -> float:
        """Detected windows over detected windows plus false positives."""
        return _ratio(self.detected, self.detected + self.fp)

    @property
    def recall(self) -> float:
        """Detected windows over all scored windows."""
        return _ratio(self.detected, self.windows)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r):
            return math.nan
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Counts and ratios, NaN as None."""
        return {
            "windows": self.windows,
            "detected": self.detected,
            "fp": self.fp,
            "precision": _json_float(self.precision),
            "recall": _json_float(self.recall),
            "f1": _json_float(self.f1),
        }


@dataclass(frozen=True)
class ProfileResult:
    """A profile's corpus outcome at its optimised threshold.

    ``score`` is normalised (0 = never fires, 100 = perfect; NaN when the corpus has no scored
    window); ``raw``, ``null`` and ``perfect`` are corpus sums of the file raw scores.
    """

    profile: str
    threshold: float
    score: float
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe fields."""
        return {
            "profile": self.profile,
            "threshold": self.threshold,
            "score": _json_float(self.score),
            "raw": self.raw,
            "null": self.null,
            "perfect": self.perfect,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@dataclass(frozen=True)
class FileResult:
    """One file's row of the report, at the standard profile's threshold.

    ``contribution`` is the file's share of the standard normalised score,
    ``100 * (raw - null) / (corpus perfect - corpus null)``; the shares add up to the score.
    """

    name: str
    rows: int
    probation: int
    detections: int
    metrics: WindowMetrics
    raw: float
    contribution: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe fields."""
        return {
            "name": self.name,
            "rows": self.rows,
            "probation": self.probation,
            "detections": self.detections,
            **self.metrics.to_dict(),
            "standard_raw": self.raw,
            "standard_contribution": _json_float(self.contribution),
        }


@dataclass(frozen=True)
class EvaluationReport:
    """The result of ``evaluate``: per-profile scores, per-file rows and overall window metrics.

    ``hold``: the alarm hold the detections were counted with (rows; 0 = none).
    """

    profiles: Mapping[str, ProfileResult]
    files: tuple[FileResult, ...]
    overall: WindowMetrics
    hold: int = 0

    @property
    def threshold(self) -> float:
        """The standard profile's optimised threshold, at which files and overall are counted."""
        return self.profiles["standard"].threshold

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary (NaN becomes None)."""
        return {
            "threshold": self.threshold,
            "hold": self.hold,
            "profiles": {name: result.to_dict() for name, result in self.profiles.items()},
            "overall": self.overall.to_dict(),
            "files": [row.to_dict() for row in self.files],
        }

    def write_json(self, path: str | Path) -> None:
        """Write ``to_dict()`` as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def format_table(self) -> str:
        """An aligned plain-text table for the terminal: the alarm hold, files, total, profiles."""
        header = (
            "file",
            "rows",
            "windows",
            "detected",
            "FP",
            "precision",
            "recall",
            "F1",
            "raw",
            "contrib",
        )
        lines = [header]
        for row in self.files:
            m = row.metrics
            lines.append(
                (
                    row.name,
                    str(row.rows),
                    str(m.windows),
                    str(m.detected),
                    str(m.fp),
                    _fmt(m.precision),
                    _fmt(m.recall),
                    _fmt(m.f1),
                    f"{row.raw:+.3f}",
                    _fmt(row.contribution, "+.2f"),
                )
            )
        o = self.overall
        standard = self.profiles["standard"]
        lines.append(
            (
                "TOTAL",
                str(sum(r.rows for r in self.files)),
                str(o.windows),
                str(o.detected),
                str(o.fp),
                _fmt(o.precision),
                _fmt(o.recall),
                _fmt(o.f1),
                f"{standard.raw:+.3f}",
                _fmt(standard.score, "+.2f"),
            )
        )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

        def render(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
            return "  ".join((first, *rest))

        rule = "-" * len(render(header))
        hold = f"alarm hold: {self.hold} row{'' if self.hold == 1 else 's'}"
        out = [hold, render(header), rule, *(render(line) for line in lines[1:-1]), rule]
        out.append(render(lines[-1]))
        out.append("")
        name_width = max(len(name) for name in self.profiles)
        for name, result in self.profiles.items():
            out.append(
                f"{name.ljust(name_width)}  score {_fmt(result.score, '6.2f')}  "
                f"threshold {result.threshold:.6g}  TP {result.tp}  FP {result.fp}  "
                f"FN {result.fn}"
            )
        return "\n".join(out)


def _fmt(value: float, spec: str = ".3f") -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def evaluate(
    series_list: Sequence[ScoredSeries],
    thresholds: Iterable[float] | None = None,
    hold: int = 0,
) -> EvaluationReport:
    """Score a corpus by NAB's rules, each profile at its own corpus-wide optimised threshold.

    Detections are the daemon's alarms, ``alarm_rows(scores, threshold, hold)``: after an alarm
    a file stays quiet for ``hold`` rows. ``thresholds``: candidate thresholds for the optimiser;
    ``None`` searches the distinct scores (see ``optimise_threshold``). Pass a single value to
    score at a fixed threshold. File rows and the overall window metrics are counted at the
    standard profile's threshold, with the same hold.
    """
    if not series_list:
        raise ValueError("nothing to evaluate: no series given")
    names = [s.name for s in series_list]
    if len(set(names)) != len(names):
        raise ValueError("series names must be unique")
    hold = _check_hold(hold)
    candidates = None if thresholds is None else list(thresholds)
    layouts = [_layout(s) for s in series_list]
    held = _HoldSweep(series_list, layouts, hold) if hold else None
    alarms: dict[float, list[BoolArray]] = {}  # profiles often share a threshold

    def detections(threshold: float) -> list[BoolArray]:
        if threshold not in alarms:
            alarms[threshold] = [alarm_rows(s.scores, threshold, hold) for s in series_list]
        return alarms[threshold]

    profiles: dict[str, ProfileResult] = {}
    per_file: dict[str, list[FileScore]] = {}
    for profile_name, profile in PROFILES.items():
        threshold, _ = _optimise(series_list, layouts, profile, candidates, hold, held)
        scores = [
            _raw_score(s.name, layout, detected, profile)
            for s, layout, detected in zip(series_list, layouts, detections(threshold), strict=True)
        ]
        raw = sum(f.raw for f in scores)
        null = sum(f.null for f in scores)
        perfect = sum(f.perfect for f in scores)
        span = perfect - null
        profiles[profile_name] = ProfileResult(
            profile=profile_name,
            threshold=threshold,
            score=100.0 * (raw - null) / span if span else math.nan,
            raw=raw,
            null=null,
            perfect=perfect,
            tp=sum(f.tp for f in scores),
            fp=sum(f.fp for f in scores),
            fn=sum(f.fn for f in scores),
        )
        per_file[profile_name] = scores

    standard = profiles["standard"]
    span = standard.perfect - standard.null
    files = []
    for series, layout, fs, detected in zip(
        series_list, layouts, per_file["standard"], detections(standard.threshold), strict=True
    ):
        files.append(
            FileResult(
                name=series.name,
                rows=layout.n_rows,
                probation=layout.probation,
                detections=int(np.count_nonzero(detected[layout.probation :])),
                metrics=WindowMetrics(windows=fs.windows, detected=fs.tp, fp=fs.fp),
                raw=fs.raw,
                contribution=100.0 * (fs.raw - fs.null) / span if span else math.nan,
            )
        )
    overall = WindowMetrics(
        windows=sum(f.metrics.windows for f in files),
        detected=sum(f.metrics.detected for f in files),
        fp=sum(f.metrics.fp for f in files),
    )
    return EvaluationReport(profiles=profiles, files=tuple(files), overall=overall, hold=hold)


def plot_series(
    series: ScoredSeries, detections: npt.ArrayLike, threshold: float, path: str | Path
) -> Path:
    """Draw values (windows shaded, detections in red) over the anomaly score; write a PNG.

    ``detections``: one boolean per row, e.g. ``alarm_rows(series.scores, threshold, hold)``.

    Probation is hatched grey; detections inside it are drawn hollow, as they are not scored.
    Returns ``path``. Uses the Agg canvas directly, so no global pyplot state is touched.
    """
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layout = _layout(series)
    detected = np.asarray(detections, dtype=np.bool_)
    if detected.shape != series.timestamps.shape:
        raise ValueError(f"{series.name}: {detected.size} detections for {layout.n_rows} rows")
    file_score = _raw_score(series.name, layout, detected, PROFILES["standard"])
    times = (series.timestamps * 1e3).astype("datetime64[ms]")
    scored = np.arange(layout.n_rows) >= layout.probation

    fig = Figure(figsize=(14, 6), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})

    for k, (left, right) in enumerate(layout.bounds):
        for ax in (top, bottom):
            ax.axvspan(
                times[left],
                times[right],
                color="tab:orange",
                alpha=0.18,
                lw=0,
                label="labelled window" if k == 0 and ax is top else None,
            )
    if layout.probation:
        end = times[min(layout.probation, layout.n_rows - 1)]
        for ax in (top, bottom):
            ax.axvspan(
                times[0],
                end,
                facecolor="0.85",
                edgecolor="0.6",
                hatch="//",
                alpha=0.5,
                lw=0,
                label="probation (not scored)" if ax is top else None,
            )

    top.plot(times, series.values, color="tab:blue", lw=0.8, label="value")
    live = detected & scored
    ignored = detected & ~scored
    for ax, ys in ((top, series.values), (bottom, series.scores)):
        if live.any():
            ax.vlines(
                times[live],
                0,
                1,
                transform=ax.get_xaxis_transform(),
                color="red",
                alpha=0.25,
                lw=0.8,
            )
        ax.scatter(
            times[live],
            ys[live],
            color="red",
            s=14,
            zorder=3,
            label=f"detection ({int(live.sum())})" if ax is top else None,
        )
        if ignored.any():
            ax.scatter(
                times[ignored],
                ys[ignored],
                facecolors="none",
                edgecolors="0.4",
                s=14,
                zorder=3,
                label=f"in probation, ignored ({int(ignored.sum())})" if ax is top else None,
            )

    bottom.plot(times, series.scores, color="tab:purple", lw=0.8, label="anomaly score")
    if threshold <= 1.0:
        bottom.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    bottom.set_ylim(-0.03, 1.05)

    top.set_ylabel("value")
    bottom.set_ylabel("anomaly score")
    # Outside the axes, so the legends never hide data.
    for ax in (top, bottom):
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, framealpha=0.9)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.005)
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    top.set_title(
        f"{series.name}: {layout.n_rows} rows, {file_score.windows} labelled "
        f"window{'' if file_score.windows == 1 else 's'}, {file_score.tp} detected, "
        f"{file_score.fp} FP (standard raw {file_score.raw:+.3f})",
        fontsize=11,
    )
    out = Path(path)
    fig.savefig(out, dpi=150)
    return out
