"""Guarded learning: what a series flags is not learnt as its normal, unless it lasts.

Everything a series learns online (its calibrators, its memories of past windows) would
otherwise learn an anomaly as soon as it is scored: the second of two identical spikes then
looks ordinary, and a sustained deviation stops being flagged within a few dozen windows.
`LearningGuard` decides, per window of a round and after the window is scored, how much it
weighs in what is learnt:

* a window clearly flagged (a score `OPEN_MARGIN` of the way from the threshold to 1: 0.325
  for a threshold of 0.25) opens a *stretch*, which lasts until `quiet_after` windows in a row
  are not flagged (score below the threshold). While a stretch is open every window is learnt
  at `GUARD_WEIGHT` by the calibrators, and the window memory (novelty and the seasonal
  comparison) holds the values from its first flagged window to its last as a guarded
  interval: the windows holding them count as not remembered, so the anomaly is compared with
  what came before it;
* a stretch still open `accept_after` windows after it began is *accepted*, a lasting change
  that becomes the new normal: its guarded interval is released and learning resumes at full
  weight until the stretch ends. `step` reports the windows where that happens;
* a stretch opening within `quiet_after` windows of the end of the previous one *resumes* it:
  its windows count on from the earlier stretch's start (accepted if that one was), so a
  change the calibrators half absorbed, flagged on and off, is one change accepted once, not a
  chain of fresh stretches that keep a new normal guarded and flagged.

Measured on the generated suite and the 48 NAB-style files (see the README): a stretch opens a
tenth of the way to 1, not a third (0.5 at the shipped threshold, as first built): a repeat or
a sustained deviation whose first windows scored 0.33 to 0.5 was learnt at full weight, memory
included, before a stretch opened, and was absorbed (margins 0 to 0.2 measured alike on the 48
files, within a point; the suite gained the more the lower). A window barely flagged is still
learnt as usual (at weight 0.5 or 0 the false alarms of ordinary series doubled to
quadrupled: a novel but ordinary pattern kept itself flagged), a stretch learns at 0.1 rather
than 0 (at 0, the NAB-style score fell by 3 points pooled and 7 left-one-category-out: the
tails of series that flag often thin out and they flag more), and the coarse memory is not
guarded (its 256-window view kept a guarded incident novel every 8 windows long after it).

All of it is numpy over the round's series, O(1) state per series (and GUARDS intervals per
memory), registered in the `SeriesRegistry`. ``accept_after`` 0 turns the guard off: every
window is learnt at full weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamlstm.core.memory import WindowMemory
from streamlstm.core.state import SeriesRegistry

# A stretch opens at a window scoring this far from the threshold towards 1 (0.325 for a
# threshold of 0.25): a window barely flagged is learnt and remembered as usual, so a novel but
# ordinary pattern does not keep itself flagged (module docstring).
OPEN_MARGIN = 0.1
# The weight a window in a stretch not accepted yet is learnt at by the calibrators.
GUARD_WEIGHT = 0.1


class LearningGuard:
    """Per slot: the open flagged stretch, if any, and the weights it gives (module docstring).

    ``memories`` are ``(memory, lead)`` pairs: ``lead`` is how many values after a memory's
    newest one a flagged window still covers (1 for a memory of block means, whose block in
    progress holds it).
    """

    def __init__(self, registry: SeriesRegistry, memories: Sequence[tuple[WindowMemory, int]],
                 accept_after: int, quiet_after: int) -> None:
        if accept_after < 0 or quiet_after < 1:
            raise ValueError("need accept_after >= 0 and quiet_after >= 1")
        self.memories = list(memories)
        self.accept_after = accept_after
        self.quiet_after = quiet_after
        # Windows since the open stretch began (-1: none), unflagged windows in a row since its
        # last flagged one, and whether it was accepted.
        self.run = registry.add("guard.run", (), np.int64, fill=-1)
        self.quiet = registry.add("guard.quiet", (), np.int64)
        self.accepted = registry.add("guard.accepted", (), np.int8)
        # The last stretch, while one opening now would resume it: windows since it ended
        # (-1: none that near), its run when it ended, and whether it was accepted.
        self.since_end = registry.add("guard.since_end", (), np.int64, fill=-1)
        self.ended_run = registry.add("guard.ended_run", (), np.int64)
        self.ended_accepted = registry.add("guard.ended_accepted", (), np.int8)

    @property
    def enabled(self) -> bool:
        return self.accept_after > 0

    def step(self, slots: np.ndarray, score: np.ndarray, threshold: np.ndarray,
             ) -> tuple[np.ndarray | None, np.ndarray]:
        """One window per series (distinct ``slots``), in order: the weight ``[n]`` each is
        learnt at (None: all 1, the guard is off) and whether its stretch was accepted at it."""
        n = len(slots)
        if not self.enabled:
            return None, np.zeros(n, bool)
        flagged = score >= threshold
        run, quiet = self.run[slots], self.quiet[slots]
        accepted = self.accepted[slots] > 0
        was_open = run >= 0
        strong = score >= threshold + OPEN_MARGIN * (1.0 - threshold)
        starts = strong & ~was_open
        since_end = self.since_end[slots]
        resumes = starts & (since_end >= 0)
        quiet = np.where(flagged, 0, quiet + 1)
        run = np.where(was_open, run + 1, np.where(starts, 0, -1))
        run = np.where(resumes, self.ended_run[slots] + since_end + 1, run)
        accepted = accepted | (resumes & (self.ended_accepted[slots] > 0))
        accept = (run >= self.accept_after) & ~accepted  # run >= 0: accept_after >= 1
        accepted = accepted | accept
        closes = was_open & (quiet >= self.quiet_after)
        guarded = (run >= 0) & ~accepted  # this window is in a stretch not accepted
        weight = np.where(guarded, GUARD_WEIGHT, 1.0)
        # A stretch resuming an accepted one (or accepted as it resumes) guards nothing; the
        # latter releases the interval the stretch it resumes left.
        opens = starts & guarded
        marks = flagged & guarded & ~starts
        closing = closes & ~accepted
        for memory, lead in self.memories:
            if opens.any():
                memory.guard_open(slots[opens], lead)
            if marks.any():
                memory.guard_mark(slots[marks], lead)
            if accept.any():
                memory.guard_release(slots[accept])
            if closing.any():
                memory.guard_close(slots[closing])
        # A stretch ending now can be resumed for quiet_after windows.
        since_end = np.where(closes, 0, np.where(run >= 0, -1, since_end + (since_end >= 0)))
        self.since_end[slots] = np.where(since_end >= self.quiet_after, -1, since_end)
        self.ended_run[slots] = np.where(closes, run, self.ended_run[slots])
        self.ended_accepted[slots] = np.where(closes, accepted, self.ended_accepted[slots])
        self.run[slots] = np.where(closes, -1, run)
        self.quiet[slots] = np.where(closes, 0, quiet)
        self.accepted[slots] = np.where(closes, 0, accepted).astype(np.int8)
        return weight, accept
