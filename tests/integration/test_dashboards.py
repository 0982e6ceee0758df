"""Every query of every provisioned Grafana dashboard returns data from a real daemon run."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.dashboard_queries import (
    annotation_queries,
    panel_queries,
    substitute,
    template_queries,
)
from tests.integration.daemon import (
    STEP,
    T0,
    WINDOW,
    RunningDaemon,
    count_points,
    event,
    produce,
    settings_for,
    sine,
    train_model,
    wait_until,
)

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "grafana" / "dashboards").glob("*.json"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    train_model(path)
    return path


def test_every_dashboard_query_returns_data(kafka, influx, prometheus_factory, unique_name,
                                            models) -> None:
    assert DASHBOARDS, "no dashboards found"
    topic, group, database = unique_name("dash"), unique_name("g"), unique_name("db")
    influx.create_database(database)
    names = ["host1.cpu", "host2.cpu", "db1.mem"]
    n = 200
    spikes = {"host1.cpu": 100, "host2.cpu": 140, "db1.mem": 170}
    values = {name: sine(n, phase=k, seed=100 + k) for k, name in enumerate(names)}
    for name, index in spikes.items():
        values[name][index] += 8.0
    messages: list[dict | bytes] = [event(name, i, float(values[name][i]))
                                    for i in range(n) for name in names]
    messages.insert(len(messages) // 2, b"{bad")
    produce(kafka.bootstrap, topic, messages)
    expected = len(names) * (n - WINDOW + 1)

    settings = settings_for(kafka.bootstrap, topic, group, influx.url, database, models)
    with RunningDaemon(settings) as daemon:
        prometheus = prometheus_factory([f"127.0.0.1:{daemon.server.port}"])
        wait_until(lambda: count_points(influx, database) >= expected, 120, "all scores written")
        wait_until(lambda: daemon.metric("streamlstm_dead_letter_messages_total") == 1, 30,
                   "the bad message dead-lettered")
        # The final count scraped, and enough scrapes in the last minute for rate() to answer.
        prometheus.wait_for_series(f"streamlstm_events_scored_total == {expected}", timeout=30)
        prometheus.wait_for_series(
            "count_over_time(streamlstm_events_scored_total[1m]) >= 4", timeout=30)
        prometheus.wait_for_series(
            'rate(streamlstm_events_rejected_total{reason="invalid_json"}[1m])', timeout=30)
        # Gauges the daemon sets on its own schedule (the lag every few seconds, the first
        # checkpoint once its interval has passed), scraped at least once.
        prometheus.wait_for_series("streamlstm_consumer_lag_records", timeout=30)
        prometheus.wait_for_series("streamlstm_checkpoint_last_timestamp_seconds > 0",
                                   timeout=30)

        t0_ns = int((T0 - 3600) * 1e9)
        t1_ns = int((T0 + (n + 60) * STEP) * 1e9)
        jobs = sorted({r["metric"]["job"] for r in prometheus.query("streamlstm_ready")})
        instances = sorted({r["metric"]["instance"]
                            for r in prometheus.query("streamlstm_ready")})
        assert jobs and instances
        variables = {"series": names, "job": jobs, "instance": instances}

        failures: list[str] = []
        checked = 0
        # What the daemon really wrote: a point is series + time, so "series" is the only tag,
        # and a panel grouping by anything else would silently show one merged group.
        tag_keys = {r["tagKey"] for r in influx.query('SHOW TAG KEYS FROM "anomaly"',
                                                       db=database)}
        assert tag_keys == {"series"}
        for path in DASHBOARDS:
            dashboard = json.loads(path.read_text())
            for q in [*panel_queries(dashboard), *template_queries(dashboard),
                      *annotation_queries(dashboard)]:
                if q.kind == "influxql":
                    text = substitute(q.query, t0_ns, t1_ns, "1m", variables, kind="influxql")
                    grouped = re.search(r"\bGROUP BY (.*?)(?:\bfill\(|\bORDER\b|$)", text)
                    unknown = set(re.findall(r'"(\w+)"', grouped.group(1) if grouped else ""))
                    if unknown - tag_keys:
                        failures.append(f"{path.name} / {q.panel_title!r}: groups by "
                                        f"{sorted(unknown - tag_keys)}, not a tag")
                    try:
                        result = influx.query(text, db=database)
                    except Exception as exc:  # report every failing panel, not just the first
                        failures.append(f"{path.name} / {q.panel_title!r}: {text}\n  error: {exc}")
                        continue
                else:
                    now_ns = time.time_ns()
                    text = substitute(q.query, now_ns - 300 * 10**9, now_ns, "1m", variables,
                                      kind="promql", scrape_interval="1s")
                    try:
                        result = prometheus.query(text)
                    except Exception as exc:
                        failures.append(f"{path.name} / {q.panel_title!r}: {text}\n  error: {exc}")
                        continue
                checked += 1
                if not result:
                    failures.append(f"{path.name} / {q.panel_title!r}: no data from\n  {text}")
    assert checked > 0
    assert not failures, f"{len(failures)} dashboard queries failed:\n" + "\n".join(failures)
