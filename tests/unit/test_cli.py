"""The command line explains itself: version, descriptions, help with defaults, and one-line
errors with an exit code (never a traceback) for what users get wrong.

In-process runs go through ``cli.main``; what only a real process shows (a closed pipe, the
interpreter's exit, an unreachable broker) runs ``python -m streamlstm`` as a subprocess.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamlstm import __version__, cli, logs
from streamlstm.devstack import free_port

ROOT = Path(__file__).resolve().parents[2]
NAB = ROOT / "tests" / "data" / "nab"
SERIES = ROOT / "streamlstm" / "data" / "art_daily_jumpsup.csv"


def run_cli(*argv: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m streamlstm ARGV`` in a clean environment (plus ``env``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLSTM_")}
    return subprocess.run([sys.executable, "-m", "streamlstm", *argv], capture_output=True,
                          text=True, env=environ | (env or {}), cwd=ROOT, timeout=timeout)


def one_line(stderr: str) -> str:
    """The single line of an error report (and that it is one, without a traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def main_fails(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``cli.main(argv)``'s exit code (argparse's too) and its one stderr line."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, one_line(capsys.readouterr().err)


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every verb's (and sub-verb's) parser under it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


# ---------------------------------------------------------------------------- explains itself


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamlstm {__version__}"


def test_top_level_help_is_a_description_and_lists_every_verb_with_one_line() -> None:
    parser = cli._parser()
    assert parser.description == cli.DESCRIPTION and "\n" not in cli.DESCRIPTION
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(verbs.choices) == {"run", "train", "replay", "evaluate", "models", "config",
                                  "produce", "demo"}
    listed = {choice.dest: choice.help for choice in verbs._choices_actions}
    assert set(listed) == set(verbs.choices)
    assert all(text and "\n" not in text for text in listed.values()), listed


def test_every_verb_has_a_one_line_description() -> None:
    for parser in _parsers(cli._parser()):
        assert parser.description, parser.prog
        assert "\n" not in parser.description, parser.prog


def test_every_option_has_help_and_shows_its_default() -> None:
    for parser in _parsers(cli._parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction
                          | argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{parser.prog} {name} has no help"
            if action.option_strings and action.default not in (None, False):
                assert f"default: {action.default}" in text or "default:" in action.help, (
                    f"{parser.prog} {name} does not show its default {action.default!r}")


def test_help_runs_for_every_verb() -> None:
    for parser in _parsers(cli._parser()):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["--help"])
        assert info.value.code == 0


# ---------------------------------------------------------------------------- one-line errors


