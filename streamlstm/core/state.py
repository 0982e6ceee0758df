"""The one home of per-series state: slots in preallocated arrays, and their lifecycle.

Every kind of per-series state (the window ring, the spread, the memory of past windows, each
calibrator, the alarm state) is an array ``[max_series, ...]`` registered with a
`SeriesRegistry` under a name. A series owns one slot index into all of them. The registry
allocates a slot when a series is first seen, evicts series that have been idle for
``idle_evict_s`` (by the clock passed in) or that are the least recently seen when every slot is
taken, and resets the slot in *every* array when it is freed, so a reused slot never carries a
previous series' state.

Large arrays are allocated with ``np.zeros`` (pages the OS commits only when touched), so
memory grows with the series actually held, up to ``max_series``.

`snapshot` copies the state of some series out as named numpy arrays (no pickle; cost
proportional to the series covered) and `restore` writes it back into free slots, so scoring
continues exactly where it stopped.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A hook run with (slots, names) after slots are allocated to new series.
AllocateHook = Callable[[np.ndarray, list[str]], None]


@dataclass(frozen=True)
class _Spec:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fill: float


@dataclass
class SlotLookup:
    """What `SeriesRegistry.lookup` did for a run of names."""

    slots: np.ndarray  # int64, one per name looked up (the first ``done`` names)
    done: int  # names resolved; fewer than asked when a slot held by this run must be reused
    new: list[int] = field(default_factory=list)  # positions whose series got a fresh slot
    evicted_capacity: int = 0


class SeriesRegistry:
    """Slots for up to ``max_series`` series and every per-series array, indexed by slot."""

    def __init__(self, max_series: int, idle_evict_s: float = 86_400.0) -> None:
        if max_series < 1:
            raise ValueError("max_series must be at least 1")
        self.max_series = max_series
        self.idle_evict_s = idle_evict_s
        self.arrays: dict[str, np.ndarray] = {}
        self._specs: dict[str, _Spec] = {}
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently seen first
        self._names: list[str | None] = [None] * max_series
        self._free = list(range(max_series - 1, -1, -1))
        self._next_idle_check = -np.inf
        self._on_allocate: list[AllocateHook] = []
        self.last_seen = self.add("registry.last_seen", (), np.float64)
        # A number per series from its name (not its slot), e.g. to stagger periodic work.
        self.seed = self.add("registry.seed", (), np.int64)

    # ---- arrays ----

    def add(self, name: str, shape: tuple[int, ...], dtype: Any, fill: float = 0.0,
            ) -> np.ndarray:
        """Register and allocate the array ``name`` of ``[max_series, *shape]``."""
        if name in self.arrays:
            raise ValueError(f"state array {name!r} registered twice")
        spec = _Spec(tuple(shape), np.dtype(dtype), fill)
        full = (self.max_series, *spec.shape)
        array = np.zeros(full, spec.dtype) if fill == 0 else np.full(full, fill, spec.dtype)
        self.arrays[name] = array
        self._specs[name] = spec
        return array

    def on_allocate(self, hook: AllocateHook) -> None:
        """Run ``hook(slots, names)`` whenever slots are given to new series."""
        self._on_allocate.append(hook)

    def nbytes_per_series(self) -> int:
        """Bytes of array state one series occupies."""
        return sum(a[0].nbytes for a in self.arrays.values())

    # ---- slots ----

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self, names: Sequence[str], evictions: int) -> list[int]:
        """Bound what a run of names may evict; positions of the points to refuse.

        New series fill free slots freely. Past them, at most ``evictions`` of the first new
        names (in order) may each evict a series held that is *not* among ``names``; every
        point of the other new names is listed. The series held that are among ``names`` are
        marked as just seen, so the evictions of the `lookup` that follows take series absent
        from this run: a flood of new names can neither wipe the warm series nor evict one
        whose points are still to come in the same poll. ``evictions`` 0: no bound, no marks.
        """
        if evictions <= 0:
            return []
        index = self._slots
        present = dict.fromkeys(name for name in names if name in index)  # ordered
        for name in present:
            index.move_to_end(name)
        allowed = len(self._free) + min(evictions, len(index) - len(present))
        admitted: set[str] = set()
        refused: list[int] = []
        for i, name in enumerate(names):
            if name in present or name in admitted:
                continue
            if len(admitted) < allowed:
                admitted.add(name)
            else:
                refused.append(i)
        return refused

    def __contains__(self, series: str) -> bool:
        return series in self._slots

    def series(self) -> list[str]:
        """The series held, least recently seen first."""
        return list(self._slots)

    def slots(self) -> np.ndarray:
        """The slots held, least recently seen series first."""
        return np.fromiter(self._slots.values(), np.int64, len(self._slots))

    def slot_of(self, series: str) -> int | None:
        return self._slots.get(series)

    def name_of(self, slot: int) -> str | None:
        return self._names[slot]

    def lookup(self, names: Sequence[str], now: float) -> SlotLookup:
        """The slot of each name, allocating (and evicting) as needed, in order.

        Stops early, before a name whose allocation would evict a series already looked up in
        this call: its state is still about to be updated by the earlier names, so the caller
        processes those first and calls again with the rest.
        """
        slots = np.empty(len(names), np.int64)
        new: list[int] = []
        evicted = 0
        touched: set[int] = set()
        index = self._slots
        fresh: list[int] = []
        for i, name in enumerate(names):
            slot = index.get(name)
            if slot is None:
                if not self._free:
                    oldest = next(iter(index))
                    if index[oldest] in touched:
                        self._run_hooks(fresh, [names[j] for j in new])
                        return SlotLookup(slots[:i], i, new, evicted)
                    self.forget(oldest)
                    evicted += 1
                slot = self._free.pop()
                index[name] = slot
                self._names[slot] = name
                self.seed[slot] = zlib.crc32(name.encode("utf-8", "surrogatepass"))
                new.append(i)
                fresh.append(slot)
            else:
                index.move_to_end(name)
            slots[i] = slot
            touched.add(slot)
        self.last_seen[slots] = now
        self._run_hooks(fresh, [names[j] for j in new])
        return SlotLookup(slots, len(names), new, evicted)

    def evict_idle(self, now: float) -> int:
        """Forget the series not seen for ``idle_evict_s``; checked at most every minute."""
        if now < self._next_idle_check:
            return 0
        self._next_idle_check = now + min(60.0, self.idle_evict_s / 10)
        evicted = 0
        while self._slots:
            series, slot = next(iter(self._slots.items()))
            if now - self.last_seen[slot] < self.idle_evict_s:
                break
            self.forget(series)
            evicted += 1
        return evicted

    def forget(self, series: str) -> None:
        """Drop a series now: its slot is reset in every array and can be reused."""
        slot = self._slots.pop(series, None)
        if slot is None:
            return
        for name, array in self.arrays.items():
            array[slot] = self._specs[name].fill
        self._names[slot] = None
        self._free.append(slot)

    def clear(self) -> None:
        """Forget every series."""
        for series in list(self._slots):
            self.forget(series)
        self._next_idle_check = -np.inf

    def _run_hooks(self, slots: list[int], names: list[str]) -> None:
        if slots:
            for hook in self._on_allocate:
                hook(np.asarray(slots, np.int64), names)

    # ---- snapshots ----

    def snapshot(self, series: Sequence[str] | None = None,
                 ) -> tuple[list[str], dict[str, np.ndarray]]:
        """Copies of the state of ``series`` (default all held, least recently seen first)."""
        names = [s for s in (self.series() if series is None else series) if s in self._slots]
        slots = np.asarray([self._slots[s] for s in names], np.int64)
        return names, {name: array[slots].copy() for name, array in self.arrays.items()}

    def restore(self, names: Sequence[str], arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Bring back series from `snapshot`; they replace any held under the same names."""
        missing = set(self.arrays) ^ set(arrays)
        if missing:
            raise ValueError(f"snapshot arrays do not match this state: {sorted(missing)}")
        for name, array in self.arrays.items():
            got = arrays[name]
            if got.shape[1:] != array.shape[1:] or got.dtype != array.dtype or len(got) != len(
                    names):
                raise ValueError(f"snapshot array {name!r} has shape {got.shape} {got.dtype}, "
                                 f"expected [{len(names)}, {array.shape[1:]}] {array.dtype}")
        if len(names) > self.max_series:
            raise ValueError(f"snapshot holds {len(names)} series, more than max_series "
                             f"{self.max_series}")
        for name in names:
            self.forget(name)
        while len(self._free) < len(names):
            self.forget(next(iter(self._slots)))
        slots = np.empty(len(names), np.int64)
        for i, name in enumerate(names):
            slot = self._free.pop()
            self._slots[name] = slot
            self._names[slot] = name
            slots[i] = slot
        for name, array in self.arrays.items():
            array[slots] = arrays[name]
        return slots
