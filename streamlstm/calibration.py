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

The recent values sit in two numpy float64 arrays (the arrival-order ring and its sorted copy,
16 bytes a value) rather than river's ``SortedWindow`` (Python floats in a list and a deque,
about 40 bytes a value): for two calibrators of 1000 values at 10,000 series that is 320 MB
against 800 MB. (float32 would halve it again, but moved the NAB optimum by several points
through ties and rounding, so the precision stays.)
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
    tail_fraction: float = 0.02  # beyond this top fraction the exponential tail takes over
    warmup: int = 200  # windows a series must have been scored before it scores above 0
    threshold: float = 0.4  # anomaly_score at or above which a window alarms (p ~ 1e-4)
    alarm_hold: int = 100  # after an alarm the series stays quiet for this many windows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class TailCalibrator:
    """The surprise of a value against the recent values of the same kind, for one series."""

    def __init__(self, history: int = 1000, tail_fraction: float = 0.02,
                 warmup: int = 200) -> None:
        if not 0.0 < tail_fraction < 1.0:
            raise ValueError("tail_fraction must lie in (0, 1)")
        if warmup < 1 or history < warmup:
            raise ValueError("need 1 <= warmup <= history")
        self.history = history
        self.tail_fraction = tail_fraction
        self.warmup = warmup
        self._ring = np.empty(history)  # arrival order, oldest at _next once full
        self._sorted = np.empty(history)  # the same values ascending, first n_held valid
        self._next = 0
        self.n_held = 0
        self.n_learnt = 0

    @property
    def warm(self) -> bool:
        """Whether enough values are held to score (``score_one`` returns 0 until then)."""
        return self.n_held >= self.warmup

    def learn_one(self, value: float) -> None:
        """Add ``value`` to the recent history, forgetting the oldest once full."""
        held = self._sorted[: self.n_held]
        if self.n_held == self.history:
            oldest = self._ring[self._next]
            at = int(np.searchsorted(held, oldest))
            held[at:-1] = held[at + 1 :].copy()
            self.n_held -= 1
            held = self._sorted[: self.n_held]
        at = int(np.searchsorted(held, value))
        self._sorted[at + 1 : self.n_held + 1] = held[at:].copy()
        self._sorted[at] = value
        self.n_held += 1
        self._ring[self._next] = value
        self._next = (self._next + 1) % self.history
        self.n_learnt += 1

    def score_one(self, value: float) -> float:
        """``-log10 P(X >= value)`` under the recent history; 0 while warming up."""
        n = self.n_held
        if n < self.warmup:
            return 0.0
        held = self._sorted[:n]
        # The tail is fitted on at least MIN_TAIL values, so a short history cannot claim
        # extreme rarity from two or three excesses.
        cut = max(min(int((1.0 - self.tail_fraction) * n), n - MIN_TAIL), 0)
        edge = held[cut]
        if value <= edge:
            at_least = n - int(np.searchsorted(held, value, side="left"))
            return -math.log10(max(at_least, 1) / n)
        mean_excess = max(float(held[cut:].mean() - edge), 1e-12)
        log10_p = math.log10((n - cut) / n) - (value - edge) / mean_excess / math.log(10.0)
        return -log10_p


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
