"""InfluxSink against a real InfluxDB (a 1.x engine behind the v2 shim), read back in InfluxQL."""

from __future__ import annotations

import json
import math
import random
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from streamlstm.config import InfluxSettings
from streamlstm.core.records import Score
from streamlstm.decoding import JsonDecoder
from streamlstm.devstack import InfluxDB, free_port
from streamlstm.errors import ConfigError, DecodeError, SinkError, SinkRejected
from streamlstm.sinks.influx import InfluxSink, InfluxWriteError, escape_tag, to_lines

DB = "streamlstm"
T0 = 1_714_564_800.0


def score(series: str = "host1.cpu", ts: float = T0, values: tuple[float, ...] = (0.5,),
          error: float = 0.01, value: float = 0.2, threshold: float = 0.9,
          anomaly: bool = False, model: str = "v1", novelty: float | None = None) -> Score:
    return Score(series, ts, values, error, value, threshold, anomaly, model, novelty=novelty)


@pytest.fixture
def measurement(unique_name: Callable[[str], str]) -> str:
    return unique_name("anomaly")


@pytest.fixture
def sink(influx: Any, measurement: str) -> Any:
    sink = InfluxSink(InfluxSettings(url=influx.url, org="any", token="", bucket=DB,
                                     measurement=measurement, timeout_ms=5_000))
    yield sink
    sink.close()


def select(influx: Any, measurement: str, where: str = "") -> list[dict[str, Any]]:
    quoted = '"' + measurement.replace('"', '\\"') + '"'
    rows = influx.query(f"SELECT * FROM {quoted} {where} GROUP BY *", db=DB)
    return sorted(rows, key=lambda row: row["time"])  # GROUP BY orders by series first


def test_write_and_read_back(influx: Any, sink: InfluxSink, measurement: str) -> None:
    sink.write([
        score("host1.cpu", T0 + 0.123456, (0.5,), 0.01, 0.2, 0.9, False, "v1"),
        score("host1.cpu", T0 + 1.000001, (0.75,), 2.5, 0.99, 0.9, True, "v1"),
        score("host2", T0 + 1e-6, (1.0, 2.0, 3.0), 1e-05, 0.0, 1e20, False, "v2-abc"),
    ])
    rows = select(influx, measurement)
    assert len(rows) == 3
    multi, first, second = rows  # ordered by time
    assert first["time"] == 1_714_564_800_123_456_000  # exact nanoseconds
    assert (first["series"], first["model_version"]) == ("host1.cpu", "v1")
    assert first["value"] == 0.5 and first["error"] == 0.01
    assert first["score"] == 0.2 and first["threshold"] == 0.9
    assert first["is_anomaly"] is False
    assert second["time"] == 1_714_564_801_000_001_000
    assert second["is_anomaly"] is True and second["score"] == 0.99
    assert multi["time"] == 1_714_564_800_000_001_000
    assert (multi["series"], multi["model_version"]) == ("host2", "v2-abc")
    assert (multi["value"], multi["value_1"], multi["value_2"]) == (1.0, 2.0, 3.0)
    assert (multi["error"], multi["threshold"]) == (1e-05, 1e20)


def test_a_rewrite_overwrites_its_own_point(influx: Any, sink: InfluxSink,
                                            measurement: str) -> None:
    ts = T0 + 0.1 + 0.2  # float noise: 0.30000000000000004
    sink.write([score(ts=ts, value=0.1)])
    sink.write([score(ts=T0 + 0.3, value=0.7, anomaly=True)])
    rows = select(influx, measurement)
    assert len(rows) == 1
    assert rows[0]["time"] == 1_714_564_800_300_000_000
    assert rows[0]["score"] == 0.7 and rows[0]["is_anomaly"] is True


NASTY = ["with space", "comma,here", "equals=sign", 'double"quote', "single'quote",
         "back\\slash", "ünïcødé ✓", "=,\\ \"mix", "pre-escaped\\,comma",
         "two\\\\ backslashes", "x ", "a\\nb", "\\ lead", "\\=", "\\\\,"]


def test_escaping_of_series_and_model_names(influx: Any, sink: InfluxSink,
                                            measurement: str) -> None:
    sink.write([score(series=name, ts=T0 + i, model=f"model {name}")
                for i, name in enumerate(NASTY)])
    rows = select(influx, measurement)
    assert [(r["series"], r["model_version"]) for r in rows] == [
        (name, f"model {name}") for name in NASTY]  # every one exactly as written


