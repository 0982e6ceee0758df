"""Generated series and the tiny-model settings shared by the core unit tests."""

from __future__ import annotations

import numpy as np

from streamlstm.core.records import Point
from streamlstm.training import SeriesHistory, TrainingSettings

T0 = 1_600_000_000.0
STEP = 60.0
PERIOD = 24
TINY_WINDOW = 16


def sine_values(n: int, *, noise: float = 0.05, seed: int = 0, period: int = PERIOD,
                phase: int = 0, amplitude: float = 1.0, level: float = 0.0) -> np.ndarray:
    """A noisy sine sampled ``n`` times: ``amplitude * sin(2 pi (k + phase) / period)``."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) + phase
    clean = level + amplitude * np.sin(2 * np.pi * k / period)
    return clean + noise * rng.standard_normal(n)


def timestamps(n: int, *, start: float = T0, step: float = STEP) -> np.ndarray:
    return start + step * np.arange(n)


def to_points(series: str, ts: np.ndarray, values: np.ndarray) -> list[Point]:
    """One point per row; ``values`` is ``[N]`` or ``[N, F]``."""
    rows = np.asarray(values, dtype=np.float64).reshape(len(ts), -1)
    return [Point(series, float(t), tuple(float(x) for x in row))
            for t, row in zip(ts.tolist(), rows, strict=True)]


def sine_history(n: int, *, noise: float = 0.05, seed: int = 0,
                 name: str = "sine") -> dict[str, SeriesHistory]:
    values = sine_values(n, noise=noise, seed=seed)
    return {name: SeriesHistory(timestamps(n), values[:, None])}


# Window 16, hidden 8, 3 epochs: about two seconds on a 2-core CPU, and good enough that an
# injected spike stands far above ordinary windows.
TINY_SETTINGS = TrainingSettings(window=TINY_WINDOW, hidden_size=8, epochs=3,
                                 learning_rate=0.01, batch_size=64, seed=0)
