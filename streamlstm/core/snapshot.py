"""The state of some series as plain data: named arrays plus JSON metadata, never pickle.

Two encodings:

* `StateSnapshot.to_bytes` / `from_bytes`: one ``.npz`` archive for many series (a checkpoint
  file holds a partition's series this way);
* `StateSnapshot.pack_rows` / `unpack_rows`: one fixed-size byte row per series (a compacted
  Kafka topic holds one record per series this way). A row is the series' slice of every
  array, in the order of `row_layout`; `layout_digest` names that layout, so a row can only
  be read back into the layout that wrote it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class StateSnapshot:
    """The complete state of some series: named arrays (one row per series) and metadata."""

    meta: dict[str, Any]
    series: list[str]
    arrays: dict[str, np.ndarray]

    def to_bytes(self) -> bytes:
        """An ``.npz`` archive (no pickle): the arrays, the series names and the metadata."""
        buffer = io.BytesIO()
        named: dict[str, Any] = {
            "__meta__": np.frombuffer(json.dumps(self.meta).encode(), np.uint8),
            "__series__": np.array(self.series, dtype=np.str_), **self.arrays}
        np.savez(buffer, **named)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> StateSnapshot:
        """Read `to_bytes` output; raises ValueError for anything else."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(archive["__meta__"].tobytes())
                series = [str(s) for s in archive["__series__"].tolist()]
                arrays = {k: archive[k] for k in archive.files if not k.startswith("__")}
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a state snapshot: {exc}") from exc
        if not isinstance(meta, dict) or any(len(a) != len(series) for a in arrays.values()):
            raise ValueError("not a state snapshot: arrays and series do not line up")
        return cls(meta, series, arrays)

    def row_layout(self) -> np.dtype[Any]:
        """One series' state as a structured dtype: every array's row, by name."""
        return row_layout(self.arrays)

    def pack_rows(self) -> list[bytes]:
        """One byte string per series, in the order of ``series``."""
        layout = self.row_layout()
        table = np.empty(len(self.series), layout)
        for name, array in self.arrays.items():
            table[name] = array
        data = table.tobytes()
        size = layout.itemsize
        return [data[i * size:(i + 1) * size] for i in range(len(self.series))]

    @classmethod
    def unpack_rows(cls, meta: dict[str, Any], series: Sequence[str], rows: Sequence[bytes],
                    layout: np.dtype[Any]) -> StateSnapshot:
        """The inverse of `pack_rows` for rows written in ``layout``; ValueError if a row has
        the wrong size."""
        size = layout.itemsize
        bad = [name for name, row in zip(series, rows, strict=True) if len(row) != size]
        if bad:
            raise ValueError(f"state rows of {len(bad)} series are not {size} bytes long "
                             f"(first: {bad[0]!r})")
        table = np.frombuffer(b"".join(rows), layout, count=len(rows))
        arrays = {name: np.array(table[name]) for name in layout.names or ()}
        return cls(dict(meta), list(series), arrays)


@dataclass(frozen=True)
class StateLayout:
    """What a snapshot must match to be restored into a pipeline."""

    meta: dict[str, Any]  # format, window, features and the settings that shape the state
    rows: np.dtype[Any]  # one series' state, as `StateSnapshot.pack_rows` writes it
    digest: str  # `layout_digest` of the two


def row_layout(arrays: dict[str, np.ndarray]) -> np.dtype[Any]:
    """The structured dtype of one row of each of ``arrays`` (in their order)."""
    return np.dtype([(name, array.dtype, array.shape[1:]) for name, array in arrays.items()])


def layout_digest(meta: dict[str, Any], layout: np.dtype[Any]) -> str:
    """A short name for the state's layout (format, window, features, state-shaping settings
    and every array's name, dtype and shape): equal digests mean rows fit."""
    text = json.dumps({"meta": meta, "fields": layout.descr}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
