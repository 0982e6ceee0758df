"""The `streamlstm` command: the only place that reads the environment, parses argv,
installs signal handlers and wires concrete adapters together.

Verbs: run, train, replay, evaluate, models, produce, config, demo.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from streamlstm import __version__, logs
from streamlstm import config as config_module
from streamlstm.core.calibration import CalibrationSettings
from streamlstm.core.records import Score
from streamlstm.errors import ArtifactError, ConfigError, StreamlstmError

# Pretrained on generated series only (`streamlstm train --synthetic 150 ...`, see
# streamlstm/data/README.md), so it has never seen any series it is evaluated on.
BUNDLED_MODEL = Path(__file__).parent / "data" / "model"

DESCRIPTION = ("Streaming anomaly detection: Kafka in, LSTM autoencoder scores, "
               "InfluxDB and Prometheus out.")
#: Where `run` finds its models, and the default model of `replay`, `evaluate` and `models`.
MODEL_PATH_ENV = "STREAMLSTM_MODEL_PATH"

log = logging.getLogger("streamlstm")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``streamlstm`` and ``python -m streamlstm``.

    What a user gets wrong ends in one line on stderr and an exit code, never a traceback:
    2 for a bad setting or option, 1 for anything else, 141 (128 + SIGPIPE) when stdout's
    reader has gone (``streamlstm config | head -1``), 130 for Ctrl-C.
    """
    args = _parser().parse_args(argv)
    try:
        # --log-level, else STREAMLSTM_LOG_LEVEL / STREAMLSTM_LOG_FORMAT (checked as config
        # keys, so a bad value names its variable); `run` applies its config file's on top.
        early = config_module.load(None, {name: os.environ[name] for name in (
            "STREAMLSTM_LOG_LEVEL", "STREAMLSTM_LOG_FORMAT") if name in os.environ})
        logs.configure(args.log_level or early.log_level, early.log_format)
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", 2)
    except StreamlstmError as exc:
        return _fail(f"error: {exc}", 1)
    except BrokenPipeError:
        return _closed_pipe()
    except OSError as exc:  # a path the user named: permission denied, a directory, disk full
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"error: {where}{exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, code: int) -> int:
    """Report why the command stops: one line, as a JSON log record when logs are JSON."""
    if logs.json_enabled():
        log.error("%s", message)
    else:
        print(f"streamlstm: {message}", file=sys.stderr)
    return code


def _closed_pipe() -> int:
    """Stop quietly when stdout's reader went away, as the shell's own tools do."""
    try:  # the interpreter flushes stdout once more at exit: let that go nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file (in-process callers)
    return 141


# ---------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from streamlstm import workers

    settings = config_module.load(args.config, os.environ)
    worker = workers.worker_index(os.environ)
    logs.configure(args.log_level or settings.log_level, settings.log_format, worker=worker)
    if worker is None and settings.workers > 1:
        command = workers.worker_command(args.config)
        if args.log_level:
            command += ["--log-level", args.log_level]
        return workers.supervise(command, settings.workers, settings.metrics.host,
                                 settings.metrics.port, settings.metrics.request_timeout_s)
    if worker is not None:  # the supervisor serves the configured port and asks this one
        settings = dataclasses.replace(settings, metrics=dataclasses.replace(
            settings.metrics, host="127.0.0.1", port=0))
    service, server = build_service(settings)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    server.start()
    log.info("metrics on http://%s:%d/metrics", settings.metrics.host, server.port)
    workers.write_port(os.environ, server.port)
    try:
        service.run()
    finally:
        service.close()
        server.stop()
    log.info("stopped cleanly")
    return 0


def build_service(settings: config_module.Settings, registry: Any = None) -> tuple[Any, Any]:
    """Wire the daemon from settings: returns ``(Service, MetricsServer)`` (not started)."""
    import torch
    from prometheus_client import CollectorRegistry

    from streamlstm.core.pipeline import Pipeline, PipelineSettings
    from streamlstm.core.scoring import resolve_device
    from streamlstm.decoding import JsonDecoder
    from streamlstm.metrics import Metrics, MetricsServer
    from streamlstm.model.artifact import load_artifact
    from streamlstm.service import Service, ServiceSettings
    from streamlstm.sinks.influx import InfluxSink
    from streamlstm.sources.kafka import KafkaSource

    device = resolve_device(settings.model.device)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device", "cpu or auto (no CUDA device is available)", "cuda")
    from streamlstm.model.fast import backend_problem

    problem = backend_problem(settings.model.backend, device)
    if problem is not None:
        raise ConfigError("model.backend", f"auto or torch ({problem})", settings.model.backend)
    if settings.model.threads:
        torch.set_num_threads(settings.model.threads)
    artifact = load_artifact(settings.model.path)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry, per_series_labels=settings.metrics.per_series_labels)
    pipeline = Pipeline(artifact, PipelineSettings(
        stride=settings.windows.stride,
        max_series=settings.windows.max_series,
        max_new_series_per_poll=settings.windows.max_new_series_per_poll,
        idle_evict_s=settings.windows.idle_evict_s,
        max_gap_intervals=settings.windows.max_gap_intervals,
        memory_windows=settings.windows.memory_windows,
        season_s=settings.windows.season_s,
        season_periods=settings.windows.season_periods,
        accept_after=settings.windows.accept_after,
    ), device=device, alarms=alarm_policy(settings.alarms, artifact),
        backend=settings.model.backend)
    # The clock turns on the decoder's timestamp window (decoder.max_past_s / max_future_s).
    decoder = JsonDecoder(settings.decoder, artifact.feature_names, clock=time.time)
    checkpointer = _checkpointer(settings, pipeline, metrics)
    source = KafkaSource(settings.kafka, decoder, partition_state=checkpointer,
                         refill_points=pipeline.window)
    sink = InfluxSink(settings.influx)
    service = Service(source, sink, pipeline, metrics, checkpointer=checkpointer,
                      settings=ServiceSettings(
        topic=settings.kafka.topic,
        model_path=settings.model.path,
        device=device,
        reload_interval_s=settings.model.reload_interval_s,
        retry_initial_s=settings.influx.retry_initial_s,
        retry_max_s=settings.influx.retry_max_s,
        stall_after_s=settings.metrics.stall_after_s,
    ))
    server = MetricsServer(registry, settings.metrics.host, settings.metrics.port,
                           health=service.health, ready=service.ready,
                           request_timeout_s=settings.metrics.request_timeout_s,
                           inspect=service.inspect)
    return service, server


