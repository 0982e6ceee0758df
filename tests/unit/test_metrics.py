"""Metrics: label children that dashboards rely on exist (at 0) before anything happens."""

from __future__ import annotations

import platform
import re
from importlib import metadata
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from streamlstm import __version__, service
from streamlstm.decoding import REASONS
from streamlstm.metrics import REJECTION_REASONS, Metrics

REJECTED = "streamlstm_events_rejected_total"


def test_every_rejection_reason_reads_zero_before_any_rejection() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for reason in (*REASONS, "out_of_order"):
        assert registry.get_sample_value(REJECTED, {"reason": reason}) == 0.0, reason


def test_only_the_known_reasons_are_created() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    created = {s.labels["reason"] for family in registry.collect()
               for s in family.samples if s.name == REJECTED}
    assert created == set(REJECTION_REASONS)


def test_the_service_rejects_only_with_known_reasons() -> None:
    """Reasons the service names itself (beside the decoder's) are pre-created too."""
    source = Path(service.__file__).read_text(encoding="utf-8")
    named = set(re.findall(r"Rejected\(\s*\"([a-z_]+)\"", source))
    assert "out_of_order" in named
    assert named <= set(REJECTION_REASONS)


def test_a_rejection_counts_on_top_of_the_zero() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.events_rejected.labels(reason="bad_timestamp").inc()
    assert registry.get_sample_value(REJECTED, {"reason": "bad_timestamp"}) == 1.0
    assert registry.get_sample_value(REJECTED, {"reason": "invalid_json"}) == 0.0


def test_build_info_names_the_versions_running() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    labels = {"version": __version__, "python": platform.python_version(),
              "torch": metadata.version("torch")}
    assert registry.get_sample_value("streamlstm_build_info", labels) == 1.0


def test_no_created_series_are_exposed() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.events_scored.inc()
    metrics.write_seconds.observe(0.01)
    text = generate_latest(registry).decode()
    assert "streamlstm_events_scored_total 1.0" in text
    assert "_created" not in text


def test_last_event_timestamp_keeps_the_newest_event_scored() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    name = "streamlstm_last_event_timestamp_seconds"
    assert registry.get_sample_value(name) == 0.0
    metrics.scored_up_to(1_700_000_060.0)
    metrics.scored_up_to(1_600_000_000.0)  # a late series does not move it back
    assert registry.get_sample_value(name) == 1_700_000_060.0
    metrics.scored_up_to(1_700_000_120.0)
    assert registry.get_sample_value(name) == 1_700_000_120.0
