"""Detection quality on labelled data (NAB format), with the replay cost beside it.

    python bench/quality.py [--data DIR [DIR ...]] [--model PATH] [--output DIR] [--json]

``--data`` takes one or more directories in NAB layout (``windows.json`` + ``data/``; default
``../shared/nab-dev`` and ``../shared/nab-more`` beside the repository). Their labelled files are
pooled (labels merged; keys are ``category/file.csv``). Each file runs through the daemon's
pipeline as a series it has never seen, scored causally from its first row, once per run: every
table below reuses those scores. It prints:
- the three NAB profiles at the threshold NAB's rules optimise over the whole pool, and at the
  threshold the model ships with;
- window precision, recall and F1 at the standard profile's threshold;
- rows/s of the replay;
- a trade-off table at fixed thresholds (``--thresholds``): scores, windows found, false
  alarms per 10k rows;
- per category (the first part of a file's key): each category's files scored alone at the
  pooled-optimised thresholds, at the shipped threshold, and at the category's own optimum;
- leave-one-category-out: for each category, the threshold maximising the standard profile on
  all the other categories, and the held-out category scored at it; the mean and the pooled sum
  of the held-out scores (a category without labelled windows, such as artificialNoAnomaly, has
  no normalised score of its own, but its false alarms count in the pooled sum);
- an ablation in the same run (skip it with ``--no-ablation``): the model's reconstruction
  error alone, the series' window memory alone, the seasonal comparison alone, model and memory
  together, and the default less the model (does the LSTM earn its place?), against the
  default.
It writes ``per_file.txt`` (the per-file table), ``report.json``, ``quality.json`` and one plot
per series (unless ``--no-plots``) under ``--output``. With ``--json``, ``quality.json`` holds
every figure printed (per category, leave-one-category-out, the run's settings) besides the
keys it always has.

Only public entry points compute scores (``score_labelled_files``, ``evaluation.evaluate``,
``load_artifact``, ``PipelineSettings``), so the script does not depend on the detector's
internals.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlstm
from streamlstm import evaluation
from streamlstm.cli import BUNDLED_MODEL, score_labelled_files, write_plots
from streamlstm.core.calibration import CalibrationSettings
from streamlstm.core.pipeline import PipelineSettings
from streamlstm.model.artifact import load_artifact

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_DATA = [SHARED / "nab-dev", SHARED / "nab-more"]
PROFILE_NAMES = ("standard", "reward_low_fp", "reward_low_fn")
SHORT = {"standard": "std", "reward_low_fp": "lowFP", "reward_low_fn": "lowFN"}
LAYOUT_HINT = "pass --data DIR [DIR ...], each a directory in NAB layout (windows.json + data/)"


def load_corpus(directories: Sequence[str]) -> tuple[dict[str, Any], list[Path]]:
    """The merged labels and every CSV file under each directory's ``data/``.

    Exits with one line when a directory is missing or not in NAB layout, or when two
    directories label one key differently.
    """
    labels: dict[str, Any] = {}
    files: list[Path] = []
    for raw in directories:
        directory = Path(raw)
        if not directory.is_dir():
            sys.exit(f"quality.py: no directory {directory}; {LAYOUT_HINT}")
        windows, data = directory / "windows.json", directory / "data"
        if not windows.is_file() or not data.is_dir():
            sys.exit(f"quality.py: {directory} has no windows.json or no data/; {LAYOUT_HINT}")
        for key, value in evaluation.load_windows(windows).items():
            if key in labels and labels[key] != value:
                sys.exit(f"quality.py: {key} is labelled differently in two --data directories")
            labels[key] = value
        files.extend(sorted(data.rglob("*.csv")))
    if not files:
        sys.exit(f"quality.py: no CSV files under {', '.join(directories)}; {LAYOUT_HINT}")
    return labels, files


def category_of(name: str) -> str:
    """``"realKnownCause/nyc_taxi.csv"`` -> ``"realKnownCause"``."""
    return name.split("/")[0] if "/" in name else "(no category)"


def by_category(series: Sequence[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for s in series:
        groups.setdefault(category_of(s.name), []).append(s)
    return dict(sorted(groups.items()))


def score_of(raw: float, null: float, perfect: float) -> float:
    """NAB's normalised score from summed raw, null and perfect; NaN without any window."""
    span = perfect - null
    return 100.0 * (raw - null) / span if span else math.nan


def profile_dict(p: Any) -> dict[str, Any]:
    return {"threshold": p.threshold, "score": p.score, "raw": p.raw, "null": p.null,
            "perfect": p.perfect, "tp": p.tp, "fp": p.fp, "fn": p.fn}


