"""Online calibration: raw evidence becomes a surprise, a score in [0, 1] and an alarm.

Each series calibrates each kind of evidence against its own history. A value's *surprise* is
``-log10 P(X >= x)`` for that series and kind: a surprise of 3 means "one window in a thousand
is like this, for this series", whatever its noise level, so one threshold serves flat and
noisy series alike.

`CalibratorBank` holds, for every slot, kind and horizon, a small histogram with exponential
forgetting, updated for a whole round of series in a few numpy operations (O(1) state per value,
nothing stored per value):

* the bins are a grid over ``g(x)`` (``log`` for the model's errors, the identity for
  distances) fitted to each series' own values: ``BINS`` bins over ``z = (g - centre) / width``
  in ``[Z_LOW, Z_HIGH)``, where centre and width are the running mean and spread of ``g`` at the
  last *re-grid*, plus one bin below and one above (which also keeps the mean ``z`` of what
  fell into it). The grid stays put while the running mean and spread stay near it, and is
  moved (the held mass re-binned onto the new grid) when they drift by more than `REGRID_SHIFT`
  spreads or a factor `REGRID_RATIO`: so the grid resolves each series finely, whatever its
  scale, and a value learnt before a change of level keeps its place;
* two horizons, averaged: a recent one (each value weighs ``max(1/n, 2/history)``: like the
  last ``history`` values) and a long one (``max(1/n, longterm_min_rate/longterm)``: values
  about 20,000 old at the defaults, like a reservoir sample of the whole past renewed at that
  rate), what the series does now and what it has ever done;
* beyond the top ``tail_fraction`` (at least ``MIN_TAIL`` values' worth) the probability is an
  exponential tail fitted to the mean excess over that quantile (peaks over threshold, as in
  Siffer et al., KDD 2017), so surprise keeps growing past anything held.

Following river, the bank scores before it learns (`score_then_learn`) and the alarm rule is a
separate wrapper (`AlarmState`, `alarm_rows`).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from streamlstm.core.state import SeriesRegistry

# anomaly_score = total surprise / SURPRISE_SCALE, clipped to 1: 0.3 is a one-in-a-thousand
# window, 1.0 one in ten billion or rarer.
SURPRISE_SCALE = 10.0
MIN_TAIL = 10
BINS = 64
Z_LOW, Z_HIGH = -4.0, 8.0
# A standardising update sees values clipped to this many spreads, so one wild value cannot
# inflate a series' spread and hide the next one.
Z_CLIP = 8.0
# What is learnt lies within this many spreads: it bounds what one value can do to the tail.
Z_CAP = 32.0
_EDGES = np.linspace(Z_LOW, Z_HIGH, BINS + 1)
_WIDTH = (Z_HIGH - Z_LOW) / BINS
_TINY = 1e-300
MAX_VALUE = 1e30
REGRID_SHIFT = 1.0
REGRID_RATIO = 1.5


@dataclass(frozen=True)
class CalibrationSettings:
    """How evidence becomes scores and alarms; stored with the model artifact."""

    history: int = 1000  # the recent horizon, in values, per series and kind
    longterm: int = 1000  # the long horizon spans longterm / longterm_min_rate values (0: off)
    longterm_min_rate: float = 0.05
    tail_fraction: float = 0.02  # beyond this top fraction the exponential tail takes over
    # The model's errors get a wider tail: fitted on 20 excesses it was noisy enough to raise
    # more false alarms than any other evidence (0.04 to 0.10 measure alike on nab-dev).
    error_tail_fraction: float = 0.05
    # The seasonal distance ranks against a shorter recent history (about four days of
    # 5-minute samples): what the same hour looked like last month matters less.
    seasonal_history: int = 800
    warmup: int = 200  # windows a series must have been scored before it scores above 0
    threshold: float = 0.25  # anomaly_score at or above which a window alarms
    # A new incident (an alarm) starts after this many windows in a row were not flagged.
    alarm_hold: int = 30

    def __post_init__(self) -> None:
        if not 0.0 < self.tail_fraction < 1.0 or not 0.0 < self.error_tail_fraction < 1.0:
            raise ValueError("tail fractions must lie in (0, 1)")
        if self.warmup < 1 or self.history < self.warmup or self.seasonal_history < 1:
            raise ValueError("need 1 <= warmup <= history")
        if self.longterm and self.longterm < self.warmup:
            raise ValueError("longterm must be 0 (off) or at least warmup")
        if not 0.0 <= self.longterm_min_rate <= 1.0:
            raise ValueError("longterm_min_rate must lie in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class KindCalibration:
    """How one kind of evidence is calibrated."""

    name: str
    log_domain: bool  # calibrate log(x): a Pareto tail for errors spread over decades
    tail_fraction: float
    history: int
    warmup: int


def kind_calibration(settings: CalibrationSettings, name: str, log_domain: bool = False,
                     tail_fraction: float | None = None, history: int | None = None,
                     warmup: int | None = None) -> KindCalibration:
    """One kind's calibration: ``settings`` with the given overrides."""
    return KindCalibration(
        name, log_domain,
        settings.tail_fraction if tail_fraction is None else tail_fraction,
        settings.history if history is None else history,
        settings.warmup if warmup is None else warmup)


