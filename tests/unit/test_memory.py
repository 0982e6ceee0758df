"""WindowMemory: distances to every remembered past window and to the same time on earlier
days, against brute force, for several series at once and over many refreshes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamlstm.core.memory import REFRESH, WindowMemory
from streamlstm.core.state import SeriesRegistry

# The memory keeps values in float16 (relative to a per-series reference, in a per-series
# unit: 2^-11 of it) and the distance terms in float32; brute force works in float64 on the
# raw values.
RTOL = 2e-3


def make(window: int, n_features: int, capacity: int, max_series: int = 8,
         ) -> tuple[SeriesRegistry, WindowMemory]:
    registry = SeriesRegistry(max_series)
    return registry, WindowMemory(registry, "memory", window, n_features, capacity)


def slots_of(registry: SeriesRegistry, names: list[str]) -> np.ndarray:
    lookup = registry.lookup(names, now=0.0)
    assert lookup.done == len(names)
    return lookup.slots


def brute_d2(values: np.ndarray, t: int, window: int, capacity: int,
             scale: np.ndarray) -> np.ndarray:
    """``[capacity]``: squared scaled distance from the window ending at ``t`` to the window
    ending ``window + i`` values earlier; inf where that window does not exist."""
    ends = t - window - np.arange(capacity)
    exists = ends - window + 1 >= 0
    out = np.full(capacity, np.inf)
    if not exists.any():
        return out
    current = values[t - window + 1 : t + 1]
    past = values[(ends[exists, None] - np.arange(window)[::-1])]  # [i, W, F], oldest first
    out[exists] = (((past - current) / scale) ** 2).sum(axis=(1, 2))
    return out


def brute_nearest(d2: np.ndarray) -> float:
    best = d2.min() if len(d2) else np.inf
    return math.sqrt(best) if np.isfinite(best) else math.nan


def assert_d2(got: np.ndarray, expected: np.ndarray, rtol: float = RTOL,
              atol: float = 0.0) -> int:
    """``got`` is ``expected``: inf at the same places, elsewhere within ``rtol`` (and
    ``atol``); returns the number of finite distances compared."""
    finite = np.isfinite(expected)
    ok = np.array_equal(finite, np.isfinite(got)) and bool(
        (np.abs(got[finite] - expected[finite]) <= rtol * expected[finite] + atol).all())
    if not ok:  # the readable report, only when it fails
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
        np.testing.assert_allclose(got[finite], expected[finite], rtol=rtol, atol=atol)
    return int(finite.sum())


def cancellation_slack(values: np.ndarray, window: int, scale: np.ndarray) -> float:
    """Absolute slack for a stationary series: ``|P - T|^2`` is computed as
    ``(|P|^2 - 2 P.T) + |T|^2`` from float16 values relative to a reference that may lie
    anywhere in the series' range, so a near-repeat of a window (d2 near 0) is resolved only to
    about 2^-11 of a value's magnitude per value: 1e-5 of ``W * range^2``."""
    span = np.ptp(values, axis=0) / scale
    return 1e-5 * window * float((span**2).sum())


def same_nearest(got: float, expected: float) -> int:
    """1 where a nearest distance was compared, 0 where both are NaN (none remembered)."""
    if math.isnan(expected):
        assert math.isnan(got)
        return 0
    assert got == pytest.approx(expected, rel=RTOL)
    return 1


def test_matches_a_brute_force_search_at_a_large_level() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(260, 2)) * 3 + 1e7  # a large offset must not eat the precision
    window, capacity = 6, 40
    registry, memory = make(window, 2, capacity)
    slots = slots_of(registry, ["a"])
    scale = np.array([[2.0, 0.5]])
    checked = 0
    for t in range(len(values)):
        ring = memory.push(slots, values[t : t + 1])
        found = memory.distances(slots, ring, scale)
        d2 = found.squared()
        assert d2.shape == (1, capacity)
        expected = brute_d2(values, t, window, capacity, scale[0])
        assert_d2(d2[0], expected)
        checked += same_nearest(float(found.nearest()[0]), brute_nearest(expected))
    assert checked > 200


