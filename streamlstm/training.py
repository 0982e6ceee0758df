"""Offline training: history in, a model artifact out. No I/O beyond an optional progress bar.

History goes through the same `Router` and `Spread` as the live stream, so training
windows are cut, gap-filled and normalised exactly as the daemon will see them. Each series is
split by time (the last ``validation_fraction`` validates, no look-ahead); training stops when
the validation loss stops improving. Calibration settings travel with the artifact; the
calibration itself is learnt per series online (`streamlstm.core.calibration`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from streamlstm.core.calibration import CalibrationSettings
from streamlstm.core.evidence import SCALE_FADING_FACTOR
from streamlstm.core.records import MAX_VALUE
from streamlstm.core.scoring import Spread, centre, reconstruction_error, resolve_device
from streamlstm.core.state import SeriesRegistry
from streamlstm.core.windows import Router
from streamlstm.errors import StreamlstmError
from streamlstm.model.artifact import Artifact
from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSettings:
    """Model shape and optimisation settings for `fit`."""

    window: int = 32
    hidden_size: int = 32
    num_layers: int = 1
    cell: Literal["lstm", "gru"] = "lstm"
    dropout: float = 0.0
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 3e-3
    validation_fraction: float = 0.2
    patience: int = 4
    stride: int = 1
    max_windows: int = 100_000
    max_gap_intervals: int = 5
    seed: int = 0
    device: str = "cpu"
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)


@dataclass
class SeriesHistory:
    """One series' history: timestamps (epoch s, ascending) and values ``[N, F]``."""

    timestamps: np.ndarray
    values: np.ndarray


class TrainingError(StreamlstmError):
    """The history cannot train a model (too short, wrong shape)."""


