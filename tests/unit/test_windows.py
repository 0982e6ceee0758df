"""WindowStore: readiness, stride, order, late points, gaps, capacity and idle eviction."""

from __future__ import annotations

import numpy as np
import pytest

from streamlstm.records import Point
from streamlstm.windows import WindowStore

STEP = 60.0


def pts(series: str, values: list[float], start: int = 0, step: float = STEP) -> list[Point]:
    """Points ``start, start+1, ...`` sampling intervals after zero, one feature each."""
    return [Point(series, (start + k) * step, (float(v),)) for k, v in enumerate(values)]


def flat(windows: np.ndarray) -> list[list[float]]:
    """``[B, W, 1]`` -> plain lists, for readable comparisons."""
    return windows[:, :, 0].tolist()


def test_window_is_ready_exactly_when_full() -> None:
    store = WindowStore(window=4, n_features=1)
    for k in range(3):
        ready = store.append(pts("a", [k], start=k), now=0.0)
        assert len(ready.index) == 0
        assert ready.windows.shape == (0, 4, 1)
    ready = store.append(pts("a", [3], start=3), now=0.0)
    assert ready.index.tolist() == [0]
    assert flat(ready.windows) == [[0, 1, 2, 3]]
    assert ready.windows.dtype == np.float32


def test_window_readiness_within_one_batch_reports_input_positions() -> None:
    store = WindowStore(window=4, n_features=1)
    ready = store.append(pts("a", list(range(6))), now=0.0)
    assert ready.index.tolist() == [3, 4, 5]
    assert flat(ready.windows) == [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]]
    assert len(set(ready.slots.tolist())) == 1


@pytest.mark.parametrize("stride", [2, 3])
def test_stride_emits_every_stride_th_window(stride: int) -> None:
    store = WindowStore(window=4, n_features=1, stride=stride)
    ready = store.append(pts("a", list(range(12))), now=0.0)
    expected = list(range(3, 12, stride))
    assert ready.index.tolist() == expected
    assert flat(ready.windows) == [[i - 3, i - 2, i - 1, i] for i in expected]


@pytest.mark.parametrize("batch", [1, 3, 25])
def test_contents_are_chronological_across_ring_wrap_around(batch: int) -> None:
    store = WindowStore(window=5, n_features=1)
    values = [float(v * v) for v in range(25)]  # distinct, not linear
    points = pts("a", values)
    windows: list[list[float]] = []
    for start in range(0, len(points), batch):
        windows += flat(store.append(points[start : start + batch], now=0.0).windows)
    # 25 points through a ring of 5: the ring wraps four times.
    assert windows == [values[i - 4 : i + 1] for i in range(4, 25)]


def test_returned_windows_are_copies() -> None:
    store = WindowStore(window=3, n_features=1)
    first = store.append(pts("a", [1, 2, 3]), now=0.0)
    first.windows[:] = -1
    second = store.append(pts("a", [4], start=3), now=0.0)
    assert flat(second.windows) == [[2, 3, 4]]


def test_out_of_order_and_duplicate_timestamps_are_reported_late_and_ignored() -> None:
    store = WindowStore(window=3, n_features=1)
    store.append(pts("a", [1, 2, 3]), now=0.0)  # t = 0, 60, 120
    batch = [
        Point("a", 120.0, (99.0,)),  # duplicate of the newest timestamp
        Point("a", 60.0, (98.0,)),  # older than the newest
        Point("a", 180.0, (4.0,)),  # in order
        Point("a", 180.0, (97.0,)),  # duplicate within the batch
        Point("b", 0.0, (1.0,)),  # another series: its own clock
    ]
    ready = store.append(batch, now=0.0)
    assert ready.late == [0, 1, 3]
    assert ready.index.tolist() == [2]
    assert flat(ready.windows) == [[2, 3, 4]]  # none of the late values got in
    assert store.last_timestamp("a") == 180.0
    following = store.append([Point("a", 240.0, (5.0,))], now=0.0)
    assert flat(following.windows) == [[3, 4, 5]]


