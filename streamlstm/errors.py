"""The one exception hierarchy of streamlstm.

Third-party exceptions (kafka-python, influxdb-client, torch, yaml) are translated into these
where they enter our code, always with ``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations


class StreamlstmError(Exception):
    """Base class of every error streamlstm raises on purpose."""


class ConfigError(StreamlstmError):
    """A setting is missing, unknown or has the wrong type or value.

    ``str(err)`` is one line that names the key and what was expected, e.g.
    ``kafka.max_poll_records: expected a positive integer, got 'many'``; a value that came
    from an environment variable names it at the end: ``... (from STREAMLSTM_METRICS_PORT)``.
    """

    def __init__(self, key: str, expected: str, got: object = None,
                 variable: str | None = None) -> None:
        self.key = key
        self.expected = expected
        self.got = got
        self.variable = variable
        detail = f"expected {expected}" + ("" if got is None else f", got {got!r}")
        source = "" if variable is None else f" (from {variable})"
        super().__init__(f"{key}: {detail}{source}")


class ArtifactError(StreamlstmError):
    """A model artifact is missing, truncated, tampered with or does not fit the config."""


class DecodeError(StreamlstmError):
    """An input message could not be turned into a point.

    ``reason`` is a short stable label (``invalid_json``, ``missing_field``, ``bad_value``,
    ``bad_timestamp``, ...) used as the metric label and in the dead-letter headers.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class SourceError(StreamlstmError):
    """The event source (Kafka) failed in a way the daemon cannot paper over."""


class SinkError(StreamlstmError):
    """Writing scores to the store (InfluxDB) failed; the write may be retried."""


class SinkRejected(SinkError):
    """The store refused the points of a write (an HTTP 4xx such as 400, 413 or 422).

    Retrying the same points cannot succeed: the service splits the batch to find the ones
    refused and dead-letters them. ``status`` is the HTTP status (None when the sink refused
    the points itself) and ``message`` the server's short explanation.
    """

    def __init__(self, text: str, status: int | None, message: str) -> None:
        super().__init__(text)
        self.status = status
        self.message = message


class CheckpointError(StreamlstmError):
    """A checkpoint of per-series state could not be written, or one read back is corrupt,
    truncated or of another layout (the partition then falls back to the rewind)."""
