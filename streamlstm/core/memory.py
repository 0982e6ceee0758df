"""Each series' memory of its own past: how far is this window from anything it did before?

The shared model knows what metric windows look like in general. It cannot know that *this*
series never sat at this level or never went flat at midday. `WindowMemory` keeps each series'
latest values in a ring and answers, for its newest window of W values, how far it is from
every remembered past window that does not overlap it (not centred, so a new level is new), in
units of the series' spread. The same distances, read at the lags of one and several periods,
answer the seasonal question: how far is this window from the same time on earlier days?

Nothing is re-scanned. Per series the ring holds ``capacity + 2 W`` values, newest first in a
buffer with some slack at its start, so that a series' values from the newest back are one
contiguous slice whatever its position (the buffer is shifted once every slack values, when its
start is reached), and, for each lag ``d`` (``W <= d < W + capacity``),
``E[d] = |P_d|^2 - 2 P_d . T``, where ``T`` is the newest window and ``P_d`` the window
ending ``d`` values earlier, so that ``|P_d - T|^2 = E[d] + |T|^2``. When a value ``x[m]``
arrives both windows slide by one and every lag is updated in place, as streaming
matrix-profile methods update their sliding dot products (STAMPI; Yeh et al., ICDM 2016):

    E[d] += a (a - 2 x[m]) - b (b - 2 x[m - W])    with a = x[m - d], b = x[m - d - W]

so a new value costs O(capacity) instead of O(capacity x W), for all series of a round in one
numpy expression (float32). The ring stores each value as float16, less a per-series reference
level and in a per-series unit: ``2^-11`` of a unit is far below the differences a distance in
units of the series' spread can tell apart, and it halves the ring. Every `REFRESH` values (and
once the first two windows are in) the reference moves to the series' current level, the unit
becomes the 90th percentile of the held values' distances from it (one wild value is clipped at
`MAX_UNITS` rather than making every other one coarse) and ``E`` is recomputed exactly, which
bounds float32 drift and keeps precision for series far from where they started. The refresh
is staggered by series name, so it costs O(W) per value on average and never lands on every
series at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamlstm.core.state import SeriesRegistry

REFRESH = 512
NOISE_FLOOR = 1e-5
# A value stored further out than this many units is clipped (float16 ends at 65,504).
MAX_UNITS = 60_000.0
# The unit is this percentile of the held values' distances from the newest one.
UNIT_PERCENTILE = 90
# Series per pass: the arrays of one pass stay in the CPU cache.
CHUNK = 64
# Guarded intervals held per series, and the stop of one still open.
GUARDS = 4
GUARD_OPEN = 2**62


def _float32(values: np.ndarray) -> np.ndarray:
    """``values`` (float16) as float32: exact either way, but torch converts ~10x faster."""
    return torch.from_numpy(np.ascontiguousarray(values)).to(torch.float32).numpy()


class WindowMemory:
    """Rings of recent values and sliding dot products for every slot (module docstring)."""

    def __init__(self, registry: SeriesRegistry, prefix: str, window: int, n_features: int,
                 capacity: int) -> None:
        self.window = window
        self.capacity = capacity
        self.size = capacity + 2 * window
        # The ring is copied up once every slack values: at size / 64 that is 128 bytes copied
        # per value appended, little beside the 4 capacity bytes of terms each one updates.
        self.slack = max(16, self.size // 64)
        # Newest first: the values from the newest back are ``values[slot, pos : pos + size]``.
        self.values = registry.add(f"{prefix}.values", (self.size + self.slack, n_features),
                                   np.float16)
        self.terms = registry.add(f"{prefix}.terms", (capacity, n_features), np.float32)
        self.pos = registry.add(f"{prefix}.pos", (), np.int64)  # where the newest value is
        self.held = registry.add(f"{prefix}.held", (), np.int64)  # values held, up to size
        self.ref = registry.add(f"{prefix}.ref", (n_features,), np.float64)
        self.unit = registry.add(f"{prefix}.unit", (n_features,), np.float64)
        self.age = registry.add(f"{prefix}.age", (), np.int64)  # values since the last refresh
        # Guarded stretches (see `streamlstm.core.guard`): values appended so far, and per
        # slot up to GUARDS intervals [start, stop) of those counts whose windows count as not
        # remembered; an open interval's stop is GUARD_OPEN, its last flagged value + 1 kept
        # in guard_last until it closes.
        self.count = registry.add(f"{prefix}.count", (), np.int64)
        self.guards = registry.add(f"{prefix}.guards", (GUARDS, 2), np.int64)
        self.guard_next = registry.add(f"{prefix}.guard_next", (), np.int64)
        self.guard_last = registry.add(f"{prefix}.guard_last", (), np.int64)
        # _rings[slot, pos] ([F, size], a view) is the ring of a slot whose newest value is at
        # pos.
        self._rings = np.lib.stride_tricks.sliding_window_view(self.values, self.size, axis=1)
        self._steps = np.arange(self.size)
        registry.on_allocate(self._stagger)
        self._seed = registry.seed

    def _stagger(self, slots: np.ndarray, names: list[str]) -> None:
        self.age[slots] = self._seed[slots] % REFRESH

    def push(self, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Append one value ``[n, F]`` to each of ``slots`` (distinct); returns each series'
        newest window, newest value first, ``[n, W, F]`` (float64, less its reference level)."""
        held = self.held[slots]
        first = held == 0
        if first.any():
            self.ref[slots[first]] = values[first]
            self.unit[slots[first]] = 1.0
        pos = self.pos[slots]
        full = pos == 0
        if full.any():  # the buffer's start is reached: the newest size - 1 values move up
            moved = slots[full]
            self.values[moved, self.slack + 1 :] = self.values[moved, : self.size - 1]
            pos[full] = self.slack + 1
        pos -= 1
        self.pos[slots] = pos
        unit = self.unit[slots]
        self.values[slots, pos] = np.clip((values - self.ref[slots]) / unit, -MAX_UNITS,
                                          MAX_UNITS).astype(np.float16)
        held = np.minimum(held + 1, self.size)
        self.held[slots] = held
        self.count[slots] += 1  # the positions guarded intervals refer to
        w, c = self.window, self.capacity
        newest = np.empty((len(slots), w, values.shape[1]), np.float32)
        if c:
            age = self.age[slots] + 1
            due = (age >= REFRESH) | (held == 2 * w)
            self.age[slots] = np.where(due, 0, age)
        for start in range(0, len(slots), CHUNK):
            part = slice(start, start + CHUNK)
            s = slots[part]
            ring = _float32(self._rings[s, pos[part]].transpose(0, 2, 1))  # ring[:, k] = x[m - k]
            newest[part] = ring[:, :w]
            if not c:
                continue
            # E[d] += a (a - 2 x[m]) - b (b - 2 x[m - W]), in place.
            terms = self.terms[s]
            a, b = ring[:, w : w + c], ring[:, 2 * w : 2 * w + c]
            step = a - 2 * ring[:, None, 0]
            step *= a
            terms += step
            np.subtract(b, 2 * ring[:, None, w], out=step)
            step *= b
            terms -= step
            self.terms[s] = terms
            refresh = due[part]
            if refresh.any():
                moved = self._refresh(s[refresh], pos[part][refresh], ring[refresh])
                newest[np.flatnonzero(refresh) + start] = moved[:, :w]
        return newest * self.unit[slots][:, None, :]

    def _refresh(self, slots: np.ndarray, pos: np.ndarray, ring: np.ndarray) -> np.ndarray:
        """Move the reference to the newest value and the unit to the held values' root mean
        square about it, re-store the ring and recompute ``E`` exactly."""
        held = self.held[slots]
        unit = self.unit[slots]
        kept = (self._steps < held[:, None])[..., None]  # rows holding a value (the rest stay 0)
        about = (ring.astype(np.float64) - ring[:, :1]) * unit[:, None, :]  # raw, less the newest
        about = np.where(kept, about, 0.0)
        # A robust spread: one wild value must not make every other one coarse; it is clipped
        # at MAX_UNITS instead, which is as far as anything needs to be.
        magnitude = np.where(kept, np.abs(about), np.nan)
        spread = np.nanpercentile(magnitude, UNIT_PERCENTILE, axis=1)
        new_unit = np.where(spread > 0, spread, unit)
        self.ref[slots] += ring[:, 0].astype(np.float64) * unit
        self.unit[slots] = new_unit
        stored = np.clip(about / new_unit[:, None, :], -MAX_UNITS, MAX_UNITS).astype(np.float16)
        for slot, at, row in zip(slots.tolist(), pos.tolist(), stored, strict=True):
            self.values[slot, at : at + self.size] = row
        moved = _float32(stored)
        w, c = self.window, self.capacity
        past = np.lib.stride_tricks.sliding_window_view(moved[:, w : 2 * w + c - 1], w, axis=1)
        # past[:, i, f, k] = x[m - (w + i) - k]: the window at lag w + i, newest first.
        newest = moved[:, :w].transpose(0, 2, 1)[:, None]  # [n, 1, F, W]
        self.terms[slots] = (past * (past - 2 * newest)).sum(axis=3)
        return moved

    def distances(self, slots: np.ndarray, newest: np.ndarray, scale: np.ndarray,
                  ) -> Distances:
        """Squared distances from each series' newest window (as `push` returned it) to the
        window at each lag ``W + i`` (``i < capacity``), summed over features in units of
        ``scale`` ``[n, F]``, not (fully) remembered windows excluded (`Distances`)."""
        w, c = self.window, self.capacity
        unit = self.unit[slots]
        own = np.square(newest / unit[:, None, :]).sum(axis=1)  # [n, F], in units
        weight = np.square(unit / scale)
        # Below this fraction of the newest window's own norm a distance is float32 rounding
        # (an exactly repeating series), not a difference: it counts as none.
        floor = (NOISE_FLOOR * (own * weight).sum(axis=1)).astype(np.float32)
        raw = np.empty((len(slots), c), np.float32)
        held = self.held[slots]
        # Windows not (fully) remembered yet: those at columns past ``last`` (inf).
        last = np.where(held < c + 2 * w, held - 2 * w, c)
        columns = np.arange(c)
        single = self.terms.shape[2] == 1
        for start in range(0, len(slots), CHUNK):
            part = slice(start, start + CHUNK)
            d2 = raw[part]
            if single:  # the map to units is applied per row afterwards (see Distances)
                np.take(self.terms[:, :, 0], slots[part], axis=0, out=d2)
            else:
                terms = self.terms[slots[part]]
                d2[:] = ((terms + own[part, None, :]) * weight[part, None, :]).sum(
                    axis=2, dtype=np.float32)
            if (last[part] < c).any():
                np.copyto(d2, np.float32(np.inf), where=columns > last[part][:, None])
        self._forget_guarded(slots, raw)
        if single:
            return Distances(raw, own[:, 0].astype(np.float32), weight[:, 0].astype(np.float32),
                             floor, window=w)
        return Distances(raw, np.zeros(len(slots), np.float32), np.ones(len(slots), np.float32),
                         floor, window=w)

    def guard_open(self, slots: np.ndarray, lead: int = 0) -> None:
        """Open a guarded interval at each slot's newest value (slots without one open): the
        windows holding any value from there on count as not remembered until it is
        released or closed. ``lead``: values after the newest it covers from the start (a
        coarse value still being averaged)."""
        count = self.count[slots]
        at = self.guard_next[slots] % GUARDS
        self.guards[slots, at, 0] = count - 1
        self.guards[slots, at, 1] = GUARD_OPEN
        self.guard_last[slots] = count + lead
        self.guard_next[slots] += 1

    def guard_mark(self, slots: np.ndarray, lead: int = 0) -> None:
        """The open interval of ``slots`` covers their newest value (and ``lead`` after)."""
        self.guard_last[slots] = self.count[slots] + lead

    def guard_close(self, slots: np.ndarray) -> None:
        """End the open interval of ``slots`` after the last value marked: it stays guarded
        (until it leaves the memory or GUARDS newer intervals replace it)."""
        at = (self.guard_next[slots] - 1) % GUARDS
        self.guards[slots, at, 1] = self.guard_last[slots]

    def guard_release(self, slots: np.ndarray) -> None:
        """Drop the open interval of ``slots``: its windows are remembered again."""
        at = (self.guard_next[slots] - 1) % GUARDS
        self.guards[slots, at] = 0

    def _forget_guarded(self, slots: np.ndarray, d2: np.ndarray) -> None:
        """inf in ``d2`` at the windows that hold a guarded value."""
        if not self.capacity or not len(slots):
            return
        guards = self.guards[slots]  # [n, G, 2]
        start, stop = guards[..., 0], guards[..., 1]
        if not (start < stop).any():
            return
        w, c = self.window, self.capacity
        newest = (self.count[slots] - 1)[:, None]
        # Column i is the window ending at newest - w - i, holding w values back from there.
        lo = newest - 2 * w + 2 - stop
        hi = newest - w - start
        live = (start < stop) & (hi >= 0) & (lo < c)
        rows = np.flatnonzero(live.any(axis=1))
        if not len(rows):
            return
        columns = np.arange(c)
        hidden = ((columns >= lo[rows, :, None]) & (columns <= hi[rows, :, None])
                  & live[rows, :, None]).any(axis=1)
        d2[rows] = np.where(hidden, np.float32(np.inf), d2[rows])


