"""Router: readiness, stride, late points, gap filling, restarts, the sampling interval, series
independence and independence from how the points were cut into batches. WindowTails, checked
in every test: the windows it cuts are the last W values pushed."""

from __future__ import annotations

import numpy as np
import pytest

from streamlstm.core.state import SeriesRegistry
from streamlstm.core.windows import GAP_HISTORY, Pushes, Router, WindowTails

STEP = 60.0

Raw = tuple[str, float, tuple[float, ...]]  # (series, timestamp, values)


def pts(series: str, values: list[float], start: int = 0, step: float = STEP) -> list[Raw]:
    """Points ``start, start+1, ...`` sampling intervals after zero, one feature each."""
    return [(series, (start + k) * step, (float(v),)) for k, v in enumerate(values)]


class Fixture:
    """A registry and a router, and every series' pushed values so far (its windows)."""

    def __init__(self, window: int, n_features: int = 1, stride: int = 1,
                 max_gap_intervals: int = 5) -> None:
        self.registry = SeriesRegistry(16)
        self.router = Router(self.registry, window, n_features, stride, max_gap_intervals)
        self.tails = WindowTails(self.registry, window, n_features)
        self.window = window
        self.n_features = n_features
        self.pushed: dict[int, list[list[float]]] = {}

    def route(self, points: list[Raw]) -> Routed:
        lookup = self.registry.lookup([p[0] for p in points], now=0.0)
        assert lookup.done == len(points)
        timestamps = np.array([p[1] for p in points], dtype=np.float64)
        values = np.array([p[2] for p in points], dtype=np.float64).reshape(
            len(points), self.n_features)
        pushes = self.router.route(lookup.slots, timestamps, values)
        routed = Routed(self, pushes)
        if len(pushes.slots):
            # The windows WindowTails cuts, in push order, are the ones pushed (as float32).
            cut = self.tails.cut(pushes)
            assert cut.dtype == np.float32
            expected = np.array(routed.push_order_windows, np.float32).reshape(
                -1, self.window, self.n_features)
            np.testing.assert_array_equal(cut, expected)
        return routed

    def slot(self, series: str) -> int:
        slot = self.registry.slot_of(series)
        assert slot is not None
        return slot


class Routed:
    """One `route` call's pushes, checked for their invariants, with the windows they make."""

    def __init__(self, fixture: Fixture, pushes: Pushes) -> None:
        self.pushes = pushes
        self.restarted = pushes.restarted
        self.late = pushes.late.tolist()
        slots = pushes.slots.tolist()
        # Grouped by series, and seq counts each series' pushes from 0.
        seen: list[int] = []
        for i, slot in enumerate(slots):
            if not seen or seen[-1] != slot:
                assert slot not in seen, "pushes of one series are not contiguous"
                seen.append(slot)
            assert pushes.seq[i] == (0 if i == 0 or slots[i - 1] != slot
                                     else pushes.seq[i - 1] + 1)
        assert pushes.values.shape == (len(slots), fixture.n_features)
        assert not (pushes.ready & (pushes.point < 0)).any(), "an interpolated value is ready"
        self.index: list[int] = []  # input position of each ready window, in input order
        self.windows: list[list[list[float]]] = []  # [window][time][feature]
        self.window_slots: list[int] = []
        ready: list[tuple[int, int, list[list[float]]]] = []
        self.push_order_windows: list[list[list[float]]] = []
        for i, slot in enumerate(slots):
            history = fixture.pushed.setdefault(slot, [])
            history.append(pushes.values[i].tolist())
            if pushes.ready[i]:
                ready.append((int(pushes.point[i]), slot, history[-fixture.window :]))
                self.push_order_windows.append(history[-fixture.window :])
        for point, slot, window in sorted(ready):
            self.index.append(point)
            self.window_slots.append(slot)
            self.windows.append(window)

    def flat(self) -> list[list[float]]:
        """Windows of one feature as plain lists."""
        return [[v[0] for v in window] for window in self.windows]


def test_window_is_ready_exactly_when_full() -> None:
    f = Fixture(window=4)
    for k in range(3):
        routed = f.route(pts("a", [k], start=k))
        assert routed.index == []
        assert routed.pushes.point.tolist() == [0]
    routed = f.route(pts("a", [3], start=3))
    assert routed.index == [0]
    assert routed.flat() == [[0, 1, 2, 3]]


