"""Detection quality on generated multivariate sensor logs, measured through the CLI.

    python bench/sensor_quality.py [--files 14] [--seed 0] [--output DIR] [--skip-train]
                                   [--epochs 5]

Generates test-rig style sensor logs (8 coupled channels at 1 s steps, ``timestamp,<channel..>``
only; labels in separate files), then measures, as a user would with the real CLI:

(a) the bundled default model: ``python -m streamlstm replay FILE --output OUT.csv`` per file;
(b) a model trained for the data: ``python -m streamlstm train --input <anomaly-free
    beginnings> --features <channels> --epochs N``, then ``replay FILE --model <it>`` per file
    (left out with ``--skip-train``);
(c) a trivial baseline in the same run: a rolling z-score per channel over the file's own past
    100 rows, a point flagged when |z| > 4 on any channel.

Per-point figures: recall over anomalous rows, false-positive rate over normal rows,
precision and F1 (pooled over the files that scored). Events: an anomaly counts as detected
when a flagged row (``is_anomaly``) lies inside it; false alarms are ``alarm`` rows on normal
rows per 1000 normal rows (a detector without an ``alarm`` column: the first flag after
``ALARM_HOLD`` unflagged rows, the daemon's default rule). A replay whose output does not hold
one aligned row per input row, or whose columns do not match its header, or whose scores are
all zero, is reported as a failure with the reason rather than scored.

Nothing is tuned here: the detector runs with its own defaults. Each file's first
``NORMAL_HEAD`` rows are anomaly-free; some files have no anomaly at all.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ("accelerometer1", "accelerometer2", "current", "pressure", "temperature",
            "thermocouple", "voltage", "flow")
KINDS = ("level_shift", "variance", "broken_relation", "ramp", "stuck", "frequency")
NORMAL_HEAD = 400  # anomaly-free rows at the start of every file
ALARM_HOLD = 30  # rows without a flag before a new alarm (the daemon's default alarm_hold)
Z_WINDOW, Z_LIMIT = 100, 4.0


# ---------------------------------------------------------------- generator

@dataclass
class Anomaly:
    kind: str
    start: int  # first row
    stop: int  # one past the last row
    channels: list[str]


@dataclass
class SensorFile:
    name: str
    start_time: datetime
    values: np.ndarray  # [rows, channels]
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        out = np.zeros(len(self.values), dtype=np.int8)
        for a in self.anomalies:
            out[a.start:a.stop] = 1
        return out

    def timestamps(self) -> list[str]:
        return [(self.start_time + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S")
                for i in range(len(self.values))]


def _smooth_process(rng: np.random.Generator, n: int, tau: float, sd: float) -> np.ndarray:
    """A mean-reverting AR(1) process with time constant ``tau`` rows and stationary sd ``sd``."""
    phi = np.exp(-1.0 / tau)
    eps = rng.normal(0.0, sd * np.sqrt(1 - phi**2), n)
    out = np.empty(n)
    out[0] = rng.normal(0.0, sd)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + eps[i]
    return out


def _ema(x: np.ndarray, tau: float) -> np.ndarray:
    """A first-order lag (a sensor's or a thermal mass's response), ``tau`` rows."""
    alpha = 1.0 - np.exp(-1.0 / tau)
    out = np.empty_like(x)
    out[0] = x[0]
    for i in range(1, len(x)):
        out[i] = out[i - 1] + alpha * (x[i] - out[i - 1])
    return out


def _plan_anomalies(rng: np.random.Generator, n: int, kinds: list[str]) -> list[Anomaly]:
    """Where the file's anomalies go: after NORMAL_HEAD, 200-400 rows, at least 60 apart."""
    out: list[Anomaly] = []
    cursor = NORMAL_HEAD + int(rng.integers(20, 80))
    for kind in kinds:
        length = int(rng.integers(200, 401))
        if cursor + length > n - 20:
            length = n - 20 - cursor
            if length < 200:
                break
        out.append(Anomaly(kind, cursor, cursor + length, []))
        cursor += length + int(rng.integers(60, 120))
    return out


def _channels_for(kind: str, rng: np.random.Generator) -> list[str]:
    return [str(c) for c in _pick_channels(kind, rng)]