def test_push_returns_the_newest_window_newest_first_relative_to_the_reference() -> None:
    registry, memory = make(3, 1, 4)
    slots = slots_of(registry, ["a"])
    for v in [5.0, 7.0, 11.0, 13.0]:
        newest = memory.push(slots, np.array([[v]]))
    assert newest.shape == (1, 3, 1)
    assert newest.dtype == np.float64
    ref = memory.ref[slots[0]]
    np.testing.assert_array_equal(newest[0, :, 0] + ref, [13.0, 11.0, 7.0])
    assert memory.size == 4 + 2 * 3  # the ring: capacity + 2 W values


def test_a_repeating_pattern_is_familiar_and_a_new_level_is_not() -> None:
    period, window = 24, 8
    values = np.tile(np.sin(np.arange(period) / period * 2 * np.pi), 20)[:, None]
    registry, memory = make(window, 1, 200)
    slots = slots_of(registry, ["a"])
    scale = np.array([[0.5]])
    for v in values:
        ring = memory.push(slots, v[None])
    # Exactly the same window came by a period ago (float32 cancellation would leave ~1e-3).
    assert memory.distances(slots, ring, scale).nearest()[0] < 1e-2
    for v in values[-window:] + 3.0:  # the same shape, three units higher
        ring = memory.push(slots, v[None])
    # Every element differs by at least 1 from anything seen: at least sqrt(8) / 0.5.
    assert memory.distances(slots, ring, scale).nearest()[0] > math.sqrt(8) / 0.5


def test_no_distance_until_a_non_overlapping_window_exists() -> None:
    window, capacity = 4, 10
    registry, memory = make(window, 1, capacity)
    slots = slots_of(registry, ["a"])
    one = np.ones((1, 1))
    for t in range(7):
        ring = memory.push(slots, np.array([[float(t)]]))
        found = memory.distances(slots, ring, one)
        d2 = found.squared()
        assert np.isinf(d2).all()
        assert math.isnan(found.nearest()[0])
    for t in range(7, 12):
        ring = memory.push(slots, np.array([[float(t)]]))
        found = memory.distances(slots, ring, one)
        d2 = found.squared()
        # One more remembered window per value: held - 2 W + 1 of them.
        assert np.isfinite(d2[0]).sum() == t + 1 - 2 * window + 1
    # At t = 11 the nearest is the window just before, [4..7] vs [8..11]: 4 * 4^2.
    assert found.nearest()[0] == pytest.approx(8.0, rel=RTOL)
    assert d2[0, 0] == pytest.approx(64.0, rel=RTOL)
    assert d2[0, 1] == pytest.approx(4 * 5**2, rel=RTOL)


def test_without_capacity_the_memory_only_keeps_the_ring() -> None:
    registry, memory = make(3, 1, 0)
    slots = slots_of(registry, ["a"])
    for v in range(10):
        ring = memory.push(slots, np.array([[float(v)]]))
    found = memory.distances(slots, ring, np.ones((1, 1)))
    d2 = found.squared()
    assert d2.shape == (1, 0)
    assert math.isnan(found.nearest()[0])
    np.testing.assert_array_equal(ring[0, :, 0] + memory.ref[slots[0]], [9, 8, 7])


class Stream:
    """One series for the long test: its values, when it starts, its scale and how closely
    brute force must agree with it."""

    def __init__(self, name: str, values: np.ndarray, start: int, scale: list[float],
                 rtol: float = RTOL, slack: bool = True) -> None:
        self.name = name
        self.values = values
        self.start = start
        self.scale = np.array(scale)
        self.rtol = rtol
        self.slack = slack  # whether `cancellation_slack` applies

    def active(self, step: int) -> bool:
        return self.start <= step < self.start + len(self.values)


