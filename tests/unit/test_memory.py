"""WindowMemory: the distance to the nearest non-overlapping past window of the same series."""

from __future__ import annotations

import math

import numpy as np

from streamlstm.memory import WindowMemory


def brute_force(values: np.ndarray, t: int, window: int, capacity: int,
                scale: np.ndarray) -> float:
    """Nearest window ending at most ``t - window``, among the last ``capacity`` such windows."""
    current = values[t - window + 1 : t + 1]
    ends = range(max(window - 1, t - window - capacity + 1), t - window + 1)
    distances = [float(np.sqrt((((values[e - window + 1 : e + 1] - current) / scale) ** 2).sum()))
                 for e in ends]
    return min(distances) if distances else math.nan


def test_matches_a_brute_force_search_at_a_large_level() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(260, 2)) * 3 + 1e7  # a large offset must not eat the precision
    memory = WindowMemory(window=6, n_features=2, capacity=40)
    scale = np.array([2.0, 0.5])
    checked = 0
    for t in range(len(values)):
        memory.append(values[t])
        if t < 5:
            continue
        got = memory.nearest_distance(values[t - 5 : t + 1], scale)
        expected = brute_force(values, t, 6, 40, scale)
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert abs(got - expected) < 1e-6
            checked += 1
    assert checked > 200


def test_a_repeating_pattern_is_familiar_and_a_new_level_is_not() -> None:
    period = 24
    values = np.tile(np.sin(np.arange(period) / period * 2 * np.pi), 20)[:, None]
    memory = WindowMemory(window=8, n_features=1, capacity=200)
    scale = np.array([0.5])
    for v in values:
        memory.append(v)
    assert memory.nearest_distance(values[-8:], scale) < 1e-6
    shifted = values[-8:] + 3.0
    memory.append(shifted[-1])
    assert memory.nearest_distance(shifted, scale) > 5.0


def test_no_distance_until_a_non_overlapping_window_exists() -> None:
    memory = WindowMemory(window=4, n_features=1, capacity=10)
    values = np.arange(8.0)[:, None]
    for t in range(7):
        memory.append(values[t])
        assert math.isnan(memory.nearest_distance(values[max(0, t - 3) : t + 1], np.ones(1)))
    memory.append(values[7])
    assert memory.nearest_distance(values[4:8], np.ones(1)) == 8.0  # |[4..7] - [0..3]| = 2*4
