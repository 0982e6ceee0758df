"""A table of several value columns scored by a one-feature model: column by column, combined
per row.

A one-feature model (the bundled default) knows nothing of how columns relate, so each column is
scored as a series of its own (``series/column``), all of them in one pipeline and so batched
together, and a row's verdict is its most surprising column's, corrected for the number of
columns: with eight columns, something one window in a thousand is for a single column happens
about eight times in a thousand rows, and a threshold calibrated per window must see it so.

`score_columns` does this for a whole table (``replay``, ``evaluate``); `RowCombiner` for the
rows of a stream, poll by poll (the daemon, where one message carries a row's columns).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamlstm.core.calibration import SURPRISE_SCALE, alarm_rows
from streamlstm.core.pipeline import Pipeline, score_points
from streamlstm.core.records import Point, Score, column_series


def combine_columns(scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` ``[N, K]`` (each column's anomaly score; NaN where it has none):
    the combined score ``[N]`` and the worst column ``[N]`` (-1 where no column has a score).

    The worst column's surprise ``s`` (its score times `SURPRISE_SCALE`) is a probability
    ``p = 10**-s``; the chance that the worst of ``k`` columns is that rare is
    ``1 - (1 - p)**k`` (Šidák), about ``k * p``: so one column keeps its score, and a row of
    ``k`` loses ``log10(k) / SURPRISE_SCALE`` at the top. A row without any score scores 0.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"scores must be [rows, columns], got shape {values.shape}")
    present = np.isfinite(values)
    k = present.sum(axis=1)
    filled = np.where(present, values, -np.inf)
    worst = np.where(k > 0, np.argmax(filled, axis=1) if values.shape[1] else 0, -1)
    top = np.where(k > 0, filled.max(axis=1, initial=-np.inf), 0.0)
    p = 10.0 ** -(np.clip(top, 0.0, 1.0) * SURPRISE_SCALE)
    # 1 - (1 - p)**k, without losing a tiny p to rounding
    p_any = -np.expm1(np.maximum(k, 1) * np.log1p(-np.minimum(p, 1.0 - 1e-16)))
    p_any = np.where(p >= 1.0, 1.0, p_any)
    combined = np.clip(-np.log10(np.maximum(p_any, 1e-300)) / SURPRISE_SCALE, 0.0, 1.0)
    return np.where(k > 0, combined, 0.0) + 0.0, worst.astype(np.int64)  # no -0.0


@dataclass(frozen=True)
class ColumnVerdicts:
    """Every row's verdict over its columns: ``columns[j][i]`` is column ``j``'s score of row
    ``i`` (None before its window is full); ``score``, ``worst``, ``threshold``,
    ``is_anomaly`` and ``alarm`` are the combined verdict per row."""

    columns: list[list[Score | None]]
    score: np.ndarray  # float64 [N]
    worst: np.ndarray  # int64 [N], -1 where no column has a score yet
    threshold: np.ndarray  # float64 [N], the row's series' threshold
    is_anomaly: np.ndarray  # bool [N]
    alarm: np.ndarray  # bool [N]

    def worst_score(self, row: int) -> Score | None:
        """The score of row ``row``'s worst column (None if it has none)."""
        column = int(self.worst[row])
        return self.columns[column][row] if column >= 0 else None


