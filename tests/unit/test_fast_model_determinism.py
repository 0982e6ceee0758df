"""Each inference backend's error for a window depends only on that window, bit for bit.

Not on the batch's size, nor on the window's place in the batch, nor on earlier calls, nor on
the process: a pipeline restored from a snapshot, or a replay cut into other polls, scores the
same windows exactly as one that never stopped. And the ONNX Runtime backend gives the eager
model's errors within float32 rounding.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import streamlstm
from streamlstm.core.scoring import Scorer
from streamlstm.model.artifact import load_artifact
from streamlstm.model.fast import (
    FusedAutoencoder,
    OnnxAutoencoder,
    fast_autoencoder,
    onnxruntime_available,
)
from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder

BUNDLED = Path(streamlstm.__file__).parent / "data" / "model"
needs_ort = pytest.mark.skipif(not onnxruntime_available(),
                               reason="onnxruntime and onnx not installed (the onnx extra)")

Errors = Callable[..., torch.Tensor]


@pytest.fixture(autouse=True)
def one_thread():
    """The daemon's default (``model.threads`` = 1). With more torch threads MKL splits small
    products across them with other kernels, so only ONNX Runtime stays row-independent."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_model(cell: str, layers: int, features: int, seed: int = 0) -> LSTMAutoencoder:
    torch.manual_seed(seed)
    arch = Architecture(n_features=features, window=12, hidden_size=16, num_layers=layers,
                        cell=cell)  # type: ignore[arg-type]
    model = LSTMAutoencoder(arch).eval()
    with torch.no_grad():  # larger than the default init, so the gates saturate sometimes
        for param in model.parameters():
            param.mul_(2.0)
    return model


def bundled() -> LSTMAutoencoder:
    return load_artifact(BUNDLED).build_model(torch.device("cpu"))


def backends(model: LSTMAutoencoder) -> dict[str, Errors]:
    found: dict[str, Errors] = {
        "torch": FusedAutoencoder(model).errors,
        "torch-chunk-64": FusedAutoencoder(model, chunk=64).errors,
    }
    if onnxruntime_available() and model.architecture.cell == "lstm":
        found["onnxruntime"] = OnnxAutoencoder(model, threads=1).errors
        found["onnxruntime-chunk-64"] = OnnxAutoencoder(model, threads=1, chunk=64).errors
    return found


def windows_of(model: LSTMAutoencoder, count: int, seed: int) -> torch.Tensor:
    arch = model.architecture
    return torch.randn(count, arch.window, arch.n_features,
                       generator=torch.Generator().manual_seed(seed))


def assert_row_independent(errors: Errors, windows: torch.Tensor, other: torch.Tensor,
                           per_feature: bool = False) -> None:
    full = errors(windows, per_feature)
    assert torch.equal(errors(windows, per_feature), full), "a second call differs"
    for k in (1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 63, 64, 65, 100, 255, 256, 257, len(windows)):
        assert torch.equal(errors(windows[:k], per_feature), full[:k]), f"first {k} rows"
    for offset in (1, 2, 3, 5, 8, 17, 64, 201):
        moved = errors(torch.cat([other[:offset], windows[:150]]), per_feature)
        assert torch.equal(moved[offset:], full[:150]), f"rows moved by {offset}"
    for row in (0, 6, 149, len(windows) - 1):
        assert torch.equal(errors(windows[row : row + 1], per_feature), full[row : row + 1])


@pytest.mark.parametrize("per_feature", [False, True])
def test_bundled_model_rows_do_not_depend_on_the_batch(per_feature: bool) -> None:
    model = bundled()
    windows, other = windows_of(model, 300, 1), windows_of(model, 300, 2)
    for name, errors in backends(model).items():
        try:
            assert_row_independent(errors, windows, other, per_feature)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


@needs_ort
def test_onnxruntime_rows_do_not_depend_on_the_batch_with_two_threads() -> None:
    model = bundled()
    errors = OnnxAutoencoder(model, threads=2).errors
    assert_row_independent(errors, windows_of(model, 300, 1), windows_of(model, 300, 2))


@pytest.mark.parametrize(("cell", "layers", "features"),
                         [("lstm", 2, 3), ("lstm", 1, 2), ("gru", 2, 3)])
def test_random_models_rows_do_not_depend_on_the_batch(cell: str, layers: int,
                                                       features: int) -> None:
    model = random_model(cell, layers, features)
    windows, other = windows_of(model, 260, 3), windows_of(model, 260, 4)
    for name, errors in backends(model).items():
        try:
            assert_row_independent(errors, windows, other)
            assert_row_independent(errors, windows, other, per_feature=True)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


_CHILD = """
import hashlib, sys, torch
torch.set_num_threads(1)
from streamlstm.model.artifact import load_artifact
from streamlstm.model.fast import fast_autoencoder
model = load_artifact(sys.argv[1]).build_model(torch.device("cpu"))
windows = torch.randn(700, 32, 1, generator=torch.Generator().manual_seed(7))
for backend in sys.argv[2:]:
    errors = fast_autoencoder(model, backend).errors(windows)
    print(backend, hashlib.sha256(errors.numpy().tobytes()).hexdigest())
"""


