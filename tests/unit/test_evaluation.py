"""NAB-style evaluator: hand-computed cases, the threshold sweep, the alarm hold, metrics, real
nab-dev data.

Hand-made file used by most cases: 100 rows one minute apart, so probation is
floor(0.15 * 100) = 15 rows (rows 0..14), and one labelled window over rows 40..49 (width 10).
Scaled sigmoid: sigma(y) = 2 / (1 + exp(5y)) - 1 = tanh(-2.5 y); sigma(-1) = tanh(2.5) = 0.98661.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from streamlstm import evaluation
from streamlstm.core.calibration import alarm_rows
from streamlstm.evaluation import (
    NEVER_FIRE,
    PROFILES,
    Profile,
    ScoredSeries,
    WindowMetrics,
    detections_at,
    evaluate,
    load_windows,
    nab_raw_score,
    optimise_threshold,
    plot_series,
    probation_rows,
    timestamp_to_epoch,
)
from tests.nab_sample import NAB_WINDOWS, nab_file

STANDARD = PROFILES["standard"]
T0 = 1_400_000_000.0
N = 100
WINDOW = (40, 49)


def make_series(
    name: str = "toy.csv",
    windows: list[tuple[int, int]] | None = None,
    scores: np.ndarray | None = None,
    n: int = N,
) -> ScoredSeries:
    """A series of ``n`` rows one minute apart; windows given as (first row, last row)."""
    ts = T0 + 60.0 * np.arange(n)
    rows = [WINDOW] if windows is None else windows
    return ScoredSeries(
        name=name,
        timestamps=ts,
        values=np.sin(np.arange(n) / 5.0),
        scores=np.zeros(n) if scores is None else scores,
        windows=[(ts[a], ts[b]) for a, b in rows],
    )


def fire(*rows: int, n: int = N) -> np.ndarray:
    detections = np.zeros(n, dtype=bool)
    detections[list(rows)] = True
    return detections


# --- single-file raw scores, by hand -------------------------------------------------------


def test_detection_at_left_edge_earns_full_tp_weight() -> None:
    # Row 40: y = -(49 - 40 + 1) / 10 = -1 -> sigma(-1) / sigma(-1) = 1, times A_TP = 1.
    score = nab_raw_score(make_series(), fire(40), STANDARD)
    assert score.raw == pytest.approx(1.0)
    assert (score.tp, score.fp, score.fn) == (1, 0, 0)
    # The credit scales with A_TP.
    assert nab_raw_score(make_series(), fire(40), Profile(2.0, 0.11, 1.0)).raw == pytest.approx(2)


def test_later_detections_in_the_window_earn_less() -> None:
    # Row 45: y = -(49 - 45 + 1) / 10 = -0.5 -> tanh(1.25) / tanh(2.5) = 0.848284 / 0.986614
    #         = 0.859793.
    # Row 49 (right edge): y = -1/10 -> tanh(0.25) / tanh(2.5) = 0.244919 / 0.986614 = 0.248242.
    middle = nab_raw_score(make_series(), fire(45), STANDARD)
    right = nab_raw_score(make_series(), fire(49), STANDARD)
    assert middle.raw == pytest.approx(0.8597925669, rel=1e-9)
    assert right.raw == pytest.approx(0.2482415498, rel=1e-9)
    assert (right.tp, right.fp, right.fn) == (1, 0, 0)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    # Rows 41, 45, 49 all inside: only row 41 counts, y = -0.9 -> tanh(2.25) / tanh(2.5)
    # = 0.978026 / 0.986614 = 0.991295; the later two add nothing and are not FPs.
    score = nab_raw_score(make_series(), fire(41, 45, 49), STANDARD)
    assert score.raw == pytest.approx(0.9912952980, rel=1e-9)
    assert (score.tp, score.fp, score.fn) == (1, 0, 0)


def test_detection_just_after_a_window_costs_little() -> None:
    # Row 50: y = (50 - 49) / (10 - 1) = 1/9 -> sigma = -tanh(2.5/9) = -0.270847; times
    # A_FP = 0.11 -> -0.029793. With the window caught at its left edge: 1 - 0.029793.
    score = nab_raw_score(make_series(), fire(40, 50), STANDARD)
    assert score.raw == pytest.approx(1.0 - 0.0297931830, rel=1e-9)
    assert (score.tp, score.fp, score.fn) == (1, 1, 0)
    # Row 51, twice as far (y = 2/9): -0.11 * tanh(5/9) = -0.055514, a larger cost.
    assert nab_raw_score(make_series(), fire(40, 51), STANDARD).raw == pytest.approx(
        1.0 - 0.0555139637, rel=1e-9
    )


def test_detection_far_from_any_window_costs_full_fp_weight() -> None:
    # Row 90: y = (90 - 49) / 9 = 4.6 >= 3 -> sigma = -1 -> -A_FP. Row 20 precedes every
    # window, which NAB also charges in full. Both under reward_low_fp: -0.22 each.
    far = nab_raw_score(make_series(), fire(40, 90), STANDARD)
    before = nab_raw_score(make_series(), fire(20, 40), STANDARD)
    assert far.raw == pytest.approx(1.0 - 0.11)
    assert before.raw == pytest.approx(1.0 - 0.11)
    low_fp = nab_raw_score(make_series(), fire(20, 40, 90), PROFILES["reward_low_fp"])
    assert low_fp.raw == pytest.approx(1.0 - 2 * 0.22)
    assert low_fp.fp == 2


def test_missed_window_costs_fn_weight() -> None:
    # Nothing fires: -A_FN; 2 under reward_low_fn. An FP far away adds -A_FP on top.
    assert nab_raw_score(make_series(), fire(), STANDARD).raw == pytest.approx(-1.0)
    assert nab_raw_score(make_series(), fire(), PROFILES["reward_low_fn"]).raw == pytest.approx(-2)
    missed = nab_raw_score(make_series(), fire(90), STANDARD)
    assert missed.raw == pytest.approx(-1.11)
    assert (missed.tp, missed.fp, missed.fn) == (0, 1, 1)


def test_detections_in_probation_are_ignored() -> None:
    # Rows 5 and 14 are inside the 15-row probation: no FP cost; the window is still missed.
    score = nab_raw_score(make_series(), fire(5, 14), STANDARD)
    assert score.raw == pytest.approx(-1.0)
    assert (score.tp, score.fp, score.fn) == (0, 0, 1)
    # Row 15 is the first scored row: it precedes the window, so it costs the full A_FP.
    assert nab_raw_score(make_series(), fire(15), STANDARD).raw == pytest.approx(-1.11)


def test_window_inside_probation_neither_earns_nor_costs() -> None:
    # Window over rows 5..10 ends before row 15: not scored; null and perfect are 0.
    series = make_series(windows=[(5, 10)])
    score = nab_raw_score(series, fire(6), STANDARD)
    assert (score.raw, score.tp, score.fn, score.null, score.perfect) == (0.0, 0, 0, 0.0, 0.0)
    # Row 16 still counts as just after that window: y = (16 - 10) / (6 - 1) = 1.2 ->
    # -0.11 * tanh(3) = -0.109545.
    assert nab_raw_score(series, fire(16), STANDARD).raw == pytest.approx(
        -0.11 * math.tanh(3.0), rel=1e-9
    )


def test_file_without_windows_only_pays_for_false_positives() -> None:
    series = make_series(windows=[])
    quiet = nab_raw_score(series, fire(), STANDARD)
    assert (quiet.raw, quiet.null, quiet.perfect, quiet.windows) == (0.0, 0.0, 0.0, 0)
    noisy = nab_raw_score(series, fire(30, 60), STANDARD)
    assert noisy.raw == pytest.approx(-0.22)
    assert noisy.fp == 2


def test_null_and_perfect_raw_scores_per_file() -> None:
    series = make_series(windows=[(30, 39), (60, 69)])
    score = nab_raw_score(series, fire(), PROFILES["reward_low_fn"])
    assert (score.null, score.perfect) == (-4.0, 2.0)
    assert nab_raw_score(series, fire(30, 60), STANDARD).raw == pytest.approx(2.0)


def test_probation_is_fifteen_percent_capped_at_750_rows() -> None:
    assert probation_rows(100) == 15
    assert probation_rows(4032) == 604  # floor(604.8)
    assert probation_rows(5000) == 750
    assert probation_rows(22695) == 750


def test_detections_are_scores_at_or_above_threshold() -> None:
    scores = np.array([0.1, 0.5, 0.7, np.nan])
    assert detections_at(scores, 0.5).tolist() == [False, True, True, False]


# --- corpus: normalisation and the threshold sweep -----------------------------------------


def _corpus(rng: np.random.Generator) -> list[ScoredSeries]:
    """Three files with noise scores below 0.6, a few planted false alarms at 0.7 and true
    alarms at 0.8 at each window's left edge, plus one file without windows."""
    files = []
    specs = {"a.csv": [(30, 39), (70, 79)], "b.csv": [(50, 59)], "c.csv": []}
    for name, windows in specs.items():
        scores = rng.uniform(0.0, 0.6, N)
        for left, _ in windows:
            scores[left] = 0.8
        scores[[20, 90]] = 0.7
        files.append(make_series(name, windows, scores))
    return files


