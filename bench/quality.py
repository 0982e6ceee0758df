"""Detection quality on labelled data (NAB format), with the replay cost beside it.

    python bench/quality.py [--data ../shared/nab-dev] [--model PATH] [--output DIR]

Runs the daemon's pipeline over every labelled file (each file a series it has never seen,
scored causally from its first row) and prints:
- the three NAB profiles at the threshold NAB's rules optimise over the whole set, and at the
  threshold the model ships with;
- window precision, recall and F1 at the standard profile's threshold;
- rows/s of the replay;
- a trade-off table at fixed thresholds (``--thresholds``): scores, windows found, false
  alarms per 10k rows;
- an ablation in the same run: the model's reconstruction error alone, the series' window
  memory alone, and both (the default).
It writes ``per_file.txt`` (the per-file table), ``quality.json`` and one plot per series
under ``--output``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from streamlstm import evaluation
from streamlstm.calibration import CalibrationSettings
from streamlstm.cli import BUNDLED_MODEL, _expand_data, score_labelled_files, write_plots
from streamlstm.model.artifact import load_artifact
from streamlstm.pipeline import PipelineSettings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "nab-dev"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="a directory with windows.json and data/ (NAB layout)")
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--output", default="bench-quality", help="directory for the results")
    parser.add_argument("--no-ablation", action="store_true", help="score the default only")
    parser.add_argument("--thresholds", default="0.25,0.27,0.3,0.35,0.4",
                        help="fixed thresholds for the trade-off table (comma-separated)")
    args = parser.parse_args()

    data = Path(args.data)
    labels = evaluation.load_windows(data / "windows.json")
    files = _expand_data([str(data / "data")])
    artifact = load_artifact(args.model)
    calibration = CalibrationSettings.from_dict(artifact.calibration)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, Any]] = {}
    default = PipelineSettings().evidence
    variants = [default]
    if not args.no_ablation:  # each kind alone, and the default less the seasonal comparison
        variants += ["model", "memory", "seasonal", "model+memory"]
    for evidence in variants:
        series, rows, seconds = score_labelled_files(
            files, labels, artifact, settings=PipelineSettings(evidence=evidence))
        report = evaluation.evaluate(series, hold=calibration.alarm_hold)
        fixed = evaluation.evaluate(series, thresholds=[calibration.threshold],
                                    hold=calibration.alarm_hold)
        results[evidence] = {
            "optimised": {n: round(p.score, 1) for n, p in report.profiles.items()},
            "thresholds": {n: p.threshold for n, p in report.profiles.items()},
            "at_model_threshold": {n: round(p.score, 1) for n, p in fixed.profiles.items()},
            "window_metrics": report.overall.to_dict(),
            "rows": rows,
            "rows_per_second": round(rows / seconds),
        }
        if evidence == default:
            tradeoff = []
            for threshold in (float(t) for t in args.thresholds.split(",") if t):
                at = evaluation.evaluate(series, thresholds=[threshold],
                                         hold=calibration.alarm_hold).profiles
                tradeoff.append((threshold, at, at["standard"].fp / rows * 1e4))
            (out / "per_file.txt").write_text(report.format_table() + "\n")
            report.write_json(out / "report.json")
            write_plots(series, report.threshold, calibration.alarm_hold, out / "plots")

    print(f"model {artifact.version}, {len(files)} files, alarm hold {calibration.alarm_hold} "
          f"windows, model threshold {calibration.threshold:g}")
    print(f"{'evidence':22} {'standard':>9} {'low FP':>7} {'low FN':>7}   "
          f"{'at model thr (std/FP/FN)':>26} {'P':>6} {'R':>6} {'F1':>6} {'rows/s':>8}")
    for evidence, r in results.items():
        o, f, m = r["optimised"], r["at_model_threshold"], r["window_metrics"]
        print(f"{evidence:22} {o['standard']:9.1f} {o['reward_low_fp']:7.1f} "
              f"{o['reward_low_fn']:7.1f}   {f['standard']:8.1f} / {f['reward_low_fp']:5.1f} / "
              f"{f['reward_low_fn']:5.1f}    {m['precision']:6.3f} {m['recall']:6.3f} "
              f"{m['f1']:6.3f} {r['rows_per_second']:8,d}")
    base = results[default]["rows_per_second"]
    for evidence in variants[1:]:
        ratio = results[evidence]["rows_per_second"] / base
        print(f"replay speed of {evidence}: {ratio:.2f}x the default")
    print(f"\ntrade-off at fixed thresholds (default evidence, hold {calibration.alarm_hold}):")
    print(f"{'threshold':>9} {'standard':>9} {'low FP':>7} {'low FN':>7} {'windows':>9} "
          f"{'FP/10k rows':>12}")
    for threshold, at, fp_rate in tradeoff:
        std = at["standard"]
        print(f"{threshold:9.2f} {std.score:9.1f} {at['reward_low_fp'].score:7.1f} "
              f"{at['reward_low_fn'].score:7.1f} {std.tp:>4}/{std.tp + std.fn:<4} "
              f"{fp_rate:12.1f}")
    (out / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"per-file table: {out / 'per_file.txt'}; plots: {out / 'plots'}/")


if __name__ == "__main__":
    main()
