"""Hot reload of a bad model (valid weights, malformed ``meta.json``): refused with a metric and
a log line, the running model untouched, and the same version tried again once its files
change."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamlstm.core.pipeline import Pipeline
from streamlstm.metrics import Metrics
from streamlstm.model.artifact import META_FILE, Artifact, load_artifact, save_artifact, set_current
from streamlstm.service import Service, ServiceSettings
from tests.memory_adapters import FakeClock, MemorySink, MemorySource
from tests.unit.core_helpers import STEP, T0, TINY_WINDOW, sine_values

BAD_CALIBRATIONS = [
    "oops",
    [],
    None,
    {"threshold": "high"},
    {"threshold": math.nan},
    {"threshold": 7.0},
    {"warmup": None},
    {"warmup": 2.5},
    {"history": 5},  # fewer than the warm-up: CalibrationSettings refuses it
    {"alarm_hold": -1},
    {"alarm_hold": True},
]


def reloads(registry: CollectorRegistry, result: str) -> float | None:
    return registry.get_sample_value("streamlstm_model_reloads_total", {"result": result})


def write_meta(directory: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite ``meta.json`` in place (the weights, and so their checksum, stay valid) and
    make sure its mtime moves even on a coarse-grained file system."""
    path = directory / META_FILE
    before = path.stat().st_mtime_ns
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def feed(source: MemorySource, start: int, stop: int) -> None:
    values = sine_values(stop)
    for i in range(start, stop):
        source.send({"series": "a", "timestamp": T0 + i * STEP, "value": float(values[i])})


@pytest.fixture
def models(tmp_path: Path, fresh_artifact: Callable[[], Artifact]) -> Path:
    models = tmp_path / "models"
    save_artifact(fresh_artifact(), models)
    return models


def make(models: Path) -> tuple[Service, CollectorRegistry, MemorySource, MemorySink]:
    source, sink, clock = MemorySource(), MemorySink(), FakeClock()
    registry = CollectorRegistry()
    pipeline = Pipeline(load_artifact(models))
    service = Service(source, sink, pipeline, Metrics(registry),
                      ServiceSettings(model_path=str(models), reload_interval_s=0.0),
                      clock=lambda: T0, monotonic=clock, wait=clock.wait)
    return service, registry, source, sink


@pytest.mark.parametrize("calibration", BAD_CALIBRATIONS, ids=repr)
def test_a_malformed_calibration_is_refused_before_anything_is_swapped(
        models: Path, calibration: object, caplog: pytest.LogCaptureFixture) -> None:
    service, registry, source, sink = make(models)
    pipeline = service.pipeline
    running = pipeline.model_version
    scorer, settings, threshold = pipeline.scorer, pipeline.calibration, pipeline.alarms.threshold
    feed(source, 0, TINY_WINDOW + 10)
    assert service.run_once()

    bad = models / "bad-version"
    shutil.copytree(models / running, bad)
    write_meta(bad, lambda meta: meta.update(calibration=calibration, version="bad-version"))
    set_current(models, bad.name)
    with caplog.at_level(logging.ERROR, logger="streamlstm.service"):
        service._maybe_reload()

    assert reloads(registry, "refused") == 1 and reloads(registry, "loaded") == 0
    assert any("refused model bad-version" in r.getMessage() for r in caplog.records)
    assert pipeline.scorer is scorer and pipeline.calibration is settings, "half-swapped"
    assert pipeline.alarms.threshold == threshold and pipeline.model_version == running
    assert registry.get_sample_value("streamlstm_model_info", {
        "version": running, "cell": pipeline.artifact.architecture.cell,
        "trained_at": pipeline.artifact.created_at}) == 1

    feed(source, TINY_WINDOW + 10, TINY_WINDOW + 40)  # the old model keeps scoring
    assert service.run_once()
    assert len(sink.points) == 41 and {s.model_version for s in sink.points.values()} == {running}

    service._maybe_reload()  # the same files: not tried again every few seconds
    assert reloads(registry, "refused") == 1


def test_a_refused_version_is_tried_again_when_its_files_change(models: Path) -> None:
    service, registry, _, _ = make(models)
    running = service.pipeline.model_version
    bad = models / "next-version"
    shutil.copytree(models / running, bad)
    good = json.loads((bad / META_FILE).read_text())["calibration"]
    write_meta(bad, lambda meta: meta.update(calibration={"threshold": "high"},
                                             version="next-version"))
    set_current(models, bad.name)
    service._maybe_reload()
    service._maybe_reload()
    assert reloads(registry, "refused") == 1

    write_meta(bad, lambda meta: meta.update(calibration={**good, "threshold": 0.3}))
    service._maybe_reload()
    assert reloads(registry, "loaded") == 1 and reloads(registry, "refused") == 1
    assert service.pipeline.model_version == "next-version"
    assert service.pipeline.alarms.threshold == 0.3


def test_a_broken_model_at_start_up_is_one_error_not_a_traceback(models: Path) -> None:
    from streamlstm.core.pipeline import calibration_settings

    with pytest.raises(ValueError, match=r"calibration\.threshold"):
        calibration_settings({"threshold": "high"})
    with pytest.raises(ValueError, match="calibration must be an object"):
        calibration_settings("oops")
    assert calibration_settings({"threshold": 1, "unknown": "kept for later"}).threshold == 1