def test_never_firing_detector_scores_zero_and_perfect_one_scores_hundred() -> None:
    windows = [(30, 39), (70, 79)]
    quiet = [make_series("a.csv", windows), make_series("b.csv", [(50, 59)])]
    report = evaluate(quiet)
    for result in report.profiles.values():
        assert result.score == pytest.approx(0.0)
        assert result.threshold == NEVER_FIRE

    perfect_scores = np.zeros(N)
    perfect_scores[[30, 70]] = 1.0
    other = np.zeros(N)
    other[50] = 1.0
    perfect = [
        make_series("a.csv", windows, perfect_scores),
        make_series("b.csv", [(50, 59)], other),
    ]
    report = evaluate(perfect)
    for result in report.profiles.values():
        assert result.score == pytest.approx(100.0)
        assert result.threshold == 1.0
        assert (result.tp, result.fp, result.fn) == (3, 0, 0)


def test_normalised_score_by_hand() -> None:
    # Two windows, one caught at its left edge (+1), one missed (-1), and an FP at row 99,
    # (99 - 69) / 9 = 3.3 >= 3 widths after the last window (-0.11):
    # raw = -0.11, null = -2, perfect = 2 -> 100 * (-0.11 + 2) / 4 = 47.25.
    scores = np.zeros(N)
    scores[[30, 99]] = 1.0
    report = evaluate([make_series("a.csv", [(30, 39), (60, 69)], scores)], thresholds=[1.0])
    standard = report.profiles["standard"]
    assert (standard.raw, standard.null, standard.perfect) == pytest.approx((-0.11, -2.0, 2.0))
    assert standard.score == pytest.approx(47.25)
    # A file's contribution is its share of that score.
    assert sum(f.contribution for f in report.files) == pytest.approx(47.25)


