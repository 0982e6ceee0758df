"""CalibratorBank, combined_surprise, AlarmState and alarm_rows: surprise against the exact
empirical tail, the fitted tail, scale invariance, warm-up, forgetting, series and kinds kept
apart, Fisher's rule, the alarm hold and the settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamlstm.core.calibration import (
    AlarmState,
    CalibrationSettings,
    CalibratorBank,
    KindCalibration,
    alarm_rows,
    combined_surprise,
    kind_calibration,
)
from streamlstm.core.state import SeriesRegistry

# Long memory and a short warm-up: the bank should hold (about) every value it was shown.
EXACT = CalibrationSettings(history=20_000, warmup=10, longterm=0)


def make_bank(kinds: list[KindCalibration], settings: CalibrationSettings = EXACT,
              max_series: int = 1) -> tuple[SeriesRegistry, CalibratorBank]:
    registry = SeriesRegistry(max_series)
    return registry, CalibratorBank(registry, kinds, settings)


def plain(settings: CalibrationSettings, *names: str, **overrides: object,
          ) -> list[KindCalibration]:
    return [kind_calibration(settings, name, **overrides) for name in names]  # type: ignore[arg-type]


def feed(bank: CalibratorBank, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values [T, n, K]``, one call per step; the surprises ``[T, n, K]``."""
    return np.stack([bank.score_then_learn(slots, v) for v in values])


def probe(train: np.ndarray, probes: np.ndarray, kinds: list[KindCalibration],
          settings: CalibrationSettings = EXACT) -> np.ndarray:
    """The surprise ``[P, K]`` of each probe row after learning ``train [T, K]``.

    Scoring also learns, so each probe row gets its own series, and every series learns the
    same ``train`` (together, in one call per step)."""
    n = len(probes)
    registry, bank = make_bank(kinds, settings, max_series=n)
    slots = registry.lookup([f"p{i}" for i in range(n)], now=0.0).slots
    for row in train:
        bank.score_then_learn(slots, np.broadcast_to(row, (n, len(row))))
    return bank.score_then_learn(slots, probes)


def empirical_surprise(values: np.ndarray, x: float) -> float:
    """The exact ``-log10 P(X >= x)`` of the values learnt."""
    return -math.log10(float(np.mean(values >= x)))


def test_surprise_approximates_the_exact_empirical_tail() -> None:
    """The bank keeps no values, only a 64-bin histogram of standardised values (uniform
    within a bin) whose mean and spread move while it learns, and beyond the top 2% an
    exponential tail fitted to the mean excess. Against the exact empirical ``-log10
    P(X >= x)`` of the same 2000 values that is good to about 0.1 in log10 (25% in
    probability); the sampling noise of the values does not enter, as both sides see the same
    values."""
    rng = np.random.default_rng(0)
    n = 2000
    train = np.c_[rng.normal(size=n) * 3 + 50, rng.exponential(2.0, n), rng.lognormal(0, 1, n)]
    kinds = [kind_calibration(EXACT, "normal"), kind_calibration(EXACT, "exponential"),
             kind_calibration(EXACT, "lognormal", log_domain=True)]
    tail_probabilities = [0.7, 0.5, 0.2, 0.1, 0.05, 0.03, 0.01]
    probes = np.array([[np.quantile(train[:, k], 1 - p) for k in range(3)]
                       for p in tail_probabilities] + [[0.0, -1.0, 1e-3]])
    got = probe(train, probes, kinds)
    for i, p in enumerate(tail_probabilities):
        for k in range(3):
            expected = empirical_surprise(train[:, k], probes[i, k])
            # The body is read off the histogram; at 1% the fitted exponential tail answers.
            tolerance = 0.1 if p > 0.02 else 0.15
            assert got[i, k] == pytest.approx(expected, abs=tolerance), (p, kinds[k].name)
    # Below everything seen: (nearly) certain, no surprise. Not exactly 0: the very first
    # values were standardised by a spread still settling, and a few landed in low bins.
    np.testing.assert_allclose(got[-1], 0.0, atol=1e-3)


