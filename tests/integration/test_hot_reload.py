"""Hot reload of the model under load: no event lost or doubled, bad models refused."""

from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path

from streamlstm.model.artifact import WEIGHTS_FILE, set_current
from tests.integration.daemon import (
    STEP,
    T0,
    WINDOW,
    RunningDaemon,
    count_points,
    event,
    points_by_series,
    produce,
    settings_for,
    sine,
    train_model,
    wait_until,
)


def _chunk(names: list[str], values: dict, start: int, stop: int) -> list[dict]:
    return [event(name, i, float(values[name][i])) for i in range(start, stop) for name in names]


def _scored(names: list[str], stop: int) -> int:
    return len(names) * max(stop - WINDOW + 1, 0)


def test_hot_reload_swaps_models_between_batches_and_refuses_a_broken_one(
        kafka, influx, unique_name, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    version_a = train_model(models, seed=0)
    topic, group, database = unique_name("reload"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    names = ["a.cpu", "b.cpu"]
    n, extra = 200, 40
    values = {name: sine(n + extra, phase=k, seed=200 + k) for k, name in enumerate(names)}
    cuts = [0, 50, 100, 150, n]

    settings = settings_for(kafka.bootstrap, topic, group, influx.url, database, models)
    with RunningDaemon(settings) as daemon:
        assert daemon.service.pipeline.model_version == version_a
        for start, stop in pairwise(cuts[:3]):
            produce(kafka.bootstrap, topic, _chunk(names, values, start, stop))
        wait_until(lambda: count_points(influx, database) >= _scored(names, cuts[2]), 60,
                   "the first chunks scored with model A")

        version_b = train_model(models, seed=1)  # points `current` at B while the daemon runs
        assert version_b != version_a
        wait_until(lambda: daemon.metric("streamlstm_model_reloads_total", result="loaded") == 1,
                   30, "model B loaded")
        assert daemon.service.pipeline.model_version == version_b
        for start, stop in pairwise(cuts[2:]):
            produce(kafka.bootstrap, topic, _chunk(names, values, start, stop))
        wait_until(lambda: count_points(influx, database) >= _scored(names, n), 60,
                   "all points written")

        points = points_by_series(influx, database)
        assert sorted(points) == sorted(names)
        for name in names:
            rows = points[name]
            assert [r["time"] for r in rows] == [int((T0 + i * STEP) * 1e9)
                                                 for i in range(WINDOW - 1, n)], (
                f"{name}: gap or duplicate across the reload")
            tags = [r["model_version"] for r in rows]
            assert set(tags) == {version_a, version_b}, f"{name}: model tags {set(tags)}"
            last_a = max(i for i, t in enumerate(tags) if t == version_a)
            first_b = min(i for i, t in enumerate(tags) if t == version_b)
            assert last_a < first_b, f"{name}: model A scored after model B"
        assert daemon.metric("streamlstm_model_reloads_total", result="loaded") == 1
        assert daemon.metric("streamlstm_model_reloads_total", result="refused") == 0

        # A broken version: B's files with truncated weights; set_current only checks meta.json.
        broken = models / "broken-version"
        shutil.copytree(models / version_b, broken)
        weights = broken / WEIGHTS_FILE
        weights.write_bytes(weights.read_bytes()[:100])
        set_current(models, broken.name)
        wait_until(lambda: daemon.metric("streamlstm_model_reloads_total", result="refused") == 1,
                   30, "the broken model refused")
        assert daemon.service.pipeline.model_version == version_b

        produce(kafka.bootstrap, topic, _chunk(names, values, n, n + extra))
        wait_until(lambda: count_points(influx, database) >= _scored(names, n + extra), 60,
                   "points after the refused reload")
        assert daemon.metric("streamlstm_model_reloads_total", result="loaded") == 1
        assert daemon.metric("streamlstm_model_reloads_total", result="refused") == 1

    points = points_by_series(influx, database)
    for name in names:
        rows = points[name]
        assert [r["time"] for r in rows] == [int((T0 + i * STEP) * 1e9)
                                             for i in range(WINDOW - 1, n + extra)]
        assert {r["model_version"] for r in rows[-extra:]} == {version_b}