def test_optimiser_finds_the_threshold_that_separates_a_planted_case() -> None:
    corpus = _corpus(np.random.default_rng(7))
    threshold, raw = optimise_threshold(corpus, STANDARD)
    # At 0.8 every window is caught at its left edge and nothing else fires; 0.7 adds the
    # false alarms, anything above 0.8 loses the windows.
    assert threshold == 0.8
    assert raw == pytest.approx(3.0)
    report = evaluate(corpus)
    assert report.threshold == 0.8
    assert report.profiles["standard"].score == pytest.approx(100.0)
    assert report.overall == WindowMetrics(windows=3, detected=3, fp=0)


def test_sweep_agrees_with_direct_scoring_at_every_threshold() -> None:
    rng = np.random.default_rng(3)
    corpus = [
        make_series(f"f{i}.csv", windows, rng.choice(np.linspace(0, 1, 21), N))
        for i, windows in enumerate([[(30, 39), (60, 72)], [(16, 25)], [], [(90, 99)]])
    ]
    candidates = np.linspace(0, 1, 21)
    for profile in PROFILES.values():
        brute = {
            float(t): sum(nab_raw_score(s, detections_at(s.scores, t), profile).raw for s in corpus)
            for t in candidates
        }
        for t, expected in brute.items():
            assert optimise_threshold(corpus, profile, [t])[1] == pytest.approx(expected)
        never = sum(nab_raw_score(s, np.zeros(N, bool), profile).raw for s in corpus)
        best_t, best_raw = optimise_threshold(corpus, profile)
        assert best_raw == pytest.approx(max(*brute.values(), never))
        assert best_raw == pytest.approx(
            sum(nab_raw_score(s, detections_at(s.scores, best_t), profile).raw for s in corpus)
        )


