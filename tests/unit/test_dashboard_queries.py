"""tests/dashboard_queries.py: walking dashboards and substituting Grafana's macros."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dashboard_queries import (
    DashboardQueryError,
    PanelQuery,
    format_duration,
    panel_queries,
    parse_duration_ms,
    substitute,
    template_queries,
)

ROOT = Path(__file__).resolve().parents[2]
INFLUX = {"type": "influxdb", "uid": "streamlstm-influxdb"}
PROM = {"type": "prometheus", "uid": "streamlstm-prometheus"}
T0 = 1_396_310_400 * 10**9  # 2014-04-01T00:00:00Z, when the bundled NAB series start
T1 = T0 + 3_600 * 10**9


def _board(panels: list[dict], templating: list[dict] | None = None) -> dict:
    return {"uid": "x", "panels": panels, "templating": {"list": templating or []}}


# ---------------------------------------------------------------------------- walking


def test_walks_top_level_rows_and_collapsed_rows() -> None:
    board = _board([
        {"id": 1, "type": "timeseries", "title": "top", "datasource": PROM,
         "targets": [{"refId": "A", "expr": "up"}]},
        {"id": 2, "type": "row", "title": "open row", "collapsed": False, "panels": []},
        {"id": 3, "type": "stat", "title": "under open row", "datasource": INFLUX,
         "targets": [{"refId": "A", "rawQuery": True, "query": "SELECT 1"}]},
        {"id": 4, "type": "row", "title": "closed", "collapsed": True, "panels": [
            {"id": 5, "type": "timeseries", "title": "inside closed", "datasource": PROM,
             "targets": [{"refId": "A", "expr": "a"}, {"refId": "B", "expr": "b"}]},
        ]},
    ])
    queries = panel_queries(board)
    assert [(q.panel_title, q.ref_id, q.kind, q.query) for q in queries] == [
        ("top", "A", "promql", "up"),
        ("under open row", "A", "influxql", "SELECT 1"),
        ("inside closed", "A", "promql", "a"),
        ("inside closed", "B", "promql", "b"),
    ]
    assert queries[0] == PanelQuery("top", "streamlstm-prometheus", "promql", "up", "A", 1)


def test_target_datasource_overrides_the_panel_and_hidden_targets_are_skipped() -> None:
    board = _board([{
        "id": 1, "type": "timeseries", "title": "mixed",
        "datasource": {"type": "datasource", "uid": "-- Mixed --"},
        "targets": [
            {"refId": "A", "datasource": PROM, "expr": "up"},
            {"refId": "B", "datasource": INFLUX, "rawQuery": True, "query": "SELECT 2"},
            {"refId": "C", "datasource": PROM, "expr": "hidden", "hide": True},
            {"refId": "D", "datasource": {"type": "__expr__", "uid": "__expr__"},
             "expression": "$A + 1"},
        ],
    }])
    queries = panel_queries(board)
    assert [(q.ref_id, q.datasource_uid, q.kind) for q in queries] == [
        ("A", "streamlstm-prometheus", "promql"),
        ("B", "streamlstm-influxdb", "influxql"),
    ]


def test_datasource_variables_and_bare_uids_resolve() -> None:
    board = _board(
        [{"id": 1, "type": "stat", "title": "via variable", "datasource": "${ds}",
          "targets": [{"refId": "A", "expr": "up"}]},
         {"id": 2, "type": "stat", "title": "bare uid", "datasource": "streamlstm-influxdb",
          "targets": [{"refId": "A", "rawQuery": True, "query": "SELECT 3"}]}],
        [{"name": "ds", "type": "datasource", "query": "prometheus",
          "current": {"value": "my-prom"}}],
    )
    queries = panel_queries(board)
    assert [(q.datasource_uid, q.kind) for q in queries] == [
        ("my-prom", "promql"), ("streamlstm-influxdb", "influxql")]


@pytest.mark.parametrize("panel, message", [
    ({"id": 1, "title": "no ds", "targets": [{"refId": "A", "expr": "up"}]}, "no datasource"),
    ({"id": 1, "title": "builder", "datasource": INFLUX,
      "targets": [{"refId": "A", "measurement": "anomaly", "select": []}]}, "query-builder"),
    ({"id": 1, "title": "empty", "datasource": PROM, "targets": [{"refId": "A", "expr": ""}]},
     "no expr"),
    ({"id": 1, "title": "odd", "datasource": {"type": "loki", "uid": "l"},
      "targets": [{"refId": "A", "expr": "{a=1}"}]}, "unsupported datasource"),
    ({"id": 1, "title": "var", "datasource": "$nope",
      "targets": [{"refId": "A", "expr": "up"}]}, "unknown datasource variable"),
])
def test_uncheckable_targets_raise(panel: dict, message: str) -> None:
    with pytest.raises(DashboardQueryError, match=message):
        panel_queries(_board([panel]))


def test_template_queries_translate_label_values() -> None:
    board = _board([], [
        {"name": "job", "type": "query", "datasource": PROM,
         "query": {"query": "label_values(streamlstm_ready, job)", "refId": "v"}},
        {"name": "instance", "type": "query", "datasource": PROM,
         "query": 'label_values(streamlstm_ready{job=~"$job"}, instance)'},
        {"name": "anylabel", "type": "query", "datasource": PROM, "query": "label_values(zone)"},
        {"name": "series", "type": "query", "datasource": INFLUX,
         "query": 'SHOW TAG VALUES FROM "anomaly" WITH KEY = "series"'},
        {"name": "custom", "type": "custom", "query": "a,b"},
    ])
    assert [(q.panel_title, q.kind, q.query) for q in template_queries(board)] == [
        ("variable job", "promql", "group by (job) (streamlstm_ready)"),
        ("variable instance", "promql", 'group by (instance) (streamlstm_ready{job=~"$job"})'),
        ("variable anylabel", "promql", 'group by (zone) ({zone!=""})'),
        ("variable series", "influxql", 'SHOW TAG VALUES FROM "anomaly" WITH KEY = "series"'),
    ]


# ---------------------------------------------------------------------------- substitution


def test_time_filter_is_written_as_grafana_writes_it_in_milliseconds() -> None:
    text = substitute('SELECT count("score") FROM "anomaly" WHERE $timeFilter', T0, T1)
    assert text == ('SELECT count("score") FROM "anomaly" WHERE '
                    "time >= 1396310400000ms and time <= 1396314000000ms")
    # Sub-millisecond edges widen the range rather than cut points off.
    widened = substitute("$timeFilter", T0 + 1, T1 + 1)
    assert widened == "time >= 1396310400000ms and time <= 1396314000001ms"


def test_interval_range_and_rate_interval_macros() -> None:
    q = ("$__interval ${__interval} $interval $__interval_ms $__range $__range_s $__range_ms "
         "$__from $__to $__rate_interval")
    assert substitute(q, T0, T1, "30s", kind="promql", scrape_interval="15s").split() == [
        "30s", "30s", "30s", "30000", "1h", "3600", "3600000",
        "1396310400000", "1396314000000", "1m"]
    # Grafana's rule: max(interval + scrape interval, 4 x scrape interval).
    assert substitute("$__rate_interval", T0, T1, "1m", kind="promql",
                      scrape_interval="1s") == "61s"
    assert substitute("$__rate_interval", T0, T1, "1s", kind="promql",
                      scrape_interval="1s") == "4s"


def test_multi_value_variables_become_escaped_regex_alternations() -> None:
    influx = substitute('"series" =~ /^$series$/', T0, T1, "1m",
                        {"series": ["host1.cpu", "a/b", "x"]})
    assert influx == r'"series" =~ /^(host1\.cpu|a\/b|x)$/'
    single = substitute('"series" =~ /^$series$/', T0, T1, "1m", {"series": ["web(1)"]})
    assert single == r'"series" =~ /^web\(1\)$/'
    prom = substitute('up{instance=~"$instance"}', T0, T1, "1m",
                      {"instance": ["h1:9108", "h.2:9108"]}, kind="promql")
    assert prom == r'up{instance=~"(h1:9108|h\\.2:9108)"}'


def test_a_plain_string_value_goes_in_unchanged() -> None:
    assert substitute('up{job=~"$job"}', T0, T1, "1m", {"job": ".*"}, kind="promql") == (
        'up{job=~".*"}')


def test_variable_syntaxes_and_formats() -> None:
    values = {"s": ["a", "b"]}
    assert substitute("$s ${s} [[s]]", T0, T1, "1m", values) == "(a|b) (a|b) (a|b)"
    assert substitute("${s:raw} ${s:pipe} ${s:csv} ${s:singlequote} ${s:doublequote}",
                      T0, T1, "1m", values) == "a,b a|b a,b 'a','b' \"a\",\"b\""
    assert substitute("${s:regex}", T0, T1, "1m", {"s": "a.b"}) == r"a\.b"
    with pytest.raises(DashboardQueryError, match="unsupported variable format"):
        substitute("${s:json}", T0, T1, "1m", values)


def test_a_variable_without_a_value_raises_naming_it() -> None:
    with pytest.raises(DashboardQueryError, match="series"):
        substitute('"series" =~ /^$series$/ AND $timeFilter', T0, T1, "1m", {})
    with pytest.raises(DashboardQueryError, match="no values"):
        substitute("$s", T0, T1, "1m", {"s": []})


def test_a_given_variable_shadows_a_builtin_name() -> None:
    assert substitute("$interval", T0, T1, "1m", {"interval": "5m"}) == "5m"


def test_bad_ranges_and_durations_raise() -> None:
    with pytest.raises(DashboardQueryError):
        substitute("$timeFilter", T1, T0)
    with pytest.raises(DashboardQueryError):
        substitute("$__interval", T0, T1, "one minute")


def test_durations() -> None:
    assert parse_duration_ms("1m30s") == 90_000
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("2h") == 7_200_000
    assert format_duration(60_000) == "1m"
    assert format_duration(61_000) == "61s"
    assert format_duration(86_400_000) == "1d"
    assert format_duration(1_500) == "1500ms"


# ---------------------------------------------------------------------------- the real dashboards


@pytest.mark.parametrize("name", ["anomalies.json", "daemon-health.json"])
def test_every_query_of_the_shipped_dashboards_is_extracted(name: str) -> None:
    board = json.loads((ROOT / "grafana" / "dashboards" / name).read_text(encoding="utf-8"))
    queries = panel_queries(board)
    targets = sum(len(p.get("targets") or []) for p in _all_panels(board["panels"]))
    assert len(queries) == targets > 0
    for q in queries + template_queries(board):
        text = substitute(q.query, T0, T1, "1m",
                          {"series": ["art_daily_jumpsup"], "job": ".*", "instance": ".*"},
                          kind=q.kind, scrape_interval="1s")
        assert "$timeFilter" not in text and "$__" not in text and "$series" not in text


def _all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_all_panels(panel.get("panels") or []))
    return out
