"""The model shipped in the package: intact, trained on synthetic series only, and the default
of `replay`, `evaluate` and the demo; `train --synthetic` makes such a model."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamlstm import cli
from streamlstm.cli import BUNDLED_MODEL, score_labelled_files
from streamlstm.core.calibration import CalibrationSettings
from streamlstm.core.pipeline import PipelineSettings
from streamlstm.demo import _holds_bundled_model, install_bundled_model
from streamlstm.errors import StreamlstmError
from streamlstm.model.artifact import (
    META_FILE,
    WEIGHTS_FILE,
    Artifact,
    load_artifact,
    save_artifact,
    set_current,
)

T0 = 1_714_564_800


@pytest.fixture(autouse=True)
def no_model_path_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STREAMLSTM_MODEL_PATH`` would replace the bundled model as the default."""
    monkeypatch.delenv("STREAMLSTM_MODEL_PATH", raising=False)


def write_series(path: Path, n: int, seed: int = 0, spike_at: int | None = None) -> Path:
    rng = np.random.default_rng(seed)
    values = 10 + 3 * np.sin(np.arange(n) * 2 * np.pi / 48) + 0.2 * rng.standard_normal(n)
    if spike_at is not None:
        values[spike_at] += 25
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,value\n" + "".join(
        f"{T0 + 300 * i},{v:.5f}\n" for i, v in enumerate(values)))
    return path