def test_fixed_threshold_is_honoured() -> None:
    corpus = _corpus(np.random.default_rng(11))
    report = evaluate(corpus, thresholds=[0.7])
    assert {r.threshold for r in report.profiles.values()} == {0.7}
    # Each of the three files has two planted 0.7 false alarms (rows 20 and 90, outside every
    # window), and every window is still caught by its 0.8 row.
    assert report.overall.fp == 6
    assert report.overall.detected == 3


# --- the alarm hold ------------------------------------------------------------------------


def test_hold_makes_a_burst_outside_windows_one_false_positive() -> None:
    # Rows 20..24 score 1, before the only window: each detection there costs the full
    # A_FP = 0.11. Without a hold that is 5 FPs: raw = -1 (window missed) - 5 * 0.11 = -1.55.
    # With a hold of 10 rows, row 20 alarms and holds rows 21..30: 1 FP, raw = -1.11.
    scores = np.zeros(N)
    scores[20:25] = 1.0
    series = make_series(scores=scores)
    loose = evaluate([series], thresholds=[1.0], hold=0)
    held = evaluate([series], thresholds=[1.0], hold=10)
    assert (loose.overall.fp, loose.files[0].detections) == (5, 5)
    assert (held.overall.fp, held.files[0].detections) == (1, 1)
    assert loose.profiles["standard"].raw == pytest.approx(-1.55)
    assert held.profiles["standard"].raw == pytest.approx(-1.11)
    assert (loose.hold, held.hold) == (0, 10)
    # The detections scored are the daemon's alarms.
    assert np.flatnonzero(alarm_rows(scores, 1.0, 10)).tolist() == [20]


def test_hold_from_an_alarm_before_a_window_silences_the_window() -> None:
    # Rows 35..44 score 1; the window is rows 40..49.
    scores = np.zeros(N)
    scores[35:45] = 1.0
    series = make_series(scores=scores)

    def standard(hold: int) -> tuple[float, int, int, int]:
        result = evaluate([series], thresholds=[1.0], hold=hold).profiles["standard"]
        return result.raw, result.tp, result.fp, result.fn

    # No hold: FPs at rows 35..39 (before the window: 0.11 each) and a TP at row 40, the left
    # edge (+1): raw = 1 - 0.55 = 0.45.
    assert standard(0) == pytest.approx((0.45, 1, 5, 0))
    # Hold 10: row 35 alarms (an FP) and holds rows 36..45, which covers every high row in the
    # window: it is missed. raw = -0.11 - 1 = -1.11.
    assert standard(10) == pytest.approx((-1.11, 0, 1, 1))
    # Hold 3: rows 35..44 are one incident (flagged rows never 3 apart): its alarm at row 35 is
    # an FP and the window is missed, as with hold 10.
    assert standard(3) == pytest.approx((-1.11, 0, 1, 1))
    # Two incidents: rows 35..37 and 41..44 (three quiet rows between): an FP at 35 and a TP at
    # row 41, y = -(49 - 41 + 1) / 10 = -0.9 -> tanh(2.25) / tanh(2.5).
    scores[38:41] = 0.0
    series = make_series(scores=scores)
    assert standard(3) == pytest.approx((np.tanh(2.25) / np.tanh(2.5) - 0.11, 1, 1, 0))


def test_an_alarm_in_probation_still_holds() -> None:
    # Rows 10..20 score 1; probation is rows 0..14. Without a hold rows 15..20 are 6 FPs (raw
    # -1 - 0.66). With a hold of 10, row 10 alarms (not scored: probation) and holds 11..20.
    scores = np.zeros(N)
    scores[10:21] = 1.0
    series = make_series(scores=scores)
    assert evaluate([series], [1.0]).profiles["standard"].raw == pytest.approx(-1.66)
    held = evaluate([series], [1.0], hold=10)
    assert held.profiles["standard"].raw == pytest.approx(-1.0)
    assert (held.overall.fp, held.files[0].detections) == (0, 0)


