"""Hostile input never reaches per-series state: values beyond float32, times far from now or
past int64 nanoseconds, series names that are not text or hold control characters."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamlstm.config import DecoderSettings
from streamlstm.core.pipeline import Pipeline, score_points
from streamlstm.core.records import MAX_VALUE, Point
from streamlstm.core.timestamps import MAX_TIMESTAMP, parse_timestamp
from streamlstm.decoding import REASONS, JsonDecoder
from streamlstm.errors import DecodeError
from streamlstm.model.artifact import Artifact
from streamlstm.sinks.influx import timestamp_ns, to_lines
from streamlstm.sources.files import InputFileError, read_table
from tests.unit.core_helpers import STEP, T0, sine_values, timestamps, to_points

NOW = 1_790_000_000.0  # 2026-09


def reason(decoder: JsonDecoder, body: dict[str, object], key: bytes | None = None) -> str:
    with pytest.raises(DecodeError) as info:
        decoder.decode(key, json.dumps(body).encode())
    assert info.value.reason in REASONS
    return info.value.reason


# ---- values ----

@pytest.mark.parametrize("value", [1e39, -1e39, "3.5e38", 2**200, MAX_VALUE * 1.0000001])
def test_values_beyond_float32_are_bad_values(value: object) -> None:
    decoder = JsonDecoder()
    assert reason(decoder, {"series": "s", "timestamp": T0, "value": value}) == "bad_value"


def test_float32_extremes_are_accepted() -> None:
    decoder = JsonDecoder()
    for value in (MAX_VALUE, -MAX_VALUE, 1e-45, 0.0):
        body = json.dumps({"series": "s", "timestamp": T0, "value": value}).encode()
        assert decoder.decode(None, body).values == (value,)


def test_several_features_are_checked_each() -> None:
    decoder = JsonDecoder(feature_names=("cpu", "mem"))
    body = {"series": "s", "timestamp": T0, "values": {"cpu": 1.0, "mem": 1e39}}
    assert reason(decoder, body) == "bad_value"


def test_the_pipeline_refuses_what_would_poison_a_series(tiny_artifact: Artifact) -> None:
    """Whatever reaches the core (the decoder is one caller of several), an unfit point is
    refused with a reason and leaves every series' state as it was."""
    n = 120
    good = to_points("s", timestamps(n), sine_values(n))
    bad = [Point("s", T0 + 40.5 * STEP, (1e39,)), Point("s", T0 + 41.5 * STEP, (math.nan,)),
           Point("s", T0 + 42.5 * STEP, (-math.inf,)), Point("s", math.inf, (0.0,)),
           Point("s", T0 + 43.5 * STEP, (1.0, 2.0)), Point("new", T0, (1e39,)),
           Point("s", 1e300, (0.0,))]
    stream = good[:50] + bad + good[50:]
    clean = score_points(Pipeline(tiny_artifact), good)
    pipeline = Pipeline(tiny_artifact)
    result = pipeline.process(stream, now=0.0)
    assert result.refused == [(50, "bad_value"), (51, "bad_value"), (52, "bad_value"),
                              (53, "bad_timestamp"), (54, "bad_value"), (55, "bad_value"),
                              (56, "bad_timestamp")]
    assert "new" not in pipeline.registry  # not even a slot for a series seen only unfit
    out: list[object] = [None] * len(stream)
    for position, score in zip(result.positions, result.scores, strict=True):
        out[position] = score
    assert out[:50] + out[57:] == clean  # the same scores, at the input positions
    assert all(math.isfinite(s.error) for s in result.scores)
    assert result.late == []


# ---- timestamps ----

def test_int64_nanoseconds_bound_the_time() -> None:
    assert timestamp_ns(MAX_TIMESTAMP) <= 2**63 - 1
    assert parse_timestamp(MAX_TIMESTAMP) == MAX_TIMESTAMP
    for raw in (2**63 - 1, 2**63, "2262-04-11T23:47:16.854776Z", 9_223_372_036.854776):
        with pytest.raises(DecodeError) as info:
            parse_timestamp(raw)
        assert info.value.reason == "bad_timestamp", raw


