"""The `streamlstm` command: the only place that reads the environment, parses argv,
installs signal handlers and wires concrete adapters together.

Verbs: run, train, replay, evaluate, models, produce, config, demo.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamlstm import config as config_module
from streamlstm.core.calibration import CalibrationSettings
from streamlstm.errors import ConfigError, StreamlstmError

# Pretrained on generated series only (`streamlstm train --synthetic 150 ...`, see
# streamlstm/data/README.md), so it has never seen any series it is evaluated on.
BUNDLED_MODEL = Path(__file__).parent / "data" / "model"

log = logging.getLogger("streamlstm")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``streamlstm`` and ``python -m streamlstm``."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("STREAMLSTM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"streamlstm: config error: {exc}", file=sys.stderr)
        return 2
    except StreamlstmError as exc:
        print(f"streamlstm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    settings = config_module.load(args.config, os.environ)
    logging.getLogger().setLevel(settings.log_level)
    service, server = build_service(settings)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    server.start()
    log.info("metrics on http://%s:%d/metrics", settings.metrics.host, server.port)
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
    if settings.model.threads:
        torch.set_num_threads(settings.model.threads)
    artifact = load_artifact(settings.model.path)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry, per_series_labels=settings.metrics.per_series_labels)
    pipeline = Pipeline(artifact, PipelineSettings(
        stride=settings.windows.stride,
        max_series=settings.windows.max_series,
        idle_evict_s=settings.windows.idle_evict_s,
        max_gap_intervals=settings.windows.max_gap_intervals,
        memory_windows=settings.windows.memory_windows,
        season_s=settings.windows.season_s,
        season_periods=settings.windows.season_periods,
    ), device=device)
    decoder = JsonDecoder(settings.decoder, artifact.feature_names)
    source = KafkaSource(settings.kafka, decoder)
    sink = InfluxSink(settings.influx)
    service = Service(source, sink, pipeline, metrics, ServiceSettings(
        topic=settings.kafka.topic,
        model_path=settings.model.path,
        device=device,
        reload_interval_s=settings.model.reload_interval_s,
        retry_initial_s=settings.influx.retry_initial_s,
        retry_max_s=settings.influx.retry_max_s,
    ))
    server = MetricsServer(registry, settings.metrics.host, settings.metrics.port,
                           health=service.health, ready=service.ready)
    return service, server


# ---------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from streamlstm.model.artifact import save_artifact
    from streamlstm.training import TrainingSettings, fit

    source = _check_train_source(args)
    features = _split(args.features)
    table = _training_table(args, source, features)
    settings = TrainingSettings(
        window=args.window, hidden_size=args.hidden_size, num_layers=args.layers, cell=args.cell,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        validation_fraction=args.validation_fraction, patience=args.patience,
        stride=args.stride, max_windows=args.max_windows, seed=args.seed, device=args.device,
        calibration=CalibrationSettings(threshold=args.threshold, warmup=args.warmup,
                                        alarm_hold=args.alarm_hold),
    )
    history = table.history()
    log.info("training on %d series, %d rows from %s, features %s", len(history),
             len(table.series), source, ", ".join(table.feature_names))
    artifact = fit(history, table.feature_names, settings)
    target = save_artifact(artifact, args.output, make_current=not args.no_activate)
    print(f"model {artifact.version} written to {target} "
          f"(validation loss {artifact.training['validation_loss']:.5f}, "
          f"{artifact.training['epochs']} epochs)")
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

    url = args.influx_url or os.environ.get("INFLUXDB_V2_URL") or influx_history.DEFAULT_URL
    return influx_history.read_history(influx_history.InfluxHistoryQuery(
        url=url, query=args.influx_query, database=args.influx_db,
        token=os.environ.get("INFLUXDB_V2_TOKEN", ""),
    ), features)


# ---------------------------------------------------------------- replay


def cmd_replay(args: argparse.Namespace) -> int:
    from streamlstm.core.pipeline import Pipeline, PipelineSettings, score_points
    from streamlstm.model.artifact import load_artifact
    from streamlstm.sources.files import read_table

    artifact = load_artifact(args.model)
    total = 0
    started = time.perf_counter()
    with _open_output(args.output) as handle:
        writer = csv.writer(handle)
        multi = artifact.architecture.n_features > 1
        writer.writerow(["series", "timestamp", *(artifact.feature_names if multi else ["value"]),
                         "anomaly_score", "is_anomaly", "error", "novelty", "threshold"])
        for path in args.input:
            table = read_table(path, artifact.feature_names if multi else None)
            pipeline = Pipeline(artifact, PipelineSettings(stride=args.stride))
            points = table.points()
            scores = score_points(pipeline, points)
            for point, score in zip(points, scores, strict=True):
                writer.writerow([
                    point.series, _iso(point.timestamp), *(_num(v) for v in point.values),
                    _num(score.score) if score else 0.0,
                    int(score.is_anomaly) if score else 0,
                    _num(score.error) if score else "",
                    _num(score.novelty) if score and score.novelty is not None else "",
                    _num(score.threshold) if score else "",
                ])
            total += len(points)
    elapsed = time.perf_counter() - started
    print(f"scored {total} rows in {elapsed:.1f}s ({total / max(elapsed, 1e-9):,.0f} rows/s) "
          f"with model {artifact.version}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from streamlstm import evaluation
    from streamlstm.model.artifact import load_artifact

    labels = evaluation.load_windows(args.labels)
    artifact = load_artifact(args.model)
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
    scores as it would alone, but a poll holds windows of many of them). Returns
    ``(ScoredSeries list, rows, seconds)``; used by `evaluate` and ``bench/quality.py``.
    """
    import dataclasses

    import numpy as np

    from streamlstm import evaluation
    from streamlstm.core.pipeline import Pipeline, PipelineSettings, score_points
    from streamlstm.core.records import Point
    from streamlstm.sources.files import read_table

    started = time.perf_counter()
    tables = []
    for path in files:
        key = _label_key(path, labels)
        if key is None:
            raise StreamlstmError(f"{path}: not listed in {labels_name}")
        tables.append((key, read_table(path)))
    settings = settings or PipelineSettings(stride=1)
    settings = dataclasses.replace(settings, max_series=max(settings.max_series, len(tables)))
    streams = [[Point(key, t, tuple(v)) for t, v in zip(table.timestamps.tolist(),
                                                       table.values.tolist(), strict=True)]
               for key, table in tables]
    # Row k of every file, then row k + 1: the interleaving a broker gives many series.
    order = sorted(((k, i) for i, stream in enumerate(streams) for k in range(len(stream))))
    points = [streams[i][k] for k, i in order]
    scores = score_points(Pipeline(artifact, settings), points)
    per_file: list[list[float]] = [[0.0] * len(stream) for stream in streams]
    for (k, i), score in zip(order, scores, strict=True):
        if score is not None:
            per_file[i][k] = score.score
    series_list = [evaluation.ScoredSeries(
        name=key,
        timestamps=table.timestamps,
        values=table.values[:, 0],
        scores=np.array(file_scores),
        windows=labels[key],
    ) for (key, table), file_scores in zip(tables, per_file, strict=True)]
    return series_list, len(points), time.perf_counter() - started


