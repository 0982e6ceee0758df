"""Training history from a Kafka topic over a time range.

Reads with :func:`streamlstm.sources.kafka.read_range`: no consumer group, so the daemon's
committed offsets are neither read nor moved. Messages are decoded by the daemon's own
:class:`~streamlstm.decoding.JsonDecoder` (same field names, same feature order), and an
event belongs to the range by its own timestamp: ``start_ts <= timestamp < end_ts``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from streamlstm.config import KafkaSettings
from streamlstm.core.records import Point
from streamlstm.core.timestamps import format_timestamp
from streamlstm.decoding import JsonDecoder
from streamlstm.errors import SourceError
from streamlstm.sources.files import Table
from streamlstm.sources.kafka import read_range

log = logging.getLogger(__name__)


class EmptyRangeError(SourceError):
    """No decodable event of the topic has a timestamp in the requested range."""


def read_history(settings: KafkaSettings, decoder: JsonDecoder, start_ts: float,
                 end_ts: float, idle_timeout_s: float = 5.0) -> Table:
    """The topic's events with ``start_ts <= timestamp < end_ts`` as a table.

    An event delivered twice (same series and timestamp, e.g. a producer retry) counts once,
    with the value that came last.
    """
    points = read_range(settings, start_ts, end_ts, decoder, idle_timeout_s=idle_timeout_s)
    table = table_from_points(points, decoder.feature_names)
    if not table.series:
        raise EmptyRangeError(
            f"kafka topic {settings.topic!r} at {settings.bootstrap_servers}: no events with "
            f"timestamps from {format_timestamp(start_ts)} to {format_timestamp(end_ts)} "
            "(the end excluded)")
    return table


def table_from_points(points: Iterable[Point], feature_names: Sequence[str]) -> Table:
    """Points (any order, any series) -> a table, one row per distinct (series, timestamp)."""
    latest: dict[tuple[str, float], Point] = {}
    total = 0
    for point in points:
        latest[(point.series, point.timestamp)] = point
        total += 1
    if total > len(latest):
        log.info("%d duplicate events (same series and timestamp) counted once",
                 total - len(latest))
    rows = list(latest.values())
    n = len(feature_names)
    return Table(
        series=[p.series for p in rows],
        timestamps=np.fromiter((p.timestamp for p in rows), dtype=np.float64, count=len(rows)),
        values=np.array([p.values for p in rows], dtype=np.float64).reshape(len(rows), n),
        feature_names=list(feature_names),
    )
