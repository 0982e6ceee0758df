"""The kinds of evidence a window is judged by, behind one small interface.

Each kind turns a round of windows (one per series) into one raw value per window, larger
meaning more unusual, NaN where it has nothing to say yet; `CalibratorBank` turns the values
into surprises against the series' own history:

* `ModelError` -- the model's reconstruction error: "this shape is unlike ordinary windows";
* `Novelty` -- the distance to the nearest remembered past window: "this series has not done
  this recently";
* `Seasonal` -- the distance to the same time on earlier periods (days): "this is not what this
  series does at this hour";
* `CoarseNovelty` -- novelty over means of `COARSE_BLOCK` windows, so a slow drift that every
  W-value window hides becomes visible; it speaks once per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

from streamlstm.core.calibration import CalibrationSettings, KindCalibration, kind_calibration
from streamlstm.core.memory import Distances, WindowMemory
from streamlstm.core.scoring import Spread
from streamlstm.core.state import SeriesRegistry

# A seasonal comparison tolerates the phase being this fraction of the period early or late
# (30 minutes for a daily season), so jitter in when a daily job runs is not an anomaly.
SEASON_SHIFT_FRACTION = 1 / 48
# The coarse memory holds means of this many consecutive windows' newest values, so a window
# of W coarse values spans 8 W windows (256 for the bundled model) ...
COARSE_BLOCK = 8
# ... and remembers this many coarse values (4096 windows).
COARSE_MEMORY = 512
# The running spread of each series forgets with this weight per window (~1000 windows).
SCALE_FADING_FACTOR = 0.001


@dataclass
class Round:
    """One window per series, all at the same step of a batch: what evidence is read from."""

    slots: np.ndarray  # [n] distinct slots
    newest: np.ndarray  # [n, F] the raw value each window ends with
    scale: np.ndarray  # [n, F] the series' spread the window is measured in
    errors: np.ndarray  # [n] the model's reconstruction errors
    periods: np.ndarray  # [n] each series' season, in values (0: none)
    memory: WindowMemory | None  # None when no evidence reads it
    held: np.ndarray | None  # [n, W, F] the window as the memory holds it (less its reference
    # level), newest first
    _extra: dict[str, np.ndarray] = field(default_factory=dict)

    @cached_property
    def distances(self) -> Distances:
        """The distances to each remembered past window."""
        assert self.memory is not None and self.held is not None
        return self.memory.distances(self.slots, self.held, self.scale)


class Evidence:
    """One kind of evidence: ``measure`` gives a raw value per window of a round."""

    name: ClassVar[str]

    def calibration(self, settings: CalibrationSettings) -> KindCalibration:
        return kind_calibration(settings, self.name)

    def measure(self, rnd: Round) -> np.ndarray:
        raise NotImplementedError


class ModelError(Evidence):
    name = "model"

    def calibration(self, settings: CalibrationSettings) -> KindCalibration:
        # Errors spread over decades: calibrated in log, their tail is a power law.
        return kind_calibration(settings, self.name, log_domain=True,
                                tail_fraction=settings.error_tail_fraction)

    def measure(self, rnd: Round) -> np.ndarray:
        return rnd.errors


class Novelty(Evidence):
    name = "memory"

    def measure(self, rnd: Round) -> np.ndarray:
        return rnd.distances.nearest()


class Seasonal(Evidence):
    name = "seasonal"

    def __init__(self, periods: int) -> None:
        self.periods = periods

    def calibration(self, settings: CalibrationSettings) -> KindCalibration:
        return kind_calibration(settings, self.name, history=settings.seasonal_history)

    def measure(self, rnd: Round) -> np.ndarray:
        return rnd.distances.seasonal(rnd.periods, self.periods, SEASON_SHIFT_FRACTION)


class CoarseNovelty(Evidence):
    """Novelty of the series' block means, in a memory and spread of their own."""

    name = "coarse"

    def __init__(self, registry: SeriesRegistry, window: int, n_features: int) -> None:
        self.window = window
        self.memory = WindowMemory(registry, "coarse.memory", window, n_features, COARSE_MEMORY)
        self.spread = Spread(registry, "coarse.spread", n_features, SCALE_FADING_FACTOR)
        self.block_sum = registry.add("coarse.block_sum", (n_features,), np.float64)
        self.block_n = registry.add("coarse.block_n", (), np.int64)

    def calibration(self, settings: CalibrationSettings) -> KindCalibration:
        # Its values come COARSE_BLOCK times slower, so it warms up on fewer of them.
        return kind_calibration(settings, self.name, warmup=max(1, settings.warmup // 4))

    def measure(self, rnd: Round) -> np.ndarray:
        out = np.full(len(rnd.slots), np.nan)
        block_sum = self.block_sum[rnd.slots] + rnd.newest
        block_n = self.block_n[rnd.slots] + 1
        ends = block_n >= COARSE_BLOCK
        self.block_sum[rnd.slots] = np.where(ends[:, None], 0.0, block_sum)
        self.block_n[rnd.slots] = np.where(ends, 0, block_n)
        if not ends.any():
            return out
        slots = rnd.slots[ends]
        held = self.memory.push(slots, block_sum[ends] / COARSE_BLOCK)
        full = self.memory.held[slots] >= self.window
        if not full.any():
            return out
        slots, held = slots[full], held[full]
        window = held.astype(np.float64)
        centred = window - window.mean(axis=1, keepdims=True)
        scale = self.spread.update(slots, centred.var(axis=1))
        out[np.flatnonzero(ends)[full]] = self.memory.distances(slots, held, scale).nearest()
        return out


KINDS = ("model", "memory", "seasonal", "coarse")
