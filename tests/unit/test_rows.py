"""Messages that carry a row of columns (``"values": {"a": .., "b": ..}``) under a one-feature
model: the decoder makes each column a series of its own, and the daemon writes one verdict per
message, for the message's series, the same verdict `replay` gives the same rows as a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamlstm import cli
from streamlstm.core.calibration import alarm_rows
from streamlstm.core.columns import ColumnRow, RowCombiner, score_columns
from streamlstm.core.pipeline import Pipeline, PipelineSettings
from streamlstm.core.records import Score
from streamlstm.decoding import BAD_SERIES, BAD_VALUE, MAX_ROW_COLUMNS, JsonDecoder
from streamlstm.errors import DecodeError
from streamlstm.metrics import Metrics
from streamlstm.model.artifact import load_artifact
from streamlstm.service import Service, ServiceSettings
from tests.memory_adapters import FakeClock, MemorySink, MemorySource
from tests.unit.test_columns import BREAK, ROWS, T0, write_sensors


def message(series: str, timestamp: float, **values: float) -> bytes:
    return json.dumps({"series": series, "timestamp": timestamp, "values": values}).encode()


# ------------------------------------------------------------------------- the decoder


def test_a_one_feature_decoder_makes_a_row_of_a_values_object_with_several_entries() -> None:
    decoder = JsonDecoder()
    row, points = decoder.decode_row(None, message("rig", T0, a=1.5, b=-2))
    assert row == "rig"
    assert [(p.series, p.timestamp, p.values) for p in points] == [
        ("rig/a", T0, (1.5,)), ("rig/b", T0, (-2.0,))]
    # what is not a row stays one point
    assert decoder.decode_row(None, message("cpu", T0, value=3.0, b=1.0))[0] is None
    assert decoder.decode_row(None, message("cpu", T0, only=3.0))[1][0].series == "cpu"
    plain = json.dumps({"series": "cpu", "timestamp": T0, "value": 1.0}).encode()
    assert decoder.decode_row(None, plain) == (None, [decoder.decode(None, plain)])
    # a multi-feature model's decoder reads the same object as one point of its features
    wide = JsonDecoder(feature_names=("a", "b"))
    assert wide.decode_row(None, message("rig", T0, a=1, b=2))[1][0].values == (1.0, 2.0)
    with pytest.raises(DecodeError):  # `decode` keeps refusing what only a row can be
        decoder.decode(None, message("rig", T0, a=1.5, b=-2))


def test_a_row_with_a_bad_entry_or_too_many_is_refused_whole() -> None:
    decoder = JsonDecoder()
    with pytest.raises(DecodeError) as info:
        decoder.decode_row(None, json.dumps({"series": "rig", "timestamp": T0,
                                             "values": {"a": 1, "b": "x"}}).encode())
    assert info.value.reason == BAD_VALUE and "values.b" in info.value.detail
    with pytest.raises(DecodeError) as info:
        decoder.decode_row(None, message("rig", T0, **{f"c{i}": 1.0
                                                       for i in range(MAX_ROW_COLUMNS + 1)}))
    assert info.value.reason == BAD_VALUE and f"at most {MAX_ROW_COLUMNS}" in info.value.detail
    with pytest.raises(DecodeError) as info:
        decoder.decode_row(None, message("rig", T0, a=1.0, **{"b\x07": 2.0}))
    assert info.value.reason == BAD_SERIES and "values.b" in info.value.detail


# ------------------------------------------------------------------------- the combiner


def _row(series: str, score: float) -> ColumnRow:
    column = Score(f"{series}/x", 0.0, (0.0,), 1.0, score, 0.25, score >= 0.25, "v")
    return ColumnRow(series, 0.0, ("x",), (0.0,), (column,))


def test_the_combiner_alarms_by_the_rule_of_alarm_rows_per_series() -> None:
    rng = np.random.default_rng(3)
    scores = np.where(rng.random(400) < 0.2, 0.6, 0.1)
    combiner = RowCombiner(lambda series: (0.25, 4))
    got = []
    for start in range(0, 400, 37):  # polls of any size; another series in between
        verdicts = combiner.combine([_row("m", s) for s in scores[start:start + 37]]
                                    + [_row("other", 0.9)])
        got += [v.alarm for v in verdicts[:-1] if v is not None]
    assert got == alarm_rows(scores, 0.25, 4).tolist()
    assert len(combiner) == 2


def test_the_combiner_forgets_the_least_recent_series_beyond_its_capacity() -> None:
    combiner = RowCombiner(lambda series: (0.25, 10), capacity=2)
    assert [v.alarm for v in combiner.combine([_row("a", 0.9), _row("a", 0.9)]) if v] == [
        True, False]
    combiner.combine([_row("b", 0.1), _row("c", 0.1)])  # "a" is forgotten
    assert len(combiner) == 2
    assert combiner.combine([_row("a", 0.9)])[0].alarm  # type: ignore[union-attr]
    assert combiner.combine([ColumnRow("a", 0.0, ("x",), (0.0,), (None,))]) == [None]


# ------------------------------------------------------------------------- the daemon


def test_the_daemon_writes_one_verdict_per_row_the_one_replay_gives(tmp_path: Path) -> None:
    values = write_sensors(tmp_path / "rig.csv")
    artifact = load_artifact(cli.BUNDLED_MODEL)
    source, sink, clock = MemorySource(max_records=250), MemorySink(), FakeClock()
    for i, (a, b, c) in enumerate(values.tolist()):
        source.send(message("rig", T0 + i, a=a, b=b, c=c), key=b"rig")
        source.send({"series": "cpu", "timestamp": T0 + i, "value": float(a)}, key=b"cpu")
    source.send(json.dumps({"series": "rig", "timestamp": T0 + ROWS,
                            "values": {"a": 1, "b": None, "c": 2}}).encode(), key=b"rig")
    registry = CollectorRegistry()
    service = Service(source, sink, Pipeline(artifact), Metrics(registry),
                      ServiceSettings(reload_interval_s=1e9), clock=lambda: T0 + ROWS,
                      monotonic=clock, wait=clock.wait)
    source.on_poll = lambda src: service.stop() if src.committed == src.end_offsets() else None
    service.run()

    assert {series for series, _ in sink.points} == {"rig", "cpu"}
    rig = sorted((s for (series, _), s in sink.points.items() if series == "rig"),
                 key=lambda s: s.timestamp)
    expected = score_columns(Pipeline(artifact, PipelineSettings()), ["rig"] * ROWS,
                             [float(T0 + i) for i in range(ROWS)], values, ["a", "b", "c"])
    first = int(np.flatnonzero(expected.worst >= 0)[0])
    assert [s.timestamp for s in rig] == [float(T0 + i) for i in range(first, ROWS)]
    np.testing.assert_allclose([s.score for s in rig], expected.score[first:], atol=1e-6)
    assert [s.alarm for s in rig] == expected.alarm[first:].tolist()
    assert [s.is_anomaly for s in rig] == expected.is_anomaly[first:].tolist()
    in_break = [s for s in rig if T0 + BREAK.start <= s.timestamp < T0 + BREAK.stop]
    assert {s.top_feature for s in in_break} == {"c"} and any(s.alarm for s in in_break)
    assert rig[0].values == tuple(values[first]) and len(rig[0].feature_errors or ()) == 3
    # every message counted once, the bad row dead-lettered once with its reason
    assert registry.get_sample_value("streamlstm_events_consumed_total") == 2 * ROWS + 1
    assert registry.get_sample_value("streamlstm_events_scored_total") == len(sink.points)
    assert [d.reason for d in source.dead] == [BAD_VALUE]
    assert source.committed == source.end_offsets()
