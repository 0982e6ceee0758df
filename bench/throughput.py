"""Throughput and memory of the scoring path, as ratios against a baseline in the same run.

    python bench/throughput.py [--series 200] [--points 100] [--window 32] [--hidden 32]

Figures (all measured in this process, one after the other, so machine noise hits each alike):
- pipeline events/s with the daemon's batching (one model call per poll of --poll events),
  against the baseline of one model call per event: the gain from batching across series;
- the same with GRU cells instead of LSTM;
- JSON decoding and InfluxDB line-protocol building per event, for scale;
- the same scoring the model error alone (no window memory): what novelty costs;
- memory held per tracked series by the window store and by the whole pipeline (tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from dataclasses import replace

import numpy as np
import torch

from streamlstm.calibration import CalibrationSettings
from streamlstm.model.artifact import Artifact
from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder
from streamlstm.pipeline import Pipeline, PipelineSettings
from streamlstm.records import Point
from streamlstm.windows import WindowStore


def untrained_artifact(window: int, hidden: int, cell: str) -> Artifact:
    torch.manual_seed(0)
    arch = Architecture(n_features=1, window=window, hidden_size=hidden, cell=cell)  # type: ignore[arg-type]
    model = LSTMAutoencoder(arch)
    return Artifact(arch, model.state_dict(), ["value"], {"series_scale": {}},
                    CalibrationSettings().to_dict(), version=f"bench-{cell}")


def stream(series: int, points: int, seed: int = 0) -> list[Point]:
    """``points`` events for each of ``series`` series, interleaved as a broker delivers them."""
    rng = np.random.default_rng(seed)
    t = np.arange(points) * 60.0
    out = []
    values = np.sin(t[None, :] / 3600.0 + rng.uniform(0, 6, (series, 1))) + rng.normal(
        0, 0.1, (series, points))
    for k in range(points):
        for s in range(series):
            out.append(Point(f"host{s}.cpu", 1.7e9 + t[k], (float(values[s, k]),)))
    return out


def events_per_second(artifact: Artifact, warm: list[Point], measured: list[Point],
                      poll: int, settings: PipelineSettings | None = None) -> float:
    """Score ``measured`` in polls of ``poll`` events after ``warm`` filled every window."""
    settings = replace(settings or PipelineSettings(), max_series=len(warm) + 1)
    pipeline = Pipeline(artifact, settings)
    pipeline.process(warm, now=0.0)
    started = time.perf_counter()
    for start in range(0, len(measured), poll):
        pipeline.process(measured[start : start + poll], now=0.0)
    return len(measured) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--poll", type=int, default=2000, help="events per poll (batch)")
    parser.add_argument("--baseline-events", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    points = stream(args.series, args.points)
    lstm = untrained_artifact(args.window, args.hidden, "lstm")
    gru = untrained_artifact(args.window, args.hidden, "gru")
    # The first W rounds fill every window; each measured event then completes one window.
    warm, measured = points[: args.window * args.series], points[args.window * args.series :]
    events_per_second(lstm, warm, measured[: args.poll], args.poll)  # pay lazy init once

    # Baseline: the same kind of windows, one model call per event (a naive daemon).
    baseline = events_per_second(lstm, warm, measured[: args.baseline_events], 1)
    batched = events_per_second(lstm, warm, measured, args.poll)
    batched_gru = events_per_second(gru, warm, measured, args.poll)
    model_only = events_per_second(lstm, warm, measured, args.poll,
                                   PipelineSettings(evidence="model"))

    messages = [json.dumps({"series": p.series, "timestamp": p.timestamp, "value": p.values[0]})
                .encode() for p in points[:20000]]
    from streamlstm.config import DecoderSettings
    from streamlstm.decoding import JsonDecoder

    decoder = JsonDecoder(DecoderSettings())
    started = time.perf_counter()
    for message in messages:
        decoder.decode(None, message)
    decode_rate = len(messages) / (time.perf_counter() - started)

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    store = WindowStore(args.window, 1, max_series=10_000)
    store.append([Point(f"s{i}", 1.0, (0.0,)) for i in range(10_000)], now=0.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))

    # Everything the pipeline holds per series once each has scored windows: window buffer,
    # spread, window memory, two calibrators, alarm state.
    tracked = 1000
    state_points = stream(tracked, args.window + 8, seed=1)
    pipeline = Pipeline(lstm, PipelineSettings(max_series=tracked))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    pipeline.process(state_points, now=0.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_series = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / tracked

    print(f"stream: {args.series} series x {args.points} points, window {args.window}, "
          f"hidden {args.hidden}, poll {args.poll}, torch threads {torch.get_num_threads()}")
    print(f"baseline (one model call per event): {baseline:12,.0f} events/s   1.00x")
    print(f"batched LSTM (daemon path)         : {batched:12,.0f} events/s "
          f"{batched / baseline:6.2f}x")
    print(f"batched GRU                        : {batched_gru:12,.0f} events/s "
          f"{batched_gru / baseline:6.2f}x  ({batched_gru / batched:.2f}x LSTM)")
    print(f"model error only (no memory)       : {model_only:12,.0f} events/s "
          f"{model_only / baseline:6.2f}x  (the memory and calibration cost "
          f"{1 - batched / model_only:.0%} of the time)")
    print(f"JSON decode only                   : {decode_rate:12,.0f} events/s "
          f"{decode_rate / batched:6.2f}x the batched pipeline")
    print(f"window store memory                : {held / 10_000:12,.0f} bytes per series "
          f"(10,000 series, window {args.window})")
    print(f"pipeline state                     : {per_series:12,.0f} bytes per series "
          f"({tracked:,} series scored, default memory and calibration)")


if __name__ == "__main__":
    main()
