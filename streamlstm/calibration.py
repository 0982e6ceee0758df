"""Online calibration: raw per-window evidence becomes a score in [0, 1] and an alarm.

Following river's habits, calibrators learn and score one value at a time (`learn_one` /
`score_one`) and the alarm rule is a separate wrapper (`ThresholdDetector`), like river's
``ThresholdFilter`` around an anomaly detector.

Each series calibrates each kind of evidence (the model's reconstruction error, the distance to
the series' own past windows) against its own recent history with `TailCalibrator`: the value's
*surprise* is ``-log10`` of the probability of a value at least as large, read off the sorted
recent values and, beyond their top ``tail_fraction``, from an exponential tail fitted to the
excesses (peaks over threshold, as in Siffer et al., "Anomaly detection in streams with extreme
value theory", KDD 2017). A surprise of 3 means "one window in a thousand is like this, for this
series", whatever the series' noise level, so one threshold serves flat and noisy series alike.

The held values sit in numpy float64 arrays (slots and a sorted copy, 16 bytes a value) rather
than river's ``SortedWindow`` (Python floats in a list and a deque, about 40 bytes a value):
for two calibrators of two 1000-value horizons at 10,000 series that is 640 MB against 1.6 GB.
(float32 would halve it again, but moved the NAB optimum by several points through ties and
rounding, so the precision stays.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# anomaly_score = total surprise / SURPRISE_SCALE, clipped to 1: 0.3 is a one-in-a-thousand
# window, 1.0 one in ten billion or rarer.
SURPRISE_SCALE = 10.0
MIN_TAIL = 10


@dataclass(frozen=True)
class CalibrationSettings:
    """How evidence becomes scores and alarms; stored with the model artifact."""

    history: int = 1000  # recent values each calibrator ranks against, per series
    longterm: int = 1000  # values sampled from the series' whole past (0: recent only)
    longterm_min_rate: float = 0.05  # the sample renews at least this fraction per value
    tail_fraction: float = 0.02  # beyond this top fraction the exponential tail takes over
    # The model's errors get a wider tail: fitted on 20 excesses it was noisy enough to raise
    # more false alarms than any other evidence (0.04 to 0.10 measure alike on nab-dev).
    error_tail_fraction: float = 0.05
    # The seasonal distance ranks against a shorter recent history (about four days of
    # 5-minute samples): what the same hour looked like last month matters less.
    seasonal_history: int = 800
    warmup: int = 200  # windows a series must have been scored before it scores above 0
    threshold: float = 0.27  # anomaly_score at or above which a window alarms
    alarm_hold: int = 100  # after an alarm the series stays quiet for this many windows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class _HeldValues:
    """A bounded set of values kept both in slots (for replacement) and sorted (for ranks)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots = np.empty(size)
        self.sorted = np.empty(size)  # ascending, the first n valid
        self.n = 0

    def add(self, value: float) -> None:
        at = int(np.searchsorted(self.sorted[: self.n], value))
        self.sorted[at + 1 : self.n + 1] = self.sorted[at : self.n].copy()
        self.sorted[at] = value
        self.slots[self.n] = value
        self.n += 1

    def replace(self, slot: int, value: float) -> None:
        held = self.sorted[: self.n]
        at = int(np.searchsorted(held, self.slots[slot]))
        held[at:-1] = held[at + 1 :].copy()  # the old value leaves the sorted copy
        rest = self.n - 1
        at = int(np.searchsorted(self.sorted[:rest], value))
        self.sorted[at + 1 : rest + 1] = self.sorted[at:rest].copy()
        self.sorted[at] = value
        self.slots[slot] = value

    def surprise(self, value: float, tail_fraction: float) -> float:
        n = self.n
        held = self.sorted[:n]
        # The tail is fitted on at least MIN_TAIL values, so a short history cannot claim
        # extreme rarity from two or three excesses.
        cut = max(min(int((1.0 - tail_fraction) * n), n - MIN_TAIL), 0)
        edge = held[cut]
        if value <= edge:
            at_least = n - int(np.searchsorted(held, value, side="left"))
            return -math.log10(max(at_least, 1) / n)
        mean_excess = max(float(held[cut:].mean() - edge), 1e-12)
        return -(math.log10((n - cut) / n) - (value - edge) / mean_excess / math.log(10.0))