def test_short_gap_is_filled_by_linear_interpolation() -> None:
    store = WindowStore(window=5, n_features=1, max_gap_intervals=5)
    store.append(pts("a", [0, 1, 2, 3, 5]), now=0.0)  # learns the 60 s interval
    # Three intervals later (two samples missing), the value jumps from 5 to 20.
    ready = store.append([Point("a", 7 * STEP, (20.0,))], now=0.0)
    assert ready.restarted == 0
    assert ready.index.tolist() == [0]  # one window, for the real point only
    np.testing.assert_allclose(ready.windows[0, :, 0], [3, 5, 10, 15, 20])
    # The cadence goes on from the real point.
    after = store.append([Point("a", 8 * STEP, (21.0,))], now=0.0)
    np.testing.assert_allclose(after.windows[0, :, 0], [5, 10, 15, 20, 21])


def test_long_gap_restarts_the_window() -> None:
    store = WindowStore(window=4, n_features=1, max_gap_intervals=5)
    store.append(pts("a", [0, 1, 2, 3, 4]), now=0.0)
    ready = store.append(pts("a", [100, 101, 102], start=4 + 10), now=0.0)  # 10 intervals later
    assert ready.restarted == 1
    assert len(ready.index) == 0  # the window must refill: warm-up starts again
    ready = store.append(pts("a", [103], start=17), now=0.0)
    assert ready.restarted == 0
    assert flat(ready.windows) == [[100, 101, 102, 103]]  # nothing from before the gap


def test_two_long_gaps_in_a_row_both_restart() -> None:
    """One outage must not become the series' sampling interval."""
    store = WindowStore(window=3, n_features=1, max_gap_intervals=5)
    store.append(pts("a", [0, 1, 2, 3]), now=0.0)
    first = store.append([Point("a", 3 * STEP + 86_400.0, (50.0,))], now=0.0)  # a day later
    assert first.restarted == 1
    # 50 intervals later again: still a long outage, not something to interpolate over.
    second = store.append([Point("a", 3 * STEP + 86_400.0 + 50 * STEP, (60.0,))], now=0.0)
    assert second.restarted == 1
    third = store.append([Point("a", 3 * STEP + 86_400.0 + 51 * STEP, (61.0,))], now=0.0)
    assert len(third.index) == 0  # two real points since the restart, window of three


def real_windows_only(store: WindowStore, points: list[Point]) -> list[bool]:
    """Feed ``points`` one by one; for each window, whether it holds only real values."""
    real: list[float] = []
    verdicts = []
    for point in points:
        ready = store.append([point], now=0.0)
        real.append(point.values[0])
        if len(ready.index):
            verdicts.append(flat(ready.windows)[0] == real[-store.window :])
    return verdicts


def test_an_isolated_early_sample_does_not_make_regular_samples_look_like_gaps() -> None:
    store = WindowStore(window=4, n_features=1, max_gap_intervals=5)
    times = [k * STEP for k in range(10)] + [9 * STEP + 10.0]  # one sample 10 s after the last
    times += [k * STEP for k in range(10, 40)]  # then the regular cadence again
    points = [Point("a", t, (float(i),)) for i, t in enumerate(times)]
    verdicts = real_windows_only(store, points)
    # Only windows spanning the early sample itself may differ (there is nothing to fill anyway);
    # no window may contain values invented between regular 60 s samples.
    assert all(verdicts), verdicts


def test_a_slower_sampling_cadence_is_followed_within_a_few_samples() -> None:
    store = WindowStore(window=4, n_features=1, max_gap_intervals=5)
    times = [k * STEP for k in range(20)] + [19 * STEP + k * 2 * STEP for k in range(1, 41)]
    points = [Point("a", t, (float(i),)) for i, t in enumerate(times)]
    verdicts = real_windows_only(store, points)
    # The first few 120 s gaps are filled (they look like missing samples); after that the
    # store has learnt the new cadence and stops inventing values.
    assert all(verdicts[-30:]), verdicts


def test_a_much_slower_cadence_is_learnt_and_windows_resume() -> None:
    store = WindowStore(window=3, n_features=1, max_gap_intervals=5)
    store.append(pts("a", list(range(10))), now=0.0)
    # From now on one sample every 10 intervals: each gap first looks like an outage.
    slow = [Point("a", 9 * STEP + k * 10 * STEP, (float(100 + k),)) for k in range(1, 21)]
    restarted = 0
    windows = []
    for point in slow:
        ready = store.append([point], now=0.0)
        restarted += ready.restarted
        windows += flat(ready.windows)
    assert 1 <= restarted <= 6
    assert windows[-1] == [118, 119, 120]  # scoring resumed on the new cadence, nothing invented


