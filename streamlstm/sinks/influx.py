"""The InfluxDB sink: scores as line protocol through influxdb-client's synchronous write API.

One point per score: measurement ``settings.measurement``, one tag ``series``, float fields
``value`` (``value_1``, ``value_2``... for further features), ``score``, ``error``
(``error_0``, ``error_1``... beside it for multi-feature models: each feature's reconstruction
error in the model's feature order, ``error`` being their mean),
``novelty`` (once the series' memory holds a past window), ``surprise_model``,
``surprise_memory``, ``surprise_seasonal``, ``surprise_coarse`` (why: each kind of evidence's
surprise, -log10 of its tail probability, once that kind is calibrated), string field
``top_feature`` (multi-feature models: the feature reconstructed worst), ``threshold``, boolean
``is_anomaly`` (the score reached the threshold), boolean ``alarm`` (true on the first flagged
point of an incident only), string field ``model_version``, and the event time in
nanoseconds, rounded to the microsecond. A point is identified by measurement, tags and time,
so a replayed event lands on exactly its own point and overwrites it, whichever model scored
it this time.

Refusals: a 4xx that is about the points (400, 413, 422...) raises
:class:`~streamlstm.errors.SinkRejected`, which the service answers by splitting the batch
until the refused points are isolated; 401, 403, 404, 408 and 429 (credentials, a missing
bucket, throttling: nothing the points can help) and 5xx or no answer at all raise
:class:`InfluxWriteError`, which the service retries with backoff.

Lines are built as strings here: on 10k scores that takes ~4 µs per score against ~20 µs with
influxdb-client's ``Point`` objects or its dict form (which goes through them).

The sink does not retry; the service retries with backoff so it can watch its stop event.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import cast

import urllib3.exceptions
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from streamlstm.config import InfluxSettings
from streamlstm.core.records import Score
from streamlstm.errors import ConfigError, SinkError, SinkRejected

log = logging.getLogger(__name__)

#: Lines per HTTP request; InfluxDB suggests batches of about 5000 points.
CHUNK_LINES = 5000

# WritePrecision.NS is a plain str that the client's annotations call a WritePrecision.
_NS = cast(WritePrecision, WritePrecision.NS)
# InfluxDB 1.x and 2.x read a backslash as an escape only before these characters, and as a
# literal backslash anywhere else (a doubled backslash stays two backslashes).
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ "})
_ESCAPE_TAG = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_ESCAPE_STRING = str.maketrans({"\\": "\\\\", '"': '\\"'})
# Statuses that say nothing about the points: retried like an outage, never dead-lettered.
_RETRIED_4XX = frozenset({401, 403, 404, 408, 429})


class InfluxWriteError(SinkError):
    """A failed write; ``status`` is the HTTP status, or None when no response came back."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _storable(text: str) -> None:
    # A line ends at a newline, and a trailing backslash would escape the separator after it:
    # neither can be written exactly, and a near miss could make two names one.
    try:
        text.encode("utf-8")
        fit = bool(text) and not text.endswith("\\") and not any(
            c < " " or c == "\x7f" for c in text)
    except UnicodeEncodeError:  # a lone surrogate
        fit = False
    if not fit:
        raise ValueError(f"{text!a:.120} cannot be written exactly in line protocol (empty, not "
                         "UTF-8, a control character, or a trailing backslash)")


def escape_measurement(name: str) -> str:
    """Escape a measurement name for line protocol; ValueError if it cannot be stored exactly."""
    _storable(name)
    return name.translate(_ESCAPE_MEASUREMENT)


def escape_tag(text: str) -> str:
    """Escape a tag key, tag value or field key for line protocol.

    Commas, equals signs and spaces get a backslash; any other backslash is literal (the
    InfluxDB 1.x/2.x parser), so every text is stored exactly and distinct texts stay
    distinct. Text that cannot be stored exactly (empty, with a control character, or
    ending in a backslash; the decoder refuses such series names) raises ValueError.
    """
    _storable(text)
    return text.translate(_ESCAPE_TAG)


def escape_string(text: str) -> str:
    """A string field value, quoted, with backslashes and double quotes escaped."""
    return '"' + text.translate(_ESCAPE_STRING) + '"'


def timestamp_ns(seconds: float) -> int:
    """Integer nanoseconds from float seconds, via whole microseconds (no float noise)."""
    return round(float(seconds) * 1_000_000) * 1000


def _field(name: str, value: float) -> str:
    # Non-finite floats are not valid line protocol and would fail the whole request.
    return f"{name}={value!r}" if -math.inf < value < math.inf else ""