@dataclass(frozen=True)
class PendingValues:
    """What `CalibratorBank.score` read for a round, for `CalibratorBank.learn`."""

    slots: np.ndarray
    present: np.ndarray  # [n, K] values to learn (finite)
    g: np.ndarray  # [n, K] the values in the calibrated domain
    hist: np.ndarray  # the state read, updated in place by learning
    over: np.ndarray
    grid: np.ndarray
    n: np.ndarray


class CalibratorBank:
    """Per slot and kind, the two-horizon histogram calibrators (see the module docstring)."""

    def __init__(self, registry: SeriesRegistry, kinds: list[KindCalibration],
                 settings: CalibrationSettings, rules: SeriesRules | None = None) -> None:
        self.kinds = kinds
        self.rules = rules
        k = len(kinds)
        horizons = 2 if settings.longterm else 1
        self.horizons = horizons
        # Per kind and horizon: the weight floor of a new value, and the values the tail
        # must at least cover, as a count.
        rates = np.empty((k, horizons))
        sizes = np.empty((k, horizons))
        for i, kind in enumerate(kinds):
            # Weights decaying at 2 / history have the mean age (history / 2) and effective
            # sample size (history) of the last ``history`` values held exactly.
            rates[i, 0], sizes[i, 0] = min(2.0 / kind.history, 1.0), kind.history
            if horizons == 2:
                rates[i, 1] = settings.longterm_min_rate / settings.longterm
                sizes[i, 1] = settings.longterm
        self._rates, self._sizes = rates, sizes
        self._tail = np.array([kind.tail_fraction for kind in kinds])
        # [rules, K]: each kind's warm-up under each rule of `rules` (one row without).
        self._warmup = np.array([[kind.warmup for kind in kinds]])
        self._log = np.array([kind.log_domain for kind in kinds])
        # hist[..., 0] below Z_LOW, [1 : BINS + 1] the bins, [BINS + 1] at or above Z_HIGH.
        self.hist = registry.add("calibration.hist", (k, horizons, BINS + 2), np.float32)
        self.over_mean = registry.add("calibration.over_mean", (k, horizons), np.float32)
        self.mean = registry.add("calibration.mean", (k, horizons), np.float64)
        self.var = registry.add("calibration.var", (k, horizons), np.float64)
        self.grid = registry.add("calibration.grid", (k, horizons, 2), np.float64)  # centre, width
        self.n = registry.add("calibration.n", (k,), np.int64)
        self._state = (self.hist, self.over_mean, self.mean, self.var, self.grid, self.n)

    def index(self, name: str) -> int:
        return [k.name for k in self.kinds].index(name)

    def warm(self, slots: np.ndarray) -> np.ndarray:
        """``[n, K]``: whether each kind of each series has learnt its warm-up."""
        return self.n[slots] >= self._warmup_of(slots)

    def set_warmups(self, table: npt.ArrayLike) -> None:
        """``[rules, K]``: each kind's warm-up under each rule (row 0: the global one)."""
        table = np.array(table, np.int64, ndmin=2)
        if table.shape[1] != len(self.kinds):
            raise ValueError(f"warm-ups for {table.shape[1]} kinds, the bank has {len(self.kinds)}")
        self._warmup = table

    def warmups_of(self, slots: np.ndarray) -> np.ndarray:
        """``[n, K]``: each kind's warm-up for each series (its alarm rule's)."""
        return np.broadcast_to(self._warmup_of(slots), (len(slots), len(self.kinds)))

    def _warmup_of(self, slots: np.ndarray) -> np.ndarray:
        if self.rules is None or len(self._warmup) == 1:
            return self._warmup[0]
        return self._warmup[self.rules.of[slots]]

    def reset_kind(self, name: str, warmup: int | None = None) -> None:
        """Forget one kind everywhere (a swapped model's errors live on another scale)."""
        self.reset_kind_of(slice(None), name)
        if warmup is not None:
            self._warmup[:, self.index(name)] = warmup

    def reset_kind_of(self, slots: np.ndarray | slice, name: str) -> None:
        """Forget one kind for ``slots``."""
        i = self.index(name)
        for array in self._state:
            array[slots, i] = 0

    def score_then_learn(self, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Surprise ``[n, K]`` of each value before it is learnt; NaN where the kind is warming
        up or the value is NaN (no evidence, which is not learnt either)."""
        surprise, pending = self.score(slots, values)
        self.learn(pending)
        return surprise

    def score(self, slots: np.ndarray, values: np.ndarray,
              ) -> tuple[np.ndarray, PendingValues]:
        """`score_then_learn` in two steps: the surprises, and what `learn` needs to learn
        the values afterwards (the state of ``slots`` must not change in between), so that
        the caller can decide from the surprises how much each value weighs."""
        present = np.isfinite(values)
        # Anything beyond MAX_VALUE is as surprising as MAX_VALUE, and keeps the sums finite.
        values = np.minimum(np.where(present, values, 1.0), MAX_VALUE)
        g = np.where(self._log, np.log(np.maximum(values, 1e-12)), values)
        hist = self.hist[slots]  # [n, K, H, B+2] copies, written back after learning
        over = self.over_mean[slots].astype(np.float64)
        grid = self.grid[slots]
        n = self.n[slots]
        surprise = self._surprise(hist.astype(np.float64), over, _standardise(g[..., None], grid),
                                  n)
        surprise = np.where(present & (n >= self._warmup_of(slots)), surprise, np.nan)
        return surprise, PendingValues(slots, present, g, hist, over, grid, n)

    def learn(self, pending: PendingValues, weight: np.ndarray | None = None) -> None:
        """Learn the values `score` scored, each series' at ``weight`` ``[n]`` in [0, 1] times
        its usual weight (None: 1); a value at weight 0 is not learnt at all (nor counted)."""
        p = pending
        present = p.present
        if weight is not None:
            present = present & (weight > 0)[:, None]
        self._learn(p.slots, present, p.g, p.hist, p.over, p.grid, p.n, weight)

    def _surprise(self, hist: np.ndarray, over: np.ndarray, z: np.ndarray,
                  n: np.ndarray) -> np.ndarray:
        """-log10 P(Z >= z), averaged over the horizons: ``[n, K]``."""
        # Upper mass from each bin edge: upper[..., j] = mass in bins j.. (j = 0..B+1).
        upper = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
        total = np.maximum(upper[..., 0], _TINY)
        effective = np.minimum(n[..., None], self._sizes)  # values the horizon stands for
        tail = np.minimum(np.maximum(self._tail[:, None], MIN_TAIL / np.maximum(effective, 1)),
                          1.0) * total
        q = self._quantile(upper, tail)
        body = self._upper_mass(upper, hist, z)
        beyond = z > q
        p = body
        if beyond.any():  # the tail model, only where it is needed (few values are in it)
            rows = np.nonzero(beyond)
            excess = self._mean_excess(hist[rows], over[rows], q[rows], tail[rows])
            p[rows] = tail[rows] * np.exp(np.minimum(-(z[rows] - q[rows]) / excess, 0.0))
        p /= total
        floor = 1.0 / np.maximum(effective, 1)
        p = np.where(beyond, p, np.maximum(p, floor))
        return (-np.log10(np.minimum(np.maximum(p, _TINY), 1.0))).mean(axis=-1)

    @staticmethod
    def _pick(array: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``array[..., index]`` elementwise over the leading axes."""
        rows = array.reshape(-1, array.shape[-1])
        return rows[np.arange(len(rows)), index.ravel()].reshape(index.shape)

    @staticmethod
    def _bin_of(z: np.ndarray) -> np.ndarray:
        inside = np.minimum(np.maximum(z, Z_LOW - _WIDTH), Z_HIGH + _WIDTH)  # castable
        return np.clip(np.floor((inside - Z_LOW) / _WIDTH).astype(np.int64) + 1, 0, BINS + 1)

    def _upper_mass(self, upper: np.ndarray, hist: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Mass at or above ``z``, uniform within a bin; the outer bins count whole."""
        b = self._bin_of(z)
        above = np.where(b == BINS + 1, 0.0, self._pick(upper, np.minimum(b + 1, BINS + 1)))
        own = self._pick(hist, b)
        inner = (b >= 1) & (b <= BINS)
        lo = Z_LOW + (b - 1) * _WIDTH
        frac = np.where(inner, np.minimum(np.maximum(1.0 - (z - lo) / _WIDTH, 0.0), 1.0), 1.0)
        return above + own * frac

    @classmethod
    def _quantile(cls, upper: np.ndarray, tail: np.ndarray) -> np.ndarray:
        """The z above which ``tail`` of the mass lies (linear within a bin)."""
        # The highest bin j whose upper mass (from its lower edge) is still >= tail.
        reach = upper >= tail[..., None]
        j = (BINS + 1) - np.argmax(reach[..., ::-1], axis=-1)  # last True index
        at_j = cls._pick(upper, j)
        nxt = np.where(j == BINS + 1, 0.0, cls._pick(upper, np.minimum(j + 1, BINS + 1)))
        mass = np.maximum(at_j - nxt, _TINY)
        lo = Z_LOW + (j - 1) * _WIDTH
        inside = lo + _WIDTH * np.minimum(np.maximum((at_j - tail) / mass, 0.0), 1.0)
        return np.where(j == 0, Z_LOW, np.where(j == BINS + 1, Z_HIGH, inside))

    @staticmethod
    def _mean_excess(hist: np.ndarray, over: np.ndarray, q: np.ndarray,
                     tail: np.ndarray) -> np.ndarray:
        """Mean of ``z - q`` over the mass above ``q`` (the bins' centres, the top bin's mean)."""
        lo = _EDGES[:-1]
        hi = _EDGES[1:]
        qb = q[..., None]
        # The part of each inner bin above q, and the mean of that part.
        part = np.minimum(np.maximum((hi - qb) / _WIDTH, 0.0), 1.0)
        centre = (np.maximum(lo, qb) + hi) / 2
        inner = hist[..., 1 : BINS + 1]
        excess = (inner * part * (centre - qb)).sum(axis=-1)
        excess += hist[..., BINS + 1] * np.maximum(over - q, 0.0)
        return np.maximum(excess / np.maximum(tail, _TINY), 1e-6)

    def _learn(self, slots: np.ndarray, present: np.ndarray, g: np.ndarray, hist: np.ndarray,
               over: np.ndarray, grid: np.ndarray, n: np.ndarray,
               scale: np.ndarray | None = None) -> None:
        mean, var = self.mean[slots], self.var[slots]
        n_new = n + present
        weight = np.maximum(1.0 / np.maximum(n_new, 1)[..., None], self._rates)  # [n, K, H]
        if scale is not None:
            weight = weight * np.minimum(scale, 1.0)[:, None, None]
        weight = np.where(present[..., None], weight, 0.0)
        first = ((n == 0) & present)[..., None]
        value = g[..., None]
        # The running statistics (a deviation clipped at Z_CLIP spreads; a spread still 0,
        # from constant values so far, follows the first deviation) ...
        sd = np.sqrt(var)
        deviation = value - mean
        deviation = np.where(sd > 0, np.minimum(np.maximum(deviation, -Z_CLIP * sd),
                                                Z_CLIP * sd), deviation)
        mean = np.where(first, value, mean + weight * deviation)
        var = np.where(first, 0.0, (1.0 - weight) * (var + weight * deviation**2))
        sd = np.sqrt(var)
        grid = np.where(first[..., None], np.stack([value, np.zeros_like(value)], -1), grid)
        # ... move the grid when they have drifted from it.
        centre, width = grid[..., 0], grid[..., 1]
        drifted = present[..., None] & (sd > 0) & (
            (width == 0) | (np.abs(mean - centre) > REGRID_SHIFT * width)
            | (sd > REGRID_RATIO * width) | (sd * REGRID_RATIO < width))
        if drifted.any():
            rows = np.flatnonzero(drifted)
            flat_hist = hist.reshape(-1, BINS + 2)
            flat_over = over.reshape(-1)
            flat_grid = grid.reshape(-1, 2)
            new = np.stack([mean.reshape(-1)[rows], sd.reshape(-1)[rows]], axis=1)
            flat_hist[rows], flat_over[rows] = _regrid(
                flat_hist[rows].astype(np.float64), flat_over[rows], flat_grid[rows], new)
            flat_grid[rows] = new
        z = np.minimum(np.maximum(_standardise(value, grid), -Z_CAP), Z_CAP)
        hist *= (1.0 - weight)[..., None].astype(np.float32)
        b = self._bin_of(z)
        rows2 = hist.reshape(-1, BINS + 2)
        rows2[np.arange(len(rows2)), b.ravel()] += weight.ravel().astype(np.float32)
        top = (b == BINS + 1) & (weight > 0)
        if top.any():
            top_mass = hist[..., BINS + 1].astype(np.float64)
            over[top] += (z[top] - over[top]) * weight[top] / top_mass[top]
        self.hist[slots] = hist
        self.over_mean[slots] = over
        self.mean[slots] = mean
        self.var[slots] = var
        self.grid[slots] = grid
        self.n[slots] = n_new


def _standardise(g: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``g`` in units of its grid: 0 at the centre; far out (but finite) for a 0 width."""
    centre, width = grid[..., 0], grid[..., 1]
    offset = g - centre
    return np.where(width > 0, offset / np.where(width > 0, width, 1.0),
                    np.sign(offset) * 4 * Z_CAP)


def _interp_edges(x: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``np.interp(x, _EDGES, inner)`` row by row (``x`` ``[r, m]``, ``inner`` ``[r, B+1]``):
    the edges are evenly spaced, so a value's bin is arithmetic, not a search."""
    at = (np.clip(x, Z_LOW, Z_HIGH) - Z_LOW) / _WIDTH
    i = np.minimum(np.floor(at).astype(np.int64), BINS - 1)
    lo = np.take_along_axis(inner, i, axis=1)
    return lo + (at - i) * (np.take_along_axis(inner, i + 1, axis=1) - lo)


def _regrid(hist: np.ndarray, over: np.ndarray, old: np.ndarray, new: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Move histograms ``[r, B+2]`` from grids ``old`` to ``new`` ``[r, 2]`` (centre, width):
    the mass uniform within each bin, the outer bins' mass at a point (below the grid, and
    ``over``, the mean of what lay above it). Returns the new histograms and ``over``."""
    out = np.empty((len(hist), BINS + 2))
    over_out = np.empty(len(hist))
    point = old[:, 1] <= 0  # everything so far was one value, at the old centre
    if point.any():
        at = (old[point, 0] - new[point, 0]) / new[point, 1]
        moved = np.zeros((len(at), BINS + 2))
        moved[np.arange(len(at)), CalibratorBank._bin_of(at)] = hist[point].sum(axis=1)
        out[point] = moved
        over_out[point] = np.clip(at, -Z_CAP, Z_CAP)
    spread = ~point
    if spread.any():
        h, top, was, now = hist[spread], over[spread], old[spread], new[spread]
        # The new edges, in the old grid's units.
        edges = (now[:, :1] + now[:, 1:] * _EDGES - was[:, :1]) / was[:, 1:]
        inner = np.concatenate([np.zeros((len(h), 1)), np.cumsum(h[:, 1 : BINS + 1], axis=1)],
                               axis=1)
        below_at = Z_LOW - _WIDTH / 2
        cdf = (_interp_edges(edges, inner) + h[:, :1] * (edges >= below_at)
               + h[:, BINS + 1 :] * (edges >= top[:, None]))
        moved = np.empty((len(h), BINS + 2))
        moved[:, 0] = cdf[:, 0]
        moved[:, 1 : BINS + 1] = np.diff(cdf, axis=1)
        moved[:, BINS + 1] = h.sum(axis=1) - cdf[:, -1]
        # What lies above the new grid: the old top point if it does, and the old bins' mass
        # above the new top edge at the middle of that stretch.
        above_inner = inner[:, -1] - _interp_edges(edges[:, -1:], inner)[:, 0]
        top_point = np.where(top >= edges[:, -1], h[:, BINS + 1], 0.0)
        mid = (np.maximum(edges[:, -1], Z_LOW) + Z_HIGH) / 2
        mass = above_inner + top_point
        mean_old = np.where(mass > 0, (above_inner * mid + top_point * top)
                            / np.where(mass > 0, mass, 1.0), Z_HIGH)
        mean_new = (was[:, 0] + was[:, 1] * mean_old - now[:, 0]) / now[:, 1]
        out[spread] = np.maximum(moved, 0.0)
        over_out[spread] = np.clip(mean_new, Z_HIGH, Z_CAP * 4)
    return out, over_out


def combined_surprise(surprises: npt.ArrayLike) -> np.ndarray:
    """Fisher's rule over the last axis, ignoring NaN (kinds without evidence), in ``-log10``.

    Adding surprises multiplies probabilities, and a product of ``k`` uniform probabilities is
    at most ``x`` with probability ``x * sum(i < k) (-ln x)^i / i!``, so the plain sum would
    overstate rarity. Rows with no evidence at all combine to 0.
    """
    values = np.asarray(surprises, dtype=np.float64)
    present = np.isfinite(values)
    k = present.sum(axis=-1)
    total = np.where(present, values, 0.0).sum(axis=-1)
    log_x = total * math.log(10.0)
    term = np.ones_like(total)
    tail = np.ones_like(total)
    for i in range(1, values.shape[-1]):
        term = term * log_x / i
        tail = tail + np.where(i < k, term, 0.0)
    return np.maximum(total - np.log10(tail), 0.0)


#: The post-processing settings a config may override, without retraining.
ALARM_KEYS = ("threshold", "alarm_hold", "warmup")


@dataclass(frozen=True)
class AlarmOverride:
    """Post-processing for the series whose name matches the glob ``series`` (`fnmatch`
    rules, case-sensitive: ``db.*``, ``host[12].cpu``); None keeps the global value."""

    series: str
    threshold: float | None = None
    alarm_hold: int | None = None
    warmup: int | None = None


@dataclass(frozen=True)
class AlarmPolicy:
    """Threshold, alarm hold and warm-up over a model's own calibration: the global values,
    then per-series overrides, the first whose pattern matches a series winning. None keeps
    the value from the level below (override -> global -> the model's calibration)."""

    threshold: float | None = None
    alarm_hold: int | None = None
    warmup: int | None = None
    overrides: tuple[AlarmOverride, ...] = ()

    def resolve(self, calibration: CalibrationSettings) -> list[CalibrationSettings]:
        """The settings in force: ``[global, override 0, override 1, ...]`` (rule numbers of
        `SeriesRules`). ValueError (naming the rule) if one does not fit the calibration,
        e.g. a warm-up longer than its history."""
        rules: list[CalibrationSettings] = []
        for number, level in enumerate((self, *self.overrides)):
            given = {k: getattr(level, k) for k in ALARM_KEYS if getattr(level, k) is not None}
            try:
                rules.append(replace(calibration if number == 0 else rules[0], **given))
            except ValueError as exc:
                where = "alarms" if number == 0 else f"alarms.overrides[{number - 1}]"
                raise ValueError(f"{where}: {exc} (the model's calibration: history "
                                 f"{calibration.history}, longterm {calibration.longterm})"
                                 ) from exc
        return rules


class SeriesRules:
    """Which rule of an `AlarmPolicy` each slot follows: 1 + the index of the first override
    whose pattern matches the series' name, else 0 (the global settings).

    The patterns are compiled once and a series is matched once, when its slot is allocated
    (and again when it is restored: see `Pipeline.restore`), never per event. The rule is not
    a registry array: it is derived from the name and the settings in force, so a snapshot
    neither carries it nor changes layout with it.
    """

    def __init__(self, registry: SeriesRegistry, patterns: Sequence[str] = ()) -> None:
        self.of = np.zeros(registry.max_series, np.int32)
        self.compile(patterns)
        registry.on_allocate(self.assign)

    def compile(self, patterns: Sequence[str]) -> None:
        self._patterns = [re.compile(fnmatch.translate(p)) for p in patterns]

    def match(self, series: str) -> int:
        for number, pattern in enumerate(self._patterns, start=1):
            if pattern.match(series):
                return number
        return 0

    def assign(self, slots: np.ndarray, names: Sequence[str]) -> None:
        """Match ``names`` (the series of ``slots``) against the patterns."""
        if self._patterns:
            self.of[slots] = [self.match(name) for name in names]
        else:
            self.of[slots] = 0


class AlarmState:
    """Per slot: windows since the last flagged one; the rule of `alarm_rows`, vectorised,
    with each series' threshold and hold taken from its rule (`SeriesRules`; one rule
    without)."""

    def __init__(self, registry: SeriesRegistry, threshold: float, hold: int,
                 rules: SeriesRules | None = None) -> None:
        self.rules = rules
        self.set_rules([threshold], [hold])
        self.since = registry.add("alarm.since", (), np.int64, fill=-1)

    def set_rules(self, thresholds: Sequence[float], holds: Sequence[int]) -> None:
        """The threshold and hold of each rule (rule 0: the global one)."""
        self.thresholds = np.asarray(thresholds, np.float64)
        self.holds = np.asarray(holds, np.int64)

    @property
    def threshold(self) -> float:
        """The global threshold (rule 0)."""
        return float(self.thresholds[0])

    @property
    def hold(self) -> int:
        """The global alarm hold (rule 0)."""
        return int(self.holds[0])

    def rule_of(self, slots: np.ndarray) -> np.ndarray:
        return self.rules.of[slots] if self.rules is not None else np.zeros(len(slots), np.int32)

    def threshold_of(self, slots: np.ndarray) -> np.ndarray:
        """The threshold in force for each slot."""
        return self.thresholds[self.rule_of(slots)]

    def check(self, slots: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Whether each window alarms; one call per window of a series, in order."""
        rule = self.rule_of(slots)
        since = self.since[slots]
        counting = since >= 0
        since = np.where(counting, since + 1, since)
        flagged = scores >= self.thresholds[rule]
        alarm = flagged & ~(counting & (since <= self.holds[rule]))  # a new incident
        self.since[slots] = np.where(flagged, 0, since)
        return alarm


def alarm_rows(scores: npt.ArrayLike, threshold: float, hold: int = 0) -> npt.NDArray[np.bool_]:
    """The alarm rule on each row of one series' ``scores`` (NaN never alarms): a row alarms
    when its score reaches ``threshold`` (it is flagged) and none of the ``hold`` rows before it
    is flagged: the first flagged row of an incident, which lasts while flagged rows come less
    than ``hold`` + 1 rows apart.

    The hold counts rows, so give one row per scored window, as the pipeline does.
    """
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    flagged = values >= threshold
    if hold <= 0:
        return flagged
    seen = np.concatenate(([0], np.cumsum(flagged)))  # seen[i]: flagged rows before row i
    rows = np.arange(len(values))
    before = seen[rows] - seen[np.maximum(rows - hold, 0)]  # flagged among the hold rows before
    return np.asarray(flagged & (before == 0), dtype=np.bool_)
