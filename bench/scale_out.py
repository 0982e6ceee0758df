"""The daemon as processes, end to end, against the raw consume rate of the same topic.

    python bench/scale_out.py [--series 1000] [--events 200] [--partitions 8] [--repeats 2]

Starts a local tansu broker and InfluxDB, produces ``--series`` x ``--events`` keyed events on a
``--partitions`` topic, then, interleaved ``--repeats`` times, reads it with a bare
kafka-python consumer (the baseline, no decoding) and runs ``streamlstm run`` three ways, each
in a fresh consumer group with the default checkpoint store in a temporary directory: one
process (``workers: 1``), one command with ``workers: 2`` (a supervisor and two worker
processes), and two separate daemons. The daemon's rate is the events committed between the
group's first and last commit (offsets read every half second), so start-up (torch import,
the group join) is not counted. Everything runs on the same topic, broker and store in one
session: compare the ratios, not the absolute rates (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import Stream, create_topic, produce, servers, unique

BUNDLED = Path(__file__).resolve().parents[1] / "streamlstm" / "data" / "model"


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(consumer.committed(tp) or 0 for tp in parts)
    finally:
        consumer.close(autocommit=False)


def run(processes: int, bootstrap: str, influx_url: str, database: str, topic: str,
        partitions: int, total: int, folder: Path, workers: int = 1) -> float:
    group = unique("scale")
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": group,
                  "dead_letter_topic": "", "session_timeout_ms": 6_000,
                  "heartbeat_interval_ms": 1_000},
        "decoder": {"max_past_s": 0.0},
        "influx": {"url": influx_url, "org": "bench", "bucket": database},
        "model": {"path": str(BUNDLED)},
        "checkpoint": {"directory": str(folder / group)},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "log_level": "WARNING",
        "workers": workers,
    }
    path = folder / f"{group}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLSTM_", "INFLUXDB_"))}
    children = [subprocess.Popen([sys.executable, "-m", "streamlstm", "run", "--config",
                                  str(path)], env=env) for _ in range(processes)]
    try:
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = committed(bootstrap, topic, group, partitions)
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done)
            if done >= total and first is not None:
                return (done - first[1]) / max(now - first[0], 1e-9)
            if any(c.poll() is not None for c in children):
                raise RuntimeError("a daemon exited early")
            time.sleep(0.5)
        raise RuntimeError("the daemons did not catch up within 15 minutes")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=60)


def main() -> None:
    import statistics

    from bench._stack import kafka_settings, raw_read

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    database = unique("bench")
    ways = {"raw kafka-python consumer": None, "1 process (workers: 1)": (1, 1),
            "workers: 2 (one command)": (1, 2), "2 separate daemons": (2, 1)}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    with servers(True, database) as (broker, influx), tempfile.TemporaryDirectory() as tmp:
        topic = unique("scale")
        create_topic(broker.bootstrap, topic, args.partitions)
        stream = Stream(args.series)
        total = sum(produce(broker.bootstrap, topic, args.partitions,
                            stream.messages(0, args.events)).values())
        for repeat in range(args.repeats):
            for name, way in ways.items():
                if way is None:
                    window, _ = raw_read(kafka_settings(broker.bootstrap, topic,
                                                        unique("raw")), total)
                    rate = window.rate
                else:
                    processes, workers = way
                    rate = run(processes, broker.bootstrap, influx.url, database, topic,
                               args.partitions, total, Path(tmp), workers=workers)
                rates[name].append(rate)
                print(f"[{repeat + 1}/{args.repeats}] {name}: {rate:,.0f} events/s",
                      file=sys.stderr, flush=True)
    raw = statistics.median(rates["raw kafka-python consumer"])
    print(f"{args.series:,} series x {args.events} events, {args.partitions} partitions, "
          f"{os.cpu_count()} cores; median of {args.repeats} interleaved runs")
    print(f"{'':32} {'events/s':>10} {'x raw':>7}   runs")
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{name:32} {median:>10,.0f} {median / raw:>6.2f}x   {runs}")


if __name__ == "__main__":
    main()
