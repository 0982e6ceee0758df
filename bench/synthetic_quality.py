"""The generated suite: injected incidents of known kind and extent, repeated, per kind.

    python bench/synthetic_quality.py [--model DIR] [--seeds 3] [--json]
    python bench/quality.py --synthetic            (the same)

Each case is a normal series (a daily wave at five-minute steps with noise, on a level) with
three copies of one kind of incident, 50 to 200 points apart, after 1,500 normal points
(well past the calibration warm-up). Kinds: spike, dip, level shift, variance change, missing
daily peak, and sustained deviations of 50, 200 and 500 points. The shipped detector (the
bundled model, `PipelineSettings()`, the artifact's calibration) scores every case with the
real `Pipeline`; its ``is_anomaly`` flags (every point at or above the threshold) are judged
per incident and per point:

* incident detected: a flag inside the incident or within one window after its start (a spike
  lives on in every window that holds it);
* anomalous points flagged: the share of the incident's points flagged while it lasts, up to
  ``accept_after`` windows (the issue's measure: a deviation lasting longer is by design the
  new normal from there on); beside it the share over the whole incident;
* normal points flagged: the share of points outside every incident (and a window after it).

Reported per kind and per repeat (first, second, third), since a detector that learns its
anomalies flags the first copy and misses the later ones. Nothing here is tuned on these cases.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamlstm.core.pipeline import Pipeline, PipelineSettings, score_points
from streamlstm.core.records import Point
from streamlstm.model.artifact import load_artifact

BUNDLED = Path(__file__).resolve().parents[1] / "streamlstm" / "data" / "model"
STEP_S = 300.0
DAY = 288  # points a day
WARM = 1_500  # normal points before the first incident
KINDS = ("spike", "dip", "level_shift", "variance", "missing_peak", "sustained_50",
         "sustained_200", "sustained_500")


@dataclass
class Case:
    kind: str
    values: np.ndarray
    incidents: list[tuple[int, int]]  # [start, stop) of each copy


def make_case(kind: str, seed: int) -> Case:
    rng = np.random.default_rng(seed)
    level, amplitude, noise = rng.uniform(20, 80), rng.uniform(3, 10), rng.uniform(0.3, 1.0)
    length = {"spike": 1, "dip": 1, "level_shift": 300, "variance": 150, "missing_peak": 60,
              "sustained_50": 50, "sustained_200": 200, "sustained_500": 500}[kind]
    gaps = rng.integers(50, 201, 3)
    starts, at = [], WARM
    for gap in gaps:
        if kind == "missing_peak":  # centred on the next daily peak
            at += (DAY // 4 - length // 2 - at % DAY) % DAY
        starts.append(int(at))
        at += length + int(gap)
    n = at + 600
    t = np.arange(n)
    wave = amplitude * np.cos(2 * np.pi * (t - DAY // 4) / DAY)  # peaks at DAY // 4 each day
    values = level + wave + noise * rng.standard_normal(n)
    incidents = []
    for start in starts:
        stop = start + length
        span = slice(start, stop)
        if kind == "spike":
            values[start] += 12 * noise + 2 * amplitude
        elif kind == "dip":
            values[start] -= 12 * noise + 2 * amplitude
        elif kind == "level_shift":
            values[span] += 6 * noise + amplitude
        elif kind == "variance":
            values[span] += 5 * noise * rng.standard_normal(length)
        elif kind == "missing_peak":
            values[span] = level + noise * rng.standard_normal(length)
        else:  # a sustained deviation: a plateau off the wave's normal range
            values[span] = level + 1.6 * amplitude + noise * rng.standard_normal(length)
        incidents.append((start, stop))
    return Case(kind, values, incidents)


def judge(case: Case, flags: np.ndarray, window: int,
          accept_after: int) -> dict[str, list[float]]:
    """Per copy: alarmed (0/1) and the share of its points flagged, up to ``accept_after``
    and over all of it; normal points flagged."""
    alarmed, share, whole = [], [], []
    normal = np.ones(len(flags), bool)
    normal[:window] = False
    for start, stop in case.incidents:
        reach = max(stop, start + window)
        alarmed.append(float(flags[start:reach].any()))
        until = min(stop, start + accept_after) if accept_after else stop
        share.append(float(flags[start:until].mean()) if stop - start > 1 else alarmed[-1])
        whole.append(float(flags[start:stop].mean()) if stop - start > 1 else alarmed[-1])
        normal[start:reach + window] = False
    return {"alarmed": alarmed, "flagged": share, "flagged_whole": whole,
            "normal_flagged": [float(flags[normal].mean())]}


def run(model: Path, seeds: int) -> dict[str, dict[str, float]]:
    artifact = load_artifact(model)
    window = artifact.architecture.window
    results: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        collected: dict[str, list[list[float]]] = {"alarmed": [], "flagged": [],
                                                   "flagged_whole": [], "normal_flagged": []}
        for seed in range(seeds):
            case = make_case(kind, 1_000 * KINDS.index(kind) + seed)
            points = [Point(f"{kind}-{seed}", 1.6e9 + i * STEP_S, (float(v),))
                      for i, v in enumerate(case.values)]
            settings = PipelineSettings()
            scores = score_points(Pipeline(artifact, settings), points)
            flags = np.array([bool(s is not None and s.is_anomaly) for s in scores])
            for key, values in judge(case, flags, window, settings.accept_after).items():
                collected[key].append(values)
        alarmed = np.array(collected["alarmed"])  # [seeds, 3 copies]
        flagged = np.array(collected["flagged"])
        results[kind] = {
            "alarmed": float(alarmed.mean()),
            **{f"alarmed_copy{i + 1}": float(alarmed[:, i].mean()) for i in range(3)},
            "points_flagged": float(flagged.mean()),
            "points_flagged_whole": float(np.mean(collected["flagged_whole"])),
            "normal_flagged": float(np.mean(collected["normal_flagged"])),
        }
    every = list(results.values())
    results["all"] = {key: float(np.mean([r[key] for r in every])) for key in every[0]}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BUNDLED))
    parser.add_argument("--seeds", type=int, default=3, help="cases per kind")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = run(Path(args.model), args.seeds)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"generated suite, {args.seeds} cases a kind, 3 copies each (model {args.model})")
    print(f"{'kind':>14}  {'detected':>8}  {'1st':>5} {'2nd':>5} {'3rd':>5}  "
          f"{'points flagged':>14}  {'(all of it)':>11}  {'normal flagged':>14}")
    for kind, r in results.items():
        print(f"{kind:>14}  {r['alarmed']:8.0%}  {r['alarmed_copy1']:5.0%} "
              f"{r['alarmed_copy2']:5.0%} {r['alarmed_copy3']:5.0%}  "
              f"{r['points_flagged']:14.1%}  {r['points_flagged_whole']:11.1%}  "
              f"{r['normal_flagged']:14.2%}")
    print(f"points flagged: the share of an incident's points flagged up to accept_after "
          f"({PipelineSettings().accept_after}) windows; (all of it): over its whole length")


if __name__ == "__main__":
    main()