def alarm_policy(alarms: config_module.AlarmSettings, artifact: Any) -> Any:
    """The config's ``alarms`` as the core's `AlarmPolicy`, checked against ``artifact``'s
    calibration (a warm-up longer than its history is a ConfigError naming the key)."""
    from streamlstm.core.calibration import AlarmOverride, AlarmPolicy
    from streamlstm.core.pipeline import calibration_settings

    policy = AlarmPolicy(alarms.threshold, alarms.alarm_hold, alarms.warmup, tuple(
        AlarmOverride(o.series, o.threshold, o.alarm_hold, o.warmup) for o in alarms.overrides))
    try:
        policy.resolve(calibration_settings(artifact.calibration))
    except ValueError as exc:
        where, _, why = str(exc).partition(": ")
        raise ConfigError(f"{where}.warmup" if "warmup" in why else where,
                          f"a value that fits the model ({why})") from exc
    return policy


def _checkpoint_root(settings: config_module.Settings) -> Path:
    """``checkpoint.directory``, else a ``checkpoints`` folder next to the models directory;
    never inside the installed package (when the daemon runs on the bundled model), where the
    user's state directory is used instead."""
    if settings.checkpoint.directory:
        return Path(settings.checkpoint.directory)
    models = Path(settings.model.path).absolute()
    if models.is_relative_to(Path(__file__).parent.absolute()):
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "streamlstm" / "checkpoints"
    return models.parent / "checkpoints"


def _checkpointer(settings: config_module.Settings, pipeline: Any, metrics: Any) -> Any:
    """The checkpoint store named by ``checkpoint.store``, or None when it is ``none``."""
    from streamlstm.checkpoints.checkpointer import Checkpointer, CheckpointPolicy
    from streamlstm.checkpoints.kafka_topic import KafkaTopicStore
    from streamlstm.checkpoints.stores import CheckpointStore, DirectoryStore
    from streamlstm.errors import CheckpointError

    chosen = settings.checkpoint
    kafka = settings.kafka
    store: CheckpointStore
    try:
        if chosen.store == "none":
            return None
        if chosen.store == "kafka":
            store = KafkaTopicStore(
                kafka, chosen.topic or f"{kafka.group_id}-state", kafka.topic,
                pipeline.state_layout(), max_record_bytes=chosen.max_record_bytes,
                replication_factor=chosen.replication_factor)
        else:
            store = DirectoryStore(_checkpoint_root(settings) / kafka.group_id / kafka.topic,
                                   keep=chosen.keep)
    except CheckpointError as exc:  # a directory that cannot be made, a state too large
        key = "checkpoint.directory" if chosen.store == "directory" else (
            "checkpoint.max_record_bytes")
        raise ConfigError(key, "a usable checkpoint store", str(exc)) from exc
    return Checkpointer(pipeline, store, metrics.checkpoints,
                        CheckpointPolicy(chosen.interval_s, chosen.interval_events))


