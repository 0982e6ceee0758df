"""Checkpoints of per-series state: stores, offsets, restore identity, refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamlstm.checkpoints.checkpointer import Checkpointer, CheckpointPolicy
from streamlstm.checkpoints.kafka_topic import MAGIC, _parse
from streamlstm.checkpoints.stores import DirectoryStore, MemoryStore, PartitionCheckpoint
from streamlstm.core.pipeline import Pipeline, PipelineSettings
from streamlstm.core.records import Point, Score, SourceRecord
from streamlstm.core.snapshot import StateSnapshot
from streamlstm.errors import CheckpointError
from streamlstm.metrics import Metrics
from streamlstm.model.artifact import Artifact
from tests.unit.core_helpers import STEP, T0, sine_values

SERIES = {"a": 0, "b": 0, "c": 1}  # series -> the partition its events arrive on


def stream(n: int) -> list[SourceRecord]:
    """Events of three series on two partitions, with their offsets, interleaved by time."""
    values = {name: sine_values(n, seed=k) * (1 + k) for k, name in enumerate(SERIES)}
    values["b"][n * 7 // 8] += 15.0  # a spike late in the stream, after any warm-up
    next_offset = {0: 0, 1: 0}
    records = []
    for i in range(n):
        for name, partition in SERIES.items():
            point = Point(name, T0 + i * STEP, (float(values[name][i]),))
            records.append(SourceRecord(point, partition, next_offset[partition], False))
            next_offset[partition] += 1
    return records


def committed_offsets(records: Sequence[SourceRecord]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in records:
        out[r.partition] = r.offset + 1
    return out


def process(pipeline: Pipeline, records: Sequence[SourceRecord],
            warmup: bool = False) -> list[Score]:
    return pipeline.process([r.point for r in records], now=0.0,
                            warmup=[warmup] * len(records)).scores


def make(artifact: Artifact, store: MemoryStore | DirectoryStore,
         settings: PipelineSettings | None = None) -> tuple[Pipeline, Checkpointer, Metrics]:
    pipeline = Pipeline(artifact, settings)
    metrics = Metrics(CollectorRegistry())
    clock = iter(range(10**6))
    checkpointer = Checkpointer(pipeline, store, metrics.checkpoints,
                                CheckpointPolicy(interval_s=1e9), clock=lambda: next(clock))
    return pipeline, checkpointer, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_a_restored_partition_re_read_from_its_checkpoint_scores_as_if_never_stopped(
        tiny_artifact: Artifact) -> None:
    records = stream(400)
    cut, crash = 600, 900  # checkpoint after 600 records, commit up to 900, then a crash
    reference = Pipeline(tiny_artifact)  # never stops (polls cut at the same places)
    expected = [s for part in (records[:cut], records[cut:crash], records[crash:])
                for s in process(reference, part)]

    store = MemoryStore()
    first, checkpointer, _ = make(tiny_artifact, store)
    process(first, records[:cut])
    checkpointer.observe(records[:cut])
    checkpointer.committed(committed_offsets(records[:cut]))
    assert checkpointer.checkpoint() > 0
    before = process(first, records[cut:crash])
    committed = committed_offsets(records[:crash])

    second, restorer, metrics = make(tiny_artifact, store)
    resumes = {p: restorer.on_assigned(p, committed[p]) for p in (0, 1)}
    checkpointed = committed_offsets(records[:cut])
    assert {p: r.offset for p, r in resumes.items() if r} == checkpointed
    # The consumer re-reads from the checkpoint's offsets to the committed ones as warm-up.
    replayed = [r for r in records[:crash] if r.offset >= checkpointed[r.partition]]
    assert process(second, replayed, warmup=True) == []
    restorer.observe(replayed)
    after = process(second, records[crash:])
    assert len(after) == 300 and any(s.is_anomaly for s in before + after)
    assert [s for s in expected if s.timestamp >= records[cut].point.timestamp] == before + after
    assert sample(metrics, "streamlstm_checkpoint_restores_total", outcome="restored") == 2
    assert sample(metrics, "streamlstm_checkpoint_series_restored_total") == 3


def test_no_checkpoint_while_a_partition_has_consumed_past_its_commit(
        tiny_artifact: Artifact) -> None:
    records = stream(100)
    store = MemoryStore()
    pipeline, checkpointer, metrics = make(tiny_artifact, store)
    process(pipeline, records[:150])
    checkpointer.observe(records[:150])
    checkpointer.committed(committed_offsets(records[:90]))  # a batch in hand, not written yet
    assert checkpointer.checkpoint() == 0
    assert store.saved == {}
    checkpointer.committed(committed_offsets(records[:150]))
    assert checkpointer.checkpoint() > 0 and sorted(store.saved) == [0, 1]
    assert checkpointer.checkpoint() == 0  # nothing new since: nothing written again
    assert sample(metrics, "streamlstm_checkpoints_total", result="written") == 2


def test_checkpoints_are_due_by_time_or_by_events(tiny_artifact: Artifact) -> None:
    records = stream(60)
    store = MemoryStore()
    pipeline = Pipeline(tiny_artifact)
    metrics = Metrics(CollectorRegistry())
    now = [0.0]
    checkpointer = Checkpointer(pipeline, store, metrics.checkpoints,
                                CheckpointPolicy(interval_s=60.0, interval_events=100),
                                clock=lambda: now[0])
    for start in range(0, 90, 30):
        batch = records[start:start + 30]
        process(pipeline, batch)
        checkpointer.observe(batch)
        checkpointer.committed(committed_offsets(batch))
        checkpointer.maybe_checkpoint()
    assert store.saved == {}  # 90 events and no time passed
    batch = records[90:120]
    process(pipeline, batch)
    checkpointer.observe(batch)
    checkpointer.committed(committed_offsets(batch))
    checkpointer.maybe_checkpoint()
    assert sorted(store.saved) == [0, 1]  # the 100th event made one due
    store.saved.clear()
    batch = records[120:125]
    process(pipeline, batch)
    checkpointer.observe(batch)
    checkpointer.committed(committed_offsets(batch))
    assert checkpointer.maybe_checkpoint() == 0
    now[0] = 61.0  # a quiet minute: the last state is saved by an idle turn
    assert checkpointer.maybe_checkpoint() > 0 and sorted(store.saved) == [0, 1]


def test_a_checkpoint_of_another_layout_or_ahead_of_the_commit_is_refused(
        tiny_artifact: Artifact) -> None:
    records = stream(200)
    store = MemoryStore()
    pipeline, checkpointer, _ = make(tiny_artifact, store)
    process(pipeline, records)
    checkpointer.observe(records)
    committed = committed_offsets(records)
    checkpointer.committed(committed)
    checkpointer.checkpoint()

    other, restorer, metrics = make(tiny_artifact, store, PipelineSettings(memory_windows=512))
    assert restorer.on_assigned(0, committed[0]) is None
    assert len(other.registry) == 0
    _, restorer, metrics2 = make(tiny_artifact, store)
    assert restorer.on_assigned(1, committed[1] - 5) is None  # state ahead of the commit
    store.saved[0] = store.saved[0][: len(store.saved[0]) // 2]  # truncated
    assert restorer.on_assigned(0, committed[0]) is None
    assert sample(metrics, "streamlstm_checkpoint_restores_total", outcome="refused") == 1
    assert sample(metrics2, "streamlstm_checkpoint_restores_total", outcome="refused") == 2
    assert restorer.on_assigned(5, 10) is None  # never checkpointed
    assert sample(metrics2, "streamlstm_checkpoint_restores_total", outcome="none") == 1


def test_a_released_partition_forgets_its_series_and_a_moved_series_is_counted(
        tiny_artifact: Artifact) -> None:
    records = stream(50)
    pipeline, checkpointer, metrics = make(tiny_artifact, MemoryStore())
    process(pipeline, records)
    checkpointer.observe(records)
    checkpointer.on_released({0})
    assert pipeline.registry.series() == ["c"]
    moved = SourceRecord(Point("c", T0 + 60 * STEP, (1.0,)), 0, 999, False)
    checkpointer.observe([moved])
    assert sample(metrics, "streamlstm_series_partition_conflicts_total") == 1


def test_a_restore_of_series_saved_at_different_offsets_keeps_each_ones_position(
        tiny_artifact: Artifact) -> None:
    """A compacted topic can hold series saved by different checkpoints: the partition is
    re-read from the earliest, and the later ones skip what their state has seen."""
    records = [r for r in stream(300) if r.partition == 0]
    store = MemoryStore()
    first = Pipeline(tiny_artifact)
    process(first, records[:300])
    snapshot_a = first.snapshot(["a"])
    process(first, records[300:400])
    snapshot_b = first.snapshot(["b"])
    both = StateSnapshot(snapshot_a.meta, ["a", "b"],
                         {k: np.concatenate([snapshot_a.arrays[k], snapshot_b.arrays[k]])
                          for k in snapshot_a.arrays})
    store.save(PartitionCheckpoint(0, 300, both, np.array([300, 400])), [])
    second, restorer, _ = make(tiny_artifact, store)
    resume = restorer.on_assigned(0, 400)
    assert resume is not None and resume.offset == 300 and resume.ahead == {"b": 400}
    replay = [r for r in records[300:400] if r.offset >= resume.ahead.get(r.point.series, 0)]
    process(second, replay, warmup=True)
    restorer.observe(replay)
    assert process(second, records[400:]) == process(first, records[400:])
    restorer.observe(records[400:])
    end = records[-1].offset + 1
    restorer.committed({0: end})
    restorer.checkpoint([0])
    saved = store.load(0, second.state_layout())[0]
    assert dict(zip(saved.snapshot.series, saved.offsets.tolist(), strict=True)) == {
        "a": end, "b": end}


def test_directory_store_keeps_the_newest_files_and_refuses_a_corrupt_one(
        tiny_artifact: Artifact, tmp_path: Path) -> None:
    pipeline = Pipeline(tiny_artifact)
    process(pipeline, stream(60))
    store = DirectoryStore(tmp_path / "ckpt", keep=2)
    layout = pipeline.state_layout()
    for offset in (10, 20, 30):
        snapshot = pipeline.snapshot(["a", "b"])
        store.save(PartitionCheckpoint(3, offset, snapshot, np.array([offset, offset])), [])
    files = sorted((tmp_path / "ckpt" / "3").iterdir())
    assert [f.name[:20] for f in files] == [f"{20:020d}", f"{30:020d}"]  # no temporary left
    (loaded,) = store.load(3, layout)
    assert loaded.offset == 30 and loaded.snapshot.series == ["a", "b"]
    restored = Pipeline(tiny_artifact)
    restored.restore(loaded.snapshot)
    for name, array in pipeline.snapshot(["a", "b"]).arrays.items():
        np.testing.assert_array_equal(restored.snapshot(["a", "b"]).arrays[name], array)
    assert store.load(4, layout) == []
    files[-1].write_bytes(files[-1].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a state snapshot"):
        store.load(3, layout)


def test_packed_rows_round_trip_and_a_state_record_names_its_layout(
        tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    process(pipeline, stream(80))
    snapshot = pipeline.snapshot()
    layout = pipeline.state_layout()
    rows = snapshot.pack_rows()
    assert {len(r) for r in rows} == {layout.rows.itemsize}
    back = StateSnapshot.unpack_rows(snapshot.meta, snapshot.series, rows, layout.rows)
    for name, array in snapshot.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], array)
        assert back.arrays[name].dtype == array.dtype
    header = b'{"digest": "%s", "model_version": "v1", "offset": 7}' % layout.digest.encode()
    record = MAGIC + len(header).to_bytes(4, "big") + header + rows[0]
    assert _parse(record, layout, "t", "a") == ("v1", 7, rows[0])
    other = Pipeline(dataclasses.replace(tiny_artifact), PipelineSettings(memory_windows=256))
    with pytest.raises(CheckpointError, match="another state layout"):
        _parse(record, other.state_layout(), "t", "a")
    with pytest.raises(CheckpointError, match="truncated"):
        _parse(record[:-3], layout, "t", "a")
    with pytest.raises(CheckpointError, match="not a state record"):
        _parse(b"garbage", layout, "t", "a")
    # Limits that bound the state but do not shape it do not change the layout.
    assert Pipeline(tiny_artifact, PipelineSettings(max_series=77)).state_layout().digest == (
        layout.digest)


def test_a_series_is_warming_until_a_kind_of_evidence_is_calibrated(
        tiny_artifact: Artifact) -> None:
    pipeline = Pipeline(tiny_artifact)
    warmup = pipeline.calibration.warmup
    records = [r for r in stream(warmup + 80) if r.point.series == "a"]
    process(pipeline, records[:warmup])
    assert pipeline.warming() == 1  # fewer windows than the warm-up: it cannot alarm yet
    process(pipeline, records[warmup:])
    assert pipeline.warming() == 0
    pipeline.process([Point("new", T0, (1.0,))], now=0.0)
    assert pipeline.warming() == 1


def test_a_kafka_store_refuses_a_state_larger_than_a_record_may_be(
        tiny_artifact: Artifact) -> None:
    from streamlstm.checkpoints.kafka_topic import KafkaTopicStore, record_bytes
    from streamlstm.config import KafkaSettings

    layout = Pipeline(tiny_artifact).state_layout()
    needed = record_bytes(layout)
    with pytest.raises(CheckpointError, match=f"needs {needed} bytes.*max_record_bytes"):
        KafkaTopicStore(KafkaSettings(), "state", "input", layout, max_record_bytes=needed - 1)
    KafkaTopicStore(KafkaSettings(), "state", "input", layout, max_record_bytes=needed).close()


def test_checkpoints_go_next_to_the_models_but_never_into_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlstm import config
    from streamlstm.cli import BUNDLED_MODEL, _checkpoint_root

    def root(**environ: str) -> Path:
        return _checkpoint_root(config.load(None, environ))

    assert root(STREAMLSTM_MODEL_PATH=str(tmp_path / "models")) == tmp_path / "checkpoints"
    assert root(STREAMLSTM_CHECKPOINT_DIRECTORY=str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert root(STREAMLSTM_MODEL_PATH=str(BUNDLED_MODEL)) == (
        tmp_path / "state" / "streamlstm" / "checkpoints")


def test_a_directory_store_is_made_on_first_save_and_refused_where_it_cannot_be(
        tiny_artifact: Artifact, tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = DirectoryStore(root)
    assert not (tmp_path / "a").exists()  # nothing made until there is something to save
    pipeline = Pipeline(tiny_artifact)
    snapshot = pipeline.snapshot([])
    store.save(PartitionCheckpoint(0, 5, snapshot, np.zeros(0, np.int64)), [])
    assert [p.name[:20] for p in (root / "0").iterdir()] == [f"{5:020d}"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a writable directory"):
        DirectoryStore(tmp_path / "file" / "under")
