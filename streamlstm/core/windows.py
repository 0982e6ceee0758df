"""From points to the values each series' window advances by: order, gaps and readiness.

`Router` keeps, per slot, the series' latest timestamp and value, its sampling interval (the
upper median of its latest gaps) and how many values its window holds since it (re)started. For
a batch of points it decides, for all series at once and one round per point of a series:

* a point not after its series' latest timestamp is *late*: it cannot extend a sliding window
  and is reported instead of silently dropped;
* a short gap (more than 1.5 intervals) is filled by linear interpolation, so a window always
  spans the same time;
* a long gap (more than ``max_gap_intervals`` intervals) restarts the window: what it held
  says nothing about now;
* a window is *ready* once it holds ``window`` values, then every ``stride`` values.

The result is a list of *pushes* (interpolated values, then each real point), grouped by series
and in order within one, that the pipeline appends to its rings. `WindowTails` keeps each
series' last ``window - 1`` values (float32, as the model sees them) and cuts the windows that
end at ready pushes, all of a batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamlstm.core.state import SeriesRegistry

# The sampling interval of a series is the upper median of this many of its latest gaps.
GAP_HISTORY = 8


@dataclass
class Pushes:
    """Values to append, grouped by series (slot) and in order within one."""

    slots: np.ndarray  # int64 [P]
    values: np.ndarray  # float64 [P, F]
    point: np.ndarray  # int64 [P]: the input position of a real point, -1 for interpolation
    ready: np.ndarray  # bool [P]: a window ends at this value and is scored
    seq: np.ndarray  # int64 [P]: the push's index within its series in this batch
    late: np.ndarray  # int64: input positions of late points
    # float64 [P]: the series' sampling interval as it stood when the push's point was routed
    # (not after the whole batch: what a window is compared with must not depend on the cut)
    interval: np.ndarray
    restarted: int = 0  # series whose window restarted after a long gap

    @property
    def rounds(self) -> int:
        return int(self.seq.max()) + 1 if len(self.seq) else 0


def group_rounds(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``order`` (stable by slot) and each element's rank within its slot's group."""
    order = np.argsort(slots, kind="stable")
    return order, rank_within_groups(slots[order])


def rank_within_groups(grouped: np.ndarray) -> np.ndarray:
    """Each element's rank within its run of equal values (``grouped`` is grouped already)."""
    if len(grouped) == 0:
        return np.empty(0, np.int64)
    starts = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1]
    lengths = np.diff(np.r_[starts, len(grouped)])
    return np.arange(len(grouped)) - np.repeat(starts, lengths)


def round_blocks(rank: np.ndarray, limit: int | None = None) -> list[np.ndarray]:
    """Indices into ``rank`` for round 0, 1, ...: the k-th element of every group together,
    each round cut into pieces of at most ``limit`` (None: whole)."""
    if len(rank) == 0:
        return []
    by_round = np.argsort(rank, kind="stable")
    counts = np.bincount(rank)
    blocks = np.split(by_round, np.cumsum(counts)[:-1])
    if limit is None:
        return blocks
    return [block[i : i + limit] for block in blocks for i in range(0, len(block), limit)]


