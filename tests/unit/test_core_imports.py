"""The core never loads an adapter's client library (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CORE = [
    "streamlstm.records",
    "streamlstm.errors",
    "streamlstm.config",
    "streamlstm.windows",
    "streamlstm.scoring",
    "streamlstm.calibration",
    "streamlstm.training",
    "streamlstm.pipeline",
    "streamlstm.evaluation",
    "streamlstm.model",
    "streamlstm.model.artifact",
    "streamlstm.model.lstm_ae",
    "streamlstm.sources.files",
]
ADAPTER_LIBRARIES = ["kafka", "influxdb_client", "prometheus_client"]
REPO = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after_importing(*modules: str) -> set[str]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return set(json.loads(completed.stdout.splitlines()[-1]))


def adapters_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == lib or m.startswith(lib + ".") for lib in ADAPTER_LIBRARIES))


def test_the_core_loads_no_adapter_library() -> None:
    modules = loaded_after_importing(*CORE)
    assert set(CORE) <= modules
    assert adapters_in(modules) == []


@pytest.mark.parametrize("library", ADAPTER_LIBRARIES)
def test_the_probe_would_see_an_adapter_library(library: str) -> None:
    """The check above is not vacuous: importing the library shows up in sys.modules."""
    assert library in adapters_in(loaded_after_importing(library))
