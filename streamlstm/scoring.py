"""Turning windows into reconstruction errors: normalise, batch through the model, compare.

`reconstruction_error` is the one error function; training minimises it and the daemon scores
with it, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import torch

from streamlstm.model.artifact import Artifact

# A window's spread is clipped at this multiple of the series' running spread before it is
# learnt, so one wild window cannot blow the scale up and hide what follows.
_SCALE_UPDATE_CLIP = 10.0


def reconstruction_error(windows: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """Mean squared error per window: ``[B, W, F]`` x 2 -> ``[B]``."""
    return ((windows - reconstructed) ** 2).mean(dim=(1, 2))


def centre(windows: np.ndarray) -> np.ndarray:
    """Subtract each window's own mean per feature: the model sees shape, not level."""
    return windows - windows.mean(axis=1, keepdims=True)


class SeriesScale:
    """Per-series running spread used to normalise windows, indexed by window-store slot.

    The spread is an exponentially weighted mean of the within-window variance. Until a series
    has seen ``1 / fading_factor`` windows each window weighs ``1 / n`` (a plain mean), so the
    first windows do not pin the scale for thousands of steps. It depends only on the inputs,
    never on model outputs, so a window's normalisation is the same however the stream was cut
    into batches. Series known from training start from their trained scale.
    """

    def __init__(self, max_series: int, n_features: int, fading_factor: float,
                 known: dict[str, list[float]] | None = None, floor: float = 1e-6) -> None:
        self.fading_factor = fading_factor
        self.floor = floor
        self._known = known or {}
        self._var = np.zeros((max_series, n_features))
        self._seen = np.zeros(max_series, dtype=np.int64)
        self._owner: list[str | None] = [None] * max_series

    def scale_of(self, slot: int) -> np.ndarray:
        """The current spread of the series in ``slot`` (before the floor is applied)."""
        return np.sqrt(self._var[slot])

    def normalise(self, series: list[str], slots: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Centre and scale ``windows`` in order, updating each series' spread as it goes."""
        return self.normalise_with_scales(series, slots, windows)[0]

    def normalise_with_scales(self, series: list[str], slots: np.ndarray, windows: np.ndarray,
                              ) -> tuple[np.ndarray, np.ndarray]:
        """`normalise`, also returning the spread ``[B, F]`` each window was divided by."""
        centred = centre(windows)
        window_var = centred.var(axis=1)  # [B, F]
        scales = np.empty_like(window_var)
        alpha = self.fading_factor
        for i, slot in enumerate(slots.tolist()):
            name = series[i]
            if self._owner[slot] != name:
                self._owner[slot] = name
                trained = self._known.get(name)
                if trained is not None:
                    self._var[slot] = np.square(trained)
                    self._seen[slot] = int(1 / alpha)
                else:
                    self._var[slot] = window_var[i]
                    self._seen[slot] = 0
            var = self._var[slot]
            scales[i] = np.sqrt(var)
            clipped = np.minimum(window_var[i], _SCALE_UPDATE_CLIP * np.maximum(var, self.floor))
            self._seen[slot] += 1
            weight = max(alpha, 1.0 / self._seen[slot])
            self._var[slot] = (1 - weight) * var + weight * clipped
        np.maximum(scales, self.floor, out=scales)
        return (centred / scales[:, None, :]).astype(np.float32, copy=False), scales


class Scorer:
    """Runs a model artifact over normalised windows and returns one error per window."""

    def __init__(self, artifact: Artifact, device: str = "cpu", max_batch: int = 8192) -> None:
        self.artifact = artifact
        self.device = torch.device(resolve_device(device))
        self.model = artifact.build_model(self.device)
        self.max_batch = max_batch

    @property
    def window(self) -> int:
        return self.artifact.architecture.window

    @property
    def n_features(self) -> int:
        return self.artifact.architecture.n_features

    def errors(self, windows: np.ndarray) -> np.ndarray:
        """Reconstruction error of each normalised window ``[B, W, F]`` -> float64 ``[B]``."""
        out = np.empty(len(windows), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(windows), self.max_batch):
                batch = torch.from_numpy(windows[start : start + self.max_batch]).to(self.device)
                error = reconstruction_error(batch, self.model(batch))
                out[start : start + len(batch)] = error.double().cpu().numpy()
        return out


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when present; asking for CUDA without one is an error upstream."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
