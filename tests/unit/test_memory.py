"""WindowMemory: the distance to the nearest past window and to the same time in earlier days."""

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


def same_distance(got: float, expected: float) -> int:
    """Assert ``got`` is the brute-force ``expected`` (both NaN when there is none); 1 where a
    distance was compared, 0 where both were NaN."""
    if math.isnan(expected):
        assert math.isnan(got)
        return 0
    assert abs(got - expected) < 1e-6
    return 1


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
        checked += same_distance(got, brute_force(values, t, 6, 40, scale))
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


def brute_force_seasonal(values: np.ndarray, t: int, window: int, capacity: int, period: int,
                         periods: int, shift: int, scale: np.ndarray) -> float:
    """Nearest of the windows ending ``k * period + d`` rows before ``t`` (``d`` in
    ``[-shift, shift]``, the first ``periods`` values of ``k`` whose windows cannot overlap the
    current one), among the values the memory still holds."""
    current = values[t - window + 1 : t + 1]
    oldest_held = max(0, t + 1 - (capacity + 2 * window - 1))
    k_first = math.ceil((window + shift) / period)
    distances = []
    for k in range(k_first, k_first + periods):
        for d in range(-shift, shift + 1):
            e = t - k * period + d
            if e - window + 1 >= oldest_held:
                past = values[e - window + 1 : e + 1]
                distances.append(float(np.sqrt((((past - current) / scale) ** 2).sum())))
    return min(distances) if distances else math.nan


def test_seasonal_distance_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(400, 2)) * 2 + 5e6
    window, capacity, scale = 5, 60, np.array([1.5, 0.7])
    memory = WindowMemory(window=window, n_features=2, capacity=capacity)
    checked = 0
    for t in range(len(values)):
        memory.append(values[t])
        if t < window - 1:
            continue
        for period, periods, shift in ((7, 3, 1), (20, 2, 0), (4, 5, 2)):
            got = memory.seasonal_distance(values[t - window + 1 : t + 1], scale, period,
                                           periods, shift)
            checked += same_distance(got, brute_force_seasonal(
                values, t, window, capacity, period, periods, shift, scale))
    assert checked > 900


def test_a_missing_daily_peak_is_far_from_the_same_time_yesterday_not_from_the_past() -> None:
    day = 24
    pattern = np.zeros(day)
    pattern[10:14] = 5.0  # a daily peak on a flat baseline
    values = np.tile(pattern, 10)
    values[9 * day + 10 : 9 * day + 14] = 0.0  # on the last day the peak does not come
    memory = WindowMemory(window=6, n_features=1, capacity=300)
    scale = np.array([1.0])
    for v in values[: 9 * day + 14]:
        memory.append(np.array([v]))
    current = values[9 * day + 8 : 9 * day + 14, None]
    assert memory.nearest_distance(current, scale) < 1e-6  # flat windows are everywhere
    assert memory.seasonal_distance(current, scale, day, periods=7, shift=1) > 5.0
    assert math.isnan(memory.seasonal_distance(current, scale, 0))  # no season, no distance