def _pick_channels(kind: str, rng: np.random.Generator) -> list[str]:
    if kind == "level_shift":
        return list(rng.choice(["current", "pressure", "flow", "voltage", "temperature"],
                               size=int(rng.integers(1, 4)), replace=False))
    if kind == "variance":
        return list(rng.choice(["accelerometer1", "accelerometer2", "pressure", "current"],
                               size=int(rng.integers(1, 3)), replace=False))
    if kind == "broken_relation":
        return [str(rng.choice(["current", "flow", "pressure"]))]
    if kind == "ramp":
        return list(rng.choice(["temperature", "thermocouple", "pressure", "flow", "current"],
                               size=int(rng.integers(1, 3)), replace=False))
    if kind == "stuck":
        return [str(rng.choice(["pressure", "flow", "thermocouple", "current"]))]
    return ["accelerometer1", "accelerometer2"]  # frequency: the pump's vibration


def generate_file(name: str, seed: int, kinds: list[str]) -> SensorFile:
    """One test-rig log: channels driven by a shared operating point and shared noise."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1100, 1201))
    t = np.arange(n, dtype=np.float64)
    anomalies = _plan_anomalies(rng, n, kinds)
    for a in anomalies:
        a.channels = _channels_for(a.kind, rng)

    # Latent drivers: the operating point (slow), a shared disturbance (fast), ambient drift.
    op = _smooth_process(rng, n, tau=rng.uniform(60, 150), sd=1.0)
    shared = _smooth_process(rng, n, tau=3.0, sd=1.0)
    ambient = np.cumsum(rng.normal(0, 0.004, n)) + rng.uniform(-0.3, 0.3) * t / n

    # Anomalies that act on the drivers of one channel, prepared per row.
    period = rng.uniform(9.0, 14.0)  # the pump's vibration period, s
    period_rows = np.full(n, period)
    op_seen = {c: op.copy() for c in CHANNELS}  # the operating point each channel follows
    for a in anomalies:
        if a.kind == "frequency":
            period_rows[a.start:a.stop] *= rng.choice([0.55, 0.65, 1.6, 1.9])
        elif a.kind == "broken_relation":
            other = _smooth_process(rng, a.stop - a.start, tau=80.0, sd=1.0)
            # Starts and ends where the operating point is, wanders on its own in between.
            other += op[a.start] - other[0]
            other -= np.linspace(0, 1, len(other)) * (other[-1] - op[a.stop - 1])
            op_seen[a.channels[0]][a.start:a.stop] = other
    phase = 2 * np.pi * np.cumsum(1.0 / period_rows)

    noise_sd = {"accelerometer1": 0.006, "accelerometer2": 0.005, "current": 0.04,
                "pressure": 0.015, "temperature": 0.08, "thermocouple": 0.1, "voltage": 0.35,
                "flow": 0.3}  # each channel's own sensor noise

    def noise(channel: str) -> np.ndarray:
        return rng.normal(0, noise_sd[channel], n)

    vib_gain = rng.uniform(0.8, 1.2)
    ch: dict[str, np.ndarray] = {}
    ch["accelerometer1"] = (0.21 + 0.012 * op_seen["accelerometer1"]
                            + vib_gain * 0.018 * np.sin(phase)
                            + 0.004 * shared + noise("accelerometer1"))
    ch["accelerometer2"] = (0.27 + 0.010 * op_seen["accelerometer2"]
                            + vib_gain * 0.014 * np.sin(phase + rng.uniform(0.5, 1.5))
                            + 0.003 * shared + noise("accelerometer2"))
    ch["current"] = 1.6 + 0.35 * op_seen["current"] + 0.05 * shared + noise("current")
    ch["pressure"] = (0.9 + 0.12 * _ema(op_seen["pressure"], 4.0) + 0.02 * shared
                      + 0.01 * np.sin(2 * np.pi * t / rng.uniform(150, 250)) + noise("pressure"))
    heat = _ema(op_seen["temperature"], 40.0)
    ch["temperature"] = 70.0 + 1.5 * heat + 2.0 * ambient + noise("temperature")
    thermo = (68.5 + 1.45 * _ema(op_seen["thermocouple"], 50.0) + 2.0 * ambient
              + noise("thermocouple"))
    ch["thermocouple"] = np.round(thermo * 4) / 4  # quantised to 0.25 degC
    ch["voltage"] = (229.0 - 1.2 * op_seen["voltage"] + 0.3 * shared
                     + 0.25 * np.sin(2 * np.pi * t / 60.0) + noise("voltage"))
    ch["flow"] = 32.0 + 2.5 * op_seen["flow"] + 0.4 * shared + noise("flow")

    # Anomalies that act on the channel's value.
    normal_sd = {c: float(np.std(v[:NORMAL_HEAD])) for c, v in ch.items()}
    for a in anomalies:
        sl = slice(a.start, a.stop)
        length = a.stop - a.start
        for c in a.channels:
            sd = normal_sd[c]
            if a.kind == "level_shift":
                ch[c][sl] += rng.choice([-1, 1]) * rng.uniform(1.5, 3.0) * sd
            elif a.kind == "variance":
                ch[c][sl] += rng.normal(0, rng.uniform(3.0, 6.0) * noise_sd[c], length)
            elif a.kind == "ramp":
                ch[c][sl] += rng.choice([-1, 1]) * rng.uniform(2.0, 4.0) * sd * np.linspace(
                    0, 1, length)
            elif a.kind == "stuck":
                ch[c][sl] = ch[c][a.start - 1]
    values = np.column_stack([ch[c] for c in CHANNELS])
    start = datetime(2024, 3, 1, 8, 0) + timedelta(days=seed % 97, minutes=seed % 600)
    return SensorFile(name, start, values, anomalies)


def generate_suite(n_files: int, seed: int) -> list[SensorFile]:
    """About a fifth of the files without an anomaly, the rest with one or two, kinds cycled
    so each kind appears about equally often."""
    rng = np.random.default_rng(seed)
    n_clean = max(1, round(n_files / 5))
    clean = set(rng.choice(n_files, size=n_clean, replace=False).tolist())
    pool: list[str] = []
    files = []
    for i in range(n_files):
        count = 0 if i in clean else int(rng.integers(1, 3))
        kinds = []
        for _ in range(count):
            if not pool:
                pool = list(rng.permutation(KINDS))
            kinds.append(str(pool.pop()))
        files.append(generate_file(f"rig_{i:02d}", seed * 1000 + i, kinds))
    return files


def write_csv(path: Path, f: SensorFile, rows: slice = slice(None)) -> None:
    stamps = f.timestamps()[rows]
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["timestamp", *CHANNELS])
        for ts, row in zip(stamps, f.values[rows], strict=True):
            w.writerow([ts, *(f"{v:.5g}" for v in row)])


def write_labels(path: Path, f: SensorFile) -> None:
    kind = np.full(len(f.values), "", dtype=object)
    for a in f.anomalies:
        kind[a.start:a.stop] = a.kind
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["timestamp", "label", "kind"])
        for ts, label, k in zip(f.timestamps(), f.labels, kind, strict=True):
            w.writerow([ts, int(label), k])


# ---------------------------------------------------------------- detectors

@dataclass
class Flags:
    """A detector's output for one file, or why there is none."""

    is_anomaly: np.ndarray | None
    alarm: np.ndarray | None
    failure: str = ""
    note: str = ""


