"""Synthetic "normal" metric series: the pretraining corpus of the model shipped with the package.

The shipped model must not have seen any series it is evaluated on, so it learns what ordinary
metric windows look like from generated ones: daily and faster seasonality, square and sawtooth
waves, trends, random walks, autoregressive noise, counts, occasional plateaus and quiet flat
stretches. None of them contains an injected anomaly. The generator is seeded and pure.
"""

from __future__ import annotations

import numpy as np

from streamlstm.sources.files import Table
from streamlstm.training import SeriesHistory

STEP_SECONDS = 300.0  # five-minute samples; only gaps relative to the step matter to the model


def _seasonal(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    out = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        period = float(rng.choice([12, 24, 48, 96, 144, 288, 288, 2016]) * rng.uniform(0.9, 1.1))
        amplitude = rng.uniform(0.2, 1.0)
        shape = rng.integers(0, 3)
        phase = 2 * np.pi * (t / period + rng.uniform())
        if shape == 0:
            out += amplitude * np.sin(phase)
        elif shape == 1:  # square wave with soft edges
            out += amplitude * np.tanh(rng.uniform(2, 20) * np.sin(phase))
        else:  # sawtooth
            out += amplitude * (2 * ((phase / (2 * np.pi)) % 1.0) - 1)
    return out


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.integers(0, 4)
    scale = rng.uniform(0.01, 0.4)
    if kind == 0:  # white
        return scale * rng.standard_normal(n)
    if kind == 1:  # AR(1)
        phi = rng.uniform(0.5, 0.98)
        e = rng.standard_normal(n) * scale * np.sqrt(1 - phi**2)
        out = np.empty(n)
        acc = 0.0
        for i in range(n):
            acc = phi * acc + e[i]
            out[i] = acc
        return out
    if kind == 2:  # random walk, slow
        return np.cumsum(rng.standard_normal(n)) * scale * 0.05
    return scale * rng.standard_t(df=5, size=n) * 0.5  # heavier tails, still normal behaviour


def _plateaus(rng: np.random.Generator, n: int) -> np.ndarray:
    """Piecewise-constant levels that change rarely (regimes, deployments)."""
    out = np.zeros(n)
    level = 0.0
    i = 0
    while i < n:
        length = int(rng.integers(200, 3000))
        out[i : i + length] = level
        level += rng.normal(0, 0.5)
        i += length
    return out


def generate_series(rng: np.random.Generator, n: int) -> np.ndarray:
    """One synthetic normal series of ``n`` values."""
    kind = rng.integers(0, 6)
    t = np.arange(n, dtype=np.float64)
    if kind == 0:  # seasonal plus noise
        values = _seasonal(rng, n) + _noise(rng, n)
    elif kind == 1:  # noise only
        values = _noise(rng, n)
    elif kind == 2:  # seasonal, trend, regimes
        values = _seasonal(rng, n) + rng.normal(0, 1) * t / n + _plateaus(rng, n) + _noise(rng, n)
    elif kind == 3:  # counts
        rate = np.exp(rng.uniform(0, 4) + 0.5 * _seasonal(rng, n))
        values = rng.poisson(rate).astype(np.float64)
    elif kind == 4:  # regimes with noise
        values = _plateaus(rng, n) + _noise(rng, n)
    else:  # mostly flat with rounding, like a gauge reported with low resolution
        values = np.round(_seasonal(rng, n) * rng.uniform(1, 5) + _noise(rng, n) * 3)
    if rng.uniform() < 0.2:  # quantised readings
        values = np.round(values * rng.uniform(2, 20)) / 10
    return values


def corpus(n_series: int = 150, length: int = 3000, seed: int = 0) -> dict[str, SeriesHistory]:
    """A seeded dictionary of synthetic series, ready for `streamlstm.training.fit`."""
    rng = np.random.default_rng(seed)
    out: dict[str, SeriesHistory] = {}
    for k in range(n_series):
        values = generate_series(rng, length)
        timestamps = np.arange(length, dtype=np.float64) * STEP_SECONDS
        out[f"synthetic-{k:04d}"] = SeriesHistory(timestamps, values.reshape(-1, 1))
    return out


def corpus_table(n_series: int = 150, length: int = 3000, seed: int = 0) -> Table:
    """`corpus` as one table, the shape every `streamlstm train` source produces."""
    history = corpus(n_series, length, seed)
    return Table(
        series=[name for name, h in history.items() for _ in range(len(h.timestamps))],
        timestamps=np.concatenate([h.timestamps for h in history.values()]),
        values=np.concatenate([h.values for h in history.values()]),
        feature_names=["value"],
    )