class Scorer:
    """``evaluation.evaluate`` at fixed thresholds, cached per (series group, threshold)."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self._cache: dict[tuple[tuple[str, ...], float], Any] = {}

    def at(self, series: Sequence[Any], threshold: float) -> Any:
        key = (tuple(s.name for s in series), threshold)
        if key not in self._cache:
            self._cache[key] = evaluation.evaluate(series, thresholds=[threshold],
                                                   hold=self.hold)
        return self._cache[key]

    def optimised(self, series: Sequence[Any]) -> Any:
        return evaluation.evaluate(series, hold=self.hold)

    def profiles_at(self, series: Sequence[Any], thresholds: dict[str, float]) -> dict[str, Any]:
        """Each profile scored at its own given threshold."""
        return {n: self.at(series, thresholds[n]).profiles[n] for n in PROFILE_NAMES}


def per_category(series: Sequence[Any], pooled: Any, shipped: float,
                 scorer: Scorer) -> dict[str, dict[str, Any]]:
    """Each category alone: at the pooled-optimised thresholds, the shipped one, its own best."""
    pooled_thresholds = {n: pooled.profiles[n].threshold for n in PROFILE_NAMES}
    out: dict[str, dict[str, Any]] = {}
    for name, group in by_category(series).items():
        at_pooled = scorer.profiles_at(group, pooled_thresholds)
        at_shipped = scorer.at(group, shipped).profiles
        own = scorer.optimised(group).profiles
        std = at_pooled["standard"]
        out[name] = {
            "files": len(group),
            "rows": sum(len(s.scores) for s in group),
            "windows": std.tp + std.fn,
            "at_pooled_threshold": {n: profile_dict(p) for n, p in at_pooled.items()},
            "at_model_threshold": {n: profile_dict(at_shipped[n]) for n in PROFILE_NAMES},
            "own_optimum": {n: profile_dict(own[n]) for n in PROFILE_NAMES},
        }
    return out


def leave_one_category_out(series: Sequence[Any], scorer: Scorer) -> dict[str, Any] | None:
    """For each category: thresholds optimised on the others, the category scored at them.

    ``threshold``/``held_out`` use the standard profile's threshold for all three profiles;
    ``held_out_own`` scores each profile at its own threshold optimised on the others.
    """
    groups = by_category(series)
    if len(groups) < 2:
        return None
    rows: dict[str, dict[str, Any]] = {}
    for name, group in groups.items():
        others = [s for s in series if category_of(s.name) != name]
        trained = scorer.optimised(others).profiles
        threshold = trained["standard"].threshold
        held = scorer.at(group, threshold).profiles
        own = scorer.profiles_at(group, {n: trained[n].threshold for n in PROFILE_NAMES})
        rows[name] = {
            "files": len(group),
            "threshold": threshold,
            "others": {n: profile_dict(trained[n]) for n in PROFILE_NAMES},
            "held_out": {n: profile_dict(held[n]) for n in PROFILE_NAMES},
            "held_out_own": {n: profile_dict(own[n]) for n in PROFILE_NAMES},
        }
    summary: dict[str, Any] = {}
    for part in ("held_out", "held_out_own"):
        mean, pooled = {}, {}
        for n in PROFILE_NAMES:
            cells = [r[part][n] for r in rows.values()]
            scored = [c["score"] for c in cells if not math.isnan(c["score"])]
            mean[n] = sum(scored) / len(scored) if scored else math.nan
            pooled[n] = score_of(sum(c["raw"] for c in cells), sum(c["null"] for c in cells),
                                 sum(c["perfect"] for c in cells))
        summary[part] = {"mean": mean, "pooled": pooled,
                         "categories_in_mean": sum(1 for r in rows.values()
                                                   if r[part]["standard"]["perfect"] > 0)}
    return {"categories": rows, **summary}


def jsonable(value: Any) -> Any:
    """NaN to None, recursively, so the file is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def fmt(value: float, width: int = 6) -> str:
    return f"{'n/a':>{width}}" if math.isnan(value) else f"{value:{width}.1f}"


def fmt_threshold(value: float, width: int = 7) -> str:
    """A threshold; one above every score (the optimum of a file set without windows) as never."""
    return f"{'never':>{width}}" if value > 1.0 else f"{value:{width}.4g}"