def test_readiness_within_one_batch_reports_input_positions() -> None:
    f = Fixture(window=4)
    routed = f.route(pts("a", list(range(6))))
    assert routed.index == [3, 4, 5]
    assert routed.flat() == [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]]
    assert routed.pushes.seq.tolist() == list(range(6))
    assert routed.pushes.rounds == 6


@pytest.mark.parametrize("stride", [2, 3])
def test_stride_readies_every_stride_th_window(stride: int) -> None:
    f = Fixture(window=4, stride=stride)
    routed = f.route(pts("a", list(range(12))))
    expected = list(range(3, 12, stride))
    assert routed.index == expected
    assert routed.flat() == [[i - 3, i - 2, i - 1, i] for i in expected]


def test_out_of_order_and_duplicate_timestamps_are_reported_late_and_ignored() -> None:
    f = Fixture(window=3)
    f.route(pts("a", [1, 2, 3]))  # t = 0, 60, 120
    batch: list[Raw] = [
        ("a", 120.0, (99.0,)),  # duplicate of the newest timestamp
        ("a", 60.0, (98.0,)),  # older than the newest
        ("a", 180.0, (4.0,)),  # in order
        ("a", 180.0, (97.0,)),  # duplicate within the batch
        ("b", 0.0, (1.0,)),  # another series: its own clock
    ]
    routed = f.route(batch)
    assert routed.late == [0, 1, 3]
    assert routed.index == [2]
    assert routed.flat() == [[2, 3, 4]]  # none of the late values got in
    assert sorted(routed.pushes.point.tolist()) == [2, 4]
    assert f.router.last_ts[f.slot("a")] == 180.0
    following = f.route([("a", 240.0, (5.0,))])
    assert following.late == []
    assert following.flat() == [[3, 4, 5]]


def test_short_gap_is_filled_by_linear_interpolation() -> None:
    f = Fixture(window=5, max_gap_intervals=5)
    f.route(pts("a", [0, 1, 2, 3, 5]))  # learns the 60 s interval
    # Three intervals later (two samples missing), the value jumps from 5 to 20.
    routed = f.route([("a", 7 * STEP, (20.0,))])
    assert routed.restarted == 0
    assert routed.pushes.point.tolist() == [-1, -1, 0]  # two fillers, then the real point
    np.testing.assert_allclose(routed.pushes.values[:, 0], [10, 15, 20])
    assert routed.index == [0]  # one window, for the real point only
    np.testing.assert_allclose(routed.flat(), [[3, 5, 10, 15, 20]])
    # The cadence goes on from the real point.
    after = f.route([("a", 8 * STEP, (21.0,))])
    assert len(after.pushes.slots) == 1
    np.testing.assert_allclose(after.flat(), [[5, 10, 15, 20, 21]])


def test_a_gap_of_one_and_a_half_intervals_or_less_is_not_filled() -> None:
    f = Fixture(window=3)
    f.route(pts("a", [0, 1, 2, 3]))
    routed = f.route([("a", 3 * STEP + 1.5 * STEP, (4.0,))])
    assert routed.pushes.point.tolist() == [0]
    routed = f.route([("a", 3 * STEP + 3.1 * STEP, (5.0,))])  # 1.6 intervals: rounds to 2
    assert routed.pushes.point.tolist() == [-1, 0]
    np.testing.assert_allclose(routed.pushes.values[:, 0], [4.5, 5.0])


def test_multi_feature_gaps_interpolate_each_feature_on_its_own_line() -> None:
    f = Fixture(window=3, n_features=2)
    points: list[Raw] = [("m", k * STEP, (float(k), float(-10 * k))) for k in range(4)]
    routed = f.route(points)
    assert routed.index == [2, 3]
    assert routed.windows[1] == [[1, -10], [2, -20], [3, -30]]
    gap = f.route([("m", 6 * STEP, (6.0, 0.0))])
    np.testing.assert_allclose(gap.windows[0], [[4, -20], [5, -10], [6, 0]])


def test_long_gap_restarts_the_window() -> None:
    f = Fixture(window=4, max_gap_intervals=5)
    f.route(pts("a", [0, 1, 2, 3, 4]))
    routed = f.route(pts("a", [100, 101, 102], start=4 + 10))  # 10 intervals later
    assert routed.restarted == 1
    assert routed.index == []  # the window must refill: warm-up starts again
    assert routed.pushes.point.tolist() == [0, 1, 2]  # nothing invented over the outage
    routed = f.route(pts("a", [103], start=17))
    assert routed.restarted == 0
    assert routed.flat() == [[100, 101, 102, 103]]  # nothing from before the gap