def score_columns(pipeline: Pipeline, series: Sequence[str], timestamps: Sequence[float],
                  values: npt.ArrayLike, names: Sequence[str]) -> ColumnVerdicts:
    """Score the table ``values`` ``[N, K]`` (rows in file order; ``series[i]`` and
    ``timestamps[i]`` name row ``i``, ``names`` the columns) through ``pipeline``, a
    one-feature model's, column by column, and combine each row's columns.

    A row is flagged when its combined score reaches its series' threshold, and ``alarm`` is
    the first flagged row of an incident of a series (`alarm_rows` with its alarm hold): the
    threshold and hold of the pipeline's alarm policy for the series' own name.
    """
    table = np.asarray(values, dtype=np.float64)
    n, k = table.shape
    if pipeline.artifact.architecture.n_features != 1:
        raise ValueError("score_columns needs a one-feature model")
    if len(names) != k or len(series) != n or len(timestamps) != n:
        raise ValueError(f"{n} rows x {k} columns, but {len(series)} series, "
                         f"{len(timestamps)} timestamps and {len(names)} names")
    keys = {s: [column_series(s, c) for c in names] for s in dict.fromkeys(series)}
    stamps = list(timestamps)
    cells = table.tolist()
    points = [Point(key, stamps[i], (cells[i][j],))
              for i in range(n) for j, key in enumerate(keys[series[i]])]
    flat = score_points(pipeline, points)
    columns = [flat[j::k] for j in range(k)]
    raw = np.array([[np.nan if score is None else score.score for score in column]
                    for column in columns], dtype=np.float64).reshape(k, n).T
    combined, worst = combine_columns(raw)
    scored = np.where(worst >= 0, combined, np.nan)  # NaN is never flagged
    threshold = np.zeros(n)
    is_anomaly = np.zeros(n, bool)
    alarm = np.zeros(n, bool)
    row_series = np.asarray(series, dtype=object)
    for name in keys:
        level, hold = pipeline.alarm_rule(name)
        rows = np.flatnonzero(row_series == name)
        threshold[rows] = level
        is_anomaly[rows] = alarm_rows(scored[rows], level)
        alarm[rows] = alarm_rows(scored[rows], level, hold)
    return ColumnVerdicts(columns, combined, worst, threshold, is_anomaly, alarm)


@dataclass(frozen=True, slots=True)
class ColumnRow:
    """One row of a stream: its series, time, column names and values, and each column's
    score (None where that column's window is not full)."""

    series: str
    timestamp: float
    columns: tuple[str, ...]
    values: tuple[float, ...]
    scores: tuple[Score | None, ...]


class RowCombiner:
    """The verdict on each row of columns, for the row's own series, as `score_columns` gives
    it for a table: the combined score (`combine_columns`), flagged at the series' threshold,
    and the alarm rule of `alarm_rows` over the series' rows.

    ``rule_of(series)`` gives ``(threshold, alarm_hold)``. The alarm rule needs, per series,
    the rows since its last flagged one: kept for the ``capacity`` series seen last (one
    forgotten starts afresh, as after a restart, which may page once more for an incident in
    progress).
    """

    def __init__(self, rule_of: Callable[[str], tuple[float, int]],
                 capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.rule_of = rule_of
        self.capacity = capacity
        self._since: OrderedDict[str, int] = OrderedDict()  # -1: no flagged row yet

    def __len__(self) -> int:
        return len(self._since)

    def combine(self, rows: Sequence[ColumnRow]) -> list[Score | None]:
        """The verdict on each of ``rows`` (in stream order), None where no column has a
        score; a row's error, novelty and evidence are its worst column's, ``top_feature``
        names that column and ``feature_errors`` holds each column's error (NaN: none yet)."""
        if not rows:
            return []
        width = max(len(row.scores) for row in rows)
        raw = np.full((len(rows), width), np.nan)
        for i, row in enumerate(rows):
            raw[i, : len(row.scores)] = [np.nan if s is None else s.score for s in row.scores]
        combined, worst = combine_columns(raw)
        out: list[Score | None] = []
        since_of = self._since
        for row, score, column in zip(rows, combined.tolist(), worst.tolist(), strict=True):
            if column < 0:
                out.append(None)
                continue
            threshold, hold = self.rule_of(row.series)
            flagged = score >= threshold
            since = since_of.pop(row.series, -1)
            if since >= 0:
                since += 1
            alarm = flagged and not (0 <= since <= hold)
            since_of[row.series] = 0 if flagged else since
            if len(since_of) > self.capacity:
                since_of.popitem(last=False)
            top = row.scores[column]
            assert top is not None
            out.append(Score(
                series=row.series, timestamp=row.timestamp, values=row.values,
                error=top.error, score=score, threshold=threshold, is_anomaly=flagged,
                model_version=top.model_version, novelty=top.novelty,
                evidence=dict(top.evidence), top_feature=row.columns[column],
                feature_errors=tuple(np.nan if s is None else s.error for s in row.scores),
                alarm=alarm))
        return out
