"""JsonDecoder: every reject reason, every timestamp form, keys, features, field names."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from streamlstm.config import DecoderSettings
from streamlstm.decoding import REASONS, JsonDecoder, RateLimitedLog, parse_timestamp
from streamlstm.errors import DecodeError

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()  # 1714564800.0


def msg(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def reason_of(decoder: JsonDecoder, value: bytes, key: bytes | None = None) -> str:
    with pytest.raises(DecodeError) as info:
        decoder.decode(key, value)
    assert info.value.reason in REASONS
    return info.value.reason


@pytest.fixture
def decoder() -> JsonDecoder:
    return JsonDecoder(DecoderSettings())


def test_decodes_a_plain_message(decoder: JsonDecoder) -> None:
    point = decoder.decode(None, msg(series="host1.cpu", timestamp=T0, value=0.42))
    assert (point.series, point.timestamp, point.values) == ("host1.cpu", T0, (0.42,))


def test_integer_and_numeric_string_values(decoder: JsonDecoder) -> None:
    assert decoder.decode(None, msg(series="s", timestamp=T0, value=3)).values == (3.0,)
    assert decoder.decode(None, msg(series="s", timestamp=T0, value="2.5")).values == (2.5,)


@pytest.mark.parametrize("raw, expected", [
    ("2024-05-01T12:00:00Z", T0),
    ("2024-05-01T12:00:00z", T0),
    ("2024-05-01T14:00:00+02:00", T0),
    ("2024-05-01T07:30:00-04:30", T0),
    ("2024-05-01T12:00:00", T0),  # naive means UTC
    ("2024-05-01 12:00:00Z", T0),
    ("2024-05-01T12:00:00.250Z", T0 + 0.25),
    ("2024-05-01T12:00:00.123456789Z", T0 + 0.123456),  # beyond µs is dropped
    (T0, T0),
    (int(T0), T0),
    (T0 + 0.5, T0 + 0.5),
    (int(T0 * 1000) + 250, T0 + 0.25),  # milliseconds
    (int(T0) * 1_000_000 + 250_000, T0 + 0.25),  # microseconds
    (int(T0) * 1_000_000_000 + 250_000_000, T0 + 0.25),  # nanoseconds
    (str(int(T0)), T0),
    (str(int(T0 * 1000)), T0),
    (f"{T0 + 0.5}", T0 + 0.5),
    (" 1714564800 ", T0),
    (0, 0.0),
])
def test_timestamp_forms(raw: object, expected: float) -> None:
    assert parse_timestamp(raw) == pytest.approx(expected, abs=1e-6)
    decoded = JsonDecoder().decode(None, msg(series="s", timestamp=raw, value=1))
    assert decoded.timestamp == pytest.approx(expected, abs=1e-6)


def test_nanosecond_integers_keep_microseconds() -> None:
    assert parse_timestamp(1714564800_123456_000) == 1714564800.123456


@pytest.mark.parametrize("raw", [
    "yesterday", "", "2024-13-01T00:00:00Z", "1969-12-31T23:59:59Z", "2263-01-01T00:00:00Z",
    "9999-01-01T00:00:00Z", -1, -1714564800, True, False, [T0], {"t": T0}, "nan", "inf",
    1e30, "1e400",
])
def test_bad_timestamps(decoder: JsonDecoder, raw: object) -> None:
    assert reason_of(decoder, msg(series="s", timestamp=raw, value=1)) == "bad_timestamp"


def test_timestamp_upper_bound_is_int64_nanoseconds() -> None:
    assert parse_timestamp("2262-04-11T00:00:00Z") > 9.2e9
    with pytest.raises(DecodeError):
        parse_timestamp("2262-04-12T00:00:00Z")


@pytest.mark.parametrize("value, reason", [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (b"\xff\xfe{}", "invalid_json"),  # not UTF-8
    ('{"series": "caf\u00e9"}'.encode("latin-1"), "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (b"42", "not_an_object"),
    (b'"text"', "not_an_object"),
    (b"null", "not_an_object"),
    (msg(timestamp=T0, value=1), "missing_field"),  # no series and no key
    (msg(series="s", value=1), "missing_field"),
    (msg(series="s", timestamp=None, value=1), "missing_field"),
    (msg(series="s", timestamp=T0), "missing_field"),
    (msg(series="s", timestamp=T0, value="high"), "bad_value"),
    (msg(series="s", timestamp=T0, value=True), "bad_value"),
    (msg(series="s", timestamp=T0, value=[1]), "bad_value"),
    (msg(series="s", timestamp=T0, value="nan"), "bad_value"),
    (b'{"series": "s", "timestamp": 1714564800, "value": NaN}', "bad_value"),
    (b'{"series": "s", "timestamp": 1714564800, "value": Infinity}', "bad_value"),
    (b'{"series": "s", "timestamp": 1714564800, "value": 1e999}', "bad_value"),
    (b'{"series": "s", "timestamp": 1714564800, "value": 1' + b"0" * 400 + b"}", "bad_value"),
    (msg(series="", timestamp=T0, value=1), "bad_series"),
    (msg(series=17, timestamp=T0, value=1), "bad_series"),
    (msg(series=["a"], timestamp=T0, value=1), "bad_series"),
    (msg(series="x" * 257, timestamp=T0, value=1), "bad_series"),
])
def test_reject_reasons(decoder: JsonDecoder, value: bytes, reason: str) -> None:
    assert reason_of(decoder, value) == reason


def test_longest_series_name_is_accepted(decoder: JsonDecoder) -> None:
    assert decoder.decode(None, msg(series="x" * 256, timestamp=T0, value=1)).series == "x" * 256


def test_deep_nesting_is_invalid_json_not_a_crash(decoder: JsonDecoder) -> None:
    assert reason_of(decoder, b"[" * 100_000 + b"]" * 100_000) == "invalid_json"


def test_error_detail_is_short(decoder: JsonDecoder) -> None:
    with pytest.raises(DecodeError) as info:
        decoder.decode(None, msg(series="s", timestamp=T0, value="v" * 10_000))
    assert len(info.value.detail) < 200
    assert str(info.value).startswith("bad_value: ")


def test_key_is_the_series_when_no_field_names_one(decoder: JsonDecoder) -> None:
    assert decoder.decode(b"host9.mem", msg(timestamp=T0, value=1)).series == "host9.mem"
    # the field wins over the key
    assert decoder.decode(b"key", msg(series="field", timestamp=T0, value=1)).series == "field"
    assert reason_of(decoder, msg(timestamp=T0, value=1), key=b"") == "missing_field"
    assert reason_of(decoder, msg(timestamp=T0, value=1), key=b"\xff\xfe") == "bad_series"
    assert reason_of(decoder, msg(timestamp=T0, value=1), key=b"k" * 300) == "bad_series"


def test_multi_feature_values_come_in_model_order() -> None:
    decoder = JsonDecoder(DecoderSettings(), feature_names=("cpu", "mem", "disk"))
    value = msg(series="h", timestamp=T0, values={"disk": 3, "cpu": 1.5, "mem": "2", "x": 9})
    assert decoder.decode(None, value).values == (1.5, 2.0, 3.0)
    assert reason_of(decoder, msg(series="h", timestamp=T0, values={"cpu": 1, "mem": 2})) \
        == "missing_field"
    assert reason_of(decoder, msg(series="h", timestamp=T0, value=1)) == "missing_field"
    assert reason_of(decoder, msg(series="h", timestamp=T0, values=[1, 2, 3])) == "bad_value"
    bad = msg(series="h", timestamp=T0, values={"cpu": 1, "mem": False, "disk": 3})
    assert reason_of(decoder, bad) == "bad_value"


def test_single_feature_accepts_a_one_entry_values_object() -> None:
    decoder = JsonDecoder(DecoderSettings(), feature_names=("cpu",))
    assert decoder.decode(None, msg(series="h", timestamp=T0, values={"load": 7})).values == (7.0,)
    assert decoder.decode(None, msg(series="h", timestamp=T0, values={"cpu": 1, "mem": 2})
                          ).values == (1.0,)
    assert decoder.decode(None, msg(series="h", timestamp=T0, value=4)).values == (4.0,)
    assert reason_of(decoder, msg(series="h", timestamp=T0, values={"a": 1, "b": 2})) \
        == "missing_field"


def test_field_names_come_from_settings() -> None:
    settings = DecoderSettings(series_field="name", timestamp_field="ts", value_field="v",
                               values_field="fields")
    decoder = JsonDecoder(settings)
    point = decoder.decode(None, msg(name="n1", ts="2024-05-01T12:00:00Z", v=5))
    assert (point.series, point.timestamp, point.values) == ("n1", T0, (5.0,))
    assert reason_of(decoder, msg(series="n1", ts=T0, v=5)) == "missing_field"
    multi = JsonDecoder(settings, feature_names=("a", "b"))
    assert multi.decode(None, msg(name="n", ts=T0, fields={"b": 2, "a": 1})).values == (1.0, 2.0)


def test_decode_many_yields_points_and_errors_in_order(decoder: JsonDecoder) -> None:
    out = list(decoder.decode_many([(None, msg(series="a", timestamp=T0, value=1)),
                                    (None, b"oops"),
                                    (b"k", msg(timestamp=T0, value=2))]))
    assert [type(o).__name__ for o in out] == ["Point", "DecodeError", "Point"]


def test_rate_limited_log_once_per_key_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), 60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        assert limited.warning("bad_value", "first %s", 1)
        assert not limited.warning("bad_value", "second %s", 2)
        assert limited.warning("invalid_json", "other reason")
        now[0] += 59.9
        assert not limited.warning("bad_value", "third %s", 3)
        now[0] += 0.2
        assert limited.warning("bad_value", "fourth %s", 4)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["first 1", "other reason",
                        "fourth 4 (2 more like it since the last message)"]