def test_two_long_gaps_in_a_row_both_restart() -> None:
    """One outage must not become the series' sampling interval."""
    f = Fixture(window=3, max_gap_intervals=5)
    f.route(pts("a", [0, 1, 2, 3]))
    first = f.route([("a", 3 * STEP + 86_400.0, (50.0,))])  # a day later
    assert first.restarted == 1
    # 50 intervals later again: still a long outage, not something to interpolate over.
    second = f.route([("a", 3 * STEP + 86_400.0 + 50 * STEP, (60.0,))])
    assert second.restarted == 1
    assert second.pushes.point.tolist() == [0]
    third = f.route([("a", 3 * STEP + 86_400.0 + 51 * STEP, (61.0,))])
    assert third.index == []  # two real points since the restart, window of three


def test_the_interval_is_the_upper_median_of_the_latest_gaps() -> None:
    f = Fixture(window=3, max_gap_intervals=1000)
    gaps = [5.0, 1.0, 4.0, 2.0, 3.0, 100.0, 100.0, 100.0, 100.0]
    # Upper median of the gaps so far (at most the latest GAP_HISTORY = 8 of them).
    expected = [5, 5, 4, 4, 3, 4, 4, 5, 100]
    assert GAP_HISTORY == 8
    t = 0.0
    f.route([("a", t, (0.0,))])
    assert f.router.interval[f.slot("a")] == 0.0  # no gap yet
    got = []
    for gap in gaps:
        t += gap
        f.route([("a", t, (0.0,))])
        got.append(f.router.interval[f.slot("a")])
    # After 8 gaps the first (5) is still counted: sorted [1, 2, 3, 4, 5, 100, 100, 100] -> 5;
    # the 9th pushes it out: [1, 2, 3, 4, 100, 100, 100, 100] -> 100.
    assert got == expected


def real_windows_only(f: Fixture, times: list[float]) -> list[bool]:
    """Feed one point per time, one at a time; for each window, whether it holds only real
    values (the values are the point numbers, so a filler is never a real value)."""
    real: list[float] = []
    verdicts = []
    for i, t in enumerate(times):
        routed = f.route([("a", t, (float(i),))])
        real.append(float(i))
        if routed.index:
            verdicts.append(routed.flat()[0] == real[-f.window :])
    return verdicts


def test_an_isolated_early_sample_does_not_make_regular_samples_look_like_gaps() -> None:
    f = Fixture(window=4, max_gap_intervals=5)
    times = [k * STEP for k in range(10)] + [9 * STEP + 10.0]  # one sample 10 s after the last
    times += [k * STEP for k in range(10, 40)]  # then the regular cadence again
    verdicts = real_windows_only(f, times)
    assert len(verdicts) == len(times) - 3
    assert all(verdicts), verdicts


def test_a_slower_sampling_cadence_is_followed_within_a_few_samples() -> None:
    f = Fixture(window=4, max_gap_intervals=5)
    times = [k * STEP for k in range(20)] + [19 * STEP + k * 2 * STEP for k in range(1, 41)]
    verdicts = real_windows_only(f, times)
    # The first few 120 s gaps are filled (they look like missing samples); after that the
    # router has learnt the new cadence and stops inventing values.
    assert not all(verdicts)
    assert all(verdicts[-30:]), verdicts
    assert f.router.interval[f.slot("a")] == 2 * STEP


def test_a_much_slower_cadence_is_learnt_and_windows_resume() -> None:
    f = Fixture(window=3, max_gap_intervals=5)
    f.route(pts("a", list(range(10))))
    # From now on one sample every 10 intervals: each gap first looks like an outage.
    restarted = 0
    windows = []
    for k in range(1, 21):
        routed = f.route([("a", 9 * STEP + k * 10 * STEP, (float(100 + k),))])
        restarted += routed.restarted
        windows += routed.flat()
    assert 1 <= restarted <= 6
    assert windows[-1] == [118, 119, 120]  # scoring resumed on the new cadence, nothing invented


