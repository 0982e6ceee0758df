"""Settings: defaults, YAML, environment overrides, one-line errors that name the key, masking."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streamlstm.config import ENVIRONMENT_KEYS, Settings, load, to_dict
from streamlstm.errors import ConfigError, StreamlstmError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamlstm.yaml"
    path.write_text(text)
    return path


def config_error(path: Path | None, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, environ or {})
    error = info.value
    assert isinstance(error, StreamlstmError)
    text = str(error)
    assert "\n" not in text and "\r" not in text, text
    assert text.startswith(f"{error.key}: expected "), text
    return error


def test_defaults_load_without_a_file_and_with_an_empty_environment() -> None:
    settings = load(None, {})
    assert settings == Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.topic == "metrics"
    assert settings.windows.stride == 1
    assert settings.metrics.port == 9108
    assert settings.influx.token == ""
    assert settings.log_level == "INFO"


def test_settings_are_frozen() -> None:
    settings = load(None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.kafka.topic = "other"  # type: ignore[misc]


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, ""), {}) == Settings()


def test_yaml_values_are_read_and_typed(tmp_path: Path) -> None:
    path = write(tmp_path, """
kafka:
  bootstrap_servers: broker-1:9092,broker-2:9092
  max_poll_records: 500
  security_protocol: SASL_SSL
  sasl_mechanism: PLAIN
influx:
  retry_max_s: 12
windows:
  stride: 4
  idle_evict_s: 3600
metrics:
  per_series_labels: true
