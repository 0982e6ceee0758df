"""Why was this flagged: each score's evidence, in the store, in replay output, on /series."""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from streamlstm import cli
from streamlstm.core.calibration import SURPRISE_SCALE, combined_surprise
from streamlstm.core.pipeline import Pipeline
from streamlstm.core.records import Point
from streamlstm.metrics import MetricsServer
from streamlstm.model.artifact import Artifact
from streamlstm.sinks.influx import to_lines
from tests.unit.core_helpers import STEP, T0, sine_values

N, SPIKE = 700, 600


def spiky() -> list[Point]:
    values = sine_values(N, seed=3)
    values[SPIKE] += 8.0
    return [Point("s", T0 + i * STEP, (float(v),)) for i, v in enumerate(values)]


def test_every_score_carries_the_surprise_of_each_calibrated_kind(
        tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    scores = pipeline.process(spiky(), now=0.0).scores
    window = pipeline.window
    assert scores[0].evidence == {}  # nothing calibrated in the first windows
    late = scores[SPIKE - window + 1]
    assert late.timestamp == T0 + SPIKE * STEP and late.is_anomaly
    assert {"model", "memory"} <= set(late.evidence)
    assert "seasonal" not in late.evidence  # a day of one-minute points is not there yet
    # The score is what its parts combine to (the parts are rounded to 0.001).
    parts = np.array([[late.evidence.get(k, np.nan) for k in pipeline.settings.evidence_kinds]])
    assert abs(min(combined_surprise(parts)[0] / SURPRISE_SCALE, 1.0) - late.score) < 0.01
    quiet = scores[SPIKE - window - 50]
    assert max(late.evidence.values()) > max(quiet.evidence.values()) + 2
    (line,) = to_lines([late], "anomaly")
    fields = dict(kv.split("=") for kv in line.split(" ")[1].split(","))
    assert float(fields["surprise_model"]) == late.evidence["model"]
    assert "surprise_seasonal" not in fields


def test_replay_writes_the_evidence_columns(tmp_path: Path, fresh_artifact) -> None:
    from streamlstm.model.artifact import save_artifact

    models = tmp_path / "models"
    save_artifact(fresh_artifact(), models)
    source = tmp_path / "in.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value"])
        for p in spiky():
            writer.writerow([p.timestamp, p.values[0]])
    out = tmp_path / "out.csv"
    assert cli.main(["replay", str(source), "--output", str(out), "--model", str(models)]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N
    assert {"surprise_model", "surprise_memory", "surprise_seasonal", "surprise_coarse"} <= set(
        rows[0])
    assert rows[0]["surprise_model"] == "" and rows[SPIKE]["surprise_model"] != ""
    assert float(rows[SPIKE]["surprise_model"]) > 1.0 or float(rows[SPIKE]["surprise_memory"]) > 1


def test_the_series_endpoint_shows_warm_up_and_the_last_verdict(
        tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    pipeline.process(spiky()[:SPIKE + 1], now=0.0)
    pipeline.process([Point("new", T0, (1.0,))], now=0.0)
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, health=lambda: (True, ""),
                           ready=lambda: (True, ""), inspect=pipeline.inspect)
    server.start()
    base = f"http://127.0.0.1:{server.port}/series"
    try:
        with urllib.request.urlopen(base + "?name=s", timeout=5) as response:
            held = json.loads(response.read())
        assert held["window"] == {"points": pipeline.window, "needed": pipeline.window}
        assert held["calibration"]["model"]["warm"] is True
        assert held["calibration"]["seasonal"] == {
            "learnt": 0, "warmup": held["calibration"]["seasonal"]["warmup"], "warm": False}
        assert held["last_score"] >= held["threshold"]  # the spike was the last point
        assert held["last_evidence"]["model"] > 0
        with urllib.request.urlopen(base + "?name=new", timeout=5) as response:
            fresh = json.loads(response.read())
        assert fresh["window"]["points"] == 1 and fresh["last_score"] is None
        for query, code in (("?name=nobody", 404), ("", 400)):
            try:
                urllib.request.urlopen(base + query, timeout=5)
                raise AssertionError("expected an HTTP error")
            except urllib.error.HTTPError as exc:
                assert exc.code == code
    finally:
        server.stop()


def test_a_multi_feature_score_names_the_feature_that_broke(tmp_path: Path) -> None:
    """Two features that move together; one breaks away (each stays within its range)."""
    from streamlstm.training import SeriesHistory, fit
    from tests.unit.core_helpers import TINY_SETTINGS, timestamps, to_points

    def pair(n: int, seed: int) -> np.ndarray:
        a = sine_values(n, seed=seed)
        b = a + np.random.default_rng(seed + 1).normal(0, 0.05, n)
        return np.stack([a, b], axis=1)

    history = {f"h{k}": SeriesHistory(timestamps(1500), pair(1500, k)) for k in range(2)}
    artifact = fit(history, ["load", "cpu"], TINY_SETTINGS, progress=False)
    values = pair(N, 7)
    values[SPIKE:SPIKE + 4, 1] = -values[SPIKE:SPIKE + 4, 1]  # cpu leaves load behind
    scores = Pipeline(artifact).process(to_points("m", timestamps(N), values), now=0.0).scores
    at = {round((s.timestamp - T0) / STEP): s for s in scores}
    assert at[SPIKE + 3].top_feature == "cpu"
    assert {s.top_feature for s in scores} <= {"load", "cpu"}
    (line,) = to_lines([at[SPIKE + 3]], "anomaly")
    assert 'top_feature="cpu"' in line
    broke = at[SPIKE + 3]
    assert broke.feature_errors is not None and len(broke.feature_errors) == 2
    assert abs(sum(broke.feature_errors) / 2 - broke.error) < 1e-9 * max(1.0, broke.error)
    assert broke.feature_errors[1] > broke.feature_errors[0]  # cpu, the one that broke
    # replay writes each feature's error next to top_feature
    from streamlstm.model.artifact import save_artifact

    save_artifact(artifact, tmp_path / "models")
    source = tmp_path / "pair.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "load", "cpu"])
        for t, (a, b) in zip(timestamps(N), values, strict=True):
            writer.writerow([t, a, b])
    out = tmp_path / "pair-out.csv"
    assert cli.main(["replay", str(source), "--output", str(out),
                     "--model", str(tmp_path / "models")]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N and rows[0]["error_load"] == "" and rows[0]["error_cpu"] == ""
    row = rows[SPIKE + 3]
    assert row["top_feature"] == "cpu"
    assert float(row["error_cpu"]) > float(row["error_load"])
    assert abs((float(row["error_cpu"]) + float(row["error_load"])) / 2
               - float(row["error"])) < 1e-6 * max(1.0, float(row["error"]))