def _epoch(text: str) -> float:
    """ISO 8601 text -> epoch seconds (naive means UTC, as the CLI reads it)."""
    ts = datetime.fromisoformat(text)
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def read_replay(out_csv: Path, f: SensorFile) -> Flags:
    """The replay's CSV, checked: header and rows of one width, the required columns, one row
    per input row at the input's timestamps, scores not all zero."""
    with out_csv.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return Flags(None, None, "empty output")
    header, body = rows[0], rows[1:]
    missing = [c for c in ("timestamp", "anomaly_score", "is_anomaly") if c not in header]
    if missing:
        return Flags(None, None, f"header lacks {', '.join(missing)}")
    problems = []
    if len(body) != len(f.values):
        problems.append(f"row count {len(body)} != {len(f.values)} input rows")
    col = {name: i for i, name in enumerate(header)}
    widths = sorted({len(r) for r in body})
    if widths != [len(header)]:
        problems.append(f"header mismatch: {len(header)} columns in the header "
                        f"({', '.join(header[2:col['anomaly_score']])} as values), rows have "
                        f"{'/'.join(map(str, widths))}")
        if len(widths) == 1 and widths[0] > len(header):
            # Extra value columns, presumably: where the score would then be.
            at = col["anomaly_score"] + widths[0] - len(header)
            if not any(float(r[at] or 0) for r in body):
                problems.append("every anomaly_score is 0 (read past the extra columns)")
    if problems:
        return Flags(None, None, "; ".join(problems))
    expected = [_epoch(ts) for ts in f.timestamps()]
    got = [_epoch(r[col["timestamp"]]) for r in body]
    if got != expected:
        first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        return Flags(None, None, f"timestamps differ from the input from row {first + 2}")
    values_seen = [c for c in CHANNELS if c in col]
    note = "" if len(values_seen) == len(CHANNELS) else (
        f"value columns in output: {', '.join(h for h in header[2:col['anomaly_score']])}")
    score = np.array([float(r[col["anomaly_score"]] or 0) for r in body])
    flags = np.array([int(r[col["is_anomaly"]] or 0) for r in body], dtype=bool)
    alarm = (np.array([int(r[col["alarm"]] or 0) for r in body], dtype=bool)
             if "alarm" in col else None)
    if not np.any(score):
        return Flags(None, None, "every anomaly_score is 0", note)
    return Flags(flags, alarm, "", note)


