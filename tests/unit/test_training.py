"""fit(): reproducible, actually learns, refuses unusable history, sees spikes, reads real data."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from streamlstm.core.pipeline import Pipeline, score_points
from streamlstm.model.artifact import Artifact, load_artifact, save_artifact
from streamlstm.sources.files import read_table
from streamlstm.training import SeriesHistory, TrainingError, TrainingSettings, fit
from tests.nab_sample import nab_file
from tests.unit.core_helpers import (
    STEP,
    TINY_SETTINGS,
    TINY_WINDOW,
    sine_history,
    sine_values,
    timestamps,
    to_points,
)

NAB_FILE = nab_file("realKnownCause/ec2_request_latency_system_failure.csv")
QUICK = dataclasses.replace(TINY_SETTINGS, epochs=2)


def test_same_seed_gives_an_identical_model() -> None:
    history = sine_history(600, noise=0.1)
    first = fit(history, ["value"], QUICK, progress=False)
    second = fit(history, ["value"], QUICK, progress=False)
    assert first.state_dict.keys() == second.state_dict.keys()
    for name in first.state_dict:
        assert torch.equal(first.state_dict[name], second.state_dict[name]), name
    assert first.calibration == second.calibration
    assert first.training["validation_loss"] == second.training["validation_loss"]

    other = fit(history, ["value"], dataclasses.replace(QUICK, seed=1), progress=False)
    assert not all(torch.equal(first.state_dict[k], other.state_dict[k]) for k in first.state_dict)


def test_training_lowers_the_validation_loss(tiny_artifact: Artifact) -> None:
    # A learning rate of zero leaves the initial weights: the untrained model on the same data.
    untrained = fit(sine_history(2000), ["value"],
                    dataclasses.replace(TINY_SETTINGS, epochs=1, learning_rate=0.0),
                    progress=False)
    trained_loss = tiny_artifact.training["validation_loss"]
    assert trained_loss < 0.5 * untrained.training["validation_loss"]
    assert math.isfinite(trained_loss)


def test_the_artifact_describes_its_training(tiny_artifact: Artifact) -> None:
    arch = tiny_artifact.architecture
    assert (arch.window, arch.hidden_size, arch.n_features) == (TINY_WINDOW, 8, 1)
    data = tiny_artifact.training["data"]
    assert data["series"] == 1 and data["rows"] == 2000
    assert data["training_windows"] > 0 and data["validation_windows"] > 0
    quantiles = tiny_artifact.training["validation_error_quantiles"]
    assert 0 < quantiles["0.5"] <= quantiles["0.99"]
    assert set(tiny_artifact.calibration) >= {"threshold", "alarm_hold", "history", "warmup"}
    assert tiny_artifact.normalisation["series_scale"]["sine"][0] > 0


@pytest.mark.parametrize("n", [0, 5, TINY_WINDOW, TINY_WINDOW + 3])
def test_too_short_history_is_refused(n: int) -> None:
    history = {"short": SeriesHistory(timestamps(n), sine_values(n)[:, None])}
    with pytest.raises(TrainingError, match="not enough history"):
        fit(history, ["value"], QUICK, progress=False)


def test_no_history_is_refused() -> None:
    with pytest.raises(TrainingError):
        fit({}, ["value"], QUICK, progress=False)


def test_wrong_feature_count_is_refused() -> None:
    values = np.column_stack([sine_values(300), sine_values(300, seed=1)])
    with pytest.raises(TrainingError, match="2 features, expected 1"):
        fit({"two": SeriesHistory(timestamps(300), values)}, ["value"], QUICK, progress=False)


def test_non_finite_values_are_refused() -> None:
    values = sine_values(300)
    values[17] = np.nan
    with pytest.raises(TrainingError, match="non-finite"):
        fit({"gappy": SeriesHistory(timestamps(300), values[:, None])}, ["value"], QUICK,
            progress=False)


def test_a_spike_reconstructs_much_worse_than_normal_windows(tiny_artifact: Artifact) -> None:
    n = 400
    values = sine_values(n, noise=0.0, phase=5)
    spike_at = 300
    values[spike_at] += 3.0
    scores = score_points(Pipeline(tiny_artifact), to_points("sine", timestamps(n), values))
    errors = np.array([s.error if s is not None else np.nan for s in scores])
    with_spike = errors[spike_at : spike_at + TINY_WINDOW]
    normal = np.concatenate([errors[TINY_WINDOW : spike_at], errors[spike_at + TINY_WINDOW :]])
    assert np.isfinite(normal).all()
    assert with_spike.min() > 3 * normal.max()
    assert np.median(with_spike) > 10 * np.median(normal)


def test_training_on_a_real_nab_file(tmp_path: Path) -> None:
    table = read_table(NAB_FILE)
    history = table.history()
    assert list(history) == ["ec2_request_latency_system_failure"]
    settings = dataclasses.replace(TINY_SETTINGS, epochs=3, learning_rate=0.005)
    artifact = fit(history, table.feature_names, settings, progress=False)
    assert artifact.training["epochs"] >= 1
    assert artifact.training["data"]["rows"] == len(table.timestamps)
    assert math.isfinite(artifact.training["validation_loss"])
    assert artifact.calibration["threshold"] > 0
    # The model it gives is usable end to end: saved, loaded and scoring the same file.
    loaded = load_artifact(save_artifact(artifact, tmp_path))
    scores = score_points(Pipeline(loaded), table.points())
    scored = [s for s in scores if s is not None]
    # The file has 11 repeated timestamps (late, not scored) and one outage of 64 minutes
    # (the window restarts): every other point is scored once its window is full.
    gaps = np.diff(table.timestamps)
    repeated = int((gaps <= 0).sum())
    outages = int((gaps > 5 * 300).sum())
    assert (repeated, outages) == (11, 1)
    assert len(scored) == len(scores) - repeated - (1 + outages) * (TINY_WINDOW - 1)
    assert all(0.0 <= s.score <= 1.0 and math.isfinite(s.error) for s in scored)


def test_training_handles_several_series_and_features() -> None:
    n = 300
    history = {
        name: SeriesHistory(
            timestamps(n, step=STEP),
            np.column_stack([sine_values(n, seed=k), 5 + 2 * sine_values(n, seed=k + 10)]),
        )
        for k, name in enumerate(["a", "b"])
    }
    artifact = fit(history, ["cpu", "mem"], QUICK, progress=False)
    assert artifact.architecture.n_features == 2
    assert artifact.feature_names == ["cpu", "mem"]
    assert set(artifact.normalisation["series_scale"]) == {"a", "b"}
    assert artifact.training["data"]["series"] == 2


def test_default_settings_are_sane() -> None:
    settings = TrainingSettings()
    assert 0 < settings.validation_fraction < 1
    assert settings.window >= 2


def test_fine_tuning_starts_from_the_initial_weights_and_never_validates_worse(
        tiny_artifact: Artifact) -> None:
    # A series the tiny model never saw: a faster, larger wave with a sawtooth on it.
    n = 900
    k = np.arange(n)
    values = 3 * np.sin(2 * np.pi * k / 9) + (k % 13) / 4 + np.random.default_rng(3).normal(
        0, 0.05, n)
    history = {"new": SeriesHistory(timestamps(n), values[:, None])}
    settings = dataclasses.replace(TINY_SETTINGS, epochs=4, hidden_size=99, window=8)
    tuned = fit(history, ["value"], settings, progress=False, initial=tiny_artifact)
    assert tuned.architecture == tiny_artifact.architecture  # its shape, not the settings'
    assert tuned.training["initial_model"] == tiny_artifact.version
    start = tuned.training["initial_validation_loss"]
    assert tuned.training["validation_loss"] < start
    assert any(not torch.equal(tuned.state_dict[name], tiny_artifact.state_dict[name])
               for name in tuned.state_dict)
    # The initial model's loss is epoch 0: at a learning rate that only makes it worse, its
    # weights come back as they were.
    ruinous = dataclasses.replace(settings, learning_rate=50.0, epochs=2, patience=1)
    kept = fit(history, ["value"], ruinous, progress=False, initial=tiny_artifact)
    assert kept.training["validation_loss"] == kept.training["initial_validation_loss"]
    for name in kept.state_dict:
        assert torch.equal(kept.state_dict[name], tiny_artifact.state_dict[name]), name
    with pytest.raises(TrainingError, match="takes 1 features, the history has 2"):
        fit({"two": SeriesHistory(timestamps(n), np.stack([values, values], axis=1))},
            ["a", "b"], settings, progress=False, initial=tiny_artifact)
