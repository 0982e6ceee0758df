"""Turning windows into reconstruction errors: normalise, batch through the model, compare.

`reconstruction_error` is the one error function; training minimises it and the daemon scores
with it, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import torch

from streamlstm.core.state import SeriesRegistry
from streamlstm.model.artifact import Artifact
from streamlstm.model.fast import FusedAutoencoder, OnnxAutoencoder, fast_autoencoder

# A window's spread is clipped at this multiple of the series' running spread before it is
# learnt, so one wild window cannot blow the scale up and hide what follows.
_SCALE_UPDATE_CLIP = 10.0


def reconstruction_error(windows: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """Mean squared error per window: ``[B, W, F]`` x 2 -> ``[B]``."""
    return ((windows - reconstructed) ** 2).mean(dim=(1, 2))


def centre(windows: np.ndarray) -> np.ndarray:
    """Subtract each window's own mean per feature: the model sees shape, not level."""
    return windows - windows.mean(axis=1, keepdims=True)


class Spread:
    """Per-slot running spread of each series, used to normalise its windows.

    The spread is an exponentially weighted mean of the within-window variance. Until a series
    has seen ``1 / fading_factor`` windows each window weighs ``1 / n`` (a plain mean), so the
    first windows do not pin the scale for thousands of steps. It depends only on the inputs,
    never on model outputs, so a window's normalisation is the same however the stream was cut
    into batches. Series known from training start from their trained scale.
    """

    def __init__(self, registry: SeriesRegistry, prefix: str, n_features: int,
                 fading_factor: float, known: dict[str, list[float]] | None = None,
                 floor: float = 1e-6) -> None:
        self.fading_factor = fading_factor
        self.floor = floor
        self._known = known or {}
        self.var = registry.add(f"{prefix}.var", (n_features,), np.float64)
        self.seen = registry.add(f"{prefix}.seen", (), np.int64)
        if self._known:
            registry.on_allocate(self._start_known)

    def _start_known(self, slots: np.ndarray, names: list[str]) -> None:
        for slot, name in zip(slots.tolist(), names, strict=True):
            trained = self._known.get(name)
            if trained is not None:
                self.var[slot] = np.square(trained)
                self.seen[slot] = int(1 / self.fading_factor)

    def scale_of(self, slot: int) -> np.ndarray:
        """The current spread of the series in ``slot`` (before the floor is applied)."""
        return np.sqrt(self.var[slot])

    def update(self, slots: np.ndarray, window_var: np.ndarray) -> np.ndarray:
        """The spread ``[n, F]`` (floored) each window divides by, then learn the windows'
        variances ``[n, F]``; one window per series (distinct ``slots``), in order."""
        seen = self.seen[slots]
        var = np.where((seen == 0)[:, None], window_var, self.var[slots])
        scales = np.maximum(np.sqrt(var), self.floor)
        clipped = np.minimum(window_var, _SCALE_UPDATE_CLIP * np.maximum(var, self.floor))
        seen = seen + 1
        weight = np.maximum(self.fading_factor, 1.0 / seen)[:, None]
        self.var[slots] = (1 - weight) * var + weight * clipped
        self.seen[slots] = seen
        return scales


class Scorer:
    """Runs a model artifact over normalised windows and returns one error per window.

    The errors come from `fast_autoencoder`: ONNX Runtime's `OnnxAutoencoder` for an LSTM on
    the CPU when ``onnxruntime`` is installed (the ``onnx`` extra), else the torch
    `FusedAutoencoder` (CUDA, GRU). Both compute what the `nn.LSTM` model would (the same
    weights, float32 rounding aside) with less work per window, and a window's error depends
    only on the window, not on the batch it came in. ``backend`` forces one (``torch`` or
    ``onnxruntime``).
    """

    def __init__(self, artifact: Artifact, device: str = "cpu", max_batch: int = 8192,
                 backend: str = "auto") -> None:
        self.artifact = artifact
        self.device = torch.device(resolve_device(device))
        self.model = artifact.build_model(self.device)
        self.fused: FusedAutoencoder | OnnxAutoencoder = fast_autoencoder(self.model, backend)
        self.max_batch = max_batch

    @property
    def window(self) -> int:
        return self.artifact.architecture.window

    @property
    def n_features(self) -> int:
        return self.artifact.architecture.n_features

    def errors(self, windows: np.ndarray, per_feature: bool = False) -> np.ndarray:
        """Reconstruction error of each normalised window ``[B, W, F]`` -> float64 ``[B]``, or
        ``[B, F]`` per feature with ``per_feature``."""
        shape = (len(windows), windows.shape[2]) if per_feature else (len(windows),)
        out = np.empty(shape, dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(windows), self.max_batch):
                batch = torch.from_numpy(windows[start : start + self.max_batch]).to(self.device)
                out[start : start + len(batch)] = (
                    self.fused.errors(batch, per_feature).double().cpu().numpy())
        return out


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when present; asking for CUDA without one is an error upstream."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
