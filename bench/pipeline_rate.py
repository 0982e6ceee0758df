"""Windows per second of the pipeline alone on warm series: one figure to compare two checkouts.

    python bench/pipeline_rate.py [--series 1000] [--poll 2000]

1000 series of a noisy sine are warmed with 250 points each (calibrators past their warm-up),
then 50 more points each are scored in polls of ``--poll`` events, on one torch thread. Run it
in two checkouts, one after the other, to compare them (it imports the pipeline from wherever
that checkout keeps it).
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm, measured = 250, 50
    rng = np.random.default_rng(0)
    n = warm + measured
    values = np.sin(np.arange(n)[None] / 20 + rng.uniform(0, 6, (args.series, 1)))
    values += rng.normal(0, 0.1, (args.series, n))
    points = [Point(f"s{s}", 1.7e9 + 60.0 * k, (float(values[s, k]),))
              for k in range(n) for s in range(args.series)]
    pipeline = Pipeline(load_artifact(args.model), PipelineSettings(max_series=args.series))
    cut = warm * args.series
    for start in range(0, cut, 4000):
        pipeline.process(points[start : min(start + 4000, cut)], now=0.0)
    started = time.perf_counter()
    for start in range(cut, len(points), args.poll):
        pipeline.process(points[start : start + args.poll], now=0.0)
    rate = (len(points) - cut) / (time.perf_counter() - started)
    print(f"{rate:,.0f} windows/s ({args.series} warm series, polls of {args.poll} events, "
          "one torch thread)")


if __name__ == "__main__":
    main()