class TailCalibrator:
    """The surprise of a value against earlier values of the same kind, for one series.

    Two horizons, averaged: the last ``history`` values (what the series does now) and a
    random sample of ``longterm`` values drawn from its whole past (what it has ever done,
    Vitter's reservoir sampling, refreshed at least at ``longterm_min_rate`` per value so a
    sampled value is on average at most about ``longterm / longterm_min_rate`` values old).
    The recent horizon follows a new normal quickly; the long one remembers that last week's
    rare-but-normal event happens. ``seed`` makes the sampling, and so every score, reproducible.
    """

    def __init__(self, history: int = 1000, tail_fraction: float = 0.02, warmup: int = 200,
                 longterm: int = 1000, longterm_min_rate: float = 0.05, seed: int = 0) -> None:
        if not 0.0 < tail_fraction < 1.0:
            raise ValueError("tail_fraction must lie in (0, 1)")
        if warmup < 1 or history < warmup:
            raise ValueError("need 1 <= warmup <= history")
        if longterm and longterm < warmup:
            raise ValueError("longterm must be 0 (off) or at least warmup")
        if not 0.0 <= longterm_min_rate <= 1.0:
            raise ValueError("longterm_min_rate must lie in [0, 1]")
        self.history = history
        self.tail_fraction = tail_fraction
        self.warmup = warmup
        self.longterm_min_rate = longterm_min_rate
        self._recent = _HeldValues(history)
        self._next = 0  # the recent slot to overwrite next, once full
        self._sample = _HeldValues(longterm) if longterm else None
        self._rng = np.random.default_rng(seed)
        self.n_learnt = 0

    @property
    def n_held(self) -> int:
        return self._recent.n

    @property
    def warm(self) -> bool:
        """Whether enough values are held to score (``score_one`` returns 0 until then)."""
        return self._recent.n >= self.warmup

    def learn_one(self, value: float) -> None:
        """Add ``value``: it replaces the oldest recent one and maybe one in the sample."""
        value = float(value)
        self.n_learnt += 1
        if self._recent.n < self.history:
            self._recent.add(value)
        else:
            self._recent.replace(self._next, value)
        self._next = (self._next + 1) % self.history
        sample = self._sample
        if sample is None:
            return
        if sample.n < sample.size:
            sample.add(value)
            return
        keep = max(sample.size / self.n_learnt, self.longterm_min_rate)
        if self._rng.random() < keep:
            sample.replace(int(self._rng.integers(sample.size)), value)

    def score_one(self, value: float) -> float:
        """``-log10 P(X >= value)``, averaged over the two horizons; 0 while warming up."""
        if self._recent.n < self.warmup:
            return 0.0
        recent = self._recent.surprise(value, self.tail_fraction)
        if self._sample is None:
            return recent
        return 0.5 * (recent + self._sample.surprise(value, self.tail_fraction))


class ThresholdDetector:
    """Alarms when a score reaches ``threshold``, then holds quiet for ``hold`` windows.

    A burst of high scores is one incident: it pages once, at its first window. `alarm_rows`
    applies the same rule to a whole column of scores.
    """

    def __init__(self, threshold: float, hold: int = 0) -> None:
        self.threshold = threshold
        self.hold = hold
        self._since_alarm: int | None = None

    def check(self, score: float) -> bool:
        """Whether this window alarms; call once per window, in order."""
        if self._since_alarm is not None:
            self._since_alarm += 1
            if self._since_alarm <= self.hold:
                return False
        if score >= self.threshold:
            self._since_alarm = 0
            return True
        return False


def alarm_rows(scores: npt.ArrayLike, threshold: float, hold: int = 0) -> npt.NDArray[np.bool_]:
    """`ThresholdDetector`'s verdict on each row of ``scores`` (NaN never alarms).

    The hold counts rows, so give one row per scored window, as the pipeline does.
    """
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    out = np.zeros(len(values), dtype=np.bool_)
    candidates = np.flatnonzero(values >= threshold)
    if hold <= 0:
        out[candidates] = True
        return out
    last = -hold - 1
    for row in candidates.tolist():
        if row - last > hold:
            out[row] = True
            last = row
    return out