log_level: DEBUG
""")
    settings = load(path, {})
    assert settings.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.kafka.max_poll_records == 500
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_mechanism == "PLAIN"
    assert settings.influx.retry_max_s == 12.0
    assert isinstance(settings.influx.retry_max_s, float)
    assert settings.windows.stride == 4
    assert settings.metrics.per_series_labels is True
    assert settings.log_level == "DEBUG"
    assert settings.kafka.topic == "metrics"  # untouched keys keep their defaults


def test_environment_overrides_defaults_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  topic: from-file\n  group_id: file-group\n")
    environ = {
        "STREAMLSTM_KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9093",
        "STREAMLSTM_KAFKA_TOPIC": "from-env",
        "STREAMLSTM_KAFKA_GROUP_ID": "env-group",
        "STREAMLSTM_KAFKA_DEAD_LETTER_TOPIC": "",
        "STREAMLSTM_MODEL_PATH": "/srv/models",
        "STREAMLSTM_MODEL_DEVICE": "auto",
        "STREAMLSTM_METRICS_PORT": "9200",
        "STREAMLSTM_INFLUX_BUCKET": "scores",
        "STREAMLSTM_LOG_LEVEL": "WARNING",
        "INFLUXDB_V2_URL": "https://influx.example:8086",
        "INFLUXDB_V2_ORG": "acme",
        "INFLUXDB_V2_TOKEN": "s3cret-token",
        "UNRELATED": "ignored",
    }
    settings = load(path, environ)
    assert settings.kafka.bootstrap_servers == "kafka.example:9093"
    assert settings.kafka.topic == "from-env"
    assert settings.kafka.group_id == "env-group"
    assert settings.kafka.dead_letter_topic == ""
    assert settings.model.path == "/srv/models"
    assert settings.model.device == "auto"
    assert settings.metrics.port == 9200
    assert settings.influx.bucket == "scores"
    assert settings.log_level == "WARNING"
    assert settings.influx.url == "https://influx.example:8086"
    assert settings.influx.org == "acme"
    assert settings.influx.token == "s3cret-token"


def test_every_documented_environment_name_is_mapped() -> None:
    names = {
        "STREAMLSTM_KAFKA_BOOTSTRAP_SERVERS", "STREAMLSTM_KAFKA_TOPIC", "STREAMLSTM_KAFKA_GROUP_ID",
        "STREAMLSTM_MODEL_PATH", "STREAMLSTM_METRICS_PORT", "STREAMLSTM_INFLUX_BUCKET",
        "INFLUXDB_V2_URL", "INFLUXDB_V2_ORG", "INFLUXDB_V2_TOKEN",
    }
    assert names <= set(ENVIRONMENT_KEYS)


def test_load_does_not_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLSTM_KAFKA_TOPIC", "from-process")
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", "leaked")
    settings = load(None, {})
    assert settings.kafka.topic == "metrics"
    assert settings.influx.token == ""


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("kafka:\n  topicz: x\n", "kafka.topicz", "known keys"),
    ("kafkaa:\n  topic: x\n", "kafkaa", "known keys"),
    ("kafka:\n  max_poll_records: many\n", "kafka.max_poll_records", "an integer"),
    ("kafka:\n  max_poll_records: 2.5\n", "kafka.max_poll_records", "an integer"),
    ("kafka:\n  max_poll_records: true\n", "kafka.max_poll_records", "an integer"),
    ("influx:\n  retry_max_s: soon\n", "influx.retry_max_s", "a number"),
    ("kafka:\n  topic: [a, b]\n", "kafka.topic", "a string"),
    ("metrics:\n  per_series_labels: maybe\n", "metrics.per_series_labels", "true or false"),
    ("model:\n  device: tpu\n", "model.device", "one of cpu, cuda, auto"),
    ("kafka:\n  auto_offset_reset: oldest\n", "kafka.auto_offset_reset", "earliest, latest"),
    ("log_level: LOUD\n", "log_level", "one of DEBUG"),
    ("windows:\n  stride: -1\n", "windows.stride", "a positive number"),
    ("windows:\n  stride: 0\n", "windows.stride", "a positive number"),
    ("influx:\n  retry_initial_s: -0.5\n", "influx.retry_initial_s", "a positive number"),
    ("kafka:\n  rewind_records: -5\n", "kafka.rewind_records", "zero or a positive number"),
    ("metrics:\n  port: 70000\n", "metrics.port", "between 0 and 65535"),
    ("kafka:\n  topic: ''\n", "kafka.topic", "a non-empty string"),
    ("kafka: 5\n", "kafka", "a mapping"),
    ("kafka:\n  heartbeat_interval_ms: 20000\n", "kafka.heartbeat_interval_ms", "below"),
    ("kafka:\n  security_protocol: SASL_SSL\n", "kafka.sasl_mechanism", "SASL mechanism"),
])
def test_bad_values_raise_one_line_naming_the_key(tmp_path: Path, text: str, key: str,
                                                   expected: str) -> None:
    error = config_error(write(tmp_path, text))
    assert error.key == key
    assert expected in str(error)


def test_wrong_value_is_quoted_in_the_message(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, "kafka:\n  max_poll_records: many\n"))
    assert str(error) == "kafka.max_poll_records: expected an integer, got 'many'"


def test_a_multi_line_bad_value_still_gives_one_line(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, 'kafka:\n  max_poll_records: "12\\nthirteen"\n'))
    assert error.key == "kafka.max_poll_records"


@pytest.mark.parametrize(("environ", "key"), [
    ({"STREAMLSTM_METRICS_PORT": "abc"}, "metrics.port"),
    ({"STREAMLSTM_METRICS_PORT": "-1"}, "metrics.port"),
    ({"STREAMLSTM_MODEL_DEVICE": "gpu"}, "model.device"),
    ({"STREAMLSTM_KAFKA_TOPIC": "  "}, "kafka.topic"),
    ({"INFLUXDB_V2_URL": ""}, "influx.url"),
])
def test_bad_environment_values_name_the_dotted_key(environ: dict[str, str], key: str) -> None:
    assert config_error(None, environ).key == key


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, "kafka:\n  topic: ok\n  group_id: [unclosed\n"))
    assert error.key == "config"
    assert "YAML" in str(error)
    assert "line" in str(error)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    error = config_error(write(tmp_path, text))
    assert error.key == "config"
    assert "mapping" in str(error)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    error = config_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(error)


def test_to_dict_masks_secrets_and_keeps_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, """
kafka:
  security_protocol: SASL_SSL
  sasl_mechanism: PLAIN
  sasl_plain_username: alice
  sasl_plain_password: hunter2