@dataclass
class Distances:
    """What `WindowMemory.distances` found for a round: per row ``d2 = (raw + offset) *
    weight``, 0 where at most ``floor``, inf where the window is not remembered.

    ``raw`` is the memory's sliding terms as they are (for one feature; the whole distance
    for several), so that the nearest window, a minimum, is found on ``raw`` and mapped to
    units once per row: the map is monotonic, so this is the minimum of `squared` bit for bit
    without computing the whole matrix."""

    raw: np.ndarray  # [n, capacity] float32, inf where not remembered
    offset: np.ndarray  # [n] float32
    weight: np.ndarray  # [n] float32
    floor: np.ndarray  # [n] float32
    window: int

    def _to_units(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` (``[n]`` or ``[n, k]``) mapped to squared distances in units."""
        extra = (slice(None),) + (None,) * (raw.ndim - 1)
        d2 = (raw + self.offset[extra]) * self.weight[extra]
        np.copyto(d2, np.float32(0.0), where=d2 <= self.floor[extra])
        np.copyto(d2, np.float32(np.inf), where=np.isinf(raw))
        return d2

    def squared(self) -> np.ndarray:
        """The squared distances ``[n, capacity]`` (float32), inf where not remembered."""
        return self._to_units(self.raw)

    def nearest(self) -> np.ndarray:
        """Distance to the nearest remembered window, NaN where none is."""
        if self.raw.shape[1] == 0:
            return np.full(len(self.raw), np.nan)
        best = self._to_units(self.raw.min(axis=1))
        return np.where(np.isfinite(best), np.sqrt(best), np.nan)

    def seasonal(self, periods: np.ndarray, n_periods: int, shift_fraction: float,
                 ) -> np.ndarray:
        """Distance to the nearest of the windows ``k * period`` values back (``k = 1..
        n_periods``, each up to ``shift`` values early or late), NaN where none is remembered
        or the series has no period (0). Periods shorter than the window (plus the shift) are
        skipped, so the windows compared never overlap the newest one."""
        out = np.full(len(self.raw), np.nan)
        w = self.window
        for period in np.unique(periods[periods > 0]).tolist():
            rows = np.flatnonzero(periods == period)
            shift = max(1, round(period * shift_fraction))
            k_first = -(-(w + shift) // period)
            ks = np.arange(k_first, k_first + n_periods)
            lags = (ks[:, None] * period + np.arange(-shift, shift + 1)).ravel()
            cols = lags - w
            cols = cols[(cols >= 0) & (cols < self.raw.shape[1])]
            if len(cols) == 0:
                continue
            picked = Distances(self.raw[np.ix_(rows, cols)], self.offset[rows],
                               self.weight[rows], self.floor[rows], w)
            out[rows] = picked.nearest()
        return out
