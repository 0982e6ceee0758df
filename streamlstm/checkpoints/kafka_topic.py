"""Checkpoints in a compacted Kafka topic: the changelog pattern of Kafka Streams.

One record per series, keyed by the series, in the state topic's partition with the number
of the input partition its events arrive on; a tombstone (null value) when the series is
evicted. With ``cleanup.policy=compact`` the broker keeps the latest record per series, so the
topic stays about as large as the state. Any consumer of the group that is assigned an input
partition reads the same-numbered state partition from the beginning, keeps the latest record
per series and restores them: N daemons hand state over on a rebalance without shared disks.

A record's value is ``MAGIC``, a 4-byte header length, a JSON header (layout digest, model
version, the offset the series' state has consumed its partition up to) and the series' state
as one packed row (`StateSnapshot.pack_rows`). A save may be cut short by a crash; then some
series have newer records than others, which the per-series offsets account for.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamlstm.checkpoints.stores import PartitionCheckpoint
from streamlstm.config import KafkaSettings
from streamlstm.core.snapshot import StateLayout, StateSnapshot
from streamlstm.errors import CheckpointError
from streamlstm.sources.kafka import client_config, records_between

log = logging.getLogger(__name__)

MAGIC = b"SLS1"
_HEADER = struct.Struct(">I")
_TIMEOUT_S = 60.0
# Room for the key, the JSON header and Kafka's own record and batch framing.
_FRAMING_BYTES = 4096


def record_bytes(layout: StateLayout) -> int:
    """About how large one series' record is in ``layout`` (value, key and framing)."""
    return layout.rows.itemsize + _FRAMING_BYTES