class Router:
    """Per-slot timestamps, gaps and window fill (see the module docstring)."""

    def __init__(self, registry: SeriesRegistry, window: int, n_features: int, stride: int = 1,
                 max_gap_intervals: int = 5) -> None:
        if window < 2:
            raise ValueError("window must be at least 2")
        if stride < 1:
            raise ValueError("stride must be at least 1")
        self.window = window
        self.stride = stride
        self.max_gap_intervals = max_gap_intervals
        self.last_ts = registry.add("router.last_ts", (), np.float64, fill=-np.inf)
        self.last_value = registry.add("router.last_value", (n_features,), np.float64)
        self.interval = registry.add("router.interval", (), np.float64)
        self.gaps = registry.add("router.gaps", (GAP_HISTORY,), np.float64)
        self.n_gaps = registry.add("router.n_gaps", (), np.int64)
        self.count = registry.add("router.count", (), np.int64)  # values since the (re)start

    def route(self, slots: np.ndarray, timestamps: np.ndarray, values: np.ndarray) -> Pushes:
        """Decide the pushes for points ``(slots, timestamps, values [N, F])`` in input order."""
        n = len(slots)
        accepted = np.zeros(n, bool)
        fills = np.zeros(n, np.int64)
        ready = np.zeros(n, bool)
        interval_at = np.zeros(n)
        previous = np.zeros_like(values)
        restarted = 0
        order, rank = group_rounds(slots)
        for block in round_blocks(rank):
            rows = order[block]
            s = slots[rows]
            ts = timestamps[rows]
            last = self.last_ts[s]
            ok = ts > last
            rows, s, ts, last = rows[ok], s[ok], ts[ok], last[ok]
            accepted[rows] = True
            count = self.count[s]
            gap = ts - last
            interval = self.interval[s]
            started = count > 0
            restart = started & (interval > 0) & (gap > self.max_gap_intervals * interval)
            fill = started & ~restart & (interval > 0) & (gap > 1.5 * interval)
            missing = np.where(fill, np.rint(gap / np.where(interval > 0, interval, 1.0)) - 1, 0)
            fills[rows] = np.maximum(missing, 0).astype(np.int64)
            previous[rows] = self.last_value[s]
            restarted += int(restart.sum())
            self._learn_interval(s[started], gap[started])
            interval_at[rows] = self.interval[s]
            count = np.where(restart, 0, count) + fills[rows] + 1
            self.count[s] = count
            ready[rows] = (count >= self.window) & ((count - self.window) % self.stride == 0)
            self.last_ts[s] = ts
            self.last_value[s] = values[rows]
        return self._expand(slots, values, order, accepted, fills, ready, interval_at, previous,
                            restarted)

    def _learn_interval(self, s: np.ndarray, gap: np.ndarray) -> None:
        # The upper median of the latest gaps ignores an isolated early or missing sample, which
        # would otherwise make every regular sample after it look like a gap to fill, yet follows
        # a series whose sampling really changes within a few samples.
        if len(s) == 0:
            return
        held = self.n_gaps[s]
        self.gaps[s, held % GAP_HISTORY] = gap
        held = np.minimum(held + 1, GAP_HISTORY)
        self.n_gaps[s] += 1
        recent = np.where(np.arange(GAP_HISTORY) < held[:, None], self.gaps[s], np.inf)
        self.interval[s] = np.take_along_axis(np.sort(recent, axis=1), (held // 2)[:, None],
                                              axis=1)[:, 0]

    @staticmethod
    def _expand(slots: np.ndarray, values: np.ndarray, order: np.ndarray, accepted: np.ndarray,
                fills: np.ndarray, ready: np.ndarray, interval: np.ndarray,
                previous: np.ndarray, restarted: int) -> Pushes:
        """The accepted points, each after its interpolated fillers, grouped by series."""
        rows = order[accepted[order]]
        per = fills[rows] + 1
        point = np.repeat(rows, per)
        local = np.arange(len(point)) - np.repeat(np.cumsum(per) - per, per)  # 0..fills
        own = local == np.repeat(fills[rows], per)
        frac = ((local + 1) / np.repeat(per, per))[:, None]
        start, end = previous[point], values[point]
        pushed = np.where(own[:, None], end, start + (end - start) * frac)
        push_slots = slots[point]
        return Pushes(
            slots=push_slots,
            values=pushed,
            point=np.where(own, point, -1),
            ready=own & ready[point],
            seq=rank_within_groups(push_slots),
            late=np.flatnonzero(~accepted),
            interval=interval[point],
            restarted=restarted,
        )


class WindowTails:
    """Per slot, the last ``window - 1`` values pushed, oldest first (float32)."""

    def __init__(self, registry: SeriesRegistry, window: int, n_features: int) -> None:
        self.window = window
        self.values = registry.add("windows.tail", (window - 1, n_features), np.float32)

    def cut(self, pushes: Pushes) -> np.ndarray:
        """The window ``[n, W, F]`` ending at each ready push (in push order), then remember
        each series' last ``window - 1`` values."""
        w = self.window
        tail = w - 1
        heads = np.flatnonzero(pushes.seq == 0)  # each series' first push
        groups = pushes.slots[heads]
        lengths = np.diff(np.r_[heads, len(pushes.slots)])
        # Per series: its last W - 1 values before this batch, then its pushes.
        offsets = np.r_[0, np.cumsum(lengths + tail)[:-1]]
        flat = np.empty((int((lengths + tail).sum()), self.values.shape[2]), np.float32)
        flat[(offsets[:, None] + np.arange(tail)).ravel()] = self.values[groups].reshape(
            -1, flat.shape[1])
        group_of = np.repeat(np.arange(len(groups)), lengths)
        flat[offsets[group_of] + tail + pushes.seq] = pushes.values
        ready = np.flatnonzero(pushes.ready)
        starts = offsets[group_of[ready]] + pushes.seq[ready]
        view = np.lib.stride_tricks.sliding_window_view(flat, w, axis=0)  # [.., F, W]
        windows = view[starts].transpose(0, 2, 1)
        self.values[groups] = flat[(offsets + lengths)[:, None] + np.arange(tail)]
        return windows