def _expand_data(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        files.extend(sorted(path.rglob("*.csv")) if path.is_dir() else [path])
    return files


def _label_key(path: Path, labels: dict[str, Any]) -> str | None:
    text = path.as_posix()
    matches = [key for key in labels if text.endswith("/" + key) or text == key]
    return max(matches, key=len) if matches else None


# ---------------------------------------------------------------- models, config, produce


def cmd_models_list(args: argparse.Namespace) -> int:
    from streamlstm.model.artifact import list_versions

    rows = list_versions(args.models)
    if not rows:
        print(f"no models in {args.models}")
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

    load_artifact(Path(args.models) / args.version)  # refuse to point at a broken model
    set_current(args.models, args.version)
    print(f"current model is now {args.version}")
    return 0


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamlstm", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="run the daemon: Kafka in, scores to InfluxDB")
    run.add_argument("--config", help="YAML settings file (environment variables override it)")
    run.set_defaults(handler=cmd_run)

    train = verbs.add_parser(
        "train", help="train a model from history: files, a Kafka time range, InfluxDB or "
                      "generated series",
        description="Train a model from history. Give exactly one source: --input FILES, "
                    "--kafka-topic with --from/--to, --influx-query, or --synthetic N.")
    sources = train.add_mutually_exclusive_group(required=True)
    sources.add_argument("--input", nargs="+", metavar="FILE", help="CSV or Parquet files")
    sources.add_argument("--kafka-topic", metavar="TOPIC",
                         help="read the topic's events with --from <= timestamp < --to "
                              "(no consumer group, nothing committed)")
    sources.add_argument("--influx-query", metavar="INFLUXQL",
                         help="an InfluxQL SELECT; each series (measurement,tag=value,...) "
                              "is one series, the selected fields are the features")
    sources.add_argument("--synthetic", type=int, metavar="N_SERIES",
                         help="N generated normal series (streamlstm.synthetic): how the "
                              "bundled model is trained")
    train.add_argument("--output", required=True, help="models directory (a new version)")
    train.add_argument("--features", help="value columns, comma-separated (default: all; "
                                          "with --kafka-topic: value)")
    kafka = train.add_argument_group("Kafka history (--kafka-topic)")
    kafka.add_argument("--bootstrap", metavar="HOST:PORT",
                       help="brokers (default: the config's kafka.bootstrap_servers)")
    kafka.add_argument("--from", dest="start", metavar="TIME",
                       help="RFC 3339 or epoch time, included")
    kafka.add_argument("--to", dest="end", metavar="TIME",
                       help="RFC 3339 or epoch time, excluded (default: now)")
    kafka.add_argument("--config", help="the daemon's YAML settings: Kafka security and the "
                                        "decoder's field names (environment variables apply)")
    influx = train.add_argument_group("InfluxDB history (--influx-query; the token comes from "
                                      "INFLUXDB_V2_TOKEN: user:password or an API token)")
    influx.add_argument("--influx-url", metavar="URL",
                        help="default: INFLUXDB_V2_URL, else http://127.0.0.1:8086")
    influx.add_argument("--influx-db", metavar="DB",
                        help="database (on 2.x the DBRP-mapped database) for /query's db=")
    train.add_argument("--window", type=int, default=32)
    train.add_argument("--hidden-size", type=int, default=32)
    train.add_argument("--layers", type=int, default=1)
    train.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--learning-rate", type=float, default=3e-3)
    train.add_argument("--validation-fraction", type=float, default=0.2)
    train.add_argument("--patience", type=int, default=4)
    train.add_argument("--stride", type=int, default=1)
    train.add_argument("--max-windows", type=int, default=100_000)
    defaults = CalibrationSettings()
    train.add_argument("--threshold", type=float, default=defaults.threshold,
                       help="anomaly score at which a window alarms")
    train.add_argument("--warmup", type=int, default=defaults.warmup,
                       help="windows a series is scored before it may alarm")
    train.add_argument("--alarm-hold", type=int, default=defaults.alarm_hold,
                       help="windows a series stays quiet after an alarm")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    train.add_argument("--no-activate", action="store_true",
                       help="write the version without pointing 'current' at it")
    train.set_defaults(handler=cmd_train, train_parser=train)

    default_model = os.environ.get("STREAMLSTM_MODEL_PATH", str(BUNDLED_MODEL))
    replay = verbs.add_parser("replay", help="score files offline with the daemon's pipeline")
    replay.add_argument("input", nargs="+", help="CSV or Parquet files")
    replay.add_argument("--output", default="-", help="CSV to write (default: stdout)")
    replay.add_argument("--model", default=default_model,
                        help="model version or models directory (default: the bundled model, "
                             "pretrained on synthetic series)")
    replay.add_argument("--stride", type=int, default=1)
    replay.set_defaults(handler=cmd_replay)

    evaluate = verbs.add_parser("evaluate", help="score labelled files, NAB-style")
    evaluate.add_argument("data", nargs="+", help="CSV files or directories")
    evaluate.add_argument("--labels", required=True, help="NAB windows.json")
    evaluate.add_argument("--model", default=default_model,
                        help="model version or models directory (default: the bundled model, "
                             "pretrained on synthetic series)")
    evaluate.add_argument("--output", help="write the results as JSON")
    evaluate.add_argument("--plots", help="directory for one PNG per series")
    evaluate.set_defaults(handler=cmd_evaluate)

    models = verbs.add_parser("models", help="list or activate model versions")
    models_verbs = models.add_subparsers(dest="models_verb", required=True, metavar="ACTION")
    models_list = models_verbs.add_parser("list", help="versions, the current one starred")
    models_list.add_argument("--models", default=os.environ.get("STREAMLSTM_MODEL_PATH", "models"))
    models_list.set_defaults(handler=cmd_models_list)
    activate = models_verbs.add_parser("activate", help="point 'current' at a version")
    activate.add_argument("version")
    activate.add_argument("--models", default=os.environ.get("STREAMLSTM_MODEL_PATH", "models"))
    activate.set_defaults(handler=cmd_models_activate)

    config = verbs.add_parser("config", help="check a config file and print the settings")
    config.add_argument("--config")
    config.set_defaults(handler=cmd_config)

    produce = verbs.add_parser("produce", help="send a CSV's rows to Kafka as JSON events")
    produce.add_argument("--input", nargs="+", required=True)
    produce.add_argument("--topic", default="metrics")
    produce.add_argument("--bootstrap", default="127.0.0.1:9092")
    produce.add_argument("--rate", type=float, default=0.0,
                         help="events/s (0: as fast as possible)")
    produce.add_argument("--restamp", action="store_true",
                         help="stamp each event with the time it is sent")
    produce.set_defaults(handler=cmd_produce)

    demo = verbs.add_parser("demo", help="local broker + InfluxDB, a dataset replayed, scored")
    demo.add_argument("--workdir", default="var/demo")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the servers and the daemon up after the replay is scored")
    demo.set_defaults(handler=cmd_demo)
    return parser