""")
    settings = load(path, {"INFLUXDB_V2_TOKEN": "s3cret-token"})
    data = to_dict(settings)
    assert data["influx"]["token"] == "***"
    assert data["kafka"]["sasl_plain_password"] == "***"
    assert data["kafka"]["sasl_plain_username"] == "alice"
    assert data["kafka"]["topic"] == "metrics"
    assert "s3cret-token" not in repr(data)
    assert "hunter2" not in repr(data)
    # The settings themselves still hold the real values.
    assert settings.influx.token == "s3cret-token"


def test_to_dict_leaves_empty_secrets_empty() -> None:
    data = to_dict(load(None, {}))
    assert data["influx"]["token"] == ""
    assert data["kafka"]["sasl_plain_password"] is None


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_gap_intervals_must_be_at_least_one(tmp_path: Path, value: str) -> None:
    # With 0 every gap restarts the series' window, so nothing would ever be scored.
    error = config_error(write(tmp_path, f"windows:\n  max_gap_intervals: {value}\n"))
    assert error.key == "windows.max_gap_intervals"
    assert str(error).startswith("windows.max_gap_intervals: expected an integer of at least 1")
    assert str(error).endswith(f", got {int(value)}")
    assert load(write(tmp_path, "windows:\n  max_gap_intervals: 1\n"),
                {}).windows.max_gap_intervals == 1


def test_an_empty_section_means_its_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  topic: events\ninflux:\nwindows:\n")
    settings = load(path, {})
    assert settings.influx == Settings().influx
    assert settings.windows == Settings().windows
    assert settings.kafka.topic == "events"
    # An environment override into an empty section fills it instead of being refused.
    settings = load(path, {"INFLUXDB_V2_TOKEN": "secret", "STREAMLSTM_METRICS_PORT": "9200"})
    assert settings.influx.token == "secret"
    assert settings.influx.bucket == Settings().influx.bucket
    assert settings.metrics.port == 9200


def test_a_section_that_is_not_a_mapping_is_still_refused(tmp_path: Path) -> None:
    for text in ("influx: []\n", "influx: 0\n", "influx: ''\n"):
        error = config_error(write(tmp_path, text))
        assert error.key == "influx"
        assert "a mapping" in str(error)


def test_choices_are_taken_in_any_case() -> None:
    settings = load(None, {"STREAMLSTM_LOG_LEVEL": "debug", "STREAMLSTM_LOG_FORMAT": "JSON"})
    assert settings.log_level == "DEBUG" and settings.log_format == "json"


def test_log_format_and_connect_timeout(tmp_path: Path) -> None:
    defaults = load(None, {})
    assert defaults.log_format == "plain" and defaults.kafka.connect_timeout_ms == 10_000
    path = write(tmp_path, "log_format: json\nkafka:\n  connect_timeout_ms: 2500\n")
    settings = load(path, {})
    assert settings.log_format == "json" and settings.kafka.connect_timeout_ms == 2500
    error = config_error(write(tmp_path, "kafka:\n  connect_timeout_ms: 0\n"))
    assert error.key == "kafka.connect_timeout_ms"
    error = config_error(write(tmp_path, "log_format: xml\n"))
    assert error.key == "log_format" and "plain, json" in str(error)


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    error = config_error(None, {"STREAMLSTM_METRICS_PORT": "abc"})
    assert error.variable == "STREAMLSTM_METRICS_PORT"
    assert str(error) == ("metrics.port: expected an integer, got 'abc' "
                          "(from STREAMLSTM_METRICS_PORT)")
    error = config_error(None, {"STREAMLSTM_METRICS_PORT": "70000"})  # a range check
    assert str(error).endswith("(from STREAMLSTM_METRICS_PORT)")
    # The same bad value written in the file names no variable.
    error = config_error(write(tmp_path, "metrics:\n  port: abc\n"))
    assert error.variable is None and "from" not in str(error)


# ---------------------------------------------------------------- alarms


def test_alarms_are_read_globally_and_per_series(tmp_path: Path) -> None:
    settings = load(write(tmp_path, """