def test_errors_are_the_same_in_another_process() -> None:
    names = ["torch"] + (["onnxruntime"] if onnxruntime_available() else [])
    model = bundled()
    windows = torch.randn(700, 32, 1, generator=torch.Generator().manual_seed(7))
    here = {}
    for name in names:
        errors = fast_autoencoder(model, name).errors(windows)
        here[name] = hashlib.sha256(errors.numpy().tobytes()).hexdigest()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(BUNDLED), *names],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    there = dict(line.split() for line in out.splitlines())
    assert there == here


def eager_errors(model: LSTMAutoencoder, windows: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return ((windows - model(windows)) ** 2).mean(dim=(1, 2))


@needs_ort
@pytest.mark.parametrize("batch", [1, 300])
@pytest.mark.parametrize(("layers", "features"), [(1, 1), (1, 3), (2, 1), (2, 3)])
def test_onnxruntime_errors_equal_eager(layers: int, features: int, batch: int) -> None:
    model = random_model("lstm", layers, features)
    windows = windows_of(model, batch, 5)
    ort = OnnxAutoencoder(model, threads=1)
    got = ort.errors(windows)
    assert got.shape == (batch,)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, eager_errors(model, windows), rtol=1e-4, atol=1e-6)
    per_feature = ort.errors(windows, per_feature=True)
    assert per_feature.shape == (batch, features)
    with torch.inference_mode():
        expected = ((windows - model(windows)) ** 2).mean(dim=1)
    torch.testing.assert_close(per_feature, expected, rtol=1e-4, atol=1e-6)


@needs_ort
def test_onnxruntime_on_the_bundled_model_and_empty_batches() -> None:
    model = bundled()
    windows = windows_of(model, 500, 6)
    ort = OnnxAutoencoder(model)
    torch.testing.assert_close(ort.errors(windows), eager_errors(model, windows),
                               rtol=1e-4, atol=1e-6)
    assert ort.errors(windows[:0]).shape == (0,)
    assert ort.errors(windows[:0], per_feature=True).shape == (0, 1)
    copy = windows.clone()
    ort.errors(windows)
    assert torch.equal(windows, copy)


def test_fast_autoencoder_picks_a_backend() -> None:
    lstm, gru = random_model("lstm", 1, 1), random_model("gru", 1, 1)
    assert isinstance(fast_autoencoder(gru), FusedAutoencoder)
    assert isinstance(fast_autoencoder(lstm, "torch"), FusedAutoencoder)
    expected = OnnxAutoencoder if onnxruntime_available() else FusedAutoencoder
    assert isinstance(fast_autoencoder(lstm), expected)
    with pytest.raises(ValueError):
        fast_autoencoder(lstm, "tensorrt")


@needs_ort
def test_scorer_backends_agree() -> None:
    artifact = load_artifact(BUNDLED)
    windows = np.random.default_rng(0).normal(size=(400, 32, 1)).astype(np.float32)
    via_ort, via_torch = Scorer(artifact, backend="onnxruntime"), Scorer(artifact, backend="torch")
    assert via_ort.fused.backend == "onnxruntime" and via_torch.fused.backend == "torch"
    np.testing.assert_allclose(via_ort.errors(windows), via_torch.errors(windows), rtol=1e-4)
    np.testing.assert_allclose(via_ort.errors(windows, per_feature=True)[:, 0],
                               via_ort.errors(windows), rtol=1e-6)


def test_the_pipeline_serves_the_backend_it_is_given_and_keeps_it_across_swaps(
        tiny_artifact) -> None:
    import dataclasses

    from streamlstm.core.pipeline import Pipeline

    for backend in ("torch", "onnxruntime"):
        pipeline = Pipeline(tiny_artifact, backend=backend)
        assert pipeline.scorer.fused.backend == backend
        pipeline.swap_model(dataclasses.replace(tiny_artifact, version="next"))
        assert pipeline.scorer.fused.backend == backend
    assert Pipeline(tiny_artifact).scorer.fused.backend == "onnxruntime"  # auto, installed


def test_model_backend_is_a_checked_setting(tmp_path, monkeypatch) -> None:
    from streamlstm import cli, config
    from streamlstm.errors import ConfigError

    assert config.load(None, {}).model.backend == "auto"
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backend: tensorrt\n")
    with pytest.raises(ConfigError) as error:
        config.load(path, {})
    assert error.value.key == "model.backend"
    # Forced onnxruntime where it is not installed: one line naming the key at start-up.
    monkeypatch.setattr("streamlstm.model.fast.onnxruntime_available", lambda: False)
    path.write_text("model:\n  backend: onnxruntime\n")
    with pytest.raises(ConfigError) as error:
        cli.build_service(config.load(path, {}))
    assert error.value.key == "model.backend" and "streamlstm[onnx]" in str(error.value)
