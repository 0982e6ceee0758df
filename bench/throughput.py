"""Throughput of the daemon against the raw Kafka consume rate, where its time goes, and the
state it holds per series; every figure measured in one run, ratios against baselines of the
same run (the machine is shared, so absolute rates are rough).

    python bench/throughput.py [--series 1000] [--events 200] [--partitions 4] [--model DIR]
                               [--skip-influx] [--series-state 10000] [--state-points N]

On a local tansu broker (and InfluxDB 1.x behind the v2 shim) started by ``streamlstm.devstack``:

1. raw consume rate: ``--series`` x ``--events`` one-minute JSON events, keyed by series, on a
   ``--partitions`` topic, read by a bare kafka-python ``KafkaConsumer`` in a fresh consumer
   group with the daemon's default fetch and poll settings (no decoding); the median of
   ``--raw-repeats`` reads, spread between the daemon runs;
2. the daemon end to end on the same topic: the real ``KafkaSource`` + ``Pipeline`` (shipped
   ``PipelineSettings()``) + a sink through ``Service.run_once`` until every event is scored
   and committed, once with an in-process sink that only builds the line protocol (the
   InfluxDB sink's own ``to_lines``) and once with the real ``InfluxSink``: events/s and the
   ratio to the raw rate;
3. where the daemon's time goes, from thin timing proxies around the adapters: source.poll
   (fetch + decode), pipeline.process (and any ``*_seconds`` its results report), sink.write,
   commit, lag;
4. the pipeline alone (no Kafka) on warm series (calibrators past their warm-up): windows/s
   with all evidence, the model's error only, the other evidence only (model not counted),
   all evidence on one torch thread, and the raw model (``Scorer.errors`` on batches of 1024);
5. state per series: RSS growth of a subprocess whose pipeline (``max_series`` =
   ``--series-state``, at least 10,000) scores that many series until each has full windows
   and warm calibrators, divided by the series count.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _stack import (
    DaemonRun,
    LinesSink,
    Stream,
    Timings,
    Window,
    create_topic,
    kafka_settings,
    polls,
    produce,
    raw_read,
    reported_seconds,
    run_daemon,
    servers,
    statm,
    unique,
)

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = ROOT / "streamlstm" / "data" / "model"
DATABASE = "bench"
MEASUREMENT = "anomaly"
POLL = 2000  # events per pipeline call where no Kafka is involved: the daemon's max_poll_records
STATE_POLL = 5000  # events per call while filling the state of many series
MODEL_BATCH = 1024


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_core() -> tuple[Any, Any, Any]:
    """``(Pipeline, PipelineSettings, Point)``."""
    from streamlstm.core.pipeline import Pipeline, PipelineSettings
    from streamlstm.core.records import Point

    return Pipeline, PipelineSettings, Point


def calibration_warmup(artifact: Any) -> int:
    calibration = getattr(artifact, "calibration", None) or {}
    return int(calibration.get("warmup", 200)) if isinstance(calibration, dict) else 200


# ------------------------------------------------------------------------ header


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "?"


def _tansu_version() -> str:
    try:
        from streamlstm.devstack import servers as devstack_servers

        binary = devstack_servers._tansu_binary()
    except Exception:
        return "?"
    return _command_output([binary, "--version"])


def header(args: argparse.Namespace, artifact: Any, pipeline_type: type) -> list[str]:
    arch = artifact.architecture
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                text=True, cwd=ROOT, timeout=10, check=True).stdout
        code = f"git {head}, {len(status.splitlines())} paths changed or untracked"
    except (OSError, subprocess.SubprocessError):
        code = f"{ROOT} (not a git checkout)"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        "streamlstm throughput benchmark",
        f"command   : {shlex.join([Path(sys.executable).name, *sys.argv])}",
        f"date      : {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"machine   : {os.cpu_count()} cores ({affinity} usable), {_cpu_model()}, "
        f"{_memory_total()} RAM, load average at start {load}",
        f"torch     : {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"{torch.get_num_interop_threads()} inter-op threads",
        f"versions  : Python {platform.python_version()}, numpy {np.__version__}, "
        f"kafka-python {_version('kafka-python')}, influxdb-client {_version('influxdb-client')}, "
        f"streamlstm {_version('streamlstm')}",
        f"servers   : tansu {_tansu_version()}, influxd "
        f"{_command_output(['influxd', 'version']) if not args.skip_influx else '(skipped)'}",
        f"code      : {code}; Pipeline from {pipeline_type.__module__}",
        f"model     : {artifact.version} ({args.model}): {arch.cell} window {arch.window}, "
        f"hidden {arch.hidden_size}, {getattr(arch, 'num_layers', '?')} layers, "
        f"{arch.n_features} feature(s); calibration warm-up {calibration_warmup(artifact)} windows",
    ]


# ------------------------------------------------------------------------ Kafka parts


def measure_kafka(args: argparse.Namespace, artifact: Any, stream: Stream) -> dict[str, Any]:
    """Parts 1-3: produce, raw reads, the daemon with each sink."""
    pipeline_type, settings_type, _ = load_core()
    total = args.series * args.events
    out: dict[str, Any] = {"raw": [], "runs": {}}
    with servers(influx=not args.skip_influx, database=DATABASE) as (broker, influx):
        log(f"tansu at {broker.bootstrap}" + (f", InfluxDB at {influx.url}" if influx else ""))
        topic = unique("bench")
        create_topic(broker.bootstrap, topic, args.partitions)
        started = time.perf_counter()
        counts = produce(broker.bootstrap, topic, args.partitions,
                         stream.messages(0, args.events))
        out["produce"] = (sum(counts.values()), time.perf_counter() - started, counts)
        log(f"produced {sum(counts.values()):,} events to {topic} in "
            f"{out['produce'][1]:.1f} s: {dict(sorted(counts.items()))}")
        if sum(counts.values()) != total:
            raise RuntimeError(f"produced {sum(counts.values())} of {total} events")

        def raw() -> dict[int, int]:
            window, ends = raw_read(kafka_settings(broker.bootstrap, topic, unique("raw")),
                                    total)
            out["raw"].append(window)
            log(f"raw read {len(out['raw'])}: {window.events:,} msgs in {window.seconds:.2f} s "
                f"= {window.rate:,.0f} msg/s (wall {window.wall_s:.1f} s with the join)")
            return ends

        def daemon(name: str, sink: Any) -> None:
            pipeline = pipeline_type(artifact, settings_type())
            run = run_daemon(kafka_settings(broker.bootstrap, topic, unique("daemon")), sink,
                             pipeline, ends)
            out["runs"][name] = run
            log(f"daemon, {name}: {run.window.events:,} events in {run.window.seconds:.1f} s "
                f"= {run.window.rate:,.0f} events/s, {run.scored:,} scores")

        ends = raw()
        for _ in range(args.raw_repeats - 3):
            raw()
        daemon("line protocol only", LinesSink(MEASUREMENT))
        if args.raw_repeats > 1:
            raw()
        if influx is not None:
            from streamlstm.config import InfluxSettings
            from streamlstm.sinks.influx import InfluxSink

            daemon("InfluxSink", InfluxSink(InfluxSettings(
                url=influx.url, org="bench", token="", bucket=DATABASE,
                measurement=MEASUREMENT)))
            rows = influx.query(f'SELECT count("score") FROM "{MEASUREMENT}"', db=DATABASE)
            out["influx_points"] = int(rows[0]["count"]) if rows else 0
        if args.raw_repeats > 2:
            raw()
    out["ends"] = ends
    return out


def decode_rate(stream: Stream, artifact: Any, n: int = 20_000) -> float:
    """JsonDecoder alone, events/s: the decoding part of source.poll."""
    from streamlstm.config import DecoderSettings
    from streamlstm.decoding import JsonDecoder

    decoder = JsonDecoder(DecoderSettings(), artifact.feature_names)
    rows = -(-n // stream.n_series)
    messages = list(stream.messages(0, rows))[:n]
    started = time.perf_counter()
    for key, value in messages:
        decoder.decode(key, value)
    return len(messages) / (time.perf_counter() - started)


# ------------------------------------------------------------------------ pipeline alone


def measure_pipeline(args: argparse.Namespace, artifact: Any) -> dict[str, Any]:
    """Part 4: windows/s of the pipeline on warm series, per evidence set, and the raw model.

    Each configuration is timed ``--pipeline-rounds`` times, the configurations taking turns
    (A B C D A B C D ...), so a change in the machine's background load hits each alike; the
    median of the rounds is reported with their spread.
    """
    pipeline_type, settings_type, point_type = load_core()
    stream = Stream(args.pipeline_series, seed=1)
    warm = artifact.architecture.window + calibration_warmup(artifact) + 8
    measure = args.pipeline_points
    default_threads = torch.get_num_threads()
    out: dict[str, Any] = {"warm": warm, "measure": measure, "rates": {}, "model": {},
                           "default_threads": default_threads}

    def timed(pipeline: Any, k_start: int) -> tuple[float, dict[str, float]]:
        batches = list(polls(stream.points(k_start, k_start + measure, point_type), POLL))
        windows = 0
        reported: dict[str, float] = {}
        started = time.perf_counter()
        for batch in batches:
            result = pipeline.process(batch, now=0.0)
            windows += int(getattr(result, "windows", 0) or len(result.scores))
            for name, value in reported_seconds(result).items():
                reported[name] = reported.get(name, 0.0) + value
        seconds = time.perf_counter() - started
        return windows / seconds, {k: v / seconds for k, v in reported.items()}

    kinds = {"model+memory+seasonal+coarse": "all evidence (shipped)",
             "model": "model error only",
             "memory+seasonal+coarse": "memory+seasonal+coarse (model not counted)"}
    pipelines: dict[str, Any] = {}
    for evidence, label in kinds.items():
        try:
            settings = settings_type(evidence=evidence)
        except (TypeError, ValueError) as exc:
            log(f"PipelineSettings(evidence={evidence!r}) refused ({exc}); skipped")
            continue
        log(f"pipeline alone, {label}: warming {args.pipeline_series} series x {warm} points")
        pipeline = pipeline_type(artifact, settings)
        torch.set_num_threads(1)  # not timed: as quick as it goes on a shared machine
        try:
            for batch in polls(stream.points(0, warm, point_type), POLL):
                pipeline.process(batch, now=0.0)
        finally:
            torch.set_num_threads(default_threads)
        pipelines[evidence] = pipeline
    configs = [(label, evidence, 0) for evidence, label in kinds.items() if evidence in pipelines]
    all_evidence = "model+memory+seasonal+coarse"
    if default_threads > 1:
        configs += [(f"{label}, torch on 1 thread", evidence, 1)
                    for evidence, label in kinds.items() if evidence in pipelines]
    next_k = dict.fromkeys(pipelines, warm)
    samples: dict[str, list[tuple[float, dict[str, float]]]] = {c[0]: [] for c in configs}
    for round_ in range(args.pipeline_rounds):
        for label, evidence, threads in configs:
            torch.set_num_threads(threads or default_threads)
            try:
                samples[label].append(timed(pipelines[evidence], next_k[evidence]))
            finally:
                torch.set_num_threads(default_threads)
            next_k[evidence] += measure
        log(f"  round {round_ + 1}: " + ", ".join(
            f"{label} {runs[-1][0]:,.0f}" for label, runs in samples.items()) + " windows/s")
    for label, runs in samples.items():
        rates = [r for r, _ in runs]
        reported = {k: statistics.median(r[k] for _, r in runs if k in r)
                    for k in {k for _, r in runs for k in r}}
        out["rates"][label] = (statistics.median(rates), min(rates), max(rates), reported)

    scorer = getattr(pipelines.get(all_evidence), "scorer", None)
    if scorer is None or not hasattr(scorer, "errors"):
        from streamlstm.core.scoring import Scorer

        scorer = Scorer(artifact)
    pipelines.clear()
    gc.collect()
    arch = artifact.architecture
    batch = np.random.default_rng(0).standard_normal(
        (MODEL_BATCH, arch.window, arch.n_features)).astype(np.float32)
    model_samples: dict[int, list[float]] = {default_threads: [], 1: []}
    for _ in range(args.pipeline_rounds):
        for threads in model_samples:
            torch.set_num_threads(threads)
            try:
                scorer.errors(batch)
                calls, started = 0, time.perf_counter()
                while calls < 2 or time.perf_counter() - started < 1.0:
                    scorer.errors(batch)
                    calls += 1
                model_samples[threads].append(calls * MODEL_BATCH
                                              / (time.perf_counter() - started))
            finally:
                torch.set_num_threads(default_threads)
    for threads, rates in model_samples.items():
        out["model"][threads] = (statistics.median(rates), min(rates), max(rates))
    log("raw model: " + ", ".join(f"{t} thread(s) {r[0]:,.0f}" for t, r in out["model"].items())
        + " windows/s")
    return out


# ------------------------------------------------------------------------ state per series


def state_child(args: argparse.Namespace) -> None:
    """Part 5, in its own process: prints one JSON line."""
    torch.set_num_threads(1)  # memory does not depend on it; the run is shorter
    from streamlstm.model.artifact import load_artifact

    pipeline_type, settings_type, point_type = load_core()
    artifact = load_artifact(args.model)
    window = artifact.architecture.window
    points = args.state_points or window + calibration_warmup(artifact) + 8
    n = args.series_state

    # Pay every lazy initialisation (torch, numpy, imports) on a throwaway pipeline first.
    scratch = Stream(16, seed=7)
    throwaway = pipeline_type(artifact, settings_type(max_series=16))
    for batch in polls(scratch.points(0, window + calibration_warmup(artifact) + 8, point_type),
                       POLL):
        throwaway.process(batch, now=0.0)
    del throwaway, scratch
    stream = Stream(n, seed=3)
    gc.collect()
    base = statm()
    pipeline = pipeline_type(artifact, settings_type(max_series=max(n, 10_000)))
    created = statm()
    full = created
    windows = scores = 0
    started = time.perf_counter()
    last_log = started
    for k in range(points):
        row = list(stream.points(k, k + 1, point_type))
        for start in range(0, n, STATE_POLL):
            result = pipeline.process(row[start:start + STATE_POLL], now=0.0)
            windows += int(getattr(result, "windows", 0) or 0)
            scores += len(result.scores)
        del row, result
        if k == window - 1:
            full = statm()
        if time.perf_counter() - last_log > 30:
            last_log = time.perf_counter()
            rate = (k + 1) * n / (last_log - started)
            log(f"  state: {k + 1}/{points} points per series, {rate:,.0f} events/s, "
                f"about {(points - k - 1) * n / rate:.0f} s left")
    seconds = time.perf_counter() - started
    gc.collect()
    end = statm()
    tracked = None
    for name in ("registry", "store"):  # whichever the core keeps its series in
        held = getattr(pipeline, name, None)
        if held is not None and hasattr(held, "__len__"):
            tracked = len(held)
            break
    print(json.dumps({
        "series": n, "points": points, "max_series": max(n, 10_000), "seconds": seconds,
        "windows": windows, "scores": scores, "tracked": tracked,
        "base": base, "created": created, "full": full, "end": end,
    }))


def measure_state(args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--state-child",
               "--series-state", str(args.series_state), "--model", str(args.model)]
    if args.state_points:
        command += ["--state-points", str(args.state_points)]
    log(f"state: {args.series_state:,} series in a subprocess")
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.state_timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the state subprocess failed with code {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------ report


def _ratio(value: float, base: float) -> str:
    return f"{value / base:6.3f}x" if base > 0 else "     ?"


def report_kafka(args: argparse.Namespace, kafka: dict[str, Any], decode: float) -> list[str]:
    raws: list[Window] = kafka["raw"]
    raw_rate = statistics.median(w.rate for w in raws)
    produced, produce_s, counts = kafka["produce"]
    total = args.series * args.events
    lines = [
        "",
        f"1. Raw consume rate ({args.series:,} series x {args.events} one-minute events = "
        f"{total:,} JSON events keyed by series, {args.partitions} partitions; produced in "
        f"{produce_s:.1f} s = {produced / produce_s:,.0f} msg/s; per partition "
        f"{', '.join(f'{p}: {c:,}' for p, c in sorted(counts.items()))})",
        "   bare KafkaConsumer, fresh group each read, the daemon's fetch/poll settings "
        "(max_poll_records 2000, poll timeout 500 ms, no decoding, no commits); timed from the "
        "first poll after the group assigned partitions",
        "   reads: " + ", ".join(f"{w.rate:,.0f}" for w in raws) + " msg/s",
        f"   median: {raw_rate:12,.0f} msg/s   (1.000x, the baseline of parts 2 and 3)",
        "",
        "2. The daemon end to end (KafkaSource -> Pipeline(PipelineSettings()) -> sink -> commit,",
        "   Service.run_once until every partition is committed to its end; cold series, each",
        f"   run a fresh group and a fresh pipeline; window {args.window}, stride 1)",
        f"   {'sink':40} {'events/s':>10} {'x raw':>8} {'scores':>9} {'windows':>9} "
        f"{'turns':>6} {'wall s':>7}",
    ]
    expected = args.series * max(0, args.events - args.window + 1)
    runs: dict[str, DaemonRun] = kafka["runs"]
    labels = {"line protocol only": "in-process, builds line protocol only",
              "InfluxSink": "InfluxSink -> InfluxDB 1.x (v2 shim)"}
    for name, run in runs.items():
        lines.append(f"   {labels.get(name, name):40} {run.window.rate:10,.0f} "
                     f"{_ratio(run.window.rate, raw_rate):>8} {run.scored:9,} {run.windows:9,} "
                     f"{run.turns:6} {run.window.wall_s:7.1f}")
    lines.append(f"   scores expected per run (stride 1, each series' first {args.window - 1} "
                 f"events fill its window): {expected:,}; only those of the measured turns "
                 "are counted above")
    if "InfluxSink" in runs and "line protocol only" in runs:
        lp, ix = runs["line protocol only"].window.rate, runs["InfluxSink"].window.rate
        lines.append(f"   the store costs {1 / ix - 1 / lp:+.1e} s per event "
                     f"(InfluxSink at {ix / lp:.3f}x the line-protocol-only run)")
    if "influx_points" in kafka:
        lines.append(f"   InfluxDB holds {kafka['influx_points']:,} points after the run "
                     f"(expected {expected:,})")
    if args.events - args.window + 1 < 200:
        lines.append(f"   note: with {args.events} events per series no calibrator passes its "
                     "warm-up (200 windows), so this is the cheaper cold-series path; part 4 "
                     "measures warm series")

    lines += ["", "3. Where the daemon's time goes (timing proxies around the adapters; "
              "measured turns only)"]
    for name, run in runs.items():
        lines += stage_table(labels.get(name, name), run, decode)
    return lines


def stage_table(label: str, run: DaemonRun, decode: float) -> list[str]:
    timings: Timings = run.timings
    measured = run.window.seconds
    events = max(run.window.events, 1)
    lines = [f"   {label}: {run.window.events:,} events in {measured:.2f} s, {run.turns} turns",
             f"     {'stage':44} {'seconds':>8} {'share':>6} {'calls':>6} {'ms/call':>8} "
             f"{'us/event':>9}"]
    described = {
        "source.poll": "source.poll (Kafka fetch + JSON decode)",
        "pipeline.process": "pipeline.process",
        "sink.write": "sink.write",
        "source.commit": "source.commit (synchronous offset commit)",
        "source.lag": "source.lag (Service._update_gauges, every turn)",
        "source.dead_letter": "source.dead_letter",
    }
    accounted = 0.0

    def row(name: str, seconds: float, calls: int | str) -> str:
        per_call = f"{seconds / calls * 1000:8.2f}" if isinstance(calls, int) and calls else ""
        return (f"     {name:44} {seconds:8.2f} {seconds / measured:6.1%} {calls!s:>6} "
                f"{per_call:>8} {seconds / events * 1e6:9.1f}")

    order = ["source.poll", "pipeline.process", "sink.write", "source.commit", "source.lag",
             "source.dead_letter"]
    for name in order + sorted(set(timings.stages) - set(order)):
        stage = timings.stages.get(name)
        if stage is None:
            continue
        accounted += stage.seconds
        lines.append(row(described.get(name, name), stage.seconds, stage.calls))
        if name == "source.poll" and decode > 0:
            lines.append(row("  of which JSON decode (JsonDecoder apart)", events / decode, ""))
        if name == "pipeline.process":
            for key, value in sorted(timings.reported.items()):
                lines.append(row(f"  of which result.{key}", value, ""))
    lines.append(row("service loop rest (metrics, list building)", run.service_seconds
                     - accounted, ""))
    lines.append(row("between turns (benchmark loop)", measured - run.service_seconds, ""))
    if timings.stages:
        top = max(timings.stages.items(), key=lambda item: item[1].seconds)
        lines.append(f"     largest stage: {top[0]}, {top[1].seconds / measured:.0%} of the "
                     "measured time")
    return lines


def report_pipeline(args: argparse.Namespace, part: dict[str, Any]) -> list[str]:
    rates = part["rates"]
    nan = float("nan")
    base = rates.get("all evidence (shipped)", (nan,))[0]
    lines = [
        "",
        f"4. The pipeline alone (no Kafka): {args.pipeline_series} series warmed with "
        f"{part['warm']} points each (calibrators past their warm-up), then timed on "
        f"{part['measure']} more points each per round, in calls of {POLL} events; median of "
        f"{args.pipeline_rounds} interleaved rounds (min-max)",
        f"   {'configuration':58} {'windows/s':>10} {'(min-max)':>17} {'x all':>7} "
        f"{'us/window':>10}",
    ]

    def row(label: str, median: float, low: float, high: float) -> str:
        spread = f"({low:,.0f}-{high:,.0f})"
        return (f"   {label:58} {median:10,.0f} {spread:>17} {_ratio(median, base):>7} "
                f"{1e6 / median:10.1f}")

    for label, (median, low, high, reported) in rates.items():
        lines.append(row(label, median, low, high))
        for key, value in sorted(reported.items()):
            lines.append(f"     result.{key}: {value:.0%} of the process() time")
    for threads, (median, low, high) in part["model"].items():
        lines.append(row(f"raw model, Scorer.errors [{MODEL_BATCH}, W, F], {threads} thread"
                         + ("s" if threads > 1 else ""), median, low, high))
    for threads in part["model"]:
        suffix = "" if threads == part["default_threads"] else ", torch on 1 thread"
        names = [f"{label}{suffix}" for label in
                 ("all evidence (shipped)", "model error only",
                  "memory+seasonal+coarse (model not counted)")]
        if not all(name in rates for name in names):
            continue
        all_us, model_us, evidence_us = (1e6 / rates[name][0] for name in names)
        network_us = 1e6 / part["model"][threads][0]
        lines += [
            f"   per window on {threads} torch thread(s): all evidence {all_us:.1f} us; the "
            f"network alone {network_us:.1f} us; model-only path {model_us:.1f} us; "
            f"evidence-only path {evidence_us:.1f} us",
            f"     => network {network_us / all_us:.0%} of the shipped path; memory, seasonal "
            f"and coarse add {all_us - model_us:.1f} us (all - model-only); everything but the "
            f"network {all_us - network_us:.1f} us (all - network)",
        ]
    return lines


def report_state(state: dict[str, Any]) -> list[str]:
    n = state["series"]
    (vm0, rss0), (vm1, rss1) = state["base"], state["created"]
    (vm2, rss2), (vm3, rss3) = state["full"], state["end"]
    rate = n * state["points"] / state["seconds"]
    per_series = (rss3 - rss0) / n
    lines = [
        "",
        f"5. State per series (subprocess, Pipeline(max_series={state['max_series']:,}), "
        f"{n:,} series x {state['points']} points = {n * state['points']:,} events in calls "
        f"of {STATE_POLL}, {state['seconds']:.0f} s = {rate:,.0f} events/s on 1 torch thread; "
        f"{state['scores']:,} scores, {state['tracked'] if state['tracked'] is not None else '?'}"
        " series tracked at the end)",
        f"   {'after':44} {'RSS growth':>12} {'per series':>11} {'VM growth':>12} "
        f"{'per series':>11}",
    ]
    for label, vm, rss in (("creating the pipeline (max_series slots)", vm1, rss1),
                           ("every series' first full window", vm2, rss2),
                           (f"{state['points']} points each (warm calibrators)", vm3, rss3)):
        lines.append(f"   {label:44} {(rss - rss0) / 2**20:9,.1f} MiB {(rss - rss0) / n:9,.0f} B "
                     f"{(vm - vm0) / 2**20:9,.1f} MiB {(vm - vm0) / n:9,.0f} B")
    if state["max_series"] > n:
        lines.append(f"   (max_series {state['max_series']:,} > {n:,} series: what is allocated "
                     "per slot is divided over fewer series here)")
    lines.append(f"   => {per_series:,.0f} bytes per series (RSS); 100,000 series would hold "
                 f"about {per_series * 1e5 / 2**30:.2f} GiB (target: under 2 GB)")
    lines.append("   (RSS counts touched pages: buffers that fill as a series ages, such as "
                 "calibrator histories, grow further; VM growth bounds what is allocated)")
    return lines


# ------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=1000, help="series on the topic")
    parser.add_argument("--events", type=int, default=200, help="events per series")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="model directory")
    parser.add_argument("--skip-influx", action="store_true",
                        help="no InfluxDB: the daemon runs with the line-protocol sink only")
    parser.add_argument("--raw-repeats", type=int, default=3, help="raw reads (median)")
    parser.add_argument("--pipeline-series", type=int, default=100,
                        help="series for the pipeline-alone part")
    parser.add_argument("--pipeline-points", type=int, default=32,
                        help="timed points per series and round in the pipeline-alone part")
    parser.add_argument("--pipeline-rounds", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=-1,
                        help="torch intra-op threads (default: the daemon's model.threads; "
                             "0: torch's own, one per core)")
    parser.add_argument("--series-state", type=int, default=10_000,
                        help="series for the state part (100000: do they fit in 2 GB?)")
    parser.add_argument("--state-points", type=int, default=0,
                        help="points per series in the state part (default: window + "
                             "calibration warm-up + 8)")
    parser.add_argument("--state-timeout", type=float, default=3600.0)
    parser.add_argument("--skip-state", action="store_true")
    parser.add_argument("--state-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.series, args.events, args.partitions, args.series_state, args.raw_repeats,
           args.pipeline_series, args.pipeline_points, args.pipeline_rounds) < 1:
        parser.error("counts must be positive")
    return args


def main() -> int:
    args = parse_args()
    if args.state_child:
        state_child(args)
        return 0
    from streamlstm.model.artifact import load_artifact

    if args.torch_threads < 0:
        from streamlstm.config import ModelSettings

        args.torch_threads = ModelSettings().threads
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    began = time.perf_counter()
    artifact = load_artifact(args.model)
    args.window = artifact.architecture.window
    pipeline_type, _, _ = load_core()
    lines = header(args, artifact, pipeline_type)
    print("\n".join(lines), flush=True)
    stream = Stream(args.series, seed=0)

    sections: list[str] = []
    took: dict[str, float] = {}
    started = time.perf_counter()
    kafka = measure_kafka(args, artifact, stream)
    took["Kafka parts (1-3)"] = time.perf_counter() - started
    decode = decode_rate(stream, artifact)
    sections += report_kafka(args, kafka, decode)
    print("\n".join(sections), flush=True)

    started = time.perf_counter()
    part4 = report_pipeline(args, measure_pipeline(args, artifact))
    took["pipeline alone (4)"] = time.perf_counter() - started
    print("\n".join(part4), flush=True)

    if not args.skip_state:
        started = time.perf_counter()
        part5 = report_state(measure_state(args))
        took["state (5)"] = time.perf_counter() - started
        print("\n".join(part5), flush=True)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ntook {time.perf_counter() - began:.0f} s (" + ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in took.items()) +
        f"); load average at the end {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
