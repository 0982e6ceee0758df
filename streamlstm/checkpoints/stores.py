"""Where checkpoints live: the store contract, a directory, and memory (for tests).

A checkpoint is per input partition: the state of the series whose events arrive on it and,
per series, the offset its state has consumed the partition up to (the next offset it has not
seen). Offset semantics, which every store keeps:

* a checkpoint's offsets never exceed the partition's committed offset when it was taken, so
  a restored series has seen nothing that was not scored and written;
* ``load`` returns what the latest complete ``save`` of that partition wrote (a directory) or,
  per series, the latest record (a compacted topic, where a save may be cut short and one
  series be further than another); the consumer re-reads from the smallest offset as warm-up
  and skips, per series, what its state has already seen;
* anything that cannot be read back whole, or was written in another layout, is refused
  (`CheckpointError`), never half-restored.

The Kafka topic store is in `streamlstm.checkpoints.kafka_topic`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from streamlstm.core.snapshot import StateLayout, StateSnapshot
from streamlstm.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionCheckpoint:
    """The state of some series of one input partition, and how far each has consumed it."""

    partition: int
    offset: int  # the partition's records below this are in the state (or were not its series')
    snapshot: StateSnapshot
    offsets: np.ndarray  # int64 per series of ``snapshot``, each >= ``offset``: its own position

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.snapshot.series):
            raise ValueError("one offset per series of the snapshot")
        if len(self.offsets) and int(self.offsets.min()) < self.offset:
            raise ValueError("a series' offset is below the partition's")


class CheckpointStore(Protocol):
    """Keeps the latest checkpoint of each input partition."""

    #: Where, for log lines (a path, a topic).
    location: str

    def save(self, checkpoint: PartitionCheckpoint, forgotten: Sequence[str]) -> int:
        """Make ``checkpoint`` the partition's latest, durably; ``forgotten`` are series of
        the partition whose state is gone (evicted). Returns the bytes written."""
        ...

    def load(self, partition: int, layout: StateLayout) -> list[PartitionCheckpoint]:
        """The partition's latest checkpoint (empty: none), in parts of one model version each.
        Raises CheckpointError if it is corrupt, truncated or not of ``layout``."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """Checkpoints in a dict, encoded as a directory store encodes them (for tests)."""

    location = "memory"

    def __init__(self) -> None:
        self.saved: dict[int, bytes] = {}

    def save(self, checkpoint: PartitionCheckpoint, forgotten: Sequence[str]) -> int:
        data = _encode(checkpoint)
        self.saved[checkpoint.partition] = data
        return len(data)

    def load(self, partition: int, layout: StateLayout) -> list[PartitionCheckpoint]:
        data = self.saved.get(partition)
        return [] if data is None else [_decode(data, partition, f"memory[{partition}]")]

    def close(self) -> None:
        pass


class DirectoryStore:
    """One file per partition and checkpoint under ``root`` (``<root>/<partition>/``).

    A file is written under a temporary name, synced and renamed, so a reader (or a process
    killed mid-write) sees the previous checkpoint or the new one, never a mix. The newest
    ``keep`` files of a partition stay, older ones are deleted. Files are `StateSnapshot`
    archives (``.npz``, read without pickle).
    """

    _NAME = re.compile(r"^(\d{20})-(\d{15})\.ckpt$")

    def __init__(self, root: str | Path, keep: int = 2,
                 clock: Callable[[], float] = time.time) -> None:
        if keep < 1:
            raise ValueError("keep at least one checkpoint")
        self.root = Path(root)
        self.keep = keep
        self._clock = clock
        self.location = str(self.root)
        # Made on the first save (a start-up that fails later leaves nothing behind); what can
        # be checked now is that it could be made.
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise CheckpointError(f"cannot create the checkpoint directory {self.root}: "
                                  f"{existing} is not a writable directory")

    def _files(self, partition: int) -> list[Path]:
        folder = self.root / str(partition)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if self._NAME.match(p.name))

    def save(self, checkpoint: PartitionCheckpoint, forgotten: Sequence[str]) -> int:
        folder = self.root / str(checkpoint.partition)
        # Sorted by name = by offset, then by time: the last one is the furthest state.
        name = f"{checkpoint.offset:020d}-{int(self._clock() * 1000):015d}.ckpt"
        data = _encode(checkpoint)
        temporary = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, folder / name)
            _fsync_directory(folder)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise CheckpointError(f"writing checkpoint {folder / name}: {exc}") from exc
        for old in self._files(checkpoint.partition)[:-self.keep]:
            old.unlink(missing_ok=True)
        return len(data)

    def load(self, partition: int, layout: StateLayout) -> list[PartitionCheckpoint]:
        files = self._files(partition)
        if not files:
            return []
        latest = files[-1]
        try:
            data = latest.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"reading checkpoint {latest}: {exc}") from exc
        return [_decode(data, partition, str(latest))]

    def close(self) -> None:
        pass


def _encode(checkpoint: PartitionCheckpoint) -> bytes:
    snapshot = checkpoint.snapshot
    meta = {**snapshot.meta, "partition": checkpoint.partition, "offset": checkpoint.offset}
    arrays = {**snapshot.arrays, "_offsets": checkpoint.offsets.astype(np.int64)}
    return StateSnapshot(meta, snapshot.series, arrays).to_bytes()


def _decode(data: bytes, partition: int, where: str) -> PartitionCheckpoint:
    try:
        snapshot = StateSnapshot.from_bytes(data)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    arrays = dict(snapshot.arrays)
    offsets = arrays.pop("_offsets", None)
    if offsets is None or offsets.dtype != np.int64:
        raise CheckpointError(f"{where}: no per-series offsets")
    if snapshot.meta.get("partition") != partition:
        raise CheckpointError(f"{where}: written for partition {snapshot.meta.get('partition')}")
    offset = snapshot.meta.get("offset")
    if not isinstance(offset, int) or (len(offsets) and int(offsets.min()) < offset):
        raise CheckpointError(f"{where}: no valid partition offset")
    meta = {k: v for k, v in snapshot.meta.items() if k not in ("partition", "offset")}
    return PartitionCheckpoint(partition, offset, StateSnapshot(meta, snapshot.series, arrays),
                               offsets)


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename is still atomic
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
