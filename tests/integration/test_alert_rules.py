"""The alert rules, checked by the tools that will run them.

* Prometheus rules: ``promtool check rules`` and ``promtool test rules`` (the unit tests in
  grafana/prometheus/streamlstm-rules.test.yml: each alert fires on the series it should and
  stays silent otherwise), also on the Kubernetes PrometheusRule copy; ``promtool check config``
  on the compose stack's prometheus.yml.
* The Grafana-managed anomaly rule: its InfluxQL query runs against a real InfluxDB holding
  points of the daemon's schema, and its reduce/threshold steps, applied to the result, fire
  for exactly the series with enough anomalous points in the window.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamlstm.devstack import InfluxDB
from tests.dashboard_queries import substitute

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "grafana" / "prometheus"
RULES = RULES_DIR / "streamlstm-rules.yml"
RULE_TESTS = RULES_DIR / "streamlstm-rules.test.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "generated" / "prometheusrule.yaml"
ALERTING = ROOT / "grafana" / "provisioning" / "alerting" / "streamlstm-anomaly.yaml"


def _promtool(*args: str, cwd: Path = ROOT) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (apt-get install prometheus provides it)")
    proc = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} exited {proc.returncode}:\n{output}")
    return output


def test_promtool_check_rules() -> None:
    output = _promtool("check", "rules", str(RULES))
    assert "SUCCESS" in output


def test_promtool_test_rules() -> None:
    output = _promtool("test", "rules", RULE_TESTS.name, cwd=RULES_DIR)
    assert "SUCCESS" in output


def test_promtool_check_rules_on_the_kubernetes_copy(tmp_path: Path) -> None:
    spec = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))["spec"]
    path = tmp_path / "prometheusrule-groups.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    assert "SUCCESS" in _promtool("check", "rules", str(path))


def test_promtool_check_config_of_the_compose_prometheus() -> None:
    assert "SUCCESS" in _promtool("check", "config", str(ROOT / "deploy" / "prometheus.yml"))


# ---------------------------------------------------------------------------- Grafana rule


def _grafana_rule() -> dict[str, Any]:
    (group,) = yaml.safe_load(ALERTING.read_text(encoding="utf-8"))["groups"]
    (rule,) = group["rules"]
    return rule


def _evaluate(rule: dict[str, Any], frames: dict[str, list[float]]) -> dict[str, float]:
    """Grafana's reduce and threshold steps over ``series -> values``: the firing series."""
    steps = {d["refId"]: d["model"] for d in rule["data"]}
    condition = steps[rule["condition"]]
    assert condition["type"] == "threshold"
    reduce_step = steps[condition["expression"]]
    assert reduce_step["type"] == "reduce"
    reducers: dict[str, Callable[[list[float]], float]] = {
        "last": lambda v: v[-1], "max": max, "min": min, "sum": sum,
        "mean": lambda v: sum(v) / len(v), "count": len,
    }
    reducer = reducers[reduce_step["reducer"]]
    (cond,) = condition["conditions"]
    kind, params = cond["evaluator"]["type"], cond["evaluator"]["params"]
    tests: dict[str, Callable[[float], bool]] = {
        "gt": lambda x: x > params[0], "lt": lambda x: x < params[0],
        "within_range": lambda x: params[0] < x < params[1],
        "outside_range": lambda x: x < params[0] or x > params[1],
    }
    firing = {}
    for series, values in frames.items():
        value = reducer([v for v in values if v is not None])
        if tests[kind](value):
            firing[series] = value
    return firing


def _write(influx: InfluxDB, db: str, lines: list[str]) -> None:
    request = urllib.request.Request(f"{influx.engine_url}/write?db={db}&precision=s",
                                     data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def test_grafana_anomaly_rule_fires_for_each_series_flagged_in_its_window(
    influx: InfluxDB, unique_name: Callable[[str], str]
) -> None:
    rule = _grafana_rule()
    (query_step,) = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
    window_s = query_step["relativeTimeRange"]["from"]
    now = int(time.time())
    # One point a minute per series over the last 20 minutes; which are flagged:
    # one flagged point is an alarm (the daemon's hold already turned a burst into one).
    flagged = {
        "flagged.once": {4},                    # fires
        "flagged.long.ago": {12, 14, 16, 18},   # all older than the window: silent
        "never.flagged": set(),
        "flagged.twice": {1, 8},                # fires, once
    }
    lines = []
    for series, minutes_ago in flagged.items():
        for m in range(20):
            anomalous = m in minutes_ago
            lines.append(
                f"anomaly,series={series},model=v1 value={m}.5,score="
                f"{0.4 if anomalous else 0.05},error=0.1,threshold=0.25,"
                f"is_anomaly={'true' if anomalous else 'false'},"
                f"alarm={'true' if anomalous else 'false'} {now - 60 * m - 30}")
    db = unique_name("alerts")
    influx.create_database(db)
    _write(influx, db, lines)

    query = substitute(query_step["model"]["query"], (now - window_s) * 10**9, now * 10**9,
                       f"{query_step['model']['intervalMs']}ms")
    rows = influx.query(query, db=db)
    frames: dict[str, list[float]] = {}
    for row in rows:
        value = next(v for k, v in row.items() if k not in ("time", "series"))
        frames.setdefault(row["series"], []).append(value)
    assert frames == {"flagged.once": [1], "flagged.twice": [2]}
    assert _evaluate(rule, frames) == {"flagged.once": 1, "flagged.twice": 2}