def run_cli(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "streamlstm", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def replay(in_csv: Path, out_csv: Path, f: SensorFile, model: Path | None) -> Flags:
    args = ["replay", str(in_csv), "--output", str(out_csv)]
    if model is not None:
        args += ["--model", str(model)]
    try:
        proc = run_cli(args)
    except subprocess.TimeoutExpired:
        return Flags(None, None, "replay timed out")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return Flags(None, None, f"replay exit {proc.returncode}: {last[:160]}")
    if not out_csv.is_file():
        return Flags(None, None, "replay wrote no output file")
    return read_replay(out_csv, f)


def rolling_z(values: np.ndarray, window: int = Z_WINDOW, limit: float = Z_LIMIT) -> Flags:
    """Per channel z-score of each row against the previous ``window`` rows of the file; a row
    is flagged when any channel's |z| exceeds ``limit`` (no flags before ``window`` rows)."""
    n = len(values)
    c = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    c2 = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values**2, axis=0)])
    flags = np.zeros(n, dtype=bool)
    idx = np.arange(window, n)
    mean = (c[idx] - c[idx - window]) / window
    var = np.maximum((c2[idx] - c2[idx - window]) / window - mean**2, 0.0)
    sd = np.sqrt(var * window / (window - 1))
    dev = np.abs(values[idx] - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 1e-12, dev / sd, np.where(dev > 1e-12, np.inf, 0.0))
    flags[idx] = (z > limit).any(axis=1)
    return Flags(flags, None)


# ---------------------------------------------------------------- metrics

def alarms_from_flags(flags: np.ndarray, hold: int = ALARM_HOLD) -> np.ndarray:
    """The first flag of each incident: a flag with no flag in the ``hold`` rows before it."""
    out = np.zeros_like(flags)
    last = -hold - 1
    for i in np.flatnonzero(flags):
        if i - last > hold:
            out[i] = True
        last = i
    return out


