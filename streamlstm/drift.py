"""Whether the model in service still fits the stream: river's ADWIN on its error stream.

One detector per model, not per series (100k detectors would cost more than the scoring): it
reads one number per poll, the mean ``log`` reconstruction error of the windows the poll
scored (the log, because errors spread over decades and a few huge ones would swamp the
mean). ADWIN (`river.drift.ADWIN`) keeps an adaptive window of those means and reports a
change when two sub-windows differ by more than its confidence bound allows. A change upwards
(the errors grew: the stream moved away from what the model learnt) suggests retraining; one
downwards (an odd spell is over) is counted but suggests nothing. A new model starts a new
detector. Polls with fewer than ``min_windows`` windows are skipped: their mean says more about
which series happened to arrive than about the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from river import drift

log = logging.getLogger(__name__)


class ErrorDrift:
    """A drift detector on a model's per-poll mean log error (see the module docstring)."""

    def __init__(self, delta: float = 0.002, min_windows: int = 8, grace_polls: int = 30) -> None:
        self.delta = delta
        self.min_windows = min_windows
        self.grace_polls = grace_polls  # ADWIN's own grace period: polls before it may speak
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new model is in service)."""
        self.detector = drift.ADWIN(delta=self.delta, grace_period=self.grace_polls)
        self.retrain_suggested = False
        self.polls = 0

    def update(self, errors: Sequence[float]) -> str | None:
        """Feed one poll's errors; ``"up"`` or ``"down"`` when a change was detected."""
        logs = [math.log(e) for e in errors if e > 0 and math.isfinite(e)]
        if len(logs) < self.min_windows:
            return None
        before = self.detector.estimation
        self.detector.update(sum(logs) / len(logs))
        self.polls += 1
        if not self.detector.drift_detected:
            return None
        direction = "up" if self.detector.estimation > before else "down"
        if direction == "up":
            self.retrain_suggested = True
        return direction
