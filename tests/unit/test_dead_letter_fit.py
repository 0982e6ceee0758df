"""Dead letters that would not fit in ``kafka.dead_letter_max_bytes`` are cut to fit, with a
header giving the original size; the rest go exactly as they came."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from streamlstm import config
from streamlstm.core.records import Rejected
from streamlstm.errors import ConfigError
from streamlstm.sources.kafka import (
    HEADER_DETAIL,
    HEADER_KEY_TRUNCATED,
    HEADER_REASON,
    HEADER_TRUNCATED,
    fit_dead_letter,
)

LIMIT = 4096


def built_size(key: bytes | None, value: bytes | None, headers: list) -> int:
    """The bytes of a record batch holding just this record, as the producer sends it."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 30)
    builder.append(0, int(time.time() * 1000), key, value, headers)
    return len(builder.build())


def reject(value: bytes | None, key: bytes | None = b"host1.cpu", detail: str = "bad") -> Rejected:
    return Rejected("invalid_json", detail, key, value, 3, 12345)


def test_a_message_that_fits_goes_unchanged() -> None:
    r = reject(b'{"series": "a", "value": oops}')
    key, value, headers = fit_dead_letter(r, "metrics", LIMIT)
    assert (key, value) == (r.raw_key, r.raw_value)
    names = [name for name, _ in headers]
    assert HEADER_TRUNCATED not in names and dict(headers)[HEADER_REASON] == b"invalid_json"


@pytest.mark.parametrize("size", [LIMIT - 200, LIMIT, 20_000, 1_048_576])
def test_a_value_too_large_is_cut_to_fit_with_its_original_size(size: int) -> None:
    raw = bytes(range(256)) * (size // 256 + 1)
    r = reject(raw[:size], detail="x" * 5000)
    key, value, headers = fit_dead_letter(r, "metrics", LIMIT)
    assert built_size(key, value, headers) <= LIMIT
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) <= LIMIT
    assert dict(headers)[HEADER_TRUNCATED] == str(size).encode()
    assert key == r.raw_key and value and r.raw_value.startswith(value)
    assert len(value) > LIMIT - 1500  # the cut keeps as much as fits
    assert len(dict(headers)[HEADER_DETAIL]) <= 1024


def test_a_huge_key_is_cut_too() -> None:
    r = reject(b"v" * 10_000, key=b"k" * 50_000)
    key, value, headers = fit_dead_letter(r, "metrics", LIMIT)
    assert built_size(key, value, headers) <= LIMIT
    assert dict(headers)[HEADER_KEY_TRUNCATED] == b"50000"
    assert dict(headers)[HEADER_TRUNCATED] == b"10000"
    assert key and r.raw_key.startswith(key) and value is not None


def test_the_limit_is_a_setting_with_a_floor(tmp_path: Path) -> None:
    assert config.load(None, {}).kafka.dead_letter_max_bytes == 1_000_000
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  dead_letter_max_bytes: 100\n")
    with pytest.raises(ConfigError, match=r"kafka\.dead_letter_max_bytes: expected at least"):
        config.load(path, {})