def test_the_bundled_model_loads_and_its_weights_match_their_checksum() -> None:
    artifact = load_artifact(BUNDLED_MODEL)
    meta = json.loads((BUNDLED_MODEL / META_FILE).read_text())
    digest = hashlib.sha256((BUNDLED_MODEL / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert digest == meta["weights_sha256"]
    assert artifact.version == meta["version"] and artifact.version.endswith(digest[:8])
    assert artifact.feature_names == ["value"]
    assert artifact.architecture.n_features == 1
    calibration = CalibrationSettings.from_dict(artifact.calibration)
    assert {"threshold", "alarm_hold"} <= set(artifact.calibration)
    assert 0.0 < calibration.threshold <= 1.0 and calibration.alarm_hold >= 0
    model = artifact.build_model()
    window = torch.zeros(2, artifact.architecture.window, 1)
    assert model(window).shape == window.shape


def test_the_bundled_model_saw_only_synthetic_series() -> None:
    artifact = load_artifact(BUNDLED_MODEL)
    data = artifact.training["data"]
    assert data["series"] == 150
    known = artifact.normalisation["series_scale"]
    assert len(known) == 150
    assert all(name.startswith("synthetic-") for name in known)


def test_replay_defaults_to_the_bundled_model_and_fills_novelty(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = load_artifact(BUNDLED_MODEL)
    w = artifact.architecture.window
    n = 4 * w + 20
    source = write_series(tmp_path / "cpu.csv", n)
    output = tmp_path / "scores.csv"
    assert cli.main(["replay", str(source), "--output", str(output)]) == 0
    assert f"with model {artifact.version}" in capsys.readouterr().err
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["series", "timestamp", "value", "anomaly_score", "is_anomaly",
                             "alarm", "error", "novelty", "threshold", "surprise_model",
                             "surprise_memory", "surprise_seasonal", "surprise_coarse"]
    assert len(rows) == n and {row["series"] for row in rows} == {"cpu"}
    # No score until the window is full; no novelty until a non-overlapping past window exists.
    assert all(row["error"] == "" for row in rows[: w - 1])
    assert all(row["error"] != "" for row in rows[w - 1 :])
    assert all(row["novelty"] == "" for row in rows[: 2 * w - 1])
    novelty = [float(row["novelty"]) for row in rows[3 * w - 2 :]]
    assert len(novelty) > 20 and all(np.isfinite(novelty)) and min(novelty) >= 0.0
    assert {float(row["threshold"]) for row in rows[w - 1 :]} == {
        artifact.calibration["threshold"]}


def test_evaluate_defaults_to_the_bundled_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_series(data / "cat" / "x.csv", 600, seed=1, spike_at=450)
    labels = tmp_path / "windows.json"
    start = T0 + 300 * 440
    labels.write_text(json.dumps({"cat/x.csv": [[
        f"{np.datetime64(start, 's')}", f"{np.datetime64(start + 300 * 30, 's')}"]]}))
    report = tmp_path / "report.json"
    assert cli.main(["evaluate", str(data), "--labels", str(labels),
                     "--output", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["model"] == load_artifact(BUNDLED_MODEL).version
    assert result["rows"] == 600


def test_score_labelled_files_names_series_by_label_key_and_honours_settings(
        tmp_path: Path) -> None:
    artifact = load_artifact(BUNDLED_MODEL)
    path = write_series(tmp_path / "nab" / "cat" / "x.csv", 700, seed=2, spike_at=600)
    labels = {"x.csv": [], "cat/x.csv": [(float(T0), float(T0 + 300))]}
    by_model, rows, seconds = score_labelled_files(
        [path], labels, artifact, settings=PipelineSettings(evidence="model"))
    assert rows == 700 and seconds >= 0.0
    (series,) = by_model
    assert series.name == "cat/x.csv"  # the longest matching key
    assert series.windows == labels["cat/x.csv"]
    assert series.scores.shape == (700,)
    np.testing.assert_array_equal(series.timestamps, T0 + 300 * np.arange(700))
    (by_memory,), _, _ = score_labelled_files(
        [path], labels, artifact, settings=PipelineSettings(evidence="memory"))
    assert not np.array_equal(series.scores, by_memory.scores)
    with pytest.raises(StreamlstmError, match="not listed in the labels"):
        score_labelled_files([path], {"other.csv": []}, artifact)


def test_install_bundled_model_makes_it_the_current_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    target = install_bundled_model(models)
    assert "bundled model" in capsys.readouterr().out
    assert (models / "current").read_text().strip() == target.name
    installed, bundled = load_artifact(models), load_artifact(BUNDLED_MODEL)
    assert installed.path == target
    assert installed.training == bundled.training
    assert installed.calibration == bundled.calibration
    assert installed.state_dict.keys() == bundled.state_dict.keys()
    for name, tensor in bundled.state_dict.items():
        assert torch.equal(installed.state_dict[name], tensor), name
    # The bundled copy itself is untouched.
    assert load_artifact(BUNDLED_MODEL).version == json.loads(
        (BUNDLED_MODEL / META_FILE).read_text())["version"]


def test_the_demo_installs_the_bundled_model_once(tmp_path: Path,
                                                  tiny_artifact: Artifact) -> None:
    models = tmp_path / "models"
    assert not _holds_bundled_model(models)
    older = dataclasses.replace(tiny_artifact)  # save_artifact sets version and path
    save_artifact(older, models)  # an older demo model: not the bundled one
    assert not _holds_bundled_model(models)
    install_bundled_model(models)
    assert _holds_bundled_model(models)
    # Whatever the user makes current afterwards stays so: the bundled one is still held.
    set_current(models, older.version)
    assert _holds_bundled_model(models)


def test_train_synthetic_writes_a_model_trained_on_that_many_series(tmp_path: Path) -> None:
    models = tmp_path / "models"
    code = cli.main(["train", "--synthetic", "3", "--output", str(models), "--window", "16",
                     "--hidden-size", "4", "--epochs", "1", "--max-windows", "2000"])
    assert code == 0
    artifact = load_artifact(models)  # made current
    data = artifact.training["data"]
    assert data["series"] == 3
    assert data["rows"] == 3 * 3000
    assert sorted(artifact.normalisation["series_scale"]) == [
        "synthetic-0000", "synthetic-0001", "synthetic-0002"]
    assert artifact.feature_names == ["value"]
    assert artifact.architecture.window == 16 and artifact.architecture.hidden_size == 4
