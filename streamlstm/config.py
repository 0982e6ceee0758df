"""Typed, frozen settings: one YAML file, overridden by environment variables.

``load(path, environ)`` is the only entry point. Every problem raises :class:`ConfigError`
whose message is one line naming the key and what was expected. This module reads no
environment by itself: the CLI passes ``os.environ`` in, tests pass a dict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from streamlstm.errors import ConfigError


@dataclass(frozen=True)
class KafkaSettings:
    """Where events come from and how the consumer group behaves."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "metrics"
    group_id: str = "streamlstm"
    client_id: str = "streamlstm"
    dead_letter_topic: str = "metrics.dead-letter"  # "" disables the dead-letter topic
    # The largest dead letter sent (the producer's max_request_size; keep it at or below the
    # broker's message.max.bytes): a reject bigger than this with its headers goes with its
    # value cut to fit and a streamlstm-truncated header giving the original size.
    dead_letter_max_bytes: int = 1_000_000
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    max_poll_records: int = 2_000
    poll_timeout_ms: int = 500
    # A partition assigned without a usable checkpoint is re-read from before its committed
    # offset, as far back as every recently active series needs to fill its window again (but
    # at most this many records); those records update state and are not written twice.
    rewind_records: int = 200_000
    # Start-up fails with one line when no broker answers within this long (kafka-python's
    # bootstrap_timeout_ms: what bounds the wait on an unreachable or closed address).
    connect_timeout_ms: int = 10_000


@dataclass(frozen=True)
class DecoderSettings:
    """How a JSON message maps onto a point."""

    series_field: str = "series"
    timestamp_field: str = "timestamp"
    value_field: str = "value"
    values_field: str = "values"  # object of named features, for multi-feature models
    # The daemon accepts event times from this long before now to this long after it; others
    # are dead-lettered as timestamp_out_of_range (0: no bound that way). Replay and evaluate
    # take any time; so must a daemon fed recorded history (the demo sets max_past_s to 0).
    max_past_s: float = 365 * 86_400.0
    max_future_s: float = 86_400.0


@dataclass(frozen=True)
class InfluxSettings:
    """Where scores are written (influxdb-client, /api/v2/write)."""

    url: str = "http://127.0.0.1:8086"
    org: str = "streamlstm"
    token: str = ""
    bucket: str = "streamlstm"
    measurement: str = "anomaly"
    timeout_ms: int = 10_000
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0


@dataclass(frozen=True)
class ModelSettings:
    """Which model scores, where it runs and how often the daemon looks for a new one."""

    path: str = "models"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    reload_interval_s: float = 5.0
    # torch's intra-op threads on the CPU (0: torch's default, one per core). One is the
    # default: the rest of the loop is single-threaded, and on a machine shared with the
    # broker or the store a second thread spins waiting for a busy core (measured 3x slower).
    threads: int = 1
    # Which inference runs the model on the CPU: auto takes ONNX Runtime when the [onnx] extra
    # is installed (about 1.8x the torch path), torch otherwise; CUDA always runs torch.
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"