# ---------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from streamlstm.model.artifact import save_artifact
    from streamlstm.training import TrainingSettings, fit

    source = _check_train_source(args)
    features = _split(args.features)
    initial = None
    if args.init_from is not None:
        from streamlstm.core.pipeline import calibration_settings
        from streamlstm.model.artifact import load_artifact

        initial = load_artifact(args.init_from)
        base = calibration_settings(initial.calibration)
    else:
        base = CalibrationSettings()
    given = {k: getattr(args, k) for k in ("threshold", "warmup", "alarm_hold")
             if getattr(args, k) is not None}
    table = _training_table(args, source, features)
    settings = TrainingSettings(
        window=args.window, hidden_size=args.hidden_size, num_layers=args.layers, cell=args.cell,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        validation_fraction=args.validation_fraction, patience=args.patience,
        stride=args.stride, max_windows=args.max_windows, seed=args.seed, device=args.device,
        calibration=dataclasses.replace(base, **given),
    )
    history = table.history()
    log.info("training on %d series, %d rows from %s, features %s%s", len(history),
             len(table.series), source, ", ".join(table.feature_names),
             f", starting from {initial.version}" if initial is not None else "")
    artifact = fit(history, table.feature_names, settings, initial=initial)
    target = save_artifact(artifact, args.output, make_current=not args.no_activate)
    training = artifact.training
    start = (f", {training['initial_validation_loss']:.5f} for {initial.version}"
             if initial is not None else "")
    print(f"model {artifact.version} written to {target} "
          f"(validation loss {training['validation_loss']:.5f}{start}, "
          f"{training['epochs']} epochs)")
    return 0


# Per history source: its selecting option, then the options that only go with it (dests).
_TRAIN_SOURCES = {
    "files": ("--input", {}),
    "kafka": ("--kafka-topic", {"--bootstrap": "bootstrap", "--from": "start", "--to": "end",
                                "--config": "config"}),
    "influx": ("--influx-query", {"--influx-url": "influx_url", "--influx-db": "influx_db"}),
    "synthetic": ("--synthetic", {}),
}


def _check_train_source(args: argparse.Namespace) -> str:
    """Which history source the options name: ``files``, ``kafka``, ``influx`` or ``synthetic``.

    argparse already demands exactly one of ``--input``, ``--kafka-topic``,
    ``--influx-query`` and ``--synthetic``; this refuses the other sources' options and reads
    the Kafka time range into ``args.start_ts`` and ``args.end_ts`` (epoch seconds).
    """
    from streamlstm.decoding import parse_timestamp
    from streamlstm.errors import DecodeError

    parser: argparse.ArgumentParser = args.train_parser
    source = ("files" if args.input is not None else
              "kafka" if args.kafka_topic is not None else
              "synthetic" if args.synthetic is not None else "influx")
    for other, (selector, options) in _TRAIN_SOURCES.items():
        for option, dest in options.items():
            if other != source and getattr(args, dest) is not None:
                parser.error(f"{option} only goes with {selector}")
    if source == "kafka":
        if args.start is None:
            parser.error("--kafka-topic needs --from (and --to, default now)")
        try:
            args.start_ts = parse_timestamp(args.start)
            args.end_ts = time.time() if args.end is None else parse_timestamp(args.end)
        except DecodeError as exc:
            parser.error(f"--from/--to: {exc.detail}")
        if args.start_ts >= args.end_ts:
            parser.error("--from must be before --to")
    return source


def _training_table(args: argparse.Namespace, source: str, features: list[str] | None) -> Any:
    """The history as a ``sources.files.Table``, whichever source it comes from."""
    if source == "files":
        from streamlstm.sources.files import read_tables

        return read_tables(args.input, features)
    if source == "synthetic":
        from streamlstm.synthetic import corpus_table

        return corpus_table(n_series=args.synthetic, seed=args.seed)
    if source == "kafka":
        from dataclasses import replace

        from streamlstm.decoding import JsonDecoder
        from streamlstm.sources import kafka_history

        daemon = config_module.load(args.config, os.environ)
        kafka = replace(daemon.kafka, topic=args.kafka_topic,
                        bootstrap_servers=args.bootstrap or daemon.kafka.bootstrap_servers)
        decoder = JsonDecoder(daemon.decoder, features or ("value",))
        return kafka_history.read_history(kafka, decoder, args.start_ts, args.end_ts)
    from streamlstm.sources import influx_history

    from_env = None if args.influx_url else os.environ.get("INFLUXDB_V2_URL")
    url = args.influx_url or from_env or influx_history.DEFAULT_URL
    try:
        return influx_history.read_history(influx_history.InfluxHistoryQuery(
            url=url, query=args.influx_query, database=args.influx_db,
            token=os.environ.get("INFLUXDB_V2_TOKEN", ""),
        ), features)
    except influx_history.InfluxQueryError as exc:
        if from_env:
            raise influx_history.InfluxQueryError(f"{exc} (URL from INFLUXDB_V2_URL)") from exc
        raise


# ---------------------------------------------------------------- replay


def feature_columns(score: Score | None, n_features: int) -> list[Any]:
    """A multi-feature replay row's ``error_<feature>`` cells (empty before a window is full)."""
    if score is None or score.feature_errors is None:
        return [""] * n_features
    return [_num(e) for e in score.feature_errors]


