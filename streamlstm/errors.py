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
    ``kafka.max_poll_records: expected a positive integer, got 'many'``.
    """

    def __init__(self, key: str, expected: str, got: object = None) -> None:
        self.key = key
        self.expected = expected
        self.got = got
        detail = f"expected {expected}" + ("" if got is None else f", got {got!r}")
        super().__init__(f"{key}: {detail}")


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