def print_per_category(cats: dict[str, dict[str, Any]], pooled: Any, shipped: float) -> None:
    thresholds = ", ".join(f"{SHORT[n]} {pooled.profiles[n].threshold:.4g}"
                           for n in PROFILE_NAMES)
    print(f"\nper category, each scored alone (pooled-optimised thresholds: {thresholds}; "
          f"shipped {shipped:g}):")
    print(f"{'category':22} {'files':>5} {'rows':>7} | {'at pooled thr: std':>18} "
          f"{'lowFP':>6} {'lowFN':>6} {'hit':>7} {'FP':>4} | {'at shipped: std':>15} "
          f"{'lowFP':>6} {'lowFN':>6} {'hit':>7} {'FP':>4} | {'own best std':>12} {'thr':>7}")
    for name, c in cats.items():
        p, s, o = c["at_pooled_threshold"], c["at_model_threshold"], c["own_optimum"]["standard"]
        print(f"{name:22} {c['files']:5d} {c['rows']:7d} | {fmt(p['standard']['score'], 18)} "
              f"{fmt(p['reward_low_fp']['score'])} {fmt(p['reward_low_fn']['score'])} "
              f"{p['standard']['tp']:>3}/{c['windows']:<3} {p['standard']['fp']:4d} | "
              f"{fmt(s['standard']['score'], 15)} {fmt(s['reward_low_fp']['score'])} "
              f"{fmt(s['reward_low_fn']['score'])} {s['standard']['tp']:>3}/{c['windows']:<3} "
              f"{s['standard']['fp']:4d} | {fmt(o['score'], 12)} {fmt_threshold(o['threshold'])}")
    print("(a category without labelled windows has no normalised score: n/a; FP still shown)")


