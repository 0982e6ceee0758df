"""The core never loads an adapter's client library (checked in a fresh interpreter), and
imports nothing of ours outside the core but the exception tree and the model."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE_DIR = REPO / "streamlstm" / "core"
# Every module of the core folder, and the pure modules around it.
CORE_MODULES = sorted(
    "streamlstm.core" + ("" if path.stem == "__init__" else f".{path.stem}")
    for path in CORE_DIR.glob("*.py"))
CORE = [
    *CORE_MODULES,
    "streamlstm.errors",
    "streamlstm.config",
    "streamlstm.training",
    "streamlstm.evaluation",
    "streamlstm.model",
    "streamlstm.model.artifact",
    "streamlstm.model.fast",
    "streamlstm.model.lstm_ae",
    "streamlstm.sources.files",
]
ADAPTER_LIBRARIES = ["kafka", "influxdb_client", "prometheus_client"]
# What a core module may import of ours.
CORE_MAY_IMPORT = ("streamlstm.core", "streamlstm.errors", "streamlstm.model")

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


def ours_imported_by(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "streamlstm" or n.startswith("streamlstm.")}


def test_the_core_folder_imports_only_the_core_errors_and_model() -> None:
    modules = sorted(CORE_DIR.glob("*.py"))
    assert len(modules) >= 8  # the glob found the folder
    for path in modules:
        outside = {n for n in ours_imported_by(path)
                   if not any(n == p or n.startswith(p + ".") for p in CORE_MAY_IMPORT)}
        assert outside == set(), f"{path.name} imports {sorted(outside)}"


def test_the_import_check_sees_an_adapter_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from streamlstm.sinks.influx import InfluxSink\nimport streamlstm.metrics\n")
    assert ours_imported_by(module) == {"streamlstm.sinks.influx", "streamlstm.metrics"}