@dataclass(frozen=True)
class WindowSettings:
    """Per-series window bookkeeping. The window length comes from the model artifact."""

    stride: int = 1
    max_series: int = 10_000
    # Once max_series are held, at most this many new series a poll may evict others; the
    # events of further new series are dead-lettered as series_limit (0: no cap).
    max_new_series_per_poll: int = 1_000
    idle_evict_s: float = 86_400.0
    # Gaps up to this many sampling intervals are filled by interpolation; longer gaps
    # restart the series' window and warm-up.
    max_gap_intervals: int = 5
    # Past windows each series remembers for novelty (8 bytes a window per feature).
    memory_windows: int = 2048
    # Each window is also compared with the same time on this many earlier seasons of this
    # length (0 turns the comparison off). It needs season_periods seasons in memory_windows.
    season_s: float = 86_400.0
    season_periods: int = 7
    # Guarded learning: what a series flags is not learnt as its normal (the next, identical
    # anomaly is flagged as the first was) until a flagged stretch has lasted this many
    # windows; then it is accepted as the new normal (0: learn everything at once).
    accept_after: int = 300


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how often the per-series state is checkpointed (see `streamlstm.checkpoints`).

    ``directory`` suits one daemon or a StatefulSet (one volume per pod); ``kafka`` (a compacted
    topic, one record per series) lets the daemons of one consumer group hand state over on a
    rebalance without shared disks. ``none`` turns checkpoints off: every restart then rewinds.
    """

    store: Literal["directory", "kafka", "none"] = "directory"
    directory: str = ""  # "": a "checkpoints" folder next to the models directory
    topic: str = ""  # "": "<kafka.group_id>-state"
    interval_s: float = 60.0
    interval_events: int = 0  # also after this many events (0: by time only)
    keep: int = 2  # checkpoint files kept per partition (directory store)
    max_record_bytes: int = 1_000_000  # the broker's message.max.bytes (kafka store)
    replication_factor: int = -1  # of the state topic when it is created (-1: broker default)


@dataclass(frozen=True)
class MetricsSettings:
    """The HTTP endpoint with /metrics, /healthz and /readyz."""

    host: str = "0.0.0.0"  # every interface (a pod's probes and scrapes); 127.0.0.1: local only
    port: int = 9108
    # A connection that sends no complete request within this long is closed, so idle or slow
    # clients cannot hold the server's threads.
    request_timeout_s: float = 10.0
    per_series_labels: bool = False
    # /healthz fails (and a liveness probe restarts the daemon) when the loop has not turned
    # for this long; a store outage does not stop it turning, only /readyz says so.
    stall_after_s: float = 120.0


@dataclass(frozen=True)
class AlarmOverrideSettings:
    """Alarm settings for the series whose name matches ``series`` (a glob: ``db.*``)."""

    series: str = ""  # fnmatch-style pattern, case-sensitive; the first override matching wins
    threshold: float | None = None  # None: alarms.threshold
    alarm_hold: int | None = None  # None: alarms.alarm_hold
    warmup: int | None = None  # None: alarms.warmup


@dataclass(frozen=True)
class AlarmSettings:
    """How scores become alarms, over the model's own calibration (None: the model's value),
    changeable without retraining. Applied again to each model a hot reload brings."""

    threshold: float | None = None  # anomaly score in (0, 1] at or above which a window alarms
    alarm_hold: int | None = None  # quiet windows before a flagged one is a new alarm
    warmup: int | None = None  # windows a series is scored before it may score above 0
    overrides: tuple[AlarmOverrideSettings, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Everything `streamlstm run` needs."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    influx: InfluxSettings = field(default_factory=InfluxSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    windows: WindowSettings = field(default_factory=WindowSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    alarms: AlarmSettings = field(default_factory=AlarmSettings)
    # Daemon processes `run` starts, one consumer each in the group, behind one metrics port
    # (streamlstm.workers); 1: this process is the daemon. About one per core.
    workers: int = 1
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # any case: debug works
    # plain: "2026-11-23T10:00:00.123Z INFO name: message" (UTC); json: one object per line.
    log_format: Literal["plain", "json"] = "plain"


# Environment variable -> dotted key. INFLUXDB_V2_* are influxdb-client's own names.
ENVIRONMENT_KEYS: dict[str, str] = {
    "STREAMLSTM_KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "STREAMLSTM_KAFKA_TOPIC": "kafka.topic",
    "STREAMLSTM_KAFKA_GROUP_ID": "kafka.group_id",
    "STREAMLSTM_KAFKA_DEAD_LETTER_TOPIC": "kafka.dead_letter_topic",
    "STREAMLSTM_MODEL_PATH": "model.path",
    "STREAMLSTM_MODEL_DEVICE": "model.device",
    "STREAMLSTM_METRICS_PORT": "metrics.port",
    "STREAMLSTM_INFLUX_BUCKET": "influx.bucket",
    "STREAMLSTM_CHECKPOINT_STORE": "checkpoint.store",
    "STREAMLSTM_CHECKPOINT_DIRECTORY": "checkpoint.directory",
    "STREAMLSTM_ALARMS_THRESHOLD": "alarms.threshold",
    "STREAMLSTM_WORKERS": "workers",
    "STREAMLSTM_LOG_LEVEL": "log_level",
    "STREAMLSTM_LOG_FORMAT": "log_format",
    "INFLUXDB_V2_URL": "influx.url",
    "INFLUXDB_V2_ORG": "influx.org",
    "INFLUXDB_V2_TOKEN": "influx.token",
}

#: The smallest kafka.dead_letter_max_bytes: the reason headers of a dead letter fit in it.
MIN_DEAD_LETTER_BYTES = 4096

_POSITIVE = {
    "kafka.session_timeout_ms",
    "kafka.heartbeat_interval_ms",
    "kafka.max_poll_interval_ms",
    "kafka.max_poll_records",
    "kafka.poll_timeout_ms",
    "kafka.connect_timeout_ms",
    "influx.timeout_ms",
    "influx.retry_initial_s",
    "influx.retry_max_s",
    "model.reload_interval_s",
    "windows.stride",
    "windows.max_series",
    "windows.memory_windows",
    "windows.season_periods",
    "windows.idle_evict_s",
    "checkpoint.interval_s",
    "checkpoint.keep",
    "checkpoint.max_record_bytes",
    "metrics.stall_after_s",
    "metrics.request_timeout_s",
}
_NON_NEGATIVE = {"decoder.max_past_s", "decoder.max_future_s",
                 "kafka.rewind_records", "metrics.port", "windows.season_s", "model.threads",
                 "checkpoint.interval_events", "windows.max_new_series_per_poll",
                 "windows.accept_after"}
_NON_EMPTY = {
    "kafka.bootstrap_servers",
    "kafka.topic",
    "kafka.group_id",
    "influx.url",
    "influx.bucket",
    "influx.measurement",
    "model.path",
}


def load(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """Read the YAML file at ``path`` (or only defaults when None), then apply ``environ``."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("config", f"a readable YAML file at {str(path)!r}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError("config", f"valid YAML{where}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("config", "a mapping at the top level", type(loaded).__name__)
        raw = loaded
    from_env: dict[str, str] = {}  # dotted key -> the variable that set it
    for env_name, dotted in ENVIRONMENT_KEYS.items():
        if env_name in environ:
            from_env[dotted] = env_name
            section, _, name = dotted.rpartition(".")
            if section and raw.get(section) is None:  # absent, or `influx:` with nothing under it
                raw[section] = {}
            target = raw[section] if section else raw
            if not isinstance(target, dict):
                raise ConfigError(section, "a mapping", target)
            target[name] = environ[env_name]
    try:
        settings = _build(Settings, raw, prefix="")
        _check_ranges(settings)
    except ConfigError as exc:
        if exc.key not in from_env:
            raise
        # The value came from the environment: name the variable, not only the key.
        raise ConfigError(exc.key, exc.expected, exc.got, variable=from_env[exc.key]) from exc
    return settings


def to_dict(settings: Settings) -> dict[str, Any]:
    """The settings as plain data (for `streamlstm config` and logs); secrets are masked."""
    data = dataclasses.asdict(settings)
    for section, key in (("influx", "token"), ("kafka", "sasl_plain_password")):
        if data[section][key]:
            data[section][key] = "***"
    return data


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(prefix.rstrip(".") or "config", "a mapping", raw)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            allowed = ", ".join(sorted(names))
            raise ConfigError(f"{prefix}{key}", f"one of the known keys ({allowed})", "unknown key")
    values: dict[str, Any] = {}
    for name in names:
        if name not in raw:
            continue
        hint = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            # An empty section (`influx:` with nothing under it) loads as None: all defaults.
            section = {} if raw[name] is None else raw[name]
            values[name] = _build(typing.cast(type, hint), section, prefix=f"{key}.")
        else:
            values[name] = _coerce(key, hint, raw[name])
    return cls(**values)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        empty = value is None or (isinstance(value, str) and value.lower() in ("", "null", "none"))
        if empty and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, inner[0], value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and (
            dataclasses.is_dataclass(args[0])):
        # A list of sections (alarms.overrides): each item named by its index from 0.
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(key, "a list", value)
        return tuple(_build(typing.cast(type, args[0]), {} if item is None else item,
                            prefix=f"{key}[{i}].")
                     for i, item in enumerate(value))
    if origin is Literal:
        choices = [str(a) for a in args]
        # Any case is accepted (log_level: debug) and stored as the choice is spelt.
        matches = [c for c in choices if c.lower() == str(value).lower()]
        if not matches:
            raise ConfigError(key, "one of " + ", ".join(choices), value)
        return matches[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(key, "true or false", value)
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(key, "an integer", value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(key, "an integer", value)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(key, "a number", value)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(key, "a number", value)
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, "a string", value)
    raise ConfigError(key, f"a value of type {hint}", value)  # pragma: no cover - schema bug


def _check_ranges(settings: Settings) -> None:
    if not settings.workers >= 1:
        raise ConfigError("workers", "a positive integer", settings.workers)
    for section in dataclasses.fields(settings):
        sub = getattr(settings, section.name)
        if not dataclasses.is_dataclass(sub):
            continue
        for f in dataclasses.fields(sub):
            key = f"{section.name}.{f.name}"
            value = getattr(sub, f.name)
            if key in _POSITIVE and not value > 0:
                raise ConfigError(key, "a positive number", value)
            if key in _NON_NEGATIVE and value < 0:
                raise ConfigError(key, "zero or a positive number", value)
            if key in _NON_EMPTY and not str(value).strip():
                raise ConfigError(key, "a non-empty string", value)
    if settings.windows.max_gap_intervals < 1:
        # With 0 every gap, even one sampling interval, restarts the window: nothing is scored.
        raise ConfigError("windows.max_gap_intervals",
                          "an integer of at least 1 (0 would restart every window at each point)",
                          settings.windows.max_gap_intervals)
    _check_alarms(settings.alarms)
    if settings.metrics.port > 65535:
        raise ConfigError("metrics.port", "a TCP port between 0 and 65535", settings.metrics.port)
    if settings.kafka.dead_letter_max_bytes < MIN_DEAD_LETTER_BYTES:
        # Below this the reason headers alone might not fit.
        raise ConfigError("kafka.dead_letter_max_bytes",
                          f"at least {MIN_DEAD_LETTER_BYTES} bytes",
                          settings.kafka.dead_letter_max_bytes)
    if settings.kafka.heartbeat_interval_ms >= settings.kafka.session_timeout_ms:
        raise ConfigError(
            "kafka.heartbeat_interval_ms",
            "a value below kafka.session_timeout_ms",
            settings.kafka.heartbeat_interval_ms,
        )
    if settings.kafka.security_protocol.startswith("SASL") and not settings.kafka.sasl_mechanism:
        raise ConfigError("kafka.sasl_mechanism", "a SASL mechanism (PLAIN, SCRAM-SHA-256, ...)")


def _check_alarms(alarms: AlarmSettings) -> None:
    """Thresholds in (0, 1], holds >= 0, warm-ups >= 1; each override a pattern and a value.
    Whether a warm-up fits the model's history is checked when the model is loaded."""
    levels: list[tuple[str, AlarmSettings | AlarmOverrideSettings]] = [("alarms", alarms)]
    levels += [(f"alarms.overrides[{i}]", o) for i, o in enumerate(alarms.overrides)]
    for where, level in levels:
        if level.threshold is not None and not 0.0 < level.threshold <= 1.0:
            raise ConfigError(f"{where}.threshold", "an anomaly score in (0, 1]", level.threshold)
        if level.alarm_hold is not None and level.alarm_hold < 0:
            raise ConfigError(f"{where}.alarm_hold", "zero or a positive integer",
                              level.alarm_hold)
        if level.warmup is not None and level.warmup < 1:
            raise ConfigError(f"{where}.warmup", "a positive integer", level.warmup)
        if isinstance(level, AlarmOverrideSettings):
            if not level.series.strip():
                raise ConfigError(f"{where}.series", "a glob pattern naming series (db.*)",
                                  level.series)
            if level.threshold is None and level.alarm_hold is None and level.warmup is None:
                raise ConfigError(where, "at least one of threshold, alarm_hold, warmup",
                                  level.series)