def fit(history: Mapping[str, SeriesHistory], feature_names: list[str],
        settings: TrainingSettings | None = None, progress: bool | None = None,
        initial: Artifact | None = None) -> Artifact:
    """Train an LSTM autoencoder on ``history`` and return an unsaved `Artifact`.

    With ``initial`` the model starts from that artifact's weights (fine-tuning; the shape,
    window and cell are its own, ``settings`` gives the optimisation) and its validation loss
    counts as epoch 0: if no epoch improves on it, its weights come back unchanged, so a
    fine-tuned model never validates worse on this history than the one it started from.
    """
    settings = settings or TrainingSettings()
    if initial is not None:
        settings = _settings_of(initial, settings, len(feature_names))
    if progress is None:
        progress = sys.stderr.isatty()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    n_features = len(feature_names)
    train_parts, val_parts, series_scale, summary = _windows(history, n_features, settings)
    train = np.concatenate(train_parts) if train_parts else np.empty((0,))
    val = np.concatenate(val_parts) if val_parts else np.empty((0,))
    if len(train) < 2 or len(val) < 1:
        need = settings.window / (1 - settings.validation_fraction)
        raise TrainingError(f"not enough history: {len(train)} training and {len(val)} validation "
                            f"windows; each series needs well over {math.ceil(need)} points")
    if len(train) > settings.max_windows:
        train = train[np.sort(rng.choice(len(train), settings.max_windows, replace=False))]
    if len(val) > settings.max_windows // 4:
        val = val[np.sort(rng.choice(len(val), settings.max_windows // 4, replace=False))]

    device = torch.device(resolve_device(settings.device))
    architecture = Architecture(n_features=n_features, window=settings.window,
                                hidden_size=settings.hidden_size, num_layers=settings.num_layers,
                                cell=settings.cell, dropout=settings.dropout)
    model = LSTMAutoencoder(architecture).to(device)
    if initial is not None:
        model.load_state_dict(initial.state_dict)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    train_t = torch.from_numpy(train)
    val_t = torch.from_numpy(val).to(device)
    generator = torch.Generator().manual_seed(settings.seed)

    best_loss = float(_errors(model, val_t).mean()) if initial is not None else math.inf
    initial_loss = best_loss
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    epochs_run = 0
    stale = 0
    started = time.perf_counter()
    bar = _progress_bar(settings.epochs, progress)
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(train_t), generator=generator)
        total = 0.0
        epoch_started = time.perf_counter()
        for start in range(0, len(order), settings.batch_size):
            batch = train_t[order[start : start + settings.batch_size]].to(device)
            optimiser.zero_grad()
            loss = reconstruction_error(batch, model(batch)).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        train_loss = total / len(train_t)
        val_loss = float(_errors(model, val_t).mean())
        epochs_run = epoch + 1
        rate = len(train_t) / max(time.perf_counter() - epoch_started, 1e-9)
        bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}", windows_s=f"{rate:,.0f}")
        bar.update(1)
        log.debug("epoch %d: train %.5f validation %.5f", epoch + 1, train_loss, val_loss)
        if val_loss < best_loss - 1e-6:
            best_loss = val_loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            stale = 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    bar.close()
    model.load_state_dict(best_state)

    val_errors = _errors(model, val_t).double().cpu().numpy()
    calibration = settings.calibration
    quantiles = {str(q): float(np.quantile(val_errors, q)) for q in (0.5, 0.9, 0.99, 0.999)}
    return Artifact(
        architecture=architecture,
        state_dict={k: v.cpu() for k, v in best_state.items()},
        feature_names=list(feature_names),
        normalisation={"method": "window-centred, series-scaled", "series_scale": series_scale},
        calibration=calibration.to_dict(),
        training={
            "settings": {k: v for k, v in asdict(settings).items() if k != "calibration"},
            "data": summary | {"windows": int(len(train) + len(val)),
                               "training_windows": len(train),
                               "validation_windows": len(val)},
            "epochs": epochs_run,
            "validation_loss": best_loss,
            **({"initial_model": initial.version, "initial_validation_loss": initial_loss}
               if initial is not None else {}),
            "validation_error_quantiles": quantiles,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )


def _settings_of(initial: Artifact, settings: TrainingSettings,
                 n_features: int) -> TrainingSettings:
    """``settings`` with the shape of ``initial``, which the history must fit."""
    arch = initial.architecture
    if arch.n_features != n_features:
        raise TrainingError(f"the initial model {initial.version or ''} takes "
                            f"{arch.n_features} features, the history has {n_features}")
    return replace(settings, window=arch.window, hidden_size=arch.hidden_size,
                   num_layers=arch.num_layers, cell=arch.cell, dropout=arch.dropout)


class _NoBar:
    """What training calls on a progress bar, doing nothing (no tqdm, or progress off)."""

    def set_postfix(self, **_: Any) -> None:
        pass

    def update(self, _: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(epochs: int, progress: bool) -> Any:
    """tqdm's bar when ``progress`` and tqdm (the ``[train]`` extra) is installed."""
    if not progress:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        log.info("no progress bar: tqdm is not installed (pip install 'streamlstm[train]')")
        return _NoBar()
    return tqdm(total=epochs, unit="epoch", desc="training")


def _windows(history: Mapping[str, SeriesHistory], n_features: int, settings: TrainingSettings,
             ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, list[float]], dict[str, Any]]:
    """Cut and normalise each series' windows, split into training and validation by time."""
    train_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    series_scale: dict[str, list[float]] = {}
    rows = 0
    first, last = math.inf, -math.inf
    for name, series in history.items():
        values = np.asarray(series.values, dtype=np.float64)
        values = values.reshape(len(values), -1) if values.size else values.reshape(0, n_features)
        if values.shape[1] != n_features:
            raise TrainingError(f"series {name!r} has {values.shape[1]} features, "
                                f"expected {n_features}")
        if not (np.abs(values) <= MAX_VALUE).all():  # False for NaN and inf too
            raise TrainingError(f"series {name!r} has non-finite values or values beyond "
                                "the float32 range")
        rows += len(values)
        if len(values) == 0:
            continue
        first = min(first, float(series.timestamps[0]))
        last = max(last, float(series.timestamps[-1]))
        ends, normalised, scale = _normalised_windows(series.timestamps, values, settings)
        if len(ends) == 0:
            continue
        series_scale[name] = scale.tolist()
        split_at = series.timestamps[int(len(values) * (1 - settings.validation_fraction))]
        ends = series.timestamps[ends]
        # A validation window must not contain training-period points, nor the reverse.
        train_parts.append(normalised[ends < split_at])
        val_first = np.searchsorted(ends, split_at) + settings.window - 1
        val_parts.append(normalised[val_first:])
    summary = {
        "series": len(history),
        "rows": rows,
        "first_timestamp": first if math.isfinite(first) else None,
        "last_timestamp": last if math.isfinite(last) else None,
    }
    return train_parts, val_parts, series_scale, summary


def _normalised_windows(timestamps: np.ndarray, values: np.ndarray, settings: TrainingSettings,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One series' windows as the daemon cuts and normalises them: the row each ends at, the
    windows ``[n, W, F]`` (float32) and the series' spread after the last one."""
    registry = SeriesRegistry(1)
    n_features = values.shape[1]
    router = Router(registry, settings.window, n_features, settings.stride,
                    settings.max_gap_intervals)
    spread = Spread(registry, "spread", n_features, SCALE_FADING_FACTOR)
    slots = registry.lookup(["history"], 0.0).slots.repeat(len(values))
    pushes = router.route(slots, np.asarray(timestamps, np.float64), values)
    ready = np.flatnonzero(pushes.ready)
    if len(ready) == 0:
        return ready, np.empty((0, settings.window, n_features), np.float32), spread.scale_of(0)
    view = np.lib.stride_tricks.sliding_window_view(pushes.values, settings.window, axis=0)
    centred = centre(view[ready - settings.window + 1].transpose(0, 2, 1))
    window_var = centred.var(axis=1)
    scales = np.empty_like(window_var)
    for k in range(len(ready)):  # the spread is a recursion over one series' windows
        scales[k] = spread.update(slots[:1], window_var[k : k + 1])[0]
    normalised = (centred / scales[:, None, :]).astype(np.float32)
    return pushes.point[ready], normalised, spread.scale_of(0)


def _errors(model: LSTMAutoencoder, windows: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    model.eval()
    if len(windows) == 0:
        return torch.empty(0)
    with torch.inference_mode():
        return torch.cat([reconstruction_error(part, model(part))
                          for part in torch.split(windows, batch)])