def test_capacity_evicts_the_least_recently_seen_series() -> None:
    store = WindowStore(window=2, n_features=1, max_series=2)
    store.append(pts("a", [1]) + pts("b", [1]), now=0.0)
    store.append(pts("a", [2], start=1), now=1.0)  # "a" is now the most recently seen
    ready = store.append(pts("c", [1]), now=2.0)
    assert ready.evicted_capacity == 1
    assert store.series() == ["a", "c"]
    assert "b" not in store
    # "a" kept its window.
    ready = store.append(pts("a", [3], start=2), now=3.0)
    assert flat(ready.windows) == [[2, 3]]
    ready = store.append(pts("b", [2], start=1), now=4.0)
    assert ready.evicted_capacity == 1
    assert store.series() == ["a", "b"]  # "c" was the least recently seen
    assert len(ready.index) == 0  # "b" lost its first point when it was evicted


def test_idle_series_are_evicted_by_the_clock_passed_in() -> None:
    store = WindowStore(window=2, n_features=1, idle_evict_s=100.0)
    # Point timestamps are far apart, but only ``now`` decides idleness.
    store.append([Point("a", 1e9, (1.0,))], now=0.0)
    store.append([Point("b", 1.0, (1.0,))], now=50.0)
    assert store.append([], now=99.0).evicted_idle == 0
    ready = store.append([], now=120.0)
    assert ready.evicted_idle == 1
    assert store.series() == ["b"]
    ready = store.append([], now=160.0)
    assert ready.evicted_idle == 1
    assert len(store) == 0
    # A returning series starts its warm-up again.
    ready = store.append([Point("a", 1e9 + 60, (2.0,))], now=170.0)
    assert len(ready.index) == 0


def test_seeing_a_series_keeps_it_from_idle_eviction() -> None:
    store = WindowStore(window=2, n_features=1, idle_evict_s=100.0)
    store.append(pts("a", [1]) + pts("b", [1]), now=0.0)
    store.append(pts("a", [2], start=1), now=90.0)
    ready = store.append([], now=150.0)
    assert ready.evicted_idle == 1
    assert store.series() == ["a"]


def test_multi_feature_windows_keep_features_apart() -> None:
    store = WindowStore(window=3, n_features=2)
    points = [Point("m", k * STEP, (float(k), float(-10 * k))) for k in range(4)]
    ready = store.append(points, now=0.0)
    assert ready.windows.shape == (2, 3, 2)
    np.testing.assert_array_equal(ready.windows[1], [[1, -10], [2, -20], [3, -30]])
    # A short gap interpolates each feature on its own line.
    gap = store.append([Point("m", 6 * STEP, (6.0, 0.0))], now=0.0)
    np.testing.assert_allclose(gap.windows[0], [[4, -20], [5, -10], [6, 0]])


def test_interleaved_series_have_independent_windows() -> None:
    store = WindowStore(window=3, n_features=1)
    a = pts("a", [1, 2, 3, 4])
    b = pts("b", [10, 20, 30])
    mixed = [a[0], b[0], a[1], b[1], a[2], b[2], a[3]]
    ready = store.append(mixed, now=0.0)
    assert ready.index.tolist() == [4, 5, 6]
    assert flat(ready.windows) == [[1, 2, 3], [10, 20, 30], [2, 3, 4]]
    assert ready.slots[0] == ready.slots[2] != ready.slots[1]


def test_forget_drops_a_series_state() -> None:
    store = WindowStore(window=2, n_features=1)
    store.append(pts("a", [1, 2]), now=0.0)
    store.forget("a")
    assert "a" not in store
    assert store.last_timestamp("a") is None
    assert len(store.append(pts("a", [3], start=2), now=0.0).index) == 0


def test_invalid_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        WindowStore(window=1, n_features=1)
    with pytest.raises(ValueError, match="stride"):
        WindowStore(window=4, n_features=1, stride=0)