def to_lines(scores: Sequence[Score], measurement: str) -> list[str]:
    """One line-protocol line per score (see the module docstring for the schema).

    ValueError when a series name cannot be written exactly (see :func:`escape_tag`).
    """
    head = escape_measurement(measurement)
    lines: list[str] = []
    append = lines.append
    tags: dict[str, str] = {}  # series -> escaped measurement + tags
    versions: dict[str, str] = {}  # model version -> its escaped string field
    inf = math.inf
    for s in scores:
        tagset = tags.get(s.series)
        if tagset is None:
            tagset = tags[s.series] = f"{head},series={escape_tag(s.series)}"
        version = versions.get(s.model_version)
        if version is None:
            version = versions[s.model_version] = escape_string(s.model_version)
        error, score, threshold = float(s.error), float(s.score), float(s.threshold)
        values = s.values
        ns = round(float(s.timestamp) * 1_000_000) * 1000
        # Both always written: a replayed point overwrites its fields, and a stale alarm=true
        # must not survive (InfluxDB keeps fields a new write leaves out).
        alarm = "alarm=true," if s.alarm else "alarm=false,"
        anomaly = "true" if s.is_anomaly else "false"
        # Fields in key order (what InfluxDB parses fastest); the optional ones are left out
        # where they do not apply.
        novelty = "" if s.novelty is None else _field("novelty", float(s.novelty))
        if novelty:
            novelty = "," + novelty
        surprises = "".join([f",surprise_{kind}={value!r}"  # finite: uncalibrated kinds absent
                             for kind, value in sorted(s.evidence.items())])
        top = "" if s.top_feature is None else f",top_feature={escape_string(s.top_feature)}"
        if len(values) == 1:
            value = float(values[0])
            # One comparison tells whether all four are finite: inf and NaN survive the sum.
            if -inf < error + score + threshold + value < inf:
                append(f"{tagset} {alarm}error={error!r},is_anomaly={anomaly},"
                       f"model_version={version}{novelty},score={score!r}{surprises},"
                       f"threshold={threshold!r}{top},value={value!r} {ns}")
                continue
        per_feature = ([_field(f"error_{i}", float(e)) for i, e in enumerate(s.feature_errors)]
                       if s.feature_errors is not None else [])
        fields = [alarm.rstrip(","), _field("error", error), *per_feature, f"is_anomaly={anomaly}",
                  f"model_version={version}", novelty.lstrip(","), _field("score", score),
                  surprises.lstrip(","), _field("threshold", threshold), top.lstrip(",")]
        for i, raw in enumerate(values):
            fields.append(_field(f"value_{i}" if i else "value", float(raw)))
        append(f"{tagset} {','.join([f for f in fields if f])} {ns}")
    return lines


class InfluxSink:
    """Writes scores to ``settings.bucket`` (a database on InfluxDB 1.x) and checks health."""

    def __init__(self, settings: InfluxSettings) -> None:
        if settings.measurement.startswith("#"):  # the server would take every line as a comment
            raise ConfigError("influx.measurement", "a name not starting with '#'",
                              settings.measurement)
        try:
            escape_measurement(settings.measurement)
        except ValueError:
            raise ConfigError("influx.measurement", "a name without control characters, not "
                              "ending in a backslash", settings.measurement) from None
        self.settings = settings
        self._client = InfluxDBClient(url=settings.url, token=settings.token, org=settings.org,
                                      timeout=settings.timeout_ms)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, scores: Sequence[Score]) -> None:
        """Write every score, in chunks of :data:`CHUNK_LINES`.

        Raises :class:`~streamlstm.errors.SinkRejected` when the points are refused (by the
        server, or here for a series name line protocol cannot hold) and
        :class:`InfluxWriteError` for everything worth retrying.
        """
        if not scores:
            return
        try:
            lines = to_lines(scores, self.settings.measurement)
        except ValueError as exc:
            raise SinkRejected(f"influxdb: points not written: {exc}", None, str(exc)) from exc
        for start in range(0, len(lines), CHUNK_LINES):
            self._send("\n".join(lines[start:start + CHUNK_LINES]))

    def _send(self, body: str) -> None:
        settings = self.settings
        where = f"influxdb at {settings.url} (bucket {settings.bucket!r})"
        try:
            self._write_api.write(bucket=settings.bucket, org=settings.org, record=body,
                                  write_precision=_NS)
        except ApiException as exc:
            message = _api_message(exc)
            text = f"{where}: write refused, HTTP {exc.status}: {message}"
            if exc.status is not None and 400 <= exc.status < 500 and (
                    exc.status not in _RETRIED_4XX):
                raise SinkRejected(text, exc.status, message) from exc
            raise InfluxWriteError(text, status=exc.status) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise InfluxWriteError(f"{where}: write failed: {_network_message(exc)}") from exc

    def ping(self) -> bool:
        """Whether the server answers ``/ping``."""
        try:
            return bool(self._client.ping())
        except Exception:  # ping is a yes/no question; any failure is a no
            return False

    def close(self) -> None:
        """Release the HTTP connections."""
        self._write_api.close()
        self._client.close()


def _api_message(exc: ApiException) -> str:
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
    text = (body or exc.reason or "").strip()
    return text[:300]


def _network_message(exc: BaseException) -> str:
    # urllib3 wraps the interesting error (refused, timed out) in MaxRetryError.reason.
    reason = getattr(exc, "reason", None)
    return str(reason if isinstance(reason, BaseException) else exc)[:300]