def test_surprise_keeps_growing_in_the_tail_beyond_the_largest_value_held() -> None:
    rng = np.random.default_rng(1)
    train = rng.exponential(1.0, 2000)[:, None]
    top = float(train.max())
    probes = np.array([[top], [top + 2], [top + 5], [top + 10], [20.0]])
    got = probe(train, probes, plain(EXACT, "x"))[:, 0]
    assert (np.diff(got[:4]) > 0).all()
    # An exponential tail: each unit of excess costs log10(e) / (mean excess = 1).
    assert (got[3] - got[0]) / 10 == pytest.approx(math.log10(math.e), rel=0.2)
    assert got[4] == pytest.approx(20 / math.log(10), rel=0.15)  # -log10(e^-20)
    assert got[0] > empirical_surprise(train[:, 0], top) - 0.3  # 1 in 2000 at the top


def test_the_same_rarity_means_the_same_surprise_whatever_the_noise_level() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=1000)
    train = np.c_[base * 0.01, base * 100.0, base * 100.0 + 1e6]
    kinds = plain(EXACT, "quiet", "noisy", "noisy_and_high")
    factors = np.array([-1.0, 0.0, 0.5, 1.5, 2.5, 3.0, 4.0, 6.0])
    probes = np.c_[factors * 0.01, factors * 100.0, factors * 100.0 + 1e6]
    got = probe(train, probes, kinds)
    assert got[:, 0].max() > 3  # the probes reach into the tail
    np.testing.assert_allclose(got[:, 1], got[:, 0], atol=1e-6)
    np.testing.assert_allclose(got[:, 2], got[:, 0], atol=1e-3)


def test_no_surprise_until_warm_and_missing_values_are_not_learnt() -> None:
    settings = CalibrationSettings(history=100, warmup=50, longterm=0)
    kinds = [kind_calibration(settings, "slow"), kind_calibration(settings, "fast", warmup=5)]
    registry, bank = make_bank(kinds, settings)
    slots = registry.lookup(["a"], now=0.0).slots
    rng = np.random.default_rng(3)
    values = rng.normal(size=(120, 2))
    values[[10, 11, 30, 70], 0] = np.nan  # "slow" gets no evidence at these steps
    values[[2, 40], 1] = np.nan
    got = feed(bank, slots, values[:, None, :])[:, 0]
    learnt = np.cumsum(np.isfinite(values), axis=0) - np.isfinite(values)  # before each step
    warm = learnt >= [50, 5]
    assert np.array_equal(np.isfinite(got), warm & np.isfinite(values))
    # Three NaN before step 53, so "slow" has learnt its 50 values just then.
    assert np.isfinite(got[53, 0]) and np.isnan(got[52, 0])
    np.testing.assert_array_equal(bank.n[slots[0]], np.isfinite(values).sum(axis=0))
    assert bank.warm(slots).tolist() == [[True, True]]

    # Skipped values leave no trace: the same as a bank that never saw them, bit for bit.
    for k, name in enumerate(["slow", "fast"]):
        ref_registry, ref_bank = make_bank([kinds[k]], settings)
        ref_slots = ref_registry.lookup(["a"], now=0.0).slots
        present = values[np.isfinite(values[:, k]), k]
        expected = feed(ref_bank, ref_slots, present[:, None, None])[:, 0, 0]
        assert np.array_equal(got[np.isfinite(values[:, k]), k], expected, equal_nan=True), name
        for array in ("hist", "over_mean", "mean", "var", "n"):
            assert np.array_equal(getattr(bank, array)[slots[0], k],
                                  getattr(ref_bank, array)[ref_slots[0], 0]), (name, array)


def test_the_recent_horizon_follows_a_new_normal() -> None:
    rng = np.random.default_rng(4)
    old, new = rng.normal(size=200) + 10.0, rng.normal(size=600)  # 6 recent horizons
    train = np.r_[old, new][:, None]
    probes = np.array([[0.0], [1.0], [10.0]])
    recent = CalibrationSettings(history=100, warmup=10, longterm=0)
    forgetting = probe(train, probes, plain(recent, "x"), recent)[:, 0]
    keeping = probe(train, probes, plain(EXACT, "x"), EXACT)[:, 0]
    # Forgetting: the new level is what N(0, 1) would say (0.3 and 0.8) ...
    assert forgetting[0] == pytest.approx(-math.log10(0.5), abs=0.15)
    assert forgetting[1] == pytest.approx(-math.log10(0.1587), abs=0.3)
    # ... and the old one has become rare, where a bank that keeps everything still holds a
    # quarter of its values there.
    assert forgetting[2] > 4.0
    assert keeping[2] < forgetting[2] - 2.0


