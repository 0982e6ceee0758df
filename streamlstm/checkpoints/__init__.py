"""Checkpoints of per-series state, so a restart or a rebalance does not make the detector
blind: `Checkpointer` (when and what), the stores (`DirectoryStore`, `KafkaTopicStore`)."""
