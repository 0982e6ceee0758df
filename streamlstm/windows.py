"""Per-series sliding windows kept in one preallocated array.

`WindowStore` is a plain object with the clock passed in (no threads, no wall-clock reads), so
the same code windows a live Kafka stream, a replayed file and training history.

Each series owns a slot in ``[max_series, 2W, F]``. Every value is written twice, at ``pos``
and ``pos + W``, so the last W values are always the contiguous slice ``[pos+1, pos+1+W)`` and a
ready window is one slice copy instead of a gather.

State per series is bounded: at most ``max_series`` slots, series idle for ``idle_evict_s``
(by the clock passed in) are dropped, and when every slot is taken the least recently seen
series makes room. Evicted series start their warm-up again if they come back.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from streamlstm.records import Point

# The sampling interval of a series is the median of this many of its latest gaps.
_GAP_HISTORY = 8


@dataclass
class ReadyWindows:
    """What one `WindowStore.append` call produced.

    ``index[i]`` is the position in the input of the point whose window is ``windows[i]``
    (raw values, float32 ``[B, W, F]``); ``slots[i]`` is that series' slot. ``late`` lists input
    positions of points older than (or equal in time to) their series' newest point: they
    cannot extend a sliding window and are reported instead of silently dropped.
    """

    index: np.ndarray
    slots: np.ndarray
    windows: np.ndarray
    late: list[int] = field(default_factory=list)
    evicted_idle: int = 0
    evicted_capacity: int = 0
    restarted: int = 0  # series whose window restarted after a long gap


class WindowStore:
    """Sliding windows of length ``window`` with ``stride`` for up to ``max_series`` series."""

    def __init__(
        self,
        window: int,
        n_features: int,
        stride: int = 1,
        max_series: int = 10_000,
        idle_evict_s: float = 86_400.0,
        max_gap_intervals: int = 5,
    ) -> None:
        if window < 2:
            raise ValueError("window must be at least 2")
        if stride < 1:
            raise ValueError("stride must be at least 1")
        self.window = window
        self.n_features = n_features
        self.stride = stride
        self.max_series = max_series
        self.idle_evict_s = idle_evict_s
        self.max_gap_intervals = max_gap_intervals
        self._values = np.zeros((max_series, 2 * window, n_features), dtype=np.float32)
        self._pos = np.zeros(max_series, dtype=np.int64)  # where the next value goes
        self._count = np.zeros(max_series, dtype=np.int64)  # values since the (re)start
        self._last_ts = np.full(max_series, -np.inf)
        self._interval = np.zeros(max_series)  # sampling interval learnt from the series
        # The latest gaps between samples, per series (small: plain Python is fastest here).
        self._gaps: list[deque[float]] = [deque(maxlen=_GAP_HISTORY) for _ in range(max_series)]
        self._last_seen = np.zeros(max_series)  # clock value of the last append
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently seen first
        self._free = list(range(max_series - 1, -1, -1))
        self._next_idle_check = -np.inf

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, series: str) -> bool:
        return series in self._slots

    def series(self) -> list[str]:
        """The series held, least recently seen first."""
        return list(self._slots)

    def slot_of(self, series: str) -> int | None:
        return self._slots.get(series)

    def last_timestamp(self, series: str) -> float | None:
        slot = self._slots.get(series)
        return None if slot is None else float(self._last_ts[slot])

    def append(self, points: Sequence[Point], now: float) -> ReadyWindows:
        """Add ``points`` in order; return the windows that became ready, in input order."""
        ready = ReadyWindows(np.empty(0, np.int64), np.empty(0, np.int64),
                             np.empty((0, self.window, self.n_features), np.float32))
        if now >= self._next_idle_check:
            ready.evicted_idle = self._evict_idle(now)
            self._next_idle_check = now + min(60.0, self.idle_evict_s / 10)
        index: list[int] = []
        slots: list[int] = []
        windows: list[np.ndarray] = []
        w = self.window
        for i, point in enumerate(points):
            slot = self._slots.get(point.series)
            if slot is None:
                slot, evicted = self._allocate(point.series)
                ready.evicted_capacity += evicted
            else:
                self._slots.move_to_end(point.series)
            self._last_seen[slot] = now
            ts = point.timestamp
            last = self._last_ts[slot]
            if ts <= last:
                ready.late.append(i)
                continue
            values = np.asarray(point.values, dtype=np.float32)
            if self._count[slot] > 0:
                gap = ts - last
                interval = self._interval[slot]
                if interval > 0 and gap > self.max_gap_intervals * interval:
                    self._count[slot] = 0  # a long outage: the old window says nothing now
                    ready.restarted += 1
                elif interval > 0 and gap > 1.5 * interval:
                    self._fill_gap(slot, last, ts, values, interval)
                self._learn_interval(slot, gap)
            self._push(slot, values)
            self._last_ts[slot] = ts
            count = self._count[slot]
            if count >= w and (count - w) % self.stride == 0:
                start = self._pos[slot]
                windows.append(self._values[slot, start : start + w].copy())
                index.append(i)
                slots.append(slot)
        if windows:
            ready.index = np.asarray(index, dtype=np.int64)
            ready.slots = np.asarray(slots, dtype=np.int64)
            ready.windows = np.stack(windows)
        return ready

    def interval(self, slot: int) -> float:
        """The sampling interval learnt for the series in ``slot`` (0 until known)."""
        return float(self._interval[slot])

    def forget(self, series: str) -> None:
        """Drop a series' state now."""
        slot = self._slots.pop(series, None)
        if slot is not None:
            self._release(slot)

    def _push(self, slot: int, values: np.ndarray) -> None:
        pos = self._pos[slot]
        self._values[slot, pos] = values
        self._values[slot, pos + self.window] = values
        self._pos[slot] = (pos + 1) % self.window
        self._count[slot] += 1

    def _fill_gap(self, slot: int, last_ts: float, ts: float, values: np.ndarray,
                  interval: float) -> None:
        """Linearly interpolate the samples missing between the last point and this one."""
        missing = round((ts - last_ts) / interval) - 1
        if missing <= 0:
            return
        previous = self._values[slot, (self._pos[slot] - 1) % self.window].copy()
        for k in range(1, missing + 1):
            frac = k / (missing + 1)
            self._push(slot, previous + (values - previous) * frac)

    def _learn_interval(self, slot: int, gap: float) -> None:
        # The (upper) median of the latest gaps ignores an isolated early or missing sample, which
        # would otherwise make every regular sample after it look like a gap to fill, yet follows
        # a series whose sampling really changes within a few samples.
        gaps = self._gaps[slot]
        unchanged = len(gaps) == _GAP_HISTORY and gaps[0] == gap  # a regular series
        gaps.append(gap)  # drops the oldest
        if not unchanged:
            ordered = sorted(gaps)
            self._interval[slot] = ordered[len(ordered) // 2]

    def _allocate(self, series: str) -> tuple[int, int]:
        evicted = 0
        if not self._free:
            oldest = next(iter(self._slots))
            self.forget(oldest)
            evicted = 1
        slot = self._free.pop()
        self._slots[series] = slot
        return slot, evicted

    def _release(self, slot: int) -> None:
        self._pos[slot] = 0
        self._count[slot] = 0
        self._last_ts[slot] = -np.inf
        self._interval[slot] = 0.0
        self._gaps[slot].clear()
        self._free.append(slot)

    def _evict_idle(self, now: float) -> int:
        evicted = 0
        while self._slots:
            series, slot = next(iter(self._slots.items()))
            if now - self._last_seen[slot] < self.idle_evict_s:
                break
            self.forget(series)
            evicted += 1
        return evicted