def test_a_missing_labels_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, line = main_fails(capsys, "evaluate", str(NAB), "--labels", str(tmp_path / "no.json"))
    assert code == 1
    assert "no.json" in line and "cannot read the labels" in line


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"a.csv": [["2014-01-01 00:00:00"]]}', "a window needs [start, end]"),
    ('{"a.csv": [["noon", "2014-01-01 00:00:00"]]}', "bad window time"),
    ('{"a.csv": 3}', "expected a list"),
])
def test_a_bad_labels_file(text: str, says: str, capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    labels = tmp_path / "windows.json"
    labels.write_text(text)
    code, line = main_fails(capsys, "evaluate", str(NAB), "--labels", str(labels))
    assert code == 1
    assert str(labels) in line and says in line


def test_an_output_directory_that_does_not_exist(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    target = tmp_path / "missing" / "scores.csv"
    code, line = main_fails(capsys, "replay", str(SERIES), "--output", str(target))
    assert code == 1 and "does not exist" in line and str(tmp_path / "missing") in line
    code, line = main_fails(capsys, "evaluate", str(NAB), "--labels", str(NAB / "windows.json"),
                            "--output", str(target))
    assert code == 1 and "does not exist" in line


def test_replay_checks_every_input_before_writing(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2014-01-01 00:00:00,1.0\n2014-01-01 00:05:00,many\n")
    output = tmp_path / "scores.csv"
    code, line = main_fails(capsys, "replay", str(SERIES), str(bad), "--output", str(output))
    assert code == 1 and "bad.csv" in line and "not a number" in line
    assert not output.exists()
    code, line = main_fails(capsys, "replay", str(SERIES), str(tmp_path / "absent.csv"),
                            "--output", str(output))
    assert code == 1 and "no such file" in line
    assert not output.exists()


@pytest.mark.parametrize("argv", [
    ["replay", str(SERIES), "--stride", "0"],
    ["replay", str(SERIES), "--stride", "two"],
    ["train", "--synthetic", "2", "--output", "m", "--stride", "0"],
    ["train", "--synthetic", "2", "--output", "m", "--validation-fraction", "1"],
    ["train", "--synthetic", "2", "--output", "m", "--warmup", "0"],
    ["produce", "--input", str(SERIES), "--rate", "-1"],
])
def test_out_of_range_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, line = main_fails(capsys, *argv)
    assert code == 2
    assert line.startswith(f"streamlstm {argv[0]}: error: argument ")
    assert "expected" in line and f"see streamlstm {argv[0]} --help" in line


def test_log_level_in_any_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--log-level", "debug"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    assert cli.main(["config", "--log-level", "Warning"]) == 0
    assert logging.getLogger().level == logging.WARNING
    capsys.readouterr()
    code, line = main_fails(capsys, "config", "--log-level", "loud")
    assert code == 2 and "--log-level" in line and "invalid choice" in line


def test_log_level_from_the_environment(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLSTM_LOG_LEVEL", "debug")
    assert cli.main(["config"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["log_level"] == "DEBUG"
    monkeypatch.setenv("STREAMLSTM_LOG_LEVEL", "chatty")
    code, line = main_fails(capsys, "config")
    assert code == 2
    assert line.startswith("streamlstm: config error: log_level: expected one of DEBUG")
    assert line.endswith("(from STREAMLSTM_LOG_LEVEL)")


@pytest.mark.parametrize(("variable", "value", "key"), [
    ("STREAMLSTM_METRICS_PORT", "abc", "metrics.port"),
    ("STREAMLSTM_KAFKA_TOPIC", " ", "kafka.topic"),
    ("STREAMLSTM_LOG_FORMAT", "xml", "log_format"),
])
def test_a_bad_environment_variable_is_named(variable: str, value: str, key: str,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    code, line = main_fails(capsys, "config")
    assert code == 2
    assert line.startswith(f"streamlstm: config error: {key}: expected ")
    assert line.endswith(f"(from {variable})")


def test_a_bad_model_path_from_the_environment_is_named(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMLSTM_MODEL_PATH", str(tmp_path / "nowhere"))
    code, line = main_fails(capsys, "replay", str(SERIES))
    assert code == 1
    assert line.startswith("streamlstm: error: STREAMLSTM_MODEL_PATH: ") and "nowhere" in line
    code, line = main_fails(capsys, "replay", str(SERIES), "--model", str(tmp_path / "other"))
    assert code == 1 and "STREAMLSTM_MODEL_PATH" not in line  # --model wins, and is blamed


def test_an_influx_url_from_the_environment_is_named(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("INFLUXDB_V2_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
    code, line = main_fails(capsys, "train", "--influx-query", "SELECT value FROM cpu",
                            "--output", str(tmp_path / "models"))
    assert code == 1
    assert "cannot query" in line and line.endswith("(URL from INFLUXDB_V2_URL)")


def test_a_closed_pipe_ends_quietly() -> None:
    """``streamlstm config | head -1``: the reader goes away before the output is written."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLSTM_")}
    process = subprocess.Popen([sys.executable, "-m", "streamlstm", "config"], cwd=ROOT,
                               env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141  # 128 + SIGPIPE, what the shell reports for `yes`
    assert stderr == ""


def test_no_verb_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, line = main_fails(capsys)
    assert code == 2 and "VERB" in line and "streamlstm --help" in line


# ---------------------------------------------------------------------------- an unreachable broker


def _unreachable_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "streamlstm.yaml"
    path.write_text(f"kafka:\n  bootstrap_servers: 127.0.0.1:{free_port()}\n"
                    f"  connect_timeout_ms: 300\n"
                    f"model:\n  path: {ROOT / 'streamlstm' / 'data' / 'model'}\n"
                    f"metrics:\n  port: 0\n{extra}")
    return path


def test_an_unreachable_broker_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("run", "--config", str(_unreachable_config(tmp_path)))
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("streamlstm: error: kafka at 127.0.0.1:")
    assert "no broker answered within 0.3 s (kafka.connect_timeout_ms)" in line


def test_json_logs_and_kafka_python_only_at_debug(tmp_path: Path) -> None:
    config = _unreachable_config(tmp_path, "log_format: json\n")
    quiet = run_cli("run", "--config", str(config))
    assert quiet.returncode == 1
    (record,) = [json.loads(line) for line in quiet.stderr.splitlines()]
    assert record["level"] == "ERROR" and record["logger"] == "streamlstm"
    assert "no broker answered" in record["message"]
    assert record["time"].endswith("Z")

    chatty = run_cli("run", "--config", str(config), "--log-level", "debug")
    assert chatty.returncode == 1
    records = [json.loads(line) for line in chatty.stderr.splitlines()]  # every line is JSON
    assert any(r["logger"].startswith("kafka") for r in records)
    assert "no broker answered" in records[-1]["message"]


# ---------------------------------------------------------------------------- log formats


def _record(message: str, exc_info: object = None) -> logging.LogRecord:
    record = logging.LogRecord("streamlstm.service", logging.WARNING, __file__, 1, message,
                               None, exc_info)  # type: ignore[arg-type]
    record.created = 1_700_000_000.125
    return record


def test_plain_lines_carry_utc_iso_8601_times() -> None:
    line = logs.PlainFormatter().format(_record("InfluxDB write failed"))
    assert line == "2023-11-14T22:13:20.125Z WARNING streamlstm.service: InfluxDB write failed"


def test_json_lines_are_one_object_each() -> None:
    formatter = logs.JsonFormatter()
    line = formatter.format(_record("two\nlines"))
    assert "\n" not in line
    assert json.loads(line) == {"time": "2023-11-14T22:13:20.125Z", "level": "WARNING",
                                "logger": "streamlstm.service", "message": "two\nlines"}
    try:
        raise ValueError("boom")
    except ValueError:
        failed = _record("failed", exc_info=sys.exc_info())
    entry = json.loads(formatter.format(failed))
    assert "ValueError: boom" in entry["exception"]


def test_configure_replaces_its_own_handler_and_quiets_kafka_python() -> None:
    root = logging.getLogger()
    logs.configure("INFO", "json")
    logs.configure("info", "plain")
    ours = [h for h in root.handlers if isinstance(h, logs._Handler)]
    assert len(ours) == 1 and isinstance(ours[0].formatter, logs.PlainFormatter)
    assert not logs.json_enabled()
    assert not logging.getLogger("kafka.net").isEnabledFor(logging.CRITICAL)
    logs.configure("DEBUG", "json")
    assert logs.json_enabled()
    assert logging.getLogger("kafka.net").isEnabledFor(logging.DEBUG)
    logs.configure("INFO")


def test_replay_honours_a_configs_alarm_settings(tmp_path: Path) -> None:
    config = tmp_path / "streamlstm.yaml"
    config.write_text("alarms:\n  threshold: 0.3\n  overrides:\n"
                      "    - {series: art_daily_jumpsup, threshold: 0.45}\n")
    output = tmp_path / "scores.csv"
    assert cli.main(["replay", str(SERIES), "--output", str(output), "--config",
                     str(config)]) == 0
    with output.open() as handle:
        thresholds = {row["threshold"] for row in csv.DictReader(handle) if row["threshold"]}
    assert thresholds == {"0.45"}


def test_alarm_settings_that_do_not_fit_the_model_are_a_config_error(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "streamlstm.yaml"
    config.write_text("alarms:\n  overrides:\n    - {series: a, threshold: 0.4}\n"
                      "    - {series: b, warmup: 5000}\n")
    code, line = main_fails(capsys, "replay", str(SERIES), "--config", str(config))
    assert code == 2
    assert line.startswith("streamlstm: config error: alarms.overrides[1].warmup: expected "
                           "a value that fits the model"), line