@dataclass
class Counts:
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0
    events: int = 0
    detected: int = 0
    false_alarms: int = 0
    delays: list[int] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        for name in ("tp", "fn", "fp", "tn", "events", "detected", "false_alarms"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.delays += other.delays

    def summary(self) -> dict[str, float | None]:
        def ratio(a: float, b: float) -> float | None:
            return a / b if b else None

        recall, precision = ratio(self.tp, self.tp + self.fn), ratio(self.tp, self.tp + self.fp)
        f1 = (2 * recall * precision / (recall + precision)
              if recall is not None and precision and recall + precision > 0 else
              0.0 if self.tp + self.fn else None)
        return {
            "point_recall": recall, "point_fpr": ratio(self.fp, self.fp + self.tn),
            "point_precision": precision, "point_f1": f1,
            "event_recall": ratio(self.detected, self.events),
            "false_alarms_per_1000": (1000 * self.false_alarms / (self.fp + self.tn)
                                      if self.fp + self.tn else None),
            "median_delay_rows": float(np.median(self.delays)) if self.delays else None,
        }


def score_file(f: SensorFile, flags: Flags) -> tuple[Counts, dict[str, Counts]]:
    """Pooled counts for the file and per anomaly kind (points and events of that kind)."""
    assert flags.is_anomaly is not None
    hit, truth = flags.is_anomaly.astype(bool), f.labels.astype(bool)
    alarm = flags.alarm if flags.alarm is not None else alarms_from_flags(hit)
    total = Counts(tp=int(np.sum(hit & truth)), fn=int(np.sum(~hit & truth)),
                   fp=int(np.sum(hit & ~truth)), tn=int(np.sum(~hit & ~truth)),
                   false_alarms=int(np.sum(alarm & ~truth)))
    per_kind: dict[str, Counts] = {}
    for a in f.anomalies:
        inside = hit[a.start:a.stop]
        first = np.flatnonzero(inside)
        c = Counts(tp=int(inside.sum()), fn=int((~inside).sum()), events=1,
                   detected=int(first.size > 0), delays=[int(first[0])] if first.size else [])
        per_kind.setdefault(a.kind, Counts()).add(c)
        total.events += 1
        total.detected += c.detected
        total.delays += c.delays
    return total, per_kind


# ---------------------------------------------------------------- report

def _pct(x: float | None) -> str:
    return "   -" if x is None else f"{100 * x:5.1f}%"


def _num(x: float | None, fmt: str = "5.2f") -> str:
    return "   -" if x is None else format(x, fmt)


def print_detector(label: str, files: list[SensorFile], results: dict[str, Flags],
                   seconds: float) -> dict[str, object]:
    print(f"\n=== {label}  ({seconds:.1f}s)")
    print(f"{'file':8} {'rows':>5} {'anomalies':46} {'recall':>7} {'FPR':>7} {'F1':>5} "
          f"{'events':>6} {'FA/1k':>6}  status")
    pooled, kinds = Counts(), {k: Counts() for k in KINDS}
    failed = []
    for f in files:
        fl = results[f.name]
        desc = ", ".join(f"{a.kind}[{a.start}:{a.stop}]" for a in f.anomalies) or "(none)"
        if fl.is_anomaly is None:
            failed.append(f.name)
            print(f"{f.name:8} {len(f.values):5} {desc:46} {'':>7} {'':>7} {'':>5} {'':>6} "
                  f"{'':>6}  FAIL: {fl.failure}" + (f" ({fl.note})" if fl.note else ""))
            continue
        total, per_kind = score_file(f, fl)
        pooled.add(total)
        for k, c in per_kind.items():
            kinds[k].add(c)
        s = total.summary()
        events = f"{total.detected}/{total.events}" if total.events else "-"
        print(f"{f.name:8} {len(f.values):5} {desc:46} {_pct(s['point_recall']):>7} "
              f"{_pct(s['point_fpr']):>7} {_num(s['point_f1']):>5} {events:>6} "
              f"{_num(s['false_alarms_per_1000']):>6}  ok" + (f" ({fl.note})" if fl.note else ""))
    out: dict[str, object] = {"seconds": round(seconds, 2), "failed_files": failed}
    if len(failed) == len(files):
        print(f"-> every file failed ({len(failed)}/{len(files)}); no figures")
        return out
    s = pooled.summary()
    print(f"pooled over {len(files) - len(failed)} scored files"
          + (f" ({len(failed)} failed)" if failed else "") +
          f": point recall {_pct(s['point_recall'])}, FPR {_pct(s['point_fpr'])}, "
          f"precision {_pct(s['point_precision'])}, F1 {_num(s['point_f1'])}, "
          f"events {pooled.detected}/{pooled.events} ({_pct(s['event_recall'])}), "
          f"false alarms {_num(s['false_alarms_per_1000'])}/1000 normal rows, "
          f"median delay {_num(s['median_delay_rows'], '.0f')} rows")
    print(f"  {'kind':16} {'events':>7} {'point recall':>12} {'event recall':>12} "
          f"{'median delay':>12}")
    for k in KINDS:
        ks = kinds[k].summary()
        print(f"  {k:16} {kinds[k].detected:>3}/{kinds[k].events:<3} "
              f"{_pct(ks['point_recall']):>12} {_pct(ks['event_recall']):>12} "
              f"{_num(ks['median_delay_rows'], '.0f'):>12}")
    out["pooled"] = s
    out["per_kind"] = {k: {**kinds[k].summary(), "events": kinds[k].events} for k in KINDS}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=14, help="generated files (default: 14)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument("--output", type=Path, default=None,
                        help="directory for the generated files, replays and results.json "
                             "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--skip-train", action="store_true",
                        help="leave out (b), the model trained on the files' beginnings")
    parser.add_argument("--epochs", type=int, default=5,
                        help="training epochs for (b) (default: 5)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sensor_quality_") as tmp:
        out_dir = args.output or Path(tmp)
        for sub in ("data", "labels", "train", "replay_bundled", "replay_trained"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        files = generate_suite(args.files, args.seed)
        for f in files:
            write_csv(out_dir / "data" / f"{f.name}.csv", f)
            write_labels(out_dir / "labels" / f"{f.name}.csv", f)
            write_csv(out_dir / "train" / f"{f.name}.csv", f, slice(0, NORMAL_HEAD))
        (out_dir / "labels.json").write_text(json.dumps(
            {f.name: [asdict(a) for a in f.anomalies] for f in files}, indent=1))
        n_rows = sum(len(f.values) for f in files)
        n_anom = sum(int(f.labels.sum()) for f in files)
        n_events = sum(len(f.anomalies) for f in files)
        print(f"generated {len(files)} files, {n_rows} rows ({n_anom} anomalous, "
              f"{n_events} anomalies, {sum(not f.anomalies for f in files)} files without), "
              f"{len(CHANNELS)} channels, seed {args.seed}, in {time.perf_counter() - started:.1f}s"
              f" -> {out_dir}")
        corr = np.corrcoef(np.vstack([f.values[:NORMAL_HEAD] for f in files]).T)
        print("channel correlation on the normal beginnings (|r| mean off-diagonal): "
              f"{np.abs(corr[~np.eye(len(CHANNELS), dtype=bool)]).mean():.2f}")

        report: dict[str, object] = {"files": args.files, "seed": args.seed,
                                     "rows": n_rows, "anomalous_rows": n_anom}

        started = time.perf_counter()
        z = {f.name: rolling_z(f.values) for f in files}
        report["baseline_rolling_z"] = print_detector(
            f"(c) baseline: rolling z-score, window {Z_WINDOW}, |z|>{Z_LIMIT:g} on any channel",
            files, z, time.perf_counter() - started)

        started = time.perf_counter()
        bundled = {f.name: replay(out_dir / "data" / f"{f.name}.csv",
                                  out_dir / "replay_bundled" / f"{f.name}.csv", f, None)
                   for f in files}
        report["bundled_model"] = print_detector(
            "(a) bundled default model: streamlstm replay FILE --output OUT.csv", files,
            bundled, time.perf_counter() - started)

        if not args.skip_train:
            started = time.perf_counter()
            models = out_dir / "models"
            proc = run_cli(["train", "--input", *sorted(str(p) for p in
                                                        (out_dir / "train").glob("*.csv")),
                            "--features", ",".join(CHANNELS), "--epochs", str(args.epochs),
                            "--seed", str(args.seed), "--output", str(models)])
            train_s = time.perf_counter() - started
            print(f"\n(b) train: {len(files)} files x {NORMAL_HEAD} rows, "
                  f"--epochs {args.epochs}: exit {proc.returncode} in {train_s:.1f}s")
            for line in (proc.stderr.strip().splitlines()[-3:]
                         + proc.stdout.strip().splitlines()[-2:]):
                print(f"    {line}")
            report["train_seconds"] = round(train_s, 2)
            if proc.returncode == 0:
                started = time.perf_counter()
                trained = {f.name: replay(out_dir / "data" / f"{f.name}.csv",
                                          out_dir / "replay_trained" / f"{f.name}.csv", f,
                                          models)
                           for f in files}
                report["trained_model"] = print_detector(
                    "(b) trained model: streamlstm replay FILE --model MODELS --output OUT.csv",
                    files, trained, time.perf_counter() - started)
            else:
                report["trained_model"] = {"failure": f"train exit {proc.returncode}"}

        (out_dir / "results.json").write_text(json.dumps(report, indent=1))
        if args.output:
            print(f"\nresults: {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
