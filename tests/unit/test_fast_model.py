"""The fused inference path gives the eager model's reconstruction errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import streamlstm
from streamlstm.model.artifact import load_artifact
from streamlstm.model.fast import FusedAutoencoder, best_threads
from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder

BUNDLED = Path(streamlstm.__file__).parent / "data" / "model"


def eager_errors(model: LSTMAutoencoder, windows: torch.Tensor) -> torch.Tensor:
    """The scorer's error (``reconstruction_error``): mean squared error per window."""
    with torch.inference_mode():
        return ((windows - model(windows)) ** 2).mean(dim=(1, 2))


def random_model(cell: str, layers: int, features: int, seed: int = 0) -> LSTMAutoencoder:
    torch.manual_seed(seed)
    arch = Architecture(n_features=features, window=12, hidden_size=16, num_layers=layers,
                        cell=cell, dropout=0.2)  # type: ignore[arg-type]
    model = LSTMAutoencoder(arch).eval()
    with torch.no_grad():  # larger than the default init, so the gates saturate sometimes
        for param in model.parameters():
            param.mul_(2.0)
    return model


@pytest.mark.parametrize("batch", [1, 300])
@pytest.mark.parametrize("features", [1, 3])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_errors_equal_eager(cell: str, layers: int, features: int, batch: int) -> None:
    model = random_model(cell, layers, features)
    windows = torch.randn(batch, 12, features, generator=torch.Generator().manual_seed(1))
    expected = eager_errors(model, windows)
    got = FusedAutoencoder(model).errors(windows)
    assert got.shape == (batch,)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chunking_does_not_change_errors(cell: str) -> None:
    model = random_model(cell, 2, 3, seed=2)
    windows = torch.randn(300, 12, 3, generator=torch.Generator().manual_seed(3))
    whole = FusedAutoencoder(model, chunk=1000).errors(windows)
    chunked = FusedAutoencoder(model, chunk=64).errors(windows)  # 4 full chunks and a short one
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(chunked, eager_errors(model, windows), rtol=1e-4, atol=1e-6)


def test_fused_does_not_modify_the_input() -> None:
    model = random_model("lstm", 1, 1)
    windows = torch.randn(5, 12, 1)
    copy = windows.clone()
    FusedAutoencoder(model).errors(windows)
    assert torch.equal(windows, copy)


def sine_windows(count: int, window: int) -> torch.Tensor:
    """Centred, unit-spread sine windows at random phases and periods, some with a spike."""
    rng = np.random.default_rng(0)
    t = np.arange(window)[None, :]
    period = rng.uniform(20, 200, (count, 1))
    values = np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi, (count, 1)))
    values += rng.normal(0, 0.05, values.shape)
    values[::7, window // 2] += 4.0
    values -= values.mean(axis=1, keepdims=True)
    values /= np.maximum(values.std(axis=1, keepdims=True), 1e-6)
    return torch.from_numpy(values[:, :, None].astype(np.float32))


def test_bundled_model_on_sine_windows() -> None:
    artifact = load_artifact(BUNDLED)
    model = artifact.build_model(torch.device("cpu"))
    windows = sine_windows(500, artifact.architecture.window)
    expected = eager_errors(model, windows)
    for script in (True, False):  # TorchScript step loops and the plain Python ones
        fused = FusedAutoencoder(model, script=script)
        torch.testing.assert_close(fused.errors(windows), expected, rtol=1e-4, atol=1e-6)
    again = FusedAutoencoder.from_state_dict(artifact.architecture, artifact.state_dict)
    torch.testing.assert_close(again.errors(windows), expected, rtol=1e-4, atol=1e-6)


def test_best_threads_sets_a_candidate() -> None:
    before = torch.get_num_threads()
    try:
        fused = FusedAutoencoder(random_model("gru", 1, 1))
        threads = best_threads(fused, batch=64, reps=1, candidates=(1,))
        assert threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_on_cuda(cell: str) -> None:
    model = random_model(cell, 2, 3).cuda()
    windows = torch.randn(300, 12, 3, device="cuda")
    torch.testing.assert_close(FusedAutoencoder(model).errors(windows),
                               eager_errors(model, windows), rtol=1e-4, atol=1e-5)