class KafkaTopicStore:
    """Checkpoints in ``topic``, created compacted with as many partitions as ``input_topic``
    if absent (on first use, when the input topic exists).

    ``max_record_bytes`` is the largest record the broker takes (``message.max.bytes``); a
    layout whose series would not fit is refused when the store is made, with the size needed.
    """

    def __init__(self, settings: KafkaSettings, topic: str, input_topic: str,
                 layout: StateLayout, max_record_bytes: int = 1_000_000,
                 replication_factor: int = -1) -> None:
        needed = record_bytes(layout)
        if needed > max_record_bytes:
            raise CheckpointError(
                f"one series' state needs {needed} bytes per record, over the "
                f"{max_record_bytes} allowed (checkpoint.max_record_bytes, the broker's "
                f"message.max.bytes): raise both, lower windows.memory_windows, or "
                f"checkpoint to a directory")
        self.settings = settings
        self.topic = topic
        self.location = f"kafka topic {topic!r}"
        self._max_record_bytes = max_record_bytes
        self._layout = layout
        self._input_topic = input_topic
        self._replication_factor = replication_factor
        self._topic_ready = False
        self._record_bytes = needed
        self._producer: KafkaProducer | None = None  # both made on first use, so that start-up
        self._consumer: KafkaConsumer | None = None  # errors come from the source, once

    def _ensure_topic(self) -> None:
        if self._topic_ready:
            return
        try:
            reader = self._reader()
            partitions = len(reader.partitions_for_topic(self._input_topic) or ())
            if not partitions:
                raise CheckpointError(f"{self.location}: the input topic "
                                      f"{self._input_topic!r} does not exist yet")
            have = reader.partitions_for_topic(self.topic) or set()
            if not have:
                admin = KafkaAdminClient(**client_config(self.settings))
                try:
                    admin.create_topics([NewTopic(
                        self.topic, num_partitions=partitions,
                        replication_factor=self._replication_factor,
                        topic_configs={"cleanup.policy": "compact"})])
                    log.info("created the compacted state topic %s with %d partitions",
                             self.topic, partitions)
                except TopicAlreadyExistsError:
                    pass  # another daemon of the group was quicker
                finally:
                    admin.close()
                have = self._wait_for_partitions()
        except KafkaError as exc:
            raise CheckpointError(f"{self.location}: creating the topic failed: {exc}") from exc
        if len(have) < partitions:
            raise CheckpointError(
                f"{self.location} has {len(have)} partitions, the input has {partitions}; "
                f"it needs at least as many (state partition = input partition)")
        self._topic_ready = True

    def _wait_for_partitions(self) -> set[int]:
        """The state topic's partitions once the cluster metadata shows them."""
        reader = self._reader()
        deadline = time.monotonic() + _TIMEOUT_S
        while True:
            reader._client.cluster.request_update()
            have = set(reader.partitions_for_topic(self.topic) or ())
            if have or time.monotonic() > deadline:
                return have
            time.sleep(0.2)

    # ---- save ----

    def save(self, checkpoint: PartitionCheckpoint, forgotten: Sequence[str]) -> int:
        snapshot = checkpoint.snapshot
        partition = checkpoint.partition
        self._ensure_topic()
        if snapshot.series and snapshot.row_layout() != self._layout.rows:
            raise CheckpointError(f"{self.location}: the state to save is not of the layout "
                                  f"the store was made for")
        header_base = {"digest": self._layout.digest,
                       "model_version": snapshot.meta.get("model_version")}
        written = 0
        try:
            producer = self._writer()
            futures = []
            for series, row, offset in zip(snapshot.series, snapshot.pack_rows(),
                                           checkpoint.offsets.tolist(), strict=True):
                header = json.dumps({**header_base, "offset": offset}).encode()
                value = b"".join((MAGIC, _HEADER.pack(len(header)), header, row))
                futures.append(producer.send(self.topic, key=_key(series), value=value,
                                             partition=partition))
                written += len(value)
            for series in forgotten:
                futures.append(producer.send(self.topic, key=_key(series), value=None,
                                             partition=partition))
            producer.flush(timeout=_TIMEOUT_S)
            for future in futures:
                future.get(timeout=_TIMEOUT_S)
        except KafkaError as exc:
            raise CheckpointError(f"{self.location}[{partition}]: writing failed: {exc}") from exc
        return written

    # ---- load ----

    def load(self, partition: int, layout: StateLayout) -> list[PartitionCheckpoint]:
        self._ensure_topic()
        latest = self._read_partition(partition)
        rows: dict[str, list[tuple[str, int, bytes]]] = {}  # model version -> rows
        for series, value in latest.items():
            version, offset, row = _parse(value, layout, f"{self.location}[{partition}]",
                                          series)
            rows.setdefault(version, []).append((series, offset, row))
        parts = []
        for version, entries in rows.items():
            meta = {**layout.meta, "model_version": version}
            names = [e[0] for e in entries]
            try:
                snapshot = StateSnapshot.unpack_rows(meta, names, [e[2] for e in entries],
                                                     layout.rows)
            except ValueError as exc:
                raise CheckpointError(f"{self.location}[{partition}]: {exc}") from exc
            offsets = np.array([e[1] for e in entries], np.int64)
            parts.append(PartitionCheckpoint(partition, int(offsets.min()), snapshot, offsets))
        return parts

    def _read_partition(self, partition: int) -> dict[str, bytes]:
        """The latest value per key of one state partition, read from its beginning."""
        tp = TopicPartition(self.topic, partition)
        latest: dict[str, bytes] = {}
        try:
            consumer = self._reader()
            consumer.assign([tp])
            begin = consumer.beginning_offsets([tp], timeout_ms=30_000)[tp]
            for message in records_between(consumer, tp, begin, timeout_s=_TIMEOUT_S):
                series = message.key.decode("utf-8", "surrogatepass") if message.key else ""
                if message.value is None:
                    latest.pop(series, None)
                else:
                    latest[series] = message.value
            return latest
        except KafkaError as exc:
            raise CheckpointError(f"{self.location}[{partition}]: reading failed: {exc}") from exc

    def _writer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                **client_config(self.settings), acks="all", linger_ms=20,
                max_request_size=self._max_record_bytes,
                batch_size=self._max_record_bytes)
        return self._producer

    def _reader(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                **client_config(self.settings), group_id=None, enable_auto_commit=False,
                fetch_max_bytes=max(52_428_800, self._max_record_bytes),
                max_partition_fetch_bytes=max(1_048_576, self._max_record_bytes))
        return self._consumer

    def close(self) -> None:
        try:
            if self._producer is not None:
                self._producer.close(timeout=_TIMEOUT_S)
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
        except KafkaError as exc:
            raise CheckpointError(f"{self.location}: close failed: {exc}") from exc


def _key(series: str) -> bytes:
    return series.encode("utf-8", "surrogatepass")


def _parse(value: bytes, layout: StateLayout, where: str, series: str) -> tuple[str, int, bytes]:
    """(model version, offset, row) of one record, or CheckpointError."""
    if value[:4] != MAGIC or len(value) < 8:
        raise CheckpointError(f"{where}: the record of {series!r} is not a state record")
    (size,) = _HEADER.unpack_from(value, 4)
    try:
        header: Any = json.loads(value[8:8 + size])
    except ValueError as exc:
        raise CheckpointError(f"{where}: the record of {series!r} has a bad header") from exc
    if not isinstance(header, dict) or header.get("digest") != layout.digest:
        raise CheckpointError(f"{where}: the record of {series!r} was written with another "
                              f"state layout (window, features, settings or format)")
    version, offset = header.get("model_version"), header.get("offset")
    if not isinstance(version, str) or not isinstance(offset, int):
        raise CheckpointError(f"{where}: the record of {series!r} has a bad header")
    row = value[8 + size:]
    if len(row) != layout.rows.itemsize:
        raise CheckpointError(f"{where}: the record of {series!r} is truncated")
    return version, offset, row
