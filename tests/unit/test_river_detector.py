"""StreamlstmDetector: river's anomaly-detector API over the daemon's pipeline, checked with
river's own estimator checks and filters."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from river import anomaly, base, compose
from river.checks import common

from streamlstm.core.calibration import AlarmPolicy
from streamlstm.core.pipeline import Pipeline, PipelineSettings, score_points
from streamlstm.core.records import Point
from streamlstm.model.artifact import load_artifact
from streamlstm.river_detector import BUNDLED_MODEL, StreamlstmDetector

SPIKE = 260


def stream(n: int = 300, spike: bool = True) -> list[dict[str, float]]:
    rng = np.random.default_rng(4)
    xs = [{"value": math.sin(i / 7) + 0.05 * float(rng.normal()), "timestamp": 60.0 * i}
          for i in range(n)]
    if spike:
        xs[SPIKE]["value"] = 6.0
    return xs


def prequential(detector: base.AnomalyDetector, xs: list[dict[str, float]]) -> list[float]:
    """Score each x before learning it, as river evaluates anomaly detectors."""
    scores = []
    for x in xs:
        scores.append(detector.score_one(x))
        detector.learn_one(x)
    return scores


def test_is_a_river_anomaly_detector() -> None:
    assert isinstance(StreamlstmDetector(memory_windows=256), base.AnomalyDetector)


# river's own checks (river.checks.yield_checks would also run those that download datasets
# and need scikit-learn; these are the ones that do not, and the dataset ones on our stream).
GENERAL = ["check_repr", "check_str", "check_tags", "check_clone_same_class",
           "check_clone_is_idempotent", "check_init_has_default_params_for_tests",
           "check_init_default_params_are_not_mutable", "check_doc",
           "check_clone_changes_memory_addresses", "check_mutate_can_be_idempotent",
           "check_pickling_supports_roundtrip", "check_repr_roundtrips_clone",
           "check_clone_with_new_params_applies", "check_get_params_matches_signature"]
ON_A_STREAM = ["check_learn_one", "check_pickling", "check_shuffle_features_no_impact",
               "check_predict_one_pure", "check_predict_one_before_any_learn",
               "check_no_state_aliasing_with_input", "check_clone_is_independent"]


@pytest.mark.parametrize("params", list(StreamlstmDetector._unit_test_params()))
def test_passes_rivers_estimator_checks(params: dict[str, object]) -> None:
    model = StreamlstmDetector(**params)
    for name in GENERAL:
        getattr(common, name)(model.clone())
    dataset = [(x, None) for x in stream(60, spike=False)]
    for name in ON_A_STREAM:
        getattr(common, name)(model.clone(), dataset=dataset)


def test_scores_are_the_pipelines_and_score_one_learns_nothing() -> None:
    xs = stream()
    got = prequential(StreamlstmDetector(memory_windows=256, warmup=50), xs)
    pipeline = Pipeline(load_artifact(BUNDLED_MODEL), PipelineSettings(memory_windows=256),
                        alarms=AlarmPolicy(warmup=50))
    points = [Point("series", x["timestamp"], (x["value"],)) for x in xs]
    # One point per poll, as the detector sees them: bit for bit (a batch of many windows
    # rounds the model's matmuls a little differently).
    expected = [next((s.score for s in pipeline.process([p], now=0.0).scores), 0.0)
                for p in points]
    assert got == expected
    assert max(got) > 0
    batched = Pipeline(load_artifact(BUNDLED_MODEL), PipelineSettings(memory_windows=256),
                       alarms=AlarmPolicy(warmup=50))
    at_once = [s.score if s is not None else 0.0 for s in score_points(batched, points)]
    np.testing.assert_allclose(got, at_once, atol=1e-4)


def test_score_one_alone_leaves_the_state_as_it_was() -> None:
    xs = stream(120, spike=False)
    detector = StreamlstmDetector(memory_windows=256)
    for x in xs[:100]:
        detector.learn_one(x)
    before = pickle.dumps(detector)
    detector.score_one({"value": 50.0, "timestamp": 60.0 * 100})
    detector.score_one({"value": 0.0})  # no timestamp: interval_s after the last point
    assert pickle.dumps(detector) == before


def test_threshold_filter_flags_the_spike_and_only_it() -> None:
    filtered = anomaly.ThresholdFilter(StreamlstmDetector(memory_windows=256, warmup=50),
                                       threshold=0.25)
    flagged = []
    for i, x in enumerate(stream()):
        if filtered.classify(filtered.score_one(x)):
            flagged.append(i)
        filtered.learn_one(x)
    assert flagged == [SPIKE]


def test_quantile_filter_in_a_river_pipeline_ranks_the_spike_first() -> None:
    detector = StreamlstmDetector(memory_windows=256, warmup=50)
    model = compose.Select("value", "timestamp") | anomaly.QuantileFilter(detector, q=0.99)
    scores = prequential(model, stream())
    assert int(np.argmax(scores)) == SPIKE
    assert detector.alarm is False  # the last point learnt was ordinary


def test_a_point_without_the_models_feature_is_refused() -> None:
    with pytest.raises(ValueError, match="features"):
        StreamlstmDetector(memory_windows=256).learn_one({"cpu": 1.0, "mem": 2.0})