def long_streams(n: int) -> list[Stream]:
    rng = np.random.default_rng(11)
    counter = np.linspace(0.0, 1e6, n)  # a level that drifts far from where it started
    return [
        Stream("quiet", rng.normal(size=(n, 2)), 0, [1.0, 0.3]),
        Stream("high", rng.normal(size=(n - 300, 2)) * 3 + [1e7, -5e6], 300, [3.0, 2.0]),
        # Between refreshes a steady counter moves up to REFRESH steps from its reference, and
        # its unit spans the whole climb held, so float16 storage resolves its (large) d2
        # only to about 1e-2. Without re-referencing it would be far worse.
        Stream("counter", np.c_[counter + rng.normal(size=n), rng.normal(size=n) * 0.1],
               0, [1.0, 0.1], rtol=2e-2, slack=False),
        # A short-lived series: it stops part way, while the others go on.
        Stream("short", np.sin(np.arange(900) / 7.0)[:, None] * [1, 2] + rng.normal(
            size=(900, 2)) * 0.05, 100, [0.2, 0.4]),
    ]


def test_many_steps_of_several_series_together_match_each_alone_and_brute_force() -> None:
    """Over more than three refreshes, the incremental distances stay those of brute force,
    and pushing several series in one call changes nothing for any of them."""
    n_steps = 3 * REFRESH + 100
    window, capacity = 8, 48
    streams = long_streams(n_steps)
    registry, together = make(window, 2, capacity)
    slots = dict(zip([s.name for s in streams],
                     slots_of(registry, [s.name for s in streams]).tolist(), strict=True))
    # Each series alone, in its own registry (same name, so the same refresh stagger).
    alone = {s.name: make(window, 2, capacity, max_series=1) for s in streams}
    alone_slot = {s.name: slots_of(alone[s.name][0], [s.name]) for s in streams}
    assert len({int(together.age[slots[s.name]]) for s in streams}) > 1  # staggered
    compared = 0
    refreshed = {s.name: 0 for s in streams}
    for step in range(n_steps):
        live = [s for s in streams if s.active(step)][::-1]  # any slot order
        rows = np.array([slots[s.name] for s in live])
        values = np.stack([s.values[step - s.start] for s in live])
        scale = np.stack([s.scale for s in live])
        ring = together.push(rows, values)
        found = together.distances(rows, ring, scale)
        d2 = found.squared()
        nearest = found.nearest()
        for j, s in enumerate(live):
            refreshed[s.name] += int(together.age[slots[s.name]] == 0)
            _, memory_alone = alone[s.name]
            one = alone_slot[s.name]
            ring_alone = memory_alone.push(one, values[j : j + 1])
            found_alone = memory_alone.distances(one, ring_alone, scale[j : j + 1])
            d2_alone = found_alone.squared()
            # Batched across series is the same computation row by row: bit for bit.
            assert np.array_equal(ring[j], ring_alone[0]), (s.name, step)
            assert np.array_equal(d2[j], d2_alone[0]), (s.name, step)
            t = step - s.start
            if t % 7 == 0 or t > len(s.values) - 40:  # brute force is the slow part
                expected = brute_d2(s.values, t, window, capacity, s.scale)
                atol = cancellation_slack(s.values, window, s.scale) if s.slack else 0.0
                compared += assert_d2(d2[j], expected, s.rtol, atol)
                expected_nearest = brute_nearest(expected)
                if math.isnan(expected_nearest):
                    assert math.isnan(nearest[j])
                else:
                    assert nearest[j] ** 2 == pytest.approx(expected_nearest**2, rel=s.rtol,
                                                            abs=atol)
    assert compared > 4 * 200 * capacity
    # Every series went through its exact refreshes (three or more for the long ones), and the
    # drifting one was re-referenced far from where it started.
    for s in streams:
        assert refreshed[s.name] >= len(s.values) // REFRESH >= 1, s.name
    assert refreshed["quiet"] >= 3
    counter_ref = together.ref[slots["counter"], 0]
    assert counter_ref > 5e5
    # The reference is (to float16 storage, a few 1e-4 of the unit) a value the series took at
    # its latest refresh.
    counter = streams[2].values[:, 0]
    assert np.abs(counter - counter_ref).min() < 1e-3 * np.ptp(counter)