@pytest.mark.parametrize("name", ["trailing\\", "new\nline", "tab\there", "\ud800"])
def test_a_name_line_protocol_cannot_hold_is_refused_not_mangled(sink: InfluxSink,
                                                                 name: str) -> None:
    with pytest.raises(SinkRejected, match="line protocol") as info:
        sink.write([score(series=name)])
    assert info.value.status is None


def test_distinct_accepted_names_stay_distinct_in_the_store(influx: Any, sink: InfluxSink,
                                                            measurement: str) -> None:
    """Property: any name the decoder accepts is stored exactly, so two distinct names are
    never one series in the store. Random names from an alphabet of every character that
    line protocol or JSON treats specially, written to the real InfluxDB and read back."""
    rng = random.Random(13)
    alphabet = [*",= \\\"'#*/.:;{}[]()-_|~!?$%&+^`<>@", "\\,", "\\ ", "\\=", "\\\\",
                "é", "✓", "𝄞", "\u00a0", "\u200d", "\u2028", "\ufeff", "a", "b", "x", "0",
                "\n", "\t", "\x7f", "\x85", "\ud800"]
    names = {"x ", "x\\", "a\nb", "a\\nb", "a b", "a\\ b", "a,b", "a\\,b", "\\,", ",", "\\\\,"}
    while len(names) < 600:
        names.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
    decoder = JsonDecoder()
    accepted = []
    for name in sorted(names):
        try:
            decoder.decode(None, json.dumps({"series": name, "timestamp": T0, "value": 1},
                                            ensure_ascii=False).encode("utf-8", "surrogatepass"))
        except DecodeError as exc:
            assert exc.reason in ("bad_series", "invalid_json"), exc
            assert (name.endswith("\\") or any(c < " " or "\x7f" <= c <= "\x9f"
                                                or "\ud800" <= c <= "\udfff" for c in name))
            continue
        accepted.append(name)
    assert len(accepted) > 300
    sink.write([score(series=name, ts=T0 + i) for i, name in enumerate(accepted)])
    rows = select(influx, measurement)
    assert len(rows) == len(accepted)
    assert sorted(r["series"] for r in rows) == sorted(accepted)
    tags = influx.query(f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "series"', db=DB)
    assert sorted(t["value"] for t in tags) == sorted(accepted)


def test_a_replay_under_a_new_model_overwrites_its_own_point(influx: Any, sink: InfluxSink,
                                                             measurement: str) -> None:
    sink.write([score(ts=T0 + i, model="v1", value=0.1) for i in range(5)])
    sink.write([score(ts=T0 + i, model="v2", value=0.9) for i in range(5)])
    rows = select(influx, measurement)
    assert len(rows) == 5
    assert {(r["model_version"], r["score"]) for r in rows} == {("v2", 0.9)}
    keys = influx.query(f'SHOW TAG KEYS FROM "{measurement}"', db=DB)
    assert [k["tagKey"] for k in keys] == ["series"]


def test_measurement_names_are_escaped(influx: Any, measurement: str) -> None:
    name = f"{measurement} with,odd=chars"
    sink = InfluxSink(InfluxSettings(url=influx.url, bucket=DB, measurement=name))
    try:
        sink.write([score()])
    finally:
        sink.close()
    assert len(select(influx, name)) == 1


def test_non_finite_numbers_are_left_out(influx: Any, sink: InfluxSink,
                                         measurement: str) -> None:
    sink.write([score(error=math.nan, value=math.inf, values=(1.0, -math.inf))])
    rows = select(influx, measurement)
    assert len(rows) == 1
    assert rows[0].get("error") is None and rows[0].get("score") is None
    assert rows[0]["value"] == 1.0 and rows[0].get("value_1") is None
    assert rows[0]["threshold"] == 0.9 and rows[0]["is_anomaly"] is False


def test_novelty_reads_back_as_written(influx: Any, sink: InfluxSink, measurement: str) -> None:
    written = [1.2345678901234567, None, 0.0, math.nan, 3e-7]
    sink.write([score(ts=T0 + i, novelty=novelty) for i, novelty in enumerate(written)]
               + [score(series="multi", ts=T0 + 10, values=(1.0, 2.0), novelty=42.5)])
    rows = select(influx, measurement)
    assert len(rows) == 6
    # A missing (None) or non-finite novelty is no field at all: null when read back.
    assert [row.get("novelty") for row in rows[:5]] == [1.2345678901234567, None, 0.0, None,
                                                        3e-7]
    assert rows[5]["series"] == "multi" and rows[5]["novelty"] == 42.5
    assert all(row["score"] == 0.2 and row["error"] == 0.01 for row in rows)
    # A point without novelty stays without it: the field is not filled with anything.
    count = influx.query(f'SELECT count("novelty") FROM "{measurement}"', db=DB)
    assert count[0]["count"] == 4


def test_large_writes_are_chunked(influx: Any, sink: InfluxSink, measurement: str) -> None:
    sink.write([score(series=f"s{i % 7}", ts=T0 + i * 0.001) for i in range(12_003)])
    rows = influx.query(f'SELECT count("score") FROM "{measurement}"', db=DB)
    assert rows[0]["count"] == 12_003


def test_ping(influx: Any, sink: InfluxSink) -> None:
    assert sink.ping() is True


def test_a_dead_server_raises_sink_error() -> None:
    sink = InfluxSink(InfluxSettings(url=f"http://127.0.0.1:{free_port()}", timeout_ms=2_000))
    try:
        with pytest.raises(SinkError, match=r"127\.0\.0\.1") as info:
            sink.write([score()])
        assert isinstance(info.value, InfluxWriteError) and info.value.status is None
        assert isinstance(info.value.__cause__, Exception)
        assert sink.ping() is False
    finally:
        sink.close()


def test_a_refused_write_carries_the_status(influx: Any, unique_name: Callable[[str], str]
                                            ) -> None:
    sink = InfluxSink(InfluxSettings(url=influx.url, bucket=unique_name("nodb")))
    try:
        with pytest.raises(InfluxWriteError, match="database not found") as info:
            sink.write([score()])
        assert info.value.status == 404
        # A missing database is not the points' fault: retried, never dead-lettered.
        assert not isinstance(info.value, SinkRejected)
    finally:
        sink.close()


def test_a_field_type_conflict_is_a_refusal_of_the_points(influx: Any, sink: InfluxSink,
                                                          measurement: str) -> None:
    # Another writer made "score" a string field of this measurement first (in the same
    # shard: types are per shard).
    line = f'{measurement},series=x score="high" {int(T0) * 10**9}'
    other = urllib.request.Request(f"{influx.engine_url}/write?db={DB}", method="POST",
                                   data=line.encode())
    with urllib.request.urlopen(other) as response:
        assert response.status == 204
    with pytest.raises(SinkRejected, match="field type conflict") as info:
        sink.write([score(ts=T0)])
    assert info.value.status == 400 and "field type conflict" in info.value.message
    assert isinstance(info.value.__cause__, Exception)


def test_a_point_beyond_the_retention_policy_is_a_refusal(influx: Any,
                                                          unique_name: Callable[[str], str]
                                                          ) -> None:
    database = unique_name("short")
    influx.create_database(database)
    influx._execute(f'CREATE RETENTION POLICY "hour" ON "{database}" DURATION 1h '
                    "REPLICATION 1 DEFAULT")
    sink = InfluxSink(InfluxSettings(url=influx.url, bucket=database))
    try:
        with pytest.raises(SinkRejected, match="retention") as info:
            sink.write([score(ts=1.0)])  # 1970: a device without a clock
        assert info.value.status == 400
        sink.write([score(ts=time.time())])
    finally:
        sink.close()


def test_a_body_over_the_servers_limit_is_a_413_refusal() -> None:
    with InfluxDB(databases=[DB], max_body_size=2_000) as small:
        sink = InfluxSink(InfluxSettings(url=small.url, bucket=DB))
        try:
            with pytest.raises(SinkRejected) as info:
                sink.write([score(ts=T0 + i) for i in range(100)])
            assert info.value.status == 413
            sink.write([score(ts=T0 + i) for i in range(5)])  # a smaller body goes through
        finally:
            sink.close()


def test_line_protocol_shape() -> None:
    lines = to_lines([score(series="a b", ts=T0 + 0.5, values=(1.0, 2.0), anomaly=True)], "m x")
    assert lines == ['m\\ x,series=a\\ b alarm=false,error=0.01,is_anomaly=true,'
                     'model_version="v1",score=0.2,threshold=0.9,value=1.0,value_1=2.0 '
                     "1714564800500000000"]
    assert escape_tag("a,b=c d\\e") == "a\\,b\\=c\\ d\\e"
    assert to_lines([score(series="s", model="")], "m")[0].startswith(
        'm,series=s alarm=false,error=0.01,is_anomaly=false,model_version="",')


def test_a_comment_like_measurement_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"influx\.measurement"):
        InfluxSink(InfluxSettings(measurement="#anomaly"))