def cmd_replay(args: argparse.Namespace) -> int:
    from streamlstm.core.evidence import KINDS
    from streamlstm.core.pipeline import Pipeline, PipelineSettings, score_points
    from streamlstm.sources.files import read_table

    artifact = _load_model(args.model)
    alarms = (alarm_policy(config_module.load(args.config, os.environ).alarms, artifact)
              if args.config else None)
    multi = artifact.architecture.n_features > 1
    started = time.perf_counter()
    # Every input is read and checked before a line is written.
    tables = [read_table(path, artifact.feature_names if multi else None) for path in args.input]
    _check_output_path(args.output, "--output")
    # A one-feature model scores each value column of a wider file as a series of its own.
    columns = _replay_columns(args.input, tables) if not multi else []
    by_column = len(columns) > 1
    names = artifact.feature_names if multi else columns if by_column else ["value"]
    total = 0
    with _open_output(args.output) as handle:
        writer = csv.writer(handle)
        writer.writerow(["series", "timestamp", *names,
                         "anomaly_score", "is_anomaly", "alarm", "error", "novelty", "threshold",
                         *(f"surprise_{kind}" for kind in KINDS),
                         *(["top_feature", *(f"error_{name}" for name in names)] if multi else
                           ["top_feature", *(f"score_{name}" for name in names)] if by_column
                           else [])])
        for table in tables:
            settings = PipelineSettings(stride=args.stride)
            rows: Iterable[list[Any]]
            if by_column:
                rows = _replay_rows_by_column(artifact, settings, alarms, table, KINDS)
            else:
                pipeline = Pipeline(artifact, settings, alarms=alarms)
                points = table.points()
                rows = ([*_replay_row(point.series, point.timestamp, point.values, score, KINDS),
                         *([score.top_feature or "" if score else "",
                            *feature_columns(score, len(names))] if multi else [])]
                        for point, score in zip(points, score_points(pipeline, points),
                                                strict=True))
            writer.writerows(rows)
            total += len(table.series)
    elapsed = time.perf_counter() - started
    print(f"scored {total} rows in {elapsed:.1f}s ({total / max(elapsed, 1e-9):,.0f} rows/s) "
          f"with model {artifact.version}", file=sys.stderr)
    return 0


def _replay_columns(paths: Sequence[str], tables: Sequence[Any]) -> list[str]:
    """The value columns every input shares (a one-feature model scores each); a file with
    other columns than the first one's is an error, as one header serves them all."""
    first = tables[0].feature_names
    for path, table in zip(paths, tables, strict=True):
        if (len(table.feature_names) > 1 or len(first) > 1) and table.feature_names != first:
            raise StreamlstmError(f"{path}: value columns {', '.join(table.feature_names)} "
                                  f"differ from {paths[0]}'s ({', '.join(first)})")
    return list(first)


def _replay_row(series: str, timestamp: float, values: Sequence[float], score: Score | None,
                kinds: Sequence[str],
                verdict: tuple[float, bool, bool, float] | None = None) -> list[Any]:
    """A replay row's cells up to the surprises (empty before a window is full); ``verdict``
    ``(score, is_anomaly, alarm, threshold)`` replaces ``score``'s own."""
    if score is not None and verdict is None:
        verdict = (score.score, score.is_anomaly, score.alarm, score.threshold)
    return [
        series, _iso(timestamp), *(_num(v) for v in values),
        _num(verdict[0]) if verdict else 0.0,
        int(verdict[1]) if verdict else 0,
        int(verdict[2]) if verdict else 0,
        _num(score.error) if score else "",
        _num(score.novelty) if score and score.novelty is not None else "",
        _num(verdict[3]) if verdict else "",
        *(_num(score.evidence[kind]) if score and kind in score.evidence else ""
          for kind in kinds),
    ]


def column_verdicts(artifact: Any, settings: Any, table: Any, series: str | None = None,
                    alarms: Any = None) -> Any:
    """`streamlstm.core.columns.score_columns` over ``table`` (its rows named ``series``, else
    by the table's own series), through a fresh pipeline with a slot for every column."""
    from streamlstm.core.columns import score_columns
    from streamlstm.core.pipeline import Pipeline

    names = table.feature_names
    row_series = [series] * len(table.series) if series is not None else table.series
    wide = len(set(row_series)) * len(names)
    pipeline = Pipeline(artifact, dataclasses.replace(
        settings, max_series=max(settings.max_series, wide)), alarms=alarms)
    return score_columns(pipeline, row_series, table.timestamps.tolist(), table.values, names)


def _replay_rows_by_column(artifact: Any, settings: Any, alarms: Any, table: Any,
                           kinds: Sequence[str]) -> list[list[Any]]:
    """Replay rows of a table of several value columns through a one-feature model: each
    column a series of its own, a row's verdict its worst column's, corrected for how many
    (`streamlstm.core.columns`). The row's error, novelty and surprises are the worst
    column's, ``top_feature`` names it and ``score_<column>`` gives every column's score."""
    names = table.feature_names
    verdicts = column_verdicts(artifact, settings, table, alarms=alarms)
    out = []
    for i, (series, timestamp, values) in enumerate(zip(
            table.series, table.timestamps.tolist(), table.values.tolist(), strict=True)):
        worst = verdicts.worst_score(i)
        verdict = None if worst is None else (
            float(verdicts.score[i]), bool(verdicts.is_anomaly[i]), bool(verdicts.alarm[i]),
            float(verdicts.threshold[i]))
        out.append([
            *_replay_row(series, timestamp, values, worst, kinds, verdict),
            names[int(verdicts.worst[i])] if worst is not None else "",
            *(_num(score.score) if (score := column[i]) is not None else ""
              for column in verdicts.columns)])
    return out