def _bursty_corpus(
    rng: np.random.Generator, n: int = N, decimals: int | None = None
) -> list[ScoredSeries]:
    """Four files of noise below 0.7 with bursts of higher scores dropped anywhere, in windows
    or not, and a few unscored rows; scores rounded to ``decimals`` when given."""
    files = []
    for i, windows in enumerate([[(30, 39), (60, 72)], [(16, 25)], [], [(90, 99)]]):
        scores = rng.uniform(0.0, 0.7, n)
        for start in rng.integers(0, n - 5, 6):
            scores[start : start + rng.integers(1, 6)] = rng.uniform(0.5, 1.0)
        if decimals is not None:
            scores = np.round(scores, decimals)
        scores[:3] = np.nan
        windows = [(a * n // N, b * n // N) for a, b in windows]
        files.append(make_series(f"f{i}.csv", windows, scores, n=n))
    return files


def _brute_force(corpus: list[ScoredSeries], hold: int) -> dict[str, dict[float, float]]:
    """Per profile, the corpus raw score at every distinct score and NEVER_FIRE, scoring
    ``alarm_rows`` one threshold at a time."""
    distinct = np.unique(np.concatenate([s.scores[~np.isnan(s.scores)] for s in corpus]))
    layouts = [evaluation._layout(s) for s in corpus]  # nab_raw_score, without redoing these
    raws: dict[str, dict[float, float]] = {name: {} for name in PROFILES}
    for t in [*distinct.tolist(), NEVER_FIRE]:
        alarms = [alarm_rows(s.scores, t, hold) for s in corpus]
        for name, profile in PROFILES.items():
            raws[name][t] = sum(
                evaluation._raw_score(s.name, layout, a, profile).raw
                for s, layout, a in zip(corpus, layouts, alarms, strict=True)
            )
    return raws


@pytest.mark.parametrize("hold", [1, 4, 12])
def test_hold_optimiser_agrees_with_alarm_rows_at_every_threshold(hold: int) -> None:
    corpus = _bursty_corpus(np.random.default_rng(hold), decimals=2)
    brute_force = _brute_force(corpus, hold)
    for name, profile in PROFILES.items():
        brute = brute_force[name]
        for t, expected in brute.items():
            assert optimise_threshold(corpus, profile, [t], hold=hold)[1] == pytest.approx(expected)
        best_t, best_raw = optimise_threshold(corpus, profile, hold=hold)
        assert best_raw == pytest.approx(max(brute.values()))
        assert best_raw == pytest.approx(brute[best_t])


def test_hold_sweep_without_hold_equals_the_exact_sweep() -> None:
    # The walker behind the hold optimiser, run with hold 0, against the prefix-sum sweep.
    corpus = _bursty_corpus(np.random.default_rng(2))
    layouts = [evaluation._layout(s) for s in corpus]
    walker = evaluation._HoldSweep(corpus, layouts, 0)
    candidates = np.unique([*np.concatenate([s.scores for s in corpus]), 0.0, NEVER_FIRE])[::-1]
    candidates = candidates[~np.isnan(candidates)]
    for profile in PROFILES.values():
        np.testing.assert_allclose(
            walker.raws(profile, candidates),
            evaluation._sweep(corpus, layouts, profile, candidates),
            atol=1e-9,
        )


def test_hold_optimiser_beyond_the_exact_limit_finds_the_brute_force_best(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Continuous scores: 4 * 297 distinct, all tried.
    corpus = _bursty_corpus(np.random.default_rng(4), n=300)
    assert sum(np.unique(s.scores[~np.isnan(s.scores)]).size for s in corpus) > 1000
    for hold in (3, 20):
        brute_force = _brute_force(corpus, hold)
        for name, profile in PROFILES.items():
            brute = brute_force[name]
            best_t, best_raw = optimise_threshold(corpus, profile, hold=hold)
            assert best_raw == pytest.approx(max(brute.values()))
            assert best_raw == pytest.approx(brute[best_t])


def test_hold_must_be_a_whole_number_of_rows() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="hold"):
            evaluate([make_series()], hold=bad)  # type: ignore[arg-type]


# --- window precision / recall / F1 --------------------------------------------------------


def test_window_precision_recall_f1_small_example() -> None:
    # Windows 30..39, 60..69 and 80..84. Three detections in the first (counted once), none
    # in the second, one in the third, two outside: detected 2 of 3, FP 2.
    # precision = 2 / (2 + 2) = 0.5, recall = 2/3, F1 = 2 * 0.5 * 2/3 / (0.5 + 2/3) = 4/7.
    scores = np.zeros(N)
    scores[[31, 33, 35, 82, 50, 95]] = 1.0
    report = evaluate([make_series("a.csv", [(30, 39), (60, 69), (80, 84)], scores)], [1.0])
    (row,) = report.files
    assert (row.metrics.windows, row.metrics.detected, row.metrics.fp) == (3, 2, 2)
    assert row.detections == 6
    assert row.metrics.precision == pytest.approx(0.5)
    assert row.metrics.recall == pytest.approx(2 / 3)
    assert row.metrics.f1 == pytest.approx(4 / 7)


def test_window_metrics_undefined_cases() -> None:
    assert math.isnan(WindowMetrics(windows=2, detected=0, fp=0).precision)
    assert WindowMetrics(windows=2, detected=0, fp=0).recall == 0.0
    assert math.isnan(WindowMetrics(windows=0, detected=0, fp=3).recall)
    assert WindowMetrics(windows=2, detected=0, fp=3).f1 == 0.0


# --- report, validation, plot --------------------------------------------------------------


def test_report_serialises_and_formats(tmp_path: Path) -> None:
    report = evaluate(_corpus(np.random.default_rng(5)))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert set(data["profiles"]) == {"standard", "reward_low_fp", "reward_low_fn"}
    assert [f["name"] for f in data["files"]] == ["a.csv", "b.csv", "c.csv"]
    assert data["files"][2]["recall"] is None  # c.csv has no window
    report.write_json(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["threshold"] == 0.8

    table = report.format_table().splitlines()
    assert table[0] == "alarm hold: 0 rows"
    assert table[1].split() == [
        "file",
        "rows",
        "windows",
        "detected",
        "FP",
        "precision",
        "recall",
        "F1",
        "raw",
        "contrib",
    ]
    body = [line for line in table if line.startswith(("a.csv", "b.csv", "c.csv", "TOTAL"))]
    assert len(body) == 4
    assert len({len(line) for line in body}) == 1  # right-aligned columns: equal widths
    assert any(line.startswith("standard") and "100.00" in line for line in table)


def test_scored_series_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one length"):
        ScoredSeries("x", np.arange(3.0), np.zeros(3), np.zeros(2), [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ScoredSeries("x", np.arange(3.0), np.zeros(3), np.array([0.0, 1.5, 0.2]), [])
    with pytest.raises(ValueError, match="detections for"):
        nab_raw_score(make_series(), np.zeros(N - 1, bool), STANDARD)
    with pytest.raises(ValueError, match="overlap"):
        nab_raw_score(make_series(windows=[(30, 40), (40, 50)]), fire(), STANDARD)


def test_unscored_rows_never_fire() -> None:
    scores = np.full(N, np.nan)
    scores[40] = 0.9
    report = evaluate([make_series(scores=scores)])
    assert report.profiles["standard"].score == pytest.approx(100.0)


def test_plot_series_writes_a_png(tmp_path: Path) -> None:
    series = _corpus(np.random.default_rng(1))[0]
    path = plot_series(series, detections_at(series.scores, 0.7), 0.7, tmp_path / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000


# --- real nab-dev data ---------------------------------------------------------------------


def test_load_windows_on_nab_dev() -> None:
    windows = load_windows(NAB_WINDOWS)
    assert len(windows) == 24
    assert sum(len(w) for w in windows.values()) == 39
    counts = {
        "realKnownCause/nyc_taxi.csv": 5,
        "realKnownCause/machine_temperature_system_failure.csv": 4,
        "realAdExchange/exchange-4_cpm_results.csv": 4,
        "artificialWithAnomaly/art_daily_jumpsup.csv": 1,
        "artificialNoAnomaly/art_flatline.csv": 0,
    }
    for key, count in counts.items():
        assert len(windows[key]) == count
    assert sum(1 for w in windows.values() if not w) == 5
    # "2014-04-10 07:15:00.000000" read as UTC.
    assert windows["artificialWithAnomaly/art_daily_flatmiddle.csv"][0][0] == 1397114100.0
    assert timestamp_to_epoch("2014-04-10 07:15:00") == 1397114100.0


def _read_nab(key: str, windows: list[tuple[float, float]], score: bool) -> ScoredSeries:
    table = np.loadtxt(nab_file(key), delimiter=",", skiprows=1, dtype=str)
    ts = table[:, 0].astype("datetime64[s]").astype(np.float64)
    values = table[:, 1].astype(np.float64)
    return ScoredSeries(key, ts, values, _zscore(values) if score else np.zeros(ts.size), windows)


def _zscore(values: np.ndarray, span: int = 100) -> np.ndarray:
    """Causal |z| of each value against the previous ``span`` rows, mapped into [0, 1)."""
    c1 = np.concatenate(([0.0], np.cumsum(values)))
    c2 = np.concatenate(([0.0], np.cumsum(values * values)))
    rows = np.arange(values.size)
    first = np.maximum(rows - span, 0)
    count = np.maximum(rows - first, 1)
    mean = (c1[rows] - c1[first]) / count
    var = np.maximum((c2[rows] - c2[first]) / count - mean**2, 0.0)
    z = np.abs(values - mean) / np.sqrt(var + 1e-9)
    scores = z / (1.0 + z)
    scores[rows - first < 2] = np.nan
    return scores


REAL_FILES = [
    "realKnownCause/ec2_request_latency_system_failure.csv",  # repeated timestamps
    "realKnownCause/machine_temperature_system_failure.csv",  # a repeated hour; 750-row cap
    "realAdExchange/exchange-4_cpc_results.csv",
    "artificialWithAnomaly/art_daily_jumpsup.csv",
]


def test_trivial_causal_detector_on_nab_dev_lands_between_null_and_perfect() -> None:
    windows = load_windows(NAB_WINDOWS)
    corpus = [_read_nab(key, windows[key], score=True) for key in REAL_FILES]
    report = evaluate(corpus)
    standard = report.profiles["standard"]
    assert 0.0 < standard.score < 100.0
    assert standard.perfect == pytest.approx(11.0)  # 3 + 4 + 3 + 1 windows, none in probation
    assert standard.null == pytest.approx(-11.0)
    # Never firing is the floor the optimiser can always fall back to.
    for result in report.profiles.values():
        assert result.score >= 0.0
    assert [f.probation for f in report.files] == [604, 750, 246, 604]


def test_windows_locate_on_real_files_with_irregular_timestamps() -> None:
    windows = load_windows(NAB_WINDOWS)
    for key in REAL_FILES:
        series = _read_nab(key, windows[key], score=False)
        score = nab_raw_score(series, np.zeros(series.scores.size, bool), STANDARD)
        assert score.windows == len(windows[key])
        assert score.raw == -len(windows[key])


def _nab_corpus() -> list[ScoredSeries]:
    windows = load_windows(NAB_WINDOWS)
    return [_read_nab(key, windows[key], score=True) for key in REAL_FILES]


def test_without_a_hold_results_are_those_of_the_exact_sweep_before_holds() -> None:
    # Pinned from the evaluator as it was before the alarm hold existed.
    corpus = _nab_corpus()
    report = evaluate(corpus, hold=0)
    assert report.to_dict() == evaluate(corpus).to_dict()
    expected = {
        "standard": (0.8473942056015167, 38.30709206523739, 10, 89, 1),
        "reward_low_fp": (0.917276288641211, 29.87734573576411, 6, 16, 5),
        "reward_low_fn": (0.8473942056015167, 55.84109167985523, 10, 89, 1),
    }
    for name, (threshold, score, tp, fp, fn) in expected.items():
        result = report.profiles[name]
        assert result.threshold == pytest.approx(threshold, rel=1e-12)
        assert result.score == pytest.approx(score, rel=1e-9)
        assert (result.tp, result.fp, result.fn) == (tp, fp, fn)


def test_hold_on_nab_dev_scores_the_daemons_alarms() -> None:
    corpus = _nab_corpus()
    report = evaluate(corpus, hold=100)
    standard = report.profiles["standard"]
    alarms = [alarm_rows(s.scores, standard.threshold, 100) for s in corpus]
    assert standard.raw == pytest.approx(
        sum(nab_raw_score(s, a, STANDARD).raw for s, a in zip(corpus, alarms, strict=True))
    )
    assert [f.detections for f in report.files] == [
        int(np.count_nonzero(a[f.probation :])) for f, a in zip(report.files, alarms, strict=True)
    ]
    # A burst pages once: fewer false positives than without the hold at the same threshold.
    assert report.overall.fp < evaluate(corpus, [standard.threshold]).overall.fp
    # The optimiser's answer is trying every distinct score.
    distinct = np.unique(np.concatenate([s.scores[~np.isnan(s.scores)] for s in corpus]))
    every = optimise_threshold(corpus, STANDARD, [*distinct, NEVER_FIRE], hold=100)
    assert (standard.threshold, standard.raw) == pytest.approx(every)
    assert report.to_dict()["hold"] == 100
    assert report.format_table().splitlines()[0] == "alarm hold: 100 rows"
