"""The NAB files the tests read, all inside the checkout (`tests/data/nab/`, `streamlstm/data/`)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAB_SAMPLE = REPO / "tests" / "data" / "nab"
NAB_WINDOWS = NAB_SAMPLE / "windows.json"
BUNDLED_DATA = REPO / "streamlstm" / "data"


def nab_file(key: str) -> Path:
    """The CSV of NAB's ``CATEGORY/NAME.csv``: the test sample's copy, else the package's."""
    sample = NAB_SAMPLE / "data" / key
    return sample if sample.exists() else BUNDLED_DATA / Path(key).name