alarms:
  threshold: 0.3
  alarm_hold: 20
  overrides:
    - series: "db.*"
      threshold: 0.4
    - {series: "web.?", warmup: 50, alarm_hold: 0}
"""), {})
    alarms = settings.alarms
    assert (alarms.threshold, alarms.alarm_hold, alarms.warmup) == (0.3, 20, None)
    assert [(o.series, o.threshold, o.alarm_hold, o.warmup) for o in alarms.overrides] == [
        ("db.*", 0.4, None, None), ("web.?", None, 0, 50)]
    assert to_dict(settings)["alarms"]["overrides"][0]["series"] == "db.*"
    assert load(None, {}).alarms.threshold is None  # the model's own
    assert load(None, {"STREAMLSTM_ALARMS_THRESHOLD": "0.35"}).alarms.threshold == 0.35


@pytest.mark.parametrize(("text", "key"), [
    ("alarms:\n  threshold: 1.5\n", "alarms.threshold"),
    ("alarms:\n  threshold: 0\n", "alarms.threshold"),
    ("alarms:\n  threshold: high\n", "alarms.threshold"),
    ("alarms:\n  alarm_hold: -1\n", "alarms.alarm_hold"),
    ("alarms:\n  warmup: 0\n", "alarms.warmup"),
    ("alarms:\n  overrides: {series: a}\n", "alarms.overrides"),
    ("alarms:\n  overrides:\n    - {series: a, threshold: 0.4}\n    - {series: b, threshold: 2}\n",
     "alarms.overrides[1].threshold"),
    ("alarms:\n  overrides:\n    - {threshold: 0.4}\n", "alarms.overrides[0].series"),
    ("alarms:\n  overrides:\n    - {series: a}\n", "alarms.overrides[0]"),
    ("alarms:\n  overrides:\n    - {series: a, treshold: 0.4}\n", "alarms.overrides[0].treshold"),
    ("alarms:\n  overrides:\n    - {series: a, warmup: 2.5}\n", "alarms.overrides[0].warmup"),
])
def test_bad_alarm_settings_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(write(tmp_path, text)).key == key


def test_an_alarm_setting_from_the_environment_names_the_variable() -> None:
    error = config_error(None, {"STREAMLSTM_ALARMS_THRESHOLD": "2"})
    assert error.key == "alarms.threshold" and "STREAMLSTM_ALARMS_THRESHOLD" in str(error)


@pytest.mark.parametrize(("text", "environ"), [
    ("workers: 0\n", {}), ("workers: two\n", {}), ("workers: -1\n", {}),
    (None, {"STREAMLSTM_WORKERS": "0"}), (None, {"STREAMLSTM_WORKERS": "2.5"})])
def test_bad_worker_counts_name_their_key(tmp_path: Path, text: str | None,
                                          environ: dict[str, str]) -> None:
    error = config_error(write(tmp_path, text) if text else None, environ)
    assert error.key == "workers"
    assert not environ or "STREAMLSTM_WORKERS" in str(error)


def test_workers_from_file_and_environment(tmp_path: Path) -> None:
    assert load(None, {}).workers == 1
    assert load(write(tmp_path, "workers: 3\n"), {}).workers == 3
    assert load(write(tmp_path, "workers: 3\n"), {"STREAMLSTM_WORKERS": "2"}).workers == 2