def print_loco(loco: dict[str, Any], pooled: Any) -> None:
    print("\nleave-one-category-out: threshold maximising the standard profile on the other "
          "categories, held-out category scored at it")
    print(f"{'held out':22} {'files':>5} {'thr':>7} {'others std':>10} | {'held-out std':>12} "
          f"{'lowFP':>6} {'lowFN':>6} {'hit':>7} {'FP':>4} | "
          f"{'own thr per profile: std':>24} {'lowFP':>6} {'lowFN':>6}")
    for name, r in loco["categories"].items():
        h, own = r["held_out"], r["held_out_own"]
        std = h["standard"]
        print(f"{name:22} {r['files']:5d} {fmt_threshold(r['threshold'])} "
              f"{fmt(r['others']['standard']['score'], 10)} | {fmt(std['score'], 12)} "
              f"{fmt(h['reward_low_fp']['score'])} {fmt(h['reward_low_fn']['score'])} "
              f"{std['tp']:>3}/{std['tp'] + std['fn']:<3} {std['fp']:4d} | "
              f"{fmt(own['standard']['score'], 24)} {fmt(own['reward_low_fp']['score'])} "
              f"{fmt(own['reward_low_fn']['score'])}")
    for part, label in (("mean", "mean of held-out"), ("pooled", "pooled held-out")):
        a, b = loco["held_out"][part], loco["held_out_own"][part]
        suffix = f" ({loco['held_out']['categories_in_mean']} categories with windows)" \
            if part == "mean" else " (raw summed over all held-out categories)"
        print(f"{label:22} {'':5} {'':7} {'':10} | {fmt(a['standard'], 12)} "
              f"{fmt(a['reward_low_fp'])} {fmt(a['reward_low_fn'])} {'':7} {'':4} | "
              f"{fmt(b['standard'], 24)} {fmt(b['reward_low_fp'])} "
              f"{fmt(b['reward_low_fn'])}{suffix}")
    print(f"{'in-sample pooled':22} {'':5} {pooled.profiles['standard'].threshold:7.4g} "
          f"{'':10} | {fmt(pooled.profiles['standard'].score, 12)} "
          f"{fmt(pooled.profiles['reward_low_fp'].score)} "
          f"{fmt(pooled.profiles['reward_low_fn'].score)}   (thresholds chosen on all files)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", metavar="DIR", default=[str(d) for d in DEFAULT_DATA],
                        help="directories in NAB layout (windows.json + data/), pooled; "
                             "default: ../shared/nab-dev ../shared/nab-more beside the repo")
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--output", default="bench-quality", help="directory for the results")
    parser.add_argument("--no-ablation", action="store_true", help="score the default only")
    parser.add_argument("--no-plots", action="store_true", help="skip the per-series plots")
    parser.add_argument("--json", action="store_true",
                        help="put every figure (per category, leave-one-category-out, the run's "
                             "settings) into OUTPUT/quality.json besides its usual keys")
    parser.add_argument("--thresholds", default="0.25,0.27,0.3,0.35,0.4",
                        help="fixed thresholds for the trade-off table (comma-separated)")
    parser.add_argument("--synthetic", action="store_true",
                        help="run the generated suite instead (bench/synthetic_quality.py)")
    args = parser.parse_args()
    if args.synthetic:
        from synthetic_quality import main as synthetic_main

        synthetic_main(["--model", args.model] + (["--json"] if args.json else []))
        return

    labels, files = load_corpus(args.data)
    artifact = load_artifact(args.model)
    calibration = CalibrationSettings.from_dict(artifact.calibration)
    hold, shipped = calibration.alarm_hold, calibration.threshold
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, Any]] = {}
    extended: dict[str, dict[str, Any]] = {}
    default = PipelineSettings().evidence
    variants = [default]
    if not args.no_ablation:  # each kind alone, model+memory, and the default less the model
        variants += ["model", "memory", "seasonal", "model+memory", "memory+seasonal+coarse"]
    tradeoff: list[tuple[float, Any, float]] = []
    default_series: list[Any] = []
    default_report: Any = None
    for evidence in variants:
        series, rows, seconds = score_labelled_files(
            files, labels, artifact, settings=PipelineSettings(evidence=evidence))
        started = time.perf_counter()
        scorer = Scorer(hold)  # its cache is keyed by file names: one per set of scores
        report = evaluation.evaluate(series, hold=hold)
        fixed = scorer.at(series, shipped)
        results[evidence] = {
            "optimised": {n: round(p.score, 1) for n, p in report.profiles.items()},
            "thresholds": {n: p.threshold for n, p in report.profiles.items()},
            "at_model_threshold": {n: round(p.score, 1) for n, p in fixed.profiles.items()},
            "window_metrics": report.overall.to_dict(),
            "rows": rows,
            "rows_per_second": round(rows / seconds),
        }
        extended[evidence] = {
            "per_category": per_category(series, report, shipped, scorer),
            "leave_one_category_out": leave_one_category_out(series, scorer),
            "profiles": {n: profile_dict(p) for n, p in report.profiles.items()},
            "profiles_at_model_threshold": {n: profile_dict(p)
                                            for n, p in fixed.profiles.items()},
            "scoring_seconds": round(seconds, 1),
            "evaluation_seconds": round(time.perf_counter() - started, 1),
        }
        if evidence == default:
            default_series, default_report = series, report
            for threshold in (float(t) for t in args.thresholds.split(",") if t):
                at = scorer.at(series, threshold).profiles
                tradeoff.append((threshold, at, at["standard"].fp / rows * 1e4))
            (out / "per_file.txt").write_text(report.format_table() + "\n")
            report.write_json(out / "report.json")
            if not args.no_plots:
                write_plots(series, report.threshold, hold, out / "plots")

    categories = by_category(default_series)
    print(f"data: {' '.join(args.data)}; streamlstm from {Path(streamlstm.__file__).parent}")
    print(f"model {artifact.version}, {len(files)} files in {len(categories)} categories, "
          f"alarm hold {hold} windows, model threshold {shipped:g}")
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
    print(f"\ntrade-off at fixed thresholds (default evidence, hold {hold}):")
    print(f"{'threshold':>9} {'standard':>9} {'low FP':>7} {'low FN':>7} {'windows':>9} "
          f"{'FP/10k rows':>12}")
    for threshold, at, fp_rate in tradeoff:
        std = at["standard"]
        print(f"{threshold:9.2f} {std.score:9.1f} {at['reward_low_fp'].score:7.1f} "
              f"{at['reward_low_fn'].score:7.1f} {std.tp:>4}/{std.tp + std.fn:<4} "
              f"{fp_rate:12.1f}")

    print_per_category(extended[default]["per_category"], default_report, shipped)
    loco = extended[default]["leave_one_category_out"]
    if loco is None:
        print("\nleave-one-category-out: needs at least two categories")
    else:
        print_loco(loco, default_report)
    if len(variants) > 1 and loco is not None:
        print("\nleave-one-category-out per evidence (held-out std at the others' threshold):")
        width = max(len(v) for v in variants)
        print(f"{'evidence':{width}} {'pooled':>7} {'mean':>7}   in-sample pooled std")
        for evidence in variants:
            summary = extended[evidence]["leave_one_category_out"]["held_out"]
            print(f"{evidence:{width}} {fmt(summary['pooled']['standard'], 7)} "
                  f"{fmt(summary['mean']['standard'], 7)}   "
                  f"{fmt(results[evidence]['optimised']['standard'], 7)}")

    document: dict[str, Any] = results
    if args.json:
        run = {"data": list(args.data), "model": artifact.version, "files": len(files),
               "categories": {n: len(g) for n, g in categories.items()}, "alarm_hold": hold,
               "model_threshold": shipped, "trade_off": {
                   f"{t:g}": {n: profile_dict(p) for n, p in at.items()} | {"fp_per_10k": rate}
                   for t, at, rate in tradeoff}}
        document = {evidence: r | extended[evidence] | ({"run": run} if evidence == default
                                                        else {})
                    for evidence, r in results.items()}
    (out / "quality.json").write_text(json.dumps(jsonable(document), indent=2) + "\n")
    plots = "" if args.no_plots else f"; plots: {out / 'plots'}/"
    print(f"\nper-file table: {out / 'per_file.txt'}; figures: {out / 'quality.json'}{plots}")


if __name__ == "__main__":
    main()
