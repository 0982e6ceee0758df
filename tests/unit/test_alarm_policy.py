"""Alarm settings over a model's calibration: global and per-series (glob, first match wins),
vectorised per slot, kept across snapshots and model swaps, exported by the daemon."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamlstm.core.calibration import AlarmOverride, AlarmPolicy, SeriesRules, alarm_rows
from streamlstm.core.pipeline import Pipeline, PipelineSettings, score_points
from streamlstm.core.records import Point, Score
from streamlstm.drift import ErrorDrift
from streamlstm.metrics import Metrics
from streamlstm.model.artifact import Artifact, load_artifact, save_artifact, set_current
from streamlstm.service import Service, ServiceSettings
from tests.memory_adapters import FakeClock, MemorySink, MemorySource
from tests.unit.core_helpers import STEP, T0, sine_values, timestamps, to_points

NAMES = ("db.main", "db.replica", "web.cpu")


def spiky_points(n: int = 700) -> list[Point]:
    """Three series, each a noisy sine with a few spikes of growing size."""
    points: list[Point] = []
    ts = timestamps(n)
    for k, name in enumerate(NAMES):
        values = sine_values(n, seed=k, noise=0.1)
        for at, jump in ((250, 1.5), (420, 4.0), (430, 2.0), (560, 8.0), (640, -8.0)):
            if at < n:
                values[at] += jump
        points += to_points(name, ts, values)
    points.sort(key=lambda p: p.timestamp)
    return points


def by_series(scores: list[Score | None]) -> dict[str, list[Score]]:
    out: dict[str, list[Score]] = {name: [] for name in NAMES}
    for s in scores:
        if s is not None:
            out[s.series].append(s)
    return out


POLICY = AlarmPolicy(threshold=0.3, overrides=(
    AlarmOverride("db.replica", threshold=0.6, alarm_hold=5),
    AlarmOverride("db.*", threshold=0.45, warmup=300),  # db.replica matched the rule above
))


def test_each_series_alarms_at_its_own_threshold_hold_and_warmup(tiny_artifact: Artifact,
                                                                  ) -> None:
    points = spiky_points()
    got = by_series(score_points(Pipeline(tiny_artifact, alarms=POLICY), points))
    plain = by_series(score_points(Pipeline(tiny_artifact), points))
    hold = Pipeline(tiny_artifact).calibration.alarm_hold
    expected = {"db.main": (0.45, hold), "db.replica": (0.6, 5), "web.cpu": (0.3, hold)}
    for name, (threshold, series_hold) in expected.items():
        scores = got[name]
        assert {s.threshold for s in scores} == {threshold}, name
        flags = [s.alarm for s in scores]
        assert flags == alarm_rows([s.score for s in scores], threshold, series_hold).tolist()
        assert any(flags), name
        # is_anomaly flags every point at or above the series' threshold, with no hold.
        assert [s.is_anomaly for s in scores] == [s.score >= threshold for s in scores]
    # db.main's longer warm-up: scores stay 0 for 100 windows longer than the model's 200.
    main = [s.score for s in got["db.main"]]
    assert max(main[:300]) == 0 and max(main[300:]) > 0
    assert max(s.score for s in plain["db.main"][200:300]) > 0
    # web.cpu follows the global rule: same scores as without a policy, other alarms.
    assert [s.score for s in got["web.cpu"]] == [s.score for s in plain["web.cpu"]]
    assert [s.alarm for s in got["web.cpu"]] != [s.alarm for s in plain["web.cpu"]]


def test_no_policy_is_the_models_own_calibration(tiny_artifact: Artifact) -> None:
    calibration = dict(tiny_artifact.calibration, threshold=0.2)
    pipeline = Pipeline(dataclasses.replace(tiny_artifact, calibration=calibration))
    assert pipeline.threshold == 0.2
    assert Pipeline(tiny_artifact, alarms=AlarmPolicy(threshold=0.35)).threshold == 0.35


def test_a_series_is_matched_once_when_its_slot_is_allocated(
        tiny_artifact: Artifact, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = SeriesRules.match

    def counting(self: SeriesRules, series: str) -> int:
        calls.append(series)
        return original(self, series)

    monkeypatch.setattr(SeriesRules, "match", counting)
    pipeline = Pipeline(tiny_artifact, alarms=POLICY)
    points = spiky_points(120)
    for start in range(0, len(points), 30):
        pipeline.process(points[start:start + 30], now=0.0)
    assert sorted(calls) == sorted(NAMES)
    rules = pipeline.rules.of[[pipeline.registry.slot_of(n) for n in NAMES]]
    assert rules.tolist() == [2, 1, 0]  # first match wins: db.replica is rule 1, not 2


def test_policy_survives_snapshot_and_restore_and_old_layouts_still_restore(
        tiny_artifact: Artifact) -> None:
    points = spiky_points()
    cut = len(points) // 2
    # Guarded learning learns by what each series' threshold flags: only without it does the
    # state not depend on the thresholds in force.
    unguarded = PipelineSettings(accept_after=0)
    uncut = Pipeline(tiny_artifact, unguarded, alarms=POLICY)  # polls cut as below
    straight = score_points(uncut, points[:cut]) + score_points(uncut, points[cut:])
    # Snapshot taken by a pipeline without alarm settings (as before they existed) ...
    first = Pipeline(tiny_artifact, unguarded)
    score_points(first, points[:cut])
    snapshot = first.snapshot()
    assert first.state_layout().digest == Pipeline(tiny_artifact, alarms=POLICY
                                                   ).state_layout().digest
    # ... restored under the policy: each series is matched again and scores as one that
    # ran under the policy from the start (the calibration does not depend on thresholds,
    # the warm-ups only on the count of windows, which the snapshot holds).
    second = Pipeline(tiny_artifact, unguarded, alarms=POLICY)
    assert second.restore(snapshot) == 3
    resumed = score_points(second, points[cut:])
    assert [(s.score, s.threshold) if s else None for s in resumed] == [
        (s.score, s.threshold) if s else None for s in straight[cut:]]


def test_set_alarms_rematches_the_series_held(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    pipeline.process(spiky_points(60), now=0.0)
    pipeline.set_alarms(AlarmPolicy(overrides=(AlarmOverride("web.*", threshold=0.9),)))
    slot = pipeline.registry.slot_of("web.cpu")
    assert pipeline.alarms.threshold_of(np.array([slot])).tolist() == [0.9]
    with pytest.raises(ValueError, match=r"alarms\.overrides\[0\]"):
        pipeline.set_alarms(AlarmPolicy(overrides=(AlarmOverride("x", warmup=10**6),)))
    assert pipeline.alarms.threshold_of(np.array([slot])).tolist() == [0.9]  # unchanged


def test_a_swapped_models_calibration_is_the_default_the_policy_overrides(
        tiny_artifact: Artifact) -> None:
    other = dataclasses.replace(tiny_artifact, version="other",
                                calibration=dict(tiny_artifact.calibration, threshold=0.5,
                                                 alarm_hold=9))
    plain = Pipeline(tiny_artifact)
    plain.swap_model(other)
    assert (plain.threshold, plain.alarms.hold) == (0.5, 9)
    tuned = Pipeline(tiny_artifact, alarms=AlarmPolicy(threshold=0.3, overrides=(
        AlarmOverride("db.*", alarm_hold=2),)))
    tuned.process(spiky_points(60), now=0.0)
    tuned.swap_model(other)
    assert (tuned.threshold, tuned.alarms.hold) == (0.3, 9)
    assert tuned.alarms.holds.tolist() == [9, 2]
    too_short = dataclasses.replace(other, calibration=dict(other.calibration, history=250,
                                                            longterm=250, warmup=200))
    strict = Pipeline(tiny_artifact, alarms=AlarmPolicy(warmup=300))
    with pytest.raises(ValueError, match="alarms: need 1 <= warmup <= history"):
        strict.prepare_swap(too_short)


# ---------------------------------------------------------------- the daemon


def make_service(models: Path, policy: AlarmPolicy | None = None,
                 drift: ErrorDrift | None = None,
                 ) -> tuple[Service, CollectorRegistry, MemorySource]:
    source, clock, registry = MemorySource(), FakeClock(), CollectorRegistry()
    service = Service(source, MemorySink(), Pipeline(load_artifact(models), alarms=policy),
                      Metrics(registry), ServiceSettings(model_path=str(models),
                                                         reload_interval_s=0.0),
                      clock=lambda: T0, monotonic=clock, wait=clock.wait, drift=drift)
    return service, registry, source


@pytest.fixture
def models(tmp_path: Path, fresh_artifact: Callable[[], Artifact]) -> Path:
    models = tmp_path / "models"
    save_artifact(fresh_artifact(), models)
    return models


def next_model(models: Path, fresh_artifact: Callable[[], Artifact], **calibration: object,
               ) -> None:
    artifact = fresh_artifact()
    artifact.calibration.update(calibration)
    next(iter(artifact.state_dict.values())).add_(1e-6 * len(list(models.iterdir())))  # a version
    set_current(models, save_artifact(artifact, models, make_current=False).name)


def test_the_daemon_exports_the_threshold_in_force_and_follows_reloads(
        models: Path, fresh_artifact: Callable[[], Artifact]) -> None:
    service, registry, _ = make_service(models)
    assert registry.get_sample_value("streamlstm_threshold") == service.pipeline.threshold
    next_model(models, fresh_artifact, threshold=0.55)
    service._maybe_reload()
    assert registry.get_sample_value("streamlstm_threshold") == 0.55
    tuned, tuned_registry, _ = make_service(models, AlarmPolicy(threshold=0.33))
    assert tuned_registry.get_sample_value("streamlstm_threshold") == 0.33
    next_model(models, fresh_artifact, threshold=0.6)
    tuned._maybe_reload()
    assert tuned.pipeline.model_version != "" and tuned_registry.get_sample_value(
        "streamlstm_threshold") == 0.33  # the config overrides each new model's own


def test_a_new_model_a_warmup_does_not_fit_is_refused(
        models: Path, fresh_artifact: Callable[[], Artifact]) -> None:
    service, registry, _ = make_service(models, AlarmPolicy(warmup=900))
    running = service.pipeline.model_version
    next_model(models, fresh_artifact, history=500, longterm=500)
    service._maybe_reload()
    assert service.pipeline.model_version == running
    assert registry.get_sample_value("streamlstm_model_reloads_total",
                                     {"result": "refused"}) == 1


def send(source: MemorySource, names: list[str], start: int, stop: int,
         level: Callable[[int], float]) -> None:
    for i in range(start, stop):
        for k, name in enumerate(names):
            value = float(sine_values(stop, seed=k)[i]) * level(i)
            source.send({"series": name, "timestamp": T0 + i * STEP, "value": value})


def test_errors_drifting_up_suggest_retraining_until_a_new_model_comes(
        models: Path, fresh_artifact: Callable[[], Artifact],
        caplog: pytest.LogCaptureFixture) -> None:
    service, registry, source = make_service(models, drift=ErrorDrift(grace_polls=10))
    names = [f"s{k}" for k in range(10)]
    suggested = []
    # Ordinary sines, then the same series turn into noise the model never saw.
    noise = np.random.default_rng(0).standard_normal((400, len(names)))
    with caplog.at_level(logging.WARNING, logger="streamlstm.service"):
        for i in range(0, 400, 4):
            for j in range(i, i + 4):
                for k, name in enumerate(names):
                    clean = float(sine_values(400, seed=k)[j])
                    value = clean if j < 200 else clean + 2.0 * float(noise[j, k])
                    source.send({"series": name, "timestamp": T0 + j * STEP, "value": value})
            assert service.run_once()
            suggested.append(registry.get_sample_value("streamlstm_retrain_suggested"))
    assert suggested[40] == 0 and suggested[-1] == 1
    assert suggested.index(1) > 50  # not before the change (poll 50 is value 200)
    assert registry.get_sample_value("streamlstm_error_drifts_total", {"direction": "up"}) >= 1
    assert any("retrain suggested" in r.getMessage() for r in caplog.records)
    next_model(models, fresh_artifact)
    service._maybe_reload()
    assert registry.get_sample_value("streamlstm_retrain_suggested") == 0


def test_a_steady_stream_suggests_nothing(models: Path) -> None:
    service, registry, source = make_service(models, drift=ErrorDrift(grace_polls=10))
    names = [f"s{k}" for k in range(10)]
    for i in range(0, 400, 4):
        send(source, names, i, i + 4, lambda _: 1.0)
        assert service.run_once()
    assert registry.get_sample_value("streamlstm_retrain_suggested") == 0
    assert registry.get_sample_value("streamlstm_error_drifts_total", {"direction": "up"}) == 0


def test_per_series_alarm_counters_start_at_zero(models: Path) -> None:
    source, clock, registry = MemorySource(), FakeClock(), CollectorRegistry()
    service = Service(source, MemorySink(), Pipeline(load_artifact(models)),
                      Metrics(registry, per_series_labels=True),
                      ServiceSettings(model_path=str(models)), clock=lambda: T0,
                      monotonic=clock, wait=clock.wait)
    send(source, ["a"], 0, 40, lambda _: 1.0)
    assert service.run_once()
    assert registry.get_sample_value("streamlstm_series_alarms_total", {"series": "a"}) == 0