# ---------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from streamlstm import evaluation

    labels = evaluation.load_windows(args.labels)
    if args.output:
        _check_output_path(args.output, "--output")
    if args.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise StreamlstmError(
                "--plots needs matplotlib: pip install 'streamlstm[eval]'") from exc
    artifact = _load_model(args.model)
    series_list, rows, elapsed = score_labelled_files(
        _expand_data(args.data), labels, artifact, args.labels)
    calibration = CalibrationSettings.from_dict(artifact.calibration)
    hold, shipped = calibration.alarm_hold, calibration.threshold
    report = evaluation.evaluate(series_list, hold=hold)
    at_shipped = evaluation.evaluate(series_list, thresholds=[shipped], hold=hold)
    print(report.format_table())
    print(f"at the model's own threshold {shipped:g}: " + ", ".join(
        f"{name} {p.score:.1f}" for name, p in at_shipped.profiles.items()))
    print(f"\n{rows} rows scored in {elapsed:.1f}s ({rows / max(elapsed, 1e-9):,.0f} rows/s), "
          f"model {artifact.version}")
    if args.output:
        data = report.to_dict() | {
            "rows": rows, "seconds": elapsed, "model": artifact.version,
            "at_model_threshold": {name: p.score for name, p in at_shipped.profiles.items()},
        }
        Path(args.output).write_text(json.dumps(data, indent=2) + "\n")
    if args.plots:
        write_plots(series_list, report.threshold, hold, Path(args.plots))
        print(f"plots in {args.plots}/")
    return 0


def write_plots(series_list: Sequence[Any], threshold: float, hold: int, directory: Path) -> None:
    """One PNG per series, its alarms at ``threshold`` with ``hold``; used by `evaluate` and
    ``bench/quality.py``."""
    from streamlstm import evaluation
    from streamlstm.core.calibration import alarm_rows

    directory.mkdir(parents=True, exist_ok=True)
    for series in series_list:
        name = series.name.replace("/", "__").removesuffix(".csv") + ".png"
        evaluation.plot_series(series, alarm_rows(series.scores, threshold, hold), threshold,
                               directory / name)


def score_labelled_files(files: Sequence[Path], labels: dict[str, Any], artifact: Any,
                         labels_name: str = "the labels",
                         settings: Any = None) -> tuple[list[Any], int, float]:
    """Replay the labelled files, each a series never seen, named by its label key.

    The files are replayed side by side through one pipeline (series are independent, so each
    scores as it would alone, but a poll holds windows of many of them); a file of several value
    columns, with a one-feature model, is scored column by column and its rows combined, as
    `replay` does. Returns ``(ScoredSeries list, rows, seconds)``; used by `evaluate` and
    ``bench/quality.py``.
    """
    import dataclasses

    import numpy as np

    from streamlstm import evaluation
    from streamlstm.core.pipeline import Pipeline, PipelineSettings, score_points
    from streamlstm.core.records import Point
    from streamlstm.sources.files import read_table

    started = time.perf_counter()
    multi = artifact.architecture.n_features > 1
    tables = []
    for path in files:
        key = _label_key(path, labels)
        if key is None:
            raise StreamlstmError(f"{path}: not listed in {labels_name}")
        tables.append((key, read_table(path, artifact.feature_names if multi else None)))
    settings = settings or PipelineSettings(stride=1)
    settings = dataclasses.replace(settings, max_series=max(settings.max_series, len(tables)))
    # A one-feature model scores a file of several value columns column by column, alone.
    wide = [i for i, (_, table) in enumerate(tables) if not multi and table.values.shape[1] > 1]
    per_file: list[list[float]] = [[0.0] * len(table.series) for _, table in tables]
    for i in wide:
        key, table = tables[i]
        per_file[i] = column_verdicts(artifact, settings, table, series=key).score.tolist()
    narrow = sorted(set(range(len(tables))) - set(wide))
    streams = [[Point(tables[i][0], t, tuple(v)) for t, v in zip(
        tables[i][1].timestamps.tolist(), tables[i][1].values.tolist(), strict=True)]
        for i in narrow]
    # Row k of every file, then row k + 1: the interleaving a broker gives many series.
    order = sorted(((k, j) for j, stream in enumerate(streams) for k in range(len(stream))))
    points = [streams[j][k] for k, j in order]
    scores = score_points(Pipeline(artifact, settings), points)
    for (k, j), score in zip(order, scores, strict=True):
        if score is not None:
            per_file[narrow[j]][k] = score.score
    series_list = [evaluation.ScoredSeries(
        name=key,
        timestamps=table.timestamps,
        values=table.values[:, 0],
        scores=np.array(file_scores),
        windows=labels[key],
    ) for (key, table), file_scores in zip(tables, per_file, strict=True)]
    return series_list, sum(len(t.series) for _, t in tables), time.perf_counter() - started


