"""A file of several value columns with a one-feature model (the bundled default): each column
is scored as a series of its own and each row's verdict combines them (`streamlstm.core.columns`),
in `replay` and `evaluate` alike."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from streamlstm import cli, evaluation
from streamlstm.core.calibration import SURPRISE_SCALE
from streamlstm.core.columns import column_series, combine_columns, score_columns
from streamlstm.core.pipeline import Pipeline, PipelineSettings, score_points
from streamlstm.core.records import Point
from streamlstm.model.artifact import load_artifact

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
ROWS = 1200
BREAK = slice(900, 1000)


def write_sensors(path: Path, seed: int = 0) -> np.ndarray:
    """Three coupled channels a, b, c sampled each second; c jumps by 15 of its spreads
    over rows 900..999. Returns the values ``[ROWS, 3]``."""
    rng = np.random.default_rng(seed)
    t = np.arange(ROWS)
    a = np.sin(t / 20) + 0.1 * rng.standard_normal(ROWS)
    b = 0.5 * a + 0.1 * rng.standard_normal(ROWS)
    c = 3 + 0.2 * rng.standard_normal(ROWS)
    c[BREAK] += 3.0
    values = np.column_stack([a, b, c])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "a", "b", "c"])
        writer.writerows([T0 + i, *(f"{v:.6f}" for v in row)] for i, row in enumerate(values))
    return np.round(values, 6)


# ------------------------------------------------------------------------- the combination


def test_one_column_keeps_its_score_and_more_columns_correct_the_top_one() -> None:
    scores = np.array([[0.0], [0.2], [0.5], [1.0]])
    combined, worst = combine_columns(scores)
    np.testing.assert_allclose(combined, scores[:, 0], atol=1e-12)
    assert worst.tolist() == [0, 0, 0, 0]

    k = 8
    row = np.full((1, k), 0.05)
    row[0, 3] = 0.5
    combined, worst = combine_columns(row)
    assert worst.tolist() == [3]
    # a one-in-1e5 window in one of 8 columns: about one in 1e5 / 8 rows
    expected = -math.log10(1 - (1 - 1e-5) ** k) / SURPRISE_SCALE
    assert combined[0] == pytest.approx(expected, rel=1e-9)
    assert combined[0] == pytest.approx(0.5 - math.log10(k) / SURPRISE_SCALE, abs=1e-4)


def test_columns_without_a_score_are_left_out_and_a_row_without_any_scores_zero() -> None:
    scores = np.array([[np.nan, np.nan], [np.nan, 0.4], [0.0, 0.0]])
    combined, worst = combine_columns(scores)
    assert worst.tolist() == [-1, 1, 0]
    assert combined[0] == 0.0 and not np.signbit(combined[0])
    assert combined[1] == pytest.approx(0.4)  # one column present: nothing to correct
    assert combined[2] == 0.0
    with pytest.raises(ValueError, match="rows, columns"):
        combine_columns(np.zeros(3))


# ------------------------------------------------------------------------- the pipeline


def test_each_column_scores_as_that_series_would_alone(tmp_path: Path) -> None:
    values = write_sensors(tmp_path / "rig.csv")
    artifact = load_artifact(cli.BUNDLED_MODEL)
    stamps = [float(T0 + i) for i in range(ROWS)]
    verdicts = score_columns(Pipeline(artifact, PipelineSettings(stride=1)), ["rig"] * ROWS,
                             stamps, values, ["a", "b", "c"])
    alone = score_points(Pipeline(artifact, PipelineSettings(stride=1)), [
        Point(column_series("rig", "c"), t, (v,)) for t, v in zip(stamps, values[:, 2],
                                                                  strict=True)])
    got = [s.score if s else None for s in verdicts.columns[2]]
    assert got == [s.score if s else None for s in alone]
    assert {s.series for s in verdicts.columns[0] if s} == {"rig/a"}


# ------------------------------------------------------------------------- replay, evaluate


def test_replay_scores_every_column_of_a_wider_file_and_names_the_worst(
        tmp_path: Path) -> None:
    source = tmp_path / "rig.csv"
    values = write_sensors(source)
    output = tmp_path / "scores.csv"
    assert cli.main(["replay", str(source), "--output", str(output)]) == 0
    with output.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == ROWS
    header = list(rows[0])
    assert header[:5] == ["series", "timestamp", "a", "b", "c"]
    assert header[5:8] == ["anomaly_score", "is_anomaly", "alarm"]
    assert header[-4:] == ["top_feature", "score_a", "score_b", "score_c"]
    # every row carries its own input values, under their own names
    np.testing.assert_allclose([[float(r[c]) for c in "abc"] for r in rows], values, rtol=1e-5)
    score = np.array([float(r["anomaly_score"]) for r in rows])
    flagged = np.array([r["is_anomaly"] == "1" for r in rows])
    assert flagged[BREAK].mean() > 0.5
    assert flagged[300:900].mean() < 0.02  # after warm-up, before the break
    assert {r["top_feature"] for r in rows[BREAK]} == {"c"}
    alarms = [i for i, r in enumerate(rows) if r["alarm"] == "1"]
    assert any(BREAK.start <= i < BREAK.stop for i in alarms)
    # the row's score is its worst column's, corrected for three columns
    for row, s in zip(rows[BREAK], score[BREAK], strict=True):
        top = max(float(row[f"score_{c}"]) for c in "abc")
        assert s <= top and s == pytest.approx(
            combine_columns([[float(row[f"score_{c}"]) for c in "abc"]])[0][0], abs=2e-6)
    # before any window is full: no verdict, no column scores
    assert rows[0]["anomaly_score"] == "0.0" and rows[0]["top_feature"] == ""


def test_replay_refuses_files_whose_value_columns_differ(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "rig.csv"
    write_sensors(first)
    second = tmp_path / "other.csv"
    second.write_text(f"timestamp,a,b\n{T0},1,2\n")
    output = tmp_path / "scores.csv"
    assert cli.main(["replay", str(first), str(second), "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "other.csv: value columns a, b differ" in err
    assert not output.exists()


def test_evaluate_scores_a_wider_file_by_its_columns(tmp_path: Path) -> None:
    write_sensors(tmp_path / "data" / "rig" / "r.csv")
    labels = tmp_path / "windows.json"
    start, end = (np.datetime64(T0 + i, "s") for i in (BREAK.start - 10, BREAK.stop))
    labels.write_text(json.dumps({"rig/r.csv": [[str(start), str(end)]]}))
    series, rows, _ = cli.score_labelled_files(
        [tmp_path / "data" / "rig" / "r.csv"], evaluation.load_windows(labels),
        load_artifact(cli.BUNDLED_MODEL))
    assert rows == ROWS and len(series[0].scores) == ROWS
    scores = series[0].scores
    assert scores[BREAK][:20].min() > 0.9 and scores[BREAK].mean() > 0.4
    assert np.quantile(scores[300:900], 0.99) < 0.25