def test_a_far_drifting_level_keeps_its_distances_accurate() -> None:
    """A counter from 0 to 1e6 with unit noise, at the shipped window (32): without moving
    its reference, float32 values near 1e6 keep only ~0.06 of resolution and the sliding sums
    drift far more than the tolerance."""
    rng = np.random.default_rng(5)
    n = 4000
    values = (np.linspace(0.0, 1e6, n) + rng.normal(size=n))[:, None]
    window, capacity = 32, 64
    registry, memory = make(window, 1, capacity, max_series=1)
    slots = slots_of(registry, ["requests_total"])
    scale = np.ones((1, 1))
    checked = 0
    for t in range(n):
        ring = memory.push(slots, values[t : t + 1])
        if t >= n - 2000 and t % 3 == 0:  # late in the run, the level far from its start
            found = memory.distances(slots, ring, scale)
            d2 = found.squared()
            expected = brute_d2(values, t, window, capacity, scale[0])
            # d2 to the float16 storage's precision (2^-11 of the unit per value; for a
            # counter the unit spans its climb, so a few 1e-3 of these large distances).
            checked += assert_d2(d2[0], expected, rtol=5e-3)
            same_nearest(float(found.nearest()[0]), brute_nearest(expected))
    assert checked == 667 * capacity
    assert memory.ref[slots[0], 0] > 5e5  # it did move its reference


def brute_seasonal(d2: np.ndarray, window: int, period: int, n_periods: int,
                   shift: int) -> float:
    """Nearest of the windows ending ``k * period + d`` values back (``d`` in ``[-shift,
    shift]``, the first ``n_periods`` values of ``k`` whose windows cannot overlap the current
    one), read from the brute-force squared distances ``d2`` of every remembered lag."""
    if period == 0:
        return math.nan
    k_first = math.ceil((window + shift) / period)
    found = [d2[lag - window]
             for k in range(k_first, k_first + n_periods)
             for lag in range(k * period - shift, k * period + shift + 1)
             if window <= lag < window + len(d2)]
    best = min(found, default=math.inf)
    return math.sqrt(best) if np.isfinite(best) else math.nan


def test_seasonal_distance_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(1)
    window, capacity = 5, 60
    periods = np.array([7, 20, 4, 0, 200])  # per series; 0: no season; 200: beyond memory
    names = [f"s{p}" for p in range(len(periods))]
    values = rng.normal(size=(len(names), 300, 2)) * 2 + 5e6
    scale = np.array([1.5, 0.7])
    registry, memory = make(window, 2, capacity)
    slots = slots_of(registry, names)
    checked = 0
    for t in range(values.shape[1]):
        ring = memory.push(slots, values[:, t])
        found = memory.distances(slots, ring, np.tile(scale, (len(names), 1)))
        expected_d2 = [brute_d2(values[j], t, window, capacity, scale) for j in range(len(names))]
        for n_periods, shift_fraction in ((3, 0.0), (2, 0.1), (5, 0.5)):
            got = found.seasonal(periods, n_periods, shift_fraction)
            for j, period in enumerate(periods.tolist()):
                shift = max(1, round(period * shift_fraction))
                expected = brute_seasonal(expected_d2[j], window, period, n_periods, shift)
                checked += same_nearest(float(got[j]), expected)
            assert math.isnan(got[3]) and math.isnan(got[4])
    assert checked > 3 * 3 * 250


