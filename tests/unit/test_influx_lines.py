"""Line protocol built by the InfluxDB sink (no server): the ``novelty`` field in particular."""

from __future__ import annotations

import math

import pytest

from streamlstm.core.records import Score
from streamlstm.sinks.influx import to_lines

T0 = 1_714_564_800.0
NS = "1714564800000000000"


def score(values: tuple[float, ...] = (0.5,), error: float = 0.01,
          novelty: float | None = None, anomaly: bool = False) -> Score:
    return Score("s", T0, values, error, 0.2, 0.9, anomaly, "v1", novelty=novelty)


def fields(line: str) -> dict[str, str]:
    """The field set of one line whose tags and fields hold no escaped characters."""
    _, field_set, _ = line.split(" ")
    assert field_set and ",," not in field_set
    assert not field_set.startswith(",") and not field_set.endswith(",")
    parsed = dict(part.split("=", 1) for part in field_set.split(","))
    assert parsed.pop("model_version") == '"v1"'  # a field: the point's identity is series + time
    return parsed


def test_novelty_is_a_float_field_in_key_order() -> None:
    (line,) = to_lines([score(novelty=1.5)], "m")
    assert line == ('m,series=s alarm=false,error=0.01,is_anomaly=false,model_version="v1",'
                    f"novelty=1.5,score=0.2,threshold=0.9,value=0.5 {NS}")


def test_without_novelty_the_field_is_absent() -> None:
    (line,) = to_lines([score(novelty=None)], "m")
    assert line == ('m,series=s alarm=false,error=0.01,is_anomaly=false,model_version="v1",'
                    f"score=0.2,threshold=0.9,value=0.5 {NS}")
    assert "novelty" not in line


def test_a_novelty_of_zero_is_written() -> None:
    # A window identical to a past one is novelty 0, a real value, not a missing one.
    assert fields(to_lines([score(novelty=0.0)], "m")[0])["novelty"] == "0.0"


@pytest.mark.parametrize("novelty", [math.nan, math.inf, -math.inf])
def test_non_finite_novelty_is_dropped(novelty: float) -> None:
    (line,) = to_lines([score(novelty=novelty)], "m")
    assert fields(line) == {"alarm": "false", "error": "0.01", "is_anomaly": "false",
                            "score": "0.2", "threshold": "0.9", "value": "0.5"}


@pytest.mark.parametrize("novelty", [2.25, None, math.nan])
def test_novelty_with_several_features(novelty: float | None) -> None:
    (line,) = to_lines([score(values=(1.0, 2.0), novelty=novelty, anomaly=True)], "m")
    expected = {"alarm": "false", "error": "0.01", "is_anomaly": "true", "score": "0.2",
                "threshold": "0.9", "value": "1.0", "value_1": "2.0"}
    if novelty == 2.25:
        expected["novelty"] = "2.25"
    assert fields(line) == expected


@pytest.mark.parametrize("novelty", [3.5, None, math.inf])
def test_novelty_beside_a_non_finite_error(novelty: float | None) -> None:
    (line,) = to_lines([score(error=math.nan, novelty=novelty)], "m")
    expected = {"alarm": "false", "is_anomaly": "false", "score": "0.2", "threshold": "0.9",
                "value": "0.5"}
    if novelty == 3.5:
        expected["novelty"] = "3.5"
    assert fields(line) == expected


def test_novelty_is_per_score_within_one_batch() -> None:
    lines = to_lines([score(novelty=None), score(novelty=0.75), score(novelty=math.nan),
                      score(values=(1.0, 2.0), novelty=4.0)], "m")
    assert [fields(line).get("novelty") for line in lines] == [None, "0.75", None, "4.0"]


def test_each_features_error_is_a_field_of_its_own_beside_their_mean() -> None:
    several = score(values=(1.0, 2.0, 3.0), error=0.2)
    several.feature_errors = (0.5, 0.1, math.nan)  # a non-finite one is left out
    several.top_feature = "cpu"
    assert fields(to_lines([several], "m")[0]) == {
        "alarm": "false", "error": "0.2", "error_0": "0.5", "error_1": "0.1",
        "is_anomaly": "false", "score": "0.2", "threshold": "0.9", "top_feature": '"cpu"',
        "value": "1.0", "value_1": "2.0", "value_2": "3.0"}
