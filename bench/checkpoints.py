"""What checkpoints cost: bytes, write and restore seconds, and the loop's share at an interval.

    python bench/checkpoints.py [--series 10000] [--partitions 4] [--interval 60]

Builds a pipeline with the bundled model and ``--series`` series (every one past its first
window, so every array of every slot is touched), measures in the same run how fast the
pipeline scores events (the baseline), then per store (a directory and a compacted topic on a
local tansu broker): the time to checkpoint every partition, the bytes, and the time to load
and restore each partition into a fresh pipeline. The loop's share is checkpoint seconds over
(interval + checkpoint seconds): the throughput lost at that interval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import Stream
from streamlstm.checkpoints.stores import DirectoryStore, PartitionCheckpoint
from streamlstm.core.pipeline import Pipeline
from streamlstm.core.records import Point
from streamlstm.model.artifact import load_artifact

BUNDLED = Path(__file__).resolve().parents[1] / "streamlstm" / "data" / "model"


def populated(n_series: int, rows: int) -> tuple[Pipeline, float]:
    """A pipeline holding ``n_series`` series after ``rows`` events each; its events/s."""
    pipeline = Pipeline(load_artifact(BUNDLED))
    stream = Stream(n_series)
    points = list(stream.points(0, rows, Point))
    started = time.perf_counter()
    for start in range(0, len(points), 2_000):
        pipeline.process(points[start:start + 2_000], now=0.0)
    return pipeline, len(points) / (time.perf_counter() - started)


def partitions_of(pipeline: Pipeline, partitions: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for i, name in enumerate(pipeline.registry.series()):
        out.setdefault(i % partitions, []).append(name)
    return out


def measure(store, pipeline: Pipeline, members: dict[int, list[str]], offset: int) -> dict:
    started = time.perf_counter()
    written = 0
    for partition, names in members.items():
        snapshot = pipeline.snapshot(names)
        offsets = np.full(len(names), offset, np.int64)
        written += store.save(PartitionCheckpoint(partition, offset, snapshot, offsets), [])
    save_s = time.perf_counter() - started
    fresh = Pipeline(pipeline.artifact, pipeline.settings)
    started = time.perf_counter()
    restored = 0
    for partition in members:
        for part in store.load(partition, fresh.state_layout()):
            restored += fresh.restore(part.snapshot)
    restore_s = time.perf_counter() - started
    assert restored == sum(len(v) for v in members.values()), restored
    probe = members[0][:3]
    for name, array in pipeline.snapshot(probe).arrays.items():
        assert np.array_equal(fresh.snapshot(probe).arrays[name], array, equal_nan=True), name
    return {"bytes": written, "save_s": save_s, "restore_s": restore_s}


def report(name: str, figures: dict, n_series: int, interval: float, rate: float) -> None:
    share = figures["save_s"] / (interval + figures["save_s"])
    print(f"{name:>10}: {figures['bytes'] / 1e6:8.1f} MB ({figures['bytes'] / n_series:,.0f} B a "
          f"series)  checkpoint {figures['save_s']:6.2f} s  restore {figures['restore_s']:6.2f} s"
          f"  loop share at {interval:.0f} s: {share:.1%} (= {figures['save_s'] * rate:,.0f} "
          f"events not scored per checkpoint)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rows", type=int, default=40, help="events per series before")
    parser.add_argument("--interval", type=float, default=60.0,
                        help="checkpoint.interval_s to report the loop's share at")
    parser.add_argument("--no-kafka", action="store_true", help="skip the Kafka topic store")
    args = parser.parse_args()

    pipeline, rate = populated(args.series, args.rows)
    members = partitions_of(pipeline, args.partitions)
    print(f"{args.series:,} series on {args.partitions} partitions, "
          f"{pipeline.registry.nbytes_per_series():,} state bytes a series; baseline: the "
          f"pipeline scores {rate:,.0f} events/s here")
    with tempfile.TemporaryDirectory() as folder:
        figures = measure(DirectoryStore(Path(folder) / "ckpt"), pipeline, members, 1_000)
    report("directory", figures, args.series, args.interval, rate)
    if args.no_kafka:
        return
    from kafka import KafkaProducer

    from streamlstm.checkpoints.kafka_topic import KafkaTopicStore
    from streamlstm.config import KafkaSettings
    from streamlstm.devstack import TansuBroker

    with TansuBroker() as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        producer.send("input", b"x")
        producer.flush()
        producer.close()
        store = KafkaTopicStore(KafkaSettings(bootstrap_servers=broker.bootstrap), "state",
                                "input", pipeline.state_layout())
        try:
            report("kafka", measure(store, pipeline, members, 1_000), args.series,
                   args.interval, rate)
        finally:
            store.close()


if __name__ == "__main__":
    main()