def shift_then_probe(order: str) -> tuple[np.ndarray, np.ndarray]:
    """The bank's and the exact surprises at a few probes after 300 values of N(10, 1) and
    600 of N(0, 1), learnt in ``order`` ("old first" or "shuffled")."""
    rng = np.random.default_rng(4)
    train = np.r_[rng.normal(size=300) + 10.0, rng.normal(size=600)]
    if order == "shuffled":
        train = rng.permutation(train)
    xs = np.array([2.0, 9.0, 10.0, 11.0])
    got = probe(train[:, None], xs[:, None], plain(EXACT, "x"), EXACT)[:, 0]
    return got, np.array([empirical_surprise(train, x) for x in xs])


def test_a_stationary_mixture_is_read_accurately() -> None:
    got, exact = shift_then_probe("shuffled")
    np.testing.assert_allclose(got, exact, atol=0.15)


def test_values_learnt_before_a_level_shift_keep_their_place() -> None:
    """The same values as `test_a_stationary_mixture_is_read_accurately`, but the level
    shifts once (10 -> 0) instead of the two levels being mixed throughout. A horizon that
    still holds the old values (here exact, no forgetting; in service the long horizon, ~20,000
    values) must read them where they were: the grid moves with the running statistics and
    the held mass is re-binned onto it. (Binned by the statistics of the time and read by
    today's, P(X >= 9) came out 0.048 instead of 0.29.)"""
    got, exact = shift_then_probe("old first")
    np.testing.assert_allclose(got, exact, atol=0.15)


def test_the_long_horizon_remembers_rare_but_normal_values() -> None:
    rng = np.random.default_rng(5)
    train = rng.normal(size=1200)
    train[rng.choice(700, 7, replace=False)] = 10.0  # 1% spikes, then a quiet stretch
    probes = np.array([[10.0], [0.0], [1.0]])
    recent = CalibrationSettings(history=100, warmup=50, longterm=0)
    both = CalibrationSettings(history=100, warmup=50)  # with the default long horizon
    recent_only = probe(train[:, None], probes, plain(recent, "x"), recent)[:, 0]
    with_long = probe(train[:, None], probes, plain(both, "x"), both)[:, 0]
    # The last 500 values (5 recent horizons) hold no spike: alone they call 10.0 extreme ...
    assert recent_only[0] > 6.0
    # ... while the long one knows it happens about once in a hundred.
    assert with_long[0] < recent_only[0] - 2.0
    # Ordinary values mean the same to both.
    np.testing.assert_allclose(with_long[1:], recent_only[1:], atol=0.1)


