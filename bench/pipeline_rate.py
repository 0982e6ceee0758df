"""Windows per second of the pipeline alone on warm series: one figure to compare two checkouts.

    python bench/pipeline_rate.py [--series 1000] [--poll 2000]

1000 series of a noisy sine are warmed with 250 points each (calibrators past their warm-up),
then 50 more points each are scored in polls of ``--poll`` events, on one torch thread. Run it
in two checkouts, one after the other, to compare them (it imports the pipeline from wherever
that checkout keeps it). Where the pipeline can run its model in a thread beside the rounds
(``overlap``), it measures both ways in the same run, alternating ``--repeats`` times, and
prints the ratio.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
import torch

try:
    from streamlstm.core.pipeline import Pipeline, PipelineSettings
    from streamlstm.core.records import Point
except ImportError:  # a checkout from before the core moved into streamlstm/core/
    from streamlstm.pipeline import Pipeline, PipelineSettings  # type: ignore[no-redef]
    from streamlstm.records import Point  # type: ignore[no-redef]
from streamlstm.model.artifact import load_artifact

BUNDLED = Path(__file__).resolve().parents[1] / "streamlstm" / "data" / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--poll", type=int, default=2000)
    parser.add_argument("--model", default=str(BUNDLED))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm, measured = 250, 50
    rng = np.random.default_rng(0)
    n = warm + measured
    values = np.sin(np.arange(n)[None] / 20 + rng.uniform(0, 6, (args.series, 1)))
    values += rng.normal(0, 0.1, (args.series, n))
    points = [Point(f"s{s}", 1.7e9 + 60.0 * k, (float(values[s, k]),))
              for k in range(n) for s in range(args.series)]
    can_overlap = "overlap" in inspect.signature(Pipeline).parameters
    ways = [True, False] if can_overlap else [None]
    artifact = load_artifact(args.model)
    pipelines = {}
    cut = warm * args.series
    for way in ways:
        extra = {} if way is None else {"overlap": way}
        pipelines[way] = Pipeline(artifact, PipelineSettings(max_series=args.series), **extra)
        for start in range(0, cut, 4000):
            pipelines[way].process(points[start : min(start + 4000, cut)], now=0.0)
    # Each repeat scores the same measured points from the same warm state: a snapshot taken
    # after the warm-up is restored before each.
    warm_state = {way: p.snapshot() for way, p in pipelines.items()}
    rates: dict[bool | None, list[float]] = {way: [] for way in ways}
    for _ in range(args.repeats):
        for way in ways:
            pipeline = pipelines[way]
            pipeline.reset_state()
            pipeline.restore(warm_state[way])
            started = time.perf_counter()
            for start in range(cut, len(points), args.poll):
                pipeline.process(points[start : start + args.poll], now=0.0)
            rates[way].append((len(points) - cut) / (time.perf_counter() - started))
    for way in ways:
        label = {None: "", True: ", model beside the rounds",
                 False: ", model before the rounds"}[way]
        best = max(rates[way])
        print(f"{best:,.0f} windows/s (best of {args.repeats}: "
              f"{', '.join(f'{r:,.0f}' for r in rates[way])}; {args.series} warm series, "
              f"polls of {args.poll} events, one torch thread{label})")
    if can_overlap:
        ratio = [a / b for a, b in zip(rates[True], rates[False], strict=True)]
        print(f"beside / before: {', '.join(f'{r:.2f}' for r in ratio)} per repeat")


if __name__ == "__main__":
    main()