def test_the_daemon_decoder_takes_times_around_its_clock_only() -> None:
    settings = DecoderSettings(max_past_s=365 * 86_400.0, max_future_s=86_400.0)
    decoder = JsonDecoder(settings, clock=lambda: NOW)
    for ts in (0, 1, NOW - 366 * 86_400, NOW + 86_401, "2262-04-11T00:00:00Z"):
        assert reason(decoder, {"series": "s", "timestamp": ts, "value": 1}) == (
            "timestamp_out_of_range"), ts
    for ts in (NOW, NOW - 364 * 86_400, NOW + 86_000, NOW * 1000):
        body = json.dumps({"series": "s", "timestamp": ts, "value": 1}).encode()
        assert decoder.decode(None, body).timestamp == pytest.approx(NOW if ts == NOW * 1000
                                                                     else ts)


def test_without_a_clock_old_history_still_decodes() -> None:
    """Readers of history (training from Kafka) pass no clock: old events are fine there."""
    body = json.dumps({"series": "s", "timestamp": 1.0, "value": 1}).encode()
    assert JsonDecoder().decode(None, body).timestamp == 1.0


def test_replay_of_an_old_file_is_not_bounded_by_now(tmp_path) -> None:
    path = tmp_path / "old.csv"
    path.write_text("timestamp,value\n1970-01-02 00:00:00,1.0\n1999-01-01 00:00:00,2.0\n")
    assert read_table(path).timestamps.tolist() == [86_400.0, 915_148_800.0]


def test_a_file_value_beyond_float32_is_refused_with_its_row(tmp_path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text("timestamp,value\n2020-01-01 00:00:00,1.0\n2020-01-01 00:01:00,1e39\n")
    with pytest.raises(InputFileError, match=r"row 3.*float32"):
        read_table(path)


# ---- series names ----

@pytest.mark.parametrize("name", ["\ud800x", "x\udfff", "a\nb", "tab\there", "nul\x00",
                                  "del\x7f", "c1\x85", "x\\", "\\"])
def test_unfit_series_names_are_bad_series(name: str) -> None:
    decoder = JsonDecoder()
    assert reason(decoder, {"series": name, "timestamp": T0, "value": 1}) == "bad_series"


def test_a_lone_surrogate_in_the_raw_json_is_refused_not_a_crash() -> None:
    body = b'{"series": "\\ud800x", "timestamp": 1600000000, "value": 1}'
    with pytest.raises(DecodeError, match="surrogate") as info:
        JsonDecoder().decode(None, body)
    assert info.value.reason == "bad_series"


@pytest.mark.parametrize("name", ["x ", "a\\nb", "a\\b", "a\\,b", "é ✓ 𝄞", "nbsp\u00a0",
                                  "zwj\u200d", "=,\" '"])
def test_printable_names_with_odd_characters_are_accepted(name: str) -> None:
    body = json.dumps({"series": name, "timestamp": T0, "value": 1}).encode()
    assert JsonDecoder().decode(None, body).series == name


def test_the_sink_never_writes_a_name_it_cannot_store_exactly() -> None:
    from streamlstm.core.records import Score

    for name in ("x\\", "a\nb", "\ud800"):
        with pytest.raises(ValueError):
            to_lines([Score(name, T0, (1.0,), 0.1, 0.2, 0.3, False, "v1")], "m")
    (line,) = to_lines([Score("a\\,b c=d", T0, (1.0,), 0.1, 0.2, 0.3, False, "v1")], "m")
    assert line.startswith("m,series=a\\\\,b\\ c\\=d alarm=false,error=")


def test_the_model_version_is_a_field_not_a_tag() -> None:
    from streamlstm.core.records import Score

    (line,) = to_lines([Score("s", T0, (1.0,), 0.1, 0.2, 0.3, False, 'v"1\\')], "m")
    tags, fields, _ = line.split(" ")
    assert tags == "m,series=s"
    assert 'model_version="v\\"1\\\\"' in fields.split(",")


def test_snapshot_arrays_stay_finite_after_hostile_points(tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    n = 60
    points = to_points("s", timestamps(n), sine_values(n))
    points.insert(30, Point("s", T0 + 29.5 * STEP, (1e39,)))
    pipeline.process(points, now=0.0)
    snapshot = pipeline.snapshot()
    for name, array in snapshot.arrays.items():
        if np.issubdtype(array.dtype, np.floating):
            finite = np.isfinite(array) | np.isneginf(array)  # -inf: "no time yet"
            assert finite.all(), name
