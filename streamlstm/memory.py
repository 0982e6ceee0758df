"""Each series' memory of its own past windows: how far is this window from anything seen?

The shared model knows what metric windows look like in general and flags shapes it cannot
reconstruct. It cannot know that *this* series never sat at this level or never went flat at
midday. `WindowMemory` keeps the series' recent raw values and measures the distance from the
current window to its nearest past window (not centred, so a new level is new), in units of
the series' spread. Windows that overlap the current one are excluded, otherwise every window
would find itself. A lasting change becomes normal once the memory holds enough of it.

The same memory answers a second question, `seasonal_distance`: how far is this window from the
windows at the same phase of earlier periods (the same time on the previous days)? A daily
peak that does not come, or comes at night, is not new in shape or level, so the nearest past
window looks like it; only a comparison with the same time of day sees it.

Memory is bounded: ``capacity`` past windows per series cost ``capacity + 2 window`` values
per feature, 16 bytes each (values and running window norms: about 34 kB for the default 2048
windows of 32).
"""

from __future__ import annotations

import numpy as np


class WindowMemory:
    """Recent raw values of one series and the nearest-past-window distance."""

    def __init__(self, window: int, n_features: int, capacity: int = 2048) -> None:
        self.window = window
        self.capacity = capacity
        size = capacity + 2 * window - 1
        # Chronological, newest last, as offsets from the series' first value so large levels
        # (bytes, epoch-like counters) keep their precision in the squared norms.
        self._values = np.zeros((size, n_features))
        # _norms[i]: squared norm per feature of the window ending at _values[i].
        self._norms = np.zeros((size, n_features))
        self._offset: np.ndarray | None = None
        self.n_held = 0
        self._window_steps = np.arange(1 - window, 1)  # a window's rows relative to its end

    def append(self, values: np.ndarray) -> None:
        """Remember one more point ``[F]``."""
        if self._offset is None:
            self._offset = np.array(values, dtype=np.float64)
        value = values - self._offset
        leaving = self._values[-self.window]  # drops out of the newest window
        norm = self._norms[-1] + value**2 - leaving**2
        self._values[:-1] = self._values[1:]
        self._values[-1] = value
        self._norms[:-1] = self._norms[1:]
        self._norms[-1] = norm
        self.n_held = min(self.n_held + 1, len(self._values))

    def latest(self) -> np.ndarray | None:
        """The newest ``window`` points ``[W, F]`` as appended; None until that many are held."""
        if self.n_held < self.window or self._offset is None:
            return None
        return self._values[-self.window :] + self._offset

    def nearest_distance(self, window: np.ndarray, scale: np.ndarray) -> float:
        """Distance from ``window`` ``[W, F]`` to the nearest remembered window that does not
        overlap the last ``W`` points, per feature in units of ``scale`` ``[F]``; NaN if none.

        Call it after appending the window's newest point.
        """
        w = self.window
        past = self.n_held - (2 * w - 1)  # windows that end before the current one starts
        if past <= 0 or self._offset is None:
            return float("nan")
        size = len(self._values)
        first = size - self.n_held
        total = np.zeros(past)
        for f in range(window.shape[1]):
            current = window[:, f] - self._offset[f]
            history = self._values[first : size - w, f]
            # |a - b|^2 = |a|^2 - 2 a.b + |b|^2; np.correlate slides b along without copies.
            dots = np.correlate(history, current, mode="valid")
            norms = self._norms[first + w - 1 : size - w, f]
            total += (norms - 2.0 * dots + current @ current) / scale[f] ** 2
        return float(np.sqrt(max(float(total.min()), 0.0)))

    def seasonal_distance(self, window: np.ndarray, scale: np.ndarray, period: int,
                          periods: int = 7, shift: int = 0) -> float:
        """Distance from ``window`` ``[W, F]`` to the nearest of the windows that ended
        ``k * period`` windows ago (``k = 1..periods``, each allowed ``shift`` windows early or
        late), per feature in units of ``scale`` ``[F]``; NaN if none of them is remembered.

        Periods shorter than the window (plus the shift) are skipped, so the compared windows
        never overlap the current one. Call it after appending the window's newest point.
        """
        w = self.window
        if period <= 0 or self._offset is None:
            return float("nan")
        size = len(self._values)
        first = size - self.n_held
        newest = size - 1
        k_first = -(-(w + shift) // period)  # the smallest k with k * period >= w + shift
        ks = np.arange(k_first, k_first + periods)
        ends = (newest - ks[:, None] * period + np.arange(-shift, shift + 1)).ravel()
        ends = ends[ends - (w - 1) >= first]
        if len(ends) == 0:
            return float("nan")
        total = np.zeros(len(ends))
        rows = ends[:, None] + self._window_steps  # [candidates, W] row indices
        for f in range(window.shape[1]):
            current = window[:, f] - self._offset[f]
            past = self._values[rows, f]
            total += (self._norms[ends, f] - 2.0 * (past @ current) + current @ current
                      ) / scale[f] ** 2
        return float(np.sqrt(max(float(total.min()), 0.0)))