def test_a_missing_daily_peak_is_far_from_the_same_time_yesterday_not_from_the_past() -> None:
    day, window = 24, 6
    pattern = np.zeros(day)
    pattern[10:14] = 5.0  # a daily peak on a flat baseline
    values = np.tile(pattern, 10)
    values[9 * day + 10 : 9 * day + 14] = 0.0  # on the last day the peak does not come
    registry, memory = make(window, 1, 300)
    slots = slots_of(registry, ["a"])
    scale = np.ones((1, 1))
    for v in values[: 9 * day + 14]:
        ring = memory.push(slots, np.array([[v]]))
    found = memory.distances(slots, ring, scale)
    assert found.nearest()[0] < 1e-3  # flat windows are everywhere
    # The same time on earlier days had the peak: sqrt(4 * 25) at the least.
    seasonal = found.seasonal(np.array([day]), 7, 1 / 24)
    assert seasonal[0] > 5.0
    assert math.isnan(found.seasonal(np.array([0]), 7, 1 / 24)[0])  # no season
    # The day before, at the same time, is what the peak looked like: a day with the peak
    # pushed one more value on is seasonal-close again.
    registry2, memory2 = make(window, 1, 300)
    slots2 = slots_of(registry2, ["a"])
    for v in np.tile(pattern, 10)[: 9 * day + 14]:
        ring2 = memory2.push(slots2, np.array([[v]]))
    found_normal = memory2.distances(slots2, ring2, scale)
    assert found_normal.seasonal(np.array([day]), 7, 1 / 24)[0] < 1e-3



def reference_nearest(d2: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """The nearest distance read off the whole squared-distance matrix."""
    picked = d2 if columns is None else d2[:, columns]
    if picked.shape[1] == 0:
        return np.full(len(d2), np.nan)
    best = picked.min(axis=1)
    return np.where(np.isfinite(best), np.sqrt(best), np.nan)


def test_the_nearest_window_found_on_the_raw_terms_is_the_matrix_minimum_bit_for_bit() -> None:
    """`Distances.nearest` and `seasonal` take the minimum before mapping to units; over
    series filling up, repeating exactly (the noise floor), guarded and not, that is the
    minimum of `squared` exactly."""
    window, capacity, day = 4, 60, 12
    rng = np.random.default_rng(5)
    names = ["noisy", "repeating", "guarded", "flat_then_noisy", "flat"]
    registry, memory = make(window, 1, capacity)
    slots = slots_of(registry, names)
    pattern = rng.normal(size=day)
    scale = np.array([[1.0], [0.5], [2.0], [1.0], [3.0]])
    periods = np.array([day, day, 0, day, 5])
    compared = 0
    seen = {"guarded": False, "empty": False, "filling": False, "floor": False}
    for t in range(200):
        values = np.array([[rng.normal()], [pattern[t % day]], [rng.normal() * 5],
                           [rng.normal() if t >= 90 else 0.0], [1.0]])
        ring = memory.push(slots, values)
        if t == 70:
            memory.guard_open(slots[2:3])
        if 70 < t <= 120:
            memory.guard_mark(slots[2:3])
        if t == 150:
            memory.guard_close(slots[2:3])
        found = memory.distances(slots, ring, scale)
        d2 = found.squared()
        np.testing.assert_array_equal(found.nearest(), reference_nearest(d2))
        for n_periods, shift_fraction in ((2, 0.0), (3, 0.2)):
            got = found.seasonal(periods, n_periods, shift_fraction)
            for j, period in enumerate(periods.tolist()):
                if period == 0:
                    assert math.isnan(got[j])
                    continue
                shift = max(1, round(period * shift_fraction))
                k_first = -(-(window + shift) // period)
                lags = (np.arange(k_first, k_first + n_periods)[:, None] * period
                        + np.arange(-shift, shift + 1)).ravel()
                cols = lags - window
                cols = cols[(cols >= 0) & (cols < capacity)]
                np.testing.assert_array_equal(got[j : j + 1],
                                              reference_nearest(d2[j : j + 1], cols))
        compared += int(np.isfinite(found.nearest()).sum())
        seen["guarded"] |= bool(t > 120 and np.isinf(d2[2]).any() and np.isfinite(d2[2]).any())
        seen["empty"] |= bool(math.isnan(found.nearest()[0]))
        seen["filling"] |= bool(np.isfinite(d2[0]).any() and np.isinf(d2[0]).any())
        seen["floor"] |= bool(found.nearest()[1] == 0.0)
    assert compared > 4 * 150
    assert all(seen.values()), seen  # it met each case