def series_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 3, 2]``: three series at different levels and noise, two kinds, some NaN."""
    values = np.stack([
        np.c_[rng.normal(size=n), rng.exponential(1.0, n)],
        np.c_[rng.normal(size=n) * 1e3 + 1e6, rng.lognormal(2, 1, n)],
        np.c_[rng.standard_t(3, n), rng.exponential(1e-3, n)],
    ], axis=1)
    values[rng.uniform(size=values.shape) < 0.05] = np.nan
    return values


def test_learning_several_series_in_one_call_equals_learning_each_alone() -> None:
    settings = CalibrationSettings(history=300, warmup=40, longterm=500)
    kinds = [kind_calibration(settings, "distance"),
             kind_calibration(settings, "error", log_domain=True, tail_fraction=0.05)]
    values = series_values(np.random.default_rng(6), 300)
    registry, bank = make_bank(kinds, settings, max_series=6)
    names = ["x", "y", "z"]
    registry.lookup(["pad0", "pad1", "pad2"], now=0.0)  # so the slots are neither 0.. nor sorted
    registry.forget("pad1")
    slots = registry.lookup(names[::-1], now=0.0).slots[::-1]
    together = feed(bank, slots, values)
    assert np.isfinite(together).mean() > 0.8
    for j, name in enumerate(names):
        one_registry, one_bank = make_bank(kinds, settings)
        one = one_registry.lookup([name], now=0.0).slots
        alone = feed(one_bank, one, values[:, j : j + 1])
        assert np.array_equal(together[:, j], alone[:, 0], equal_nan=True), name
        for array in ("hist", "over_mean", "mean", "var", "n"):
            assert np.array_equal(getattr(bank, array)[slots[j]],
                                  getattr(one_bank, array)[one[0]]), (name, array)


def test_kinds_are_independent() -> None:
    settings = CalibrationSettings(history=200, warmup=20)
    kinds = [kind_calibration(settings, "a"), kind_calibration(settings, "b", log_domain=True),
             kind_calibration(settings, "c", tail_fraction=0.1, history=50, warmup=30)]
    values = series_values(np.random.default_rng(7), 200)[:, :1, :]  # one series
    values = np.concatenate([values, values[:, :, :1] * 2 + 3], axis=2)  # [T, 1, 3]
    registry, bank = make_bank(kinds, settings)
    slots = registry.lookup(["s"], now=0.0).slots
    together = feed(bank, slots, values)
    for k, kind in enumerate(kinds):
        one_registry, one_bank = make_bank([kind], settings)
        one = one_registry.lookup(["s"], now=0.0).slots
        alone = feed(one_bank, one, values[:, :, k : k + 1])
        assert np.array_equal(together[:, :, k], alone[:, :, 0], equal_nan=True), kind.name
    assert bank.index("b") == 1
    # Forgetting one kind (a swapped model's errors) leaves the others as they were.
    hist_before = bank.hist[slots[0]].copy()
    bank.reset_kind("b", warmup=5)
    assert bank.n[slots[0]].tolist()[1] == 0
    np.testing.assert_array_equal(bank.hist[slots[0], [0, 2]], hist_before[[0, 2]])
    after = feed(bank, slots, np.full((6, 1, 3), 0.5))[:, 0]
    assert np.isnan(after[:5, 1]).all() and np.isfinite(after[5, 1])
    assert np.isfinite(after[:, 0]).all()


def fisher_closed_form(probabilities: list[float]) -> float:
    """``-log10 P(prod U_i <= x)`` for ``x = prod p_i`` and k independent uniforms."""
    x = math.prod(probabilities)
    k = len(probabilities)
    tail = sum((-math.log(x)) ** i / math.factorial(i) for i in range(k))
    return -math.log10(x * tail)


@pytest.mark.parametrize("probabilities", [[0.5, 0.5], [0.01, 0.2], [1e-5, 0.3], [1.0, 0.01],
                                           [0.1, 0.2, 0.3], [1e-4, 1e-3, 0.5],
                                           [1e-8, 1e-8, 1e-8]])
def test_fisher_rule_matches_the_closed_form(probabilities: list[float]) -> None:
    surprises = [-math.log10(p) for p in probabilities]
    expected = fisher_closed_form(probabilities)
    assert float(combined_surprise(surprises)) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # It never claims more rarity than the plain sum, nor less than the rarest part.
    assert expected <= sum(surprises) + 1e-12
    assert expected >= max(surprises) - 1e-12 or len(probabilities) > 1


def test_fisher_rule_ignores_nan_and_works_on_rows() -> None:
    s = [2.0, math.nan, 0.5]
    assert float(combined_surprise(s)) == pytest.approx(float(combined_surprise([2.0, 0.5])))
    assert float(combined_surprise([math.nan, 3.0, math.nan])) == pytest.approx(3.0)
    assert float(combined_surprise([math.nan, math.nan])) == 0.0  # no evidence: no surprise
    assert float(combined_surprise([0.0, 0.0, 0.0])) == 0.0
    rows = np.array([[2.0, math.nan, 0.5], [math.nan, math.nan, math.nan], [1.0, 1.0, 1.0]])
    got = combined_surprise(rows)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, [fisher_closed_form([1e-2, 10**-0.5]), 0.0,
                                     fisher_closed_form([0.1, 0.1, 0.1])])


def test_fisher_rule_is_calibrated_for_independent_uniform_probabilities() -> None:
    rng = np.random.default_rng(8)
    p = rng.uniform(size=(40_000, 3))
    p[:, 2][rng.uniform(size=len(p)) < 0.5] = np.nan  # some rows combine two, some three
    combined = combined_surprise(-np.log10(p))
    for level in (0.5, 1.0, 2.0):
        assert np.mean(combined >= level) == pytest.approx(10**-level, rel=0.1)


def test_alarm_rows_alarm_once_per_incident() -> None:
    # An incident lasts while flagged rows come at most `hold` rows apart: a sustained one
    # alarms once, however long it lasts (the rule before re-alarmed every hold + 1 rows).
    scores = [0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.9, math.nan, 0.9]
    assert alarm_rows(scores, 0.5, hold=3).tolist() == [True] + [False] * 8
    # A new incident starts after `hold` quiet rows (NaN rows are quiet).
    assert alarm_rows([0.9, 0.1, 0.1, 0.1, 0.9], 0.5, hold=3).tolist() == [
        True, False, False, False, True]
    assert alarm_rows([0.9, 0.1, math.nan, 0.9], 0.5, hold=3).tolist() == [
        True, False, False, False]
    assert alarm_rows([0.9, 0.1, math.nan, 0.1, 0.9], 0.5, hold=3).tolist()[-1]
    assert alarm_rows(scores, 0.5).tolist() == [s >= 0.5 for s in scores]  # NaN never alarms
    assert alarm_rows(scores, 0.9, hold=0).tolist() == alarm_rows(scores, 0.9).tolist()


@pytest.mark.parametrize("hold", [0, 1, 7, 40])
def test_alarm_state_matches_alarm_rows_row_by_row(hold: int) -> None:
    rng = np.random.default_rng(9)
    scores = rng.uniform(size=(2000, 3)) ** np.array([4.0, 1.0, 12.0])
    scores[rng.uniform(size=scores.shape) < 0.03] = np.nan
    registry = SeriesRegistry(5)
    state = AlarmState(registry, threshold=0.6, hold=hold)
    slots = registry.lookup(["a", "b", "c"], now=0.0).slots
    got = np.zeros(scores.shape, bool)
    for t in range(len(scores)):
        order = rng.permutation(3)  # the series of a round come in any order
        got[t, order] = state.check(slots[order], scores[t, order])
    for j in range(3):
        expected = alarm_rows(scores[:, j], 0.6, hold)
        assert expected.sum() > 0
        assert got[:, j].tolist() == expected.tolist(), j


def test_settings_round_trip_and_ignore_unknown_keys() -> None:
    settings = CalibrationSettings(threshold=0.4, alarm_hold=12, history=300, warmup=20,
                                   longterm=0, seasonal_history=90)
    data = settings.to_dict() | {"prior_mean": 1.0}  # a key from an older artifact
    assert CalibrationSettings.from_dict(data) == settings
    assert CalibrationSettings.from_dict({}) == CalibrationSettings()


@pytest.mark.parametrize("kwargs", [{"tail_fraction": 0.0}, {"tail_fraction": 1.0},
                                    {"error_tail_fraction": 0.0},
                                    {"error_tail_fraction": 1.5},
                                    {"history": 10, "warmup": 20}, {"warmup": 0},
                                    {"seasonal_history": 0},
                                    {"longterm": 50, "warmup": 100},
                                    {"longterm_min_rate": 1.5}, {"longterm_min_rate": -0.1}])
def test_rejects_impossible_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CalibrationSettings(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CalibrationSettings.from_dict(kwargs)


def test_kind_calibration_takes_the_settings_unless_overridden() -> None:
    settings = CalibrationSettings(history=400, warmup=30, tail_fraction=0.03)
    assert kind_calibration(settings, "m") == KindCalibration("m", False, 0.03, 400, 30)
    assert kind_calibration(settings, "e", log_domain=True, tail_fraction=0.1, history=50,
                            warmup=5) == KindCalibration("e", True, 0.1, 50, 5)
    assert CalibrationSettings(longterm=0, warmup=5000, history=5000).longterm == 0


def test_regrid_keeps_the_mass_and_a_grid_moved_onto_itself_keeps_the_histogram() -> None:
    from streamlstm.core.calibration import BINS, _regrid

    rng = np.random.default_rng(5)
    hist = rng.random((40, BINS + 2)) * (rng.random((40, BINS + 2)) < 0.5)
    over = rng.uniform(8.5, 30.0, 40)
    old = np.stack([rng.normal(0, 1, 40), rng.uniform(0.1, 2, 40)], axis=1)
    same, same_over = _regrid(hist, over, old, old)
    np.testing.assert_allclose(same, hist, atol=1e-12)
    held = hist[:, BINS + 1] > 0  # with nothing above the grid, the mean above is its top
    np.testing.assert_allclose(same_over[held], over[held], rtol=1e-12)
    np.testing.assert_allclose(same_over[~held], 8.0)
    assert (~held).any()
    new = np.stack([rng.normal(0, 1, 40), rng.uniform(0.1, 2, 40)], axis=1)
    moved, _ = _regrid(hist, over, old, new)
    np.testing.assert_allclose(moved.sum(axis=1), hist.sum(axis=1), rtol=1e-12)
    # A grid of width 0 (one value so far): all the mass lands in the bin of that value.
    point = old.copy()
    point[:, 1] = 0.0
    at_point, _ = _regrid(hist, over, point, new)
    assert (np.count_nonzero(at_point, axis=1) <= 1).all()
    np.testing.assert_allclose(at_point.sum(axis=1), hist.sum(axis=1), rtol=1e-12)