def test_interleaved_series_are_independent() -> None:
    f = Fixture(window=3)
    a = pts("a", [1, 2, 3, 4])
    b = pts("b", [10, 20, 30])
    mixed = [a[0], b[0], a[1], b[1], a[2], b[2], a[3]]
    routed = f.route(mixed)
    assert routed.index == [4, 5, 6]
    assert routed.flat() == [[1, 2, 3], [10, 20, 30], [2, 3, 4]]
    assert routed.window_slots[0] == routed.window_slots[2] != routed.window_slots[1]
    # A gap, a restart and a late point in "b" leave "a" alone.
    routed = f.route([("b", 2 * STEP, (0.0,)), ("a", 4 * STEP, (5.0,)),
                      ("b", 4 * STEP, (50.0,)), ("b", 40 * STEP, (99.0,))])
    assert routed.late == [0]
    assert routed.restarted == 1
    assert routed.index == [1, 2]
    assert routed.flat() == [[3, 4, 5], [30, 40, 50]]
    assert f.router.count[f.slot("a")] == 5
    assert f.router.count[f.slot("b")] == 1


def normalised(batches: list[list[Raw]], fixture: Fixture) -> tuple[dict[str, list[tuple]],
                                                                    list[int], int]:
    """Route ``batches`` in turn; per series, its pushes in order as (values, ready, global
    input position or -1), the global positions of late points and the restarts."""
    per_series: dict[str, list[tuple]] = {}
    late: list[int] = []
    restarted = 0
    offset = 0
    for batch in batches:
        routed = fixture.route(batch)
        p = routed.pushes
        for i in range(len(p.slots)):
            name = fixture.registry.name_of(int(p.slots[i]))
            assert name is not None
            point = int(p.point[i])
            per_series.setdefault(name, []).append(
                (tuple(p.values[i].tolist()), bool(p.ready[i]),
                 point + offset if point >= 0 else -1))
        late += [i + offset for i in routed.late]
        restarted += routed.restarted
        offset += len(batch)
    return per_series, late, restarted


def irregular_stream(seed: int) -> list[Raw]:
    """Three series interleaved at random, with short gaps, an outage, late and duplicate
    points."""
    rng = np.random.default_rng(seed)
    out: list[Raw] = []
    clocks = {"a": 0.0, "b": 30.0, "c": 1e6}
    for _ in range(400):
        name = str(rng.choice(["a", "b", "c"], p=[0.5, 0.3, 0.2]))
        r = rng.uniform()
        if r < 0.08:
            step = STEP * int(rng.integers(2, 4))  # a short gap
        elif r < 0.1:
            step = STEP * 20  # an outage
        elif r < 0.15:
            step = -STEP * int(rng.integers(0, 3))  # late or a duplicate
        else:
            step = STEP
        t = clocks[name] + step
        clocks[name] = max(clocks[name], t)
        out.append((name, t, (float(rng.normal()), float(rng.normal() * 100))))
    return out


@pytest.mark.parametrize("cuts", [[1], [7], [50, 1, 200], [399]])
def test_the_same_pushes_however_the_points_were_cut_into_batches(cuts: list[int]) -> None:
    points = irregular_stream(3)
    whole = normalised([points], Fixture(window=5, n_features=2, stride=2))
    batches: list[list[Raw]] = []
    start, k = 0, 0
    while start < len(points):
        size = cuts[k % len(cuts)]
        batches.append(points[start : start + size])
        start += size
        k += 1
    cut = normalised(batches, Fixture(window=5, n_features=2, stride=2))
    assert cut == whole
    per_series, late, restarted = whole
    # The stream exercises what it means to.
    assert late and restarted
    assert any(point == -1 for pushes in per_series.values() for _, _, point in pushes)
    assert sum(ready for pushes in per_series.values() for _, ready, _ in pushes) > 100


def test_invalid_shapes_are_refused() -> None:
    registry = SeriesRegistry(2)
    with pytest.raises(ValueError, match="window"):
        Router(registry, window=1, n_features=1)
    with pytest.raises(ValueError, match="stride"):
        Router(registry, window=4, n_features=1, stride=0)


def test_an_empty_batch_pushes_nothing() -> None:
    f = Fixture(window=3)
    routed = f.route([])
    assert len(routed.pushes.slots) == 0 and routed.pushes.rounds == 0
    assert routed.late == [] and routed.restarted == 0