def _expand_data(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        found = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
        if not found:
            raise StreamlstmError(f"{path}: no CSV files in this directory")
        files.extend(found)
    return files


def _label_key(path: Path, labels: dict[str, Any]) -> str | None:
    text = path.as_posix()
    matches = [key for key in labels if text.endswith("/" + key) or text == key]
    return max(matches, key=len) if matches else None


# ---------------------------------------------------------------- models, config, produce


def cmd_models_list(args: argparse.Namespace) -> int:
    from streamlstm.model.artifact import list_versions

    models = _models_dir(args.models)
    rows = list_versions(models)
    if not rows:
        print(f"no models in {models}")
        return 0
    print(f"{'':2}{'version':28} {'created':21} {'cell':5} {'window':>6} {'val loss':>10} "
          f"{'series':>7} {'windows':>9}")
    for row in rows:
        loss = row.get("validation_loss")
        print(f"{'*' if row.get('current') else ' ':2}{row['version']:28} "
              f"{row.get('created_at', ''):21} {row.get('cell', ''):5} {row.get('window', ''):>6} "
              f"{'' if loss is None else f'{loss:.5f}':>10} {row.get('series') or '':>7} "
              f"{row.get('windows') or '':>9}")
    return 0


def cmd_models_activate(args: argparse.Namespace) -> int:
    from streamlstm.model.artifact import load_artifact, set_current

    models = _models_dir(args.models)
    load_artifact(Path(models) / args.version)  # refuse to point at a broken model
    set_current(models, args.version)
    print(f"current model is now {args.version}")
    return 0


def cmd_models_init(args: argparse.Namespace) -> int:
    """Install the bundled model when the models directory has no model in service yet.

    Idempotent, for an init step before every start (Kubernetes init container, systemd
    ExecStartPre, a compose one-shot): a directory whose ``current`` names a version is left
    alone, so a trained model is never replaced.
    """
    from streamlstm.demo import install_bundled_model

    models = Path(_models_dir(args.models))
    in_service = _model_in_service(models)
    if in_service is None:
        try:
            install_bundled_model(models)
            return 0
        except ArtifactError:
            # Another replica's init step may have won the race: fine if a model is there now.
            in_service = _model_in_service(models)
            if in_service is None:
                raise
    print(f"a model is already in service: {in_service.name} in {models}")
    return 0


def _model_in_service(models: Path) -> Path | None:
    from streamlstm.model.artifact import resolve_model_dir

    try:
        target = resolve_model_dir(models)
    except ArtifactError:
        return None
    return target if target.is_dir() else None


def cmd_config(args: argparse.Namespace) -> int:
    settings = config_module.load(args.config, os.environ)
    print(json.dumps(config_module.to_dict(settings), indent=2))
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from streamlstm.sources.files import read_tables
    from streamlstm.sources.kafka import produce_points

    table = read_tables(args.input)
    sent = produce_points(args.bootstrap, args.topic, table.points(), table.feature_names,
                          rate=args.rate, restamp=args.restamp)
    print(f"produced {sent} events to {args.topic} at {args.bootstrap}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamlstm.demo import run_demo

    return run_demo(workdir=Path(args.workdir), keep_running=args.keep_running)


# ---------------------------------------------------------------- helpers


def _load_model(option: str | None) -> Any:
    """The model ``--model`` names, else ``$STREAMLSTM_MODEL_PATH``'s, else the bundled one.

    An error about the variable's model names the variable.
    """
    from streamlstm.model.artifact import load_artifact

    from_env = os.environ.get(MODEL_PATH_ENV) if option is None else None
    try:
        return load_artifact(option or from_env or BUNDLED_MODEL)
    except ArtifactError as exc:
        if from_env:
            raise ArtifactError(f"{MODEL_PATH_ENV}: {exc}") from exc
        raise


def _models_dir(option: str | None) -> str:
    """``--models``, else ``$STREAMLSTM_MODEL_PATH``, else ``models``."""
    return option or os.environ.get(MODEL_PATH_ENV) or "models"


def _check_output_path(target: str, option: str) -> None:
    """Refuse, before any work, an output file whose directory does not exist."""
    if target == "-":
        return
    path = Path(target)
    if path.is_dir():
        raise StreamlstmError(f"{option} {target}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise StreamlstmError(f"{option} {target}: directory {path.parent} does not exist")


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _iso(ts: float) -> str:
    from streamlstm.core.timestamps import format_timestamp

    return format_timestamp(ts, timespec="seconds")


def _num(x: float) -> str:
    return f"{x:.6g}"


class _open_output:
    """``-`` writes to stdout; anything else to a file."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.handle: Any = None

    def __enter__(self) -> Any:
        self.handle = sys.stdout if self.target == "-" else open(
            self.target, "w", newline="", encoding="utf-8")
        return self.handle

    def __exit__(self, *exc: object) -> None:
        if self.handle is not sys.stdout:
            self.handle.close()


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)) or (
                "default" in text):
            return text
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``streamlstm replay: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, high: float = math.inf, open_ends: str = "",
            what: str = "") -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` in ``[low, high]``; ``open_ends`` "low" and/or "high"
    leave that end out. Anything else is an error ``expected WHAT, got TEXT``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (low <= value <= high) or ("low" in open_ends and value == low) or (
                "high" in open_ends and value == high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, 1, what="a positive integer")
_count = _number(int, 0, what="zero or a positive integer")
_positive = _number(float, 0, open_ends="low", what="a positive number")
_non_negative = _number(float, 0, what="zero or a positive number")
_score = _number(float, 0, 1, open_ends="low", what="a score in (0, 1]")
_share = _number(float, 0, 1, open_ends="low high", what="a fraction between 0 and 1")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamlstm", description=DESCRIPTION,
                     epilog="`streamlstm VERB --help` describes a verb and its options.",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"streamlstm {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        help="DEBUG, INFO, WARNING or ERROR, any case; DEBUG also shows "
                             "kafka-python's own logs (default: STREAMLSTM_LOG_LEVEL, for run "
                             "the config's log_level, else INFO)")

    def verb(group: Any, name: str, summary: str, description: str | None = None) -> Any:
        return group.add_parser(name, help=summary, parents=[common],
                                description=description or summary[0].upper() + summary[1:] + ".",
                                formatter_class=_HelpFormatter)

    run = verb(verbs, "run", "run the daemon: Kafka in, scores to InfluxDB")
    run.add_argument("--config", metavar="FILE",
                     help="YAML settings file (default: none, built-in defaults; environment "
                          "variables override either)")
    run.set_defaults(handler=cmd_run)

    train = verb(verbs, "train", "train a model from history: files, a Kafka time range, "
                                 "InfluxDB or generated series",
                 "Train a model from history; give exactly one source: --input FILES, "
                 "--kafka-topic with --from/--to, --influx-query, or --synthetic N.")
    sources = train.add_mutually_exclusive_group(required=True)
    sources.add_argument("--input", nargs="+", metavar="FILE", help="CSV or Parquet files")
    sources.add_argument("--kafka-topic", metavar="TOPIC",
                         help="read the topic's events with --from <= timestamp < --to "
                              "(no consumer group, nothing committed)")
    sources.add_argument("--influx-query", metavar="INFLUXQL",
                         help="an InfluxQL SELECT; each series (measurement,tag=value,...) "
                              "is one series, the selected fields are the features")
    sources.add_argument("--synthetic", type=_positive_int, metavar="N_SERIES",
                         help="N generated normal series (streamlstm.synthetic): how the "
                              "bundled model is trained")
    train.add_argument("--output", required=True, metavar="DIR",
                       help="models directory (created if missing); the model is a new "
                            "version in it")
    train.add_argument("--features", help="value columns, comma-separated (default: all; "
                                          "with --kafka-topic: value)")
    kafka = train.add_argument_group("Kafka history (--kafka-topic)")
    kafka.add_argument("--bootstrap", metavar="HOST:PORT",
                       help="brokers (default: the config's kafka.bootstrap_servers)")
    kafka.add_argument("--from", dest="start", metavar="TIME",
                       help="RFC 3339 or epoch time, included")
    kafka.add_argument("--to", dest="end", metavar="TIME",
                       help="RFC 3339 or epoch time, excluded (default: now)")
    kafka.add_argument("--config", metavar="FILE",
                       help="the daemon's YAML settings: Kafka security and the decoder's "
                            "field names (environment variables apply)")
    influx = train.add_argument_group("InfluxDB history (--influx-query; the token comes from "
                                      "INFLUXDB_V2_TOKEN: user:password or an API token)")
    influx.add_argument("--influx-url", metavar="URL",
                        help="default: INFLUXDB_V2_URL, else http://127.0.0.1:8086")
    influx.add_argument("--influx-db", metavar="DB",
                        help="database (on 2.x the DBRP-mapped database) for /query's db=")
    model = train.add_argument_group("model and training")
    model.add_argument("--window", type=_positive_int, default=32,
                       help="values in a window (the model's input length)")
    model.add_argument("--hidden-size", type=_positive_int, default=32,
                       help="units of each recurrent layer")
    model.add_argument("--layers", type=_positive_int, default=1,
                       help="recurrent layers of the encoder and of the decoder")
    model.add_argument("--cell", choices=["lstm", "gru"], default="lstm",
                       help="recurrent cell type")
    model.add_argument("--epochs", type=_positive_int, default=30,
                       help="most passes over the training windows")
    model.add_argument("--batch-size", type=_positive_int, default=256,
                       help="windows per optimiser step")
    model.add_argument("--learning-rate", type=_positive, default=3e-3, help="Adam's step size")
    model.add_argument("--validation-fraction", type=_share, default=0.2,
                       help="share of each series' windows (its latest) held out for validation")
    model.add_argument("--patience", type=_count, default=4,
                       help="epochs without a better validation loss before training stops")
    model.add_argument("--stride", type=_positive_int, default=1,
                       help="take every Nth window of the history")
    model.add_argument("--max-windows", type=_positive_int, default=100_000,
                       help="at most this many training windows (a random sample)")
    model.add_argument("--seed", type=_count, default=0, help="random seed")
    model.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                       help="where to train (auto: cuda when available)")
    model.add_argument("--init-from", metavar="PATH",
                       help="fine-tune this model (a version or models directory, e.g. the one "
                            "the daemon serves) on the history instead of starting afresh: its "
                            "shape and alarm settings are kept (the shape options are ignored) "
                            "and its weights come back unchanged unless training improves "
                            "their validation loss on this history")
    defaults = CalibrationSettings()
    alarms = train.add_argument_group("alarms (stored with the model)")
    alarms.add_argument("--threshold", type=_score,
                        help="anomaly score at which a window alarms (default: "
                             f"{defaults.threshold}, with --init-from that model's)")
    alarms.add_argument("--warmup", type=_positive_int,
                        help="windows a series is scored before it may alarm (default: "
                             f"{defaults.warmup}, with --init-from that model's)")
    alarms.add_argument("--alarm-hold", type=_count,
                        help="windows a series stays quiet after an alarm (default: "
                             f"{defaults.alarm_hold}, with --init-from that model's)")
    train.add_argument("--no-activate", action="store_true",
                       help="write the version without pointing 'current' at it")
    train.set_defaults(handler=cmd_train, train_parser=train)

    model_help = ("model version or models directory (default: STREAMLSTM_MODEL_PATH, else the "
                  "bundled model, pretrained on synthetic series)")
    replay = verb(verbs, "replay", "score files offline with the daemon's pipeline, to CSV")
    replay.add_argument("input", nargs="+", metavar="FILE", help="CSV or Parquet files")
    replay.add_argument("--output", default="-", metavar="FILE",
                        help="CSV to write; its directory must exist (default: - for stdout)")
    replay.add_argument("--model", metavar="PATH", help=model_help)
    replay.add_argument("--stride", type=_positive_int, default=1,
                        help="score every Nth event of a series")
    replay.add_argument("--config", metavar="FILE",
                        help="a daemon config whose alarms section (threshold, alarm_hold, "
                             "warmup, overrides) applies, as in the daemon (default: the "
                             "model's own calibration)")
    replay.set_defaults(handler=cmd_replay)

    evaluate = verb(verbs, "evaluate", "score labelled files and report NAB scores")
    evaluate.add_argument("data", nargs="+", metavar="PATH", help="CSV files or directories")
    evaluate.add_argument("--labels", required=True, metavar="FILE",
                          help="NAB windows.json: file -> anomaly windows")
    evaluate.add_argument("--model", metavar="PATH", help=model_help)
    evaluate.add_argument("--output", metavar="FILE", help="write the results as JSON")
    evaluate.add_argument("--plots", metavar="DIR",
                          help="directory (created if missing) for one PNG per series")
    evaluate.set_defaults(handler=cmd_evaluate)

    models = verbs.add_parser("models", help="list, activate or install model versions",
                              description="List, activate or install model versions.",
                              formatter_class=_HelpFormatter)
    models_verbs = models.add_subparsers(dest="models_verb", required=True, metavar="ACTION")
    models_help = "models directory (default: STREAMLSTM_MODEL_PATH, else models)"
    models_list = verb(models_verbs, "list", "list the versions, the current one starred")
    models_list.add_argument("--models", metavar="DIR", help=models_help)
    models_list.set_defaults(handler=cmd_models_list)
    activate = verb(models_verbs, "activate", "point 'current' at a version")
    activate.add_argument("version", help="a version directory name, as `models list` shows")
    activate.add_argument("--models", metavar="DIR", help=models_help)
    activate.set_defaults(handler=cmd_models_activate)
    init = verb(models_verbs, "init", "install the bundled model if no model is in service "
                "(a first start without training)")
    init.add_argument("--models", metavar="DIR", help=models_help)
    init.set_defaults(handler=cmd_models_init)

    config = verb(verbs, "config", "check a config file and print the effective settings")
    config.add_argument("--config", metavar="FILE",
                        help="YAML settings file (default: none, built-in defaults; environment "
                             "variables override either)")
    config.set_defaults(handler=cmd_config)

    produce = verb(verbs, "produce", "send the rows of CSV files to Kafka as JSON events")
    produce.add_argument("--input", nargs="+", required=True, metavar="FILE",
                         help="CSV or Parquet files")
    produce.add_argument("--topic", default="metrics", help="topic to send to")
    produce.add_argument("--bootstrap", default="127.0.0.1:9092", metavar="HOST:PORT",
                         help="brokers")
    produce.add_argument("--rate", type=_non_negative, default=0.0,
                         help="events/s (0: as fast as possible)")
    produce.add_argument("--restamp", action="store_true",
                         help="stamp each event with the time it is sent")
    produce.set_defaults(handler=cmd_produce)

    demo = verb(verbs, "demo", "start a local broker and InfluxDB, replay a dataset, score it")
    demo.add_argument("--workdir", default="var/demo", metavar="DIR",
                      help="where the servers keep their data and logs")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the servers and the daemon up after the replay is scored")
    demo.set_defaults(handler=cmd_demo)
    return parser
