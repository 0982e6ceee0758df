"""Model artifacts: round trip, `current`, versions, refusal of damaged files, no pickle."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamlstm.core.scoring import Scorer
from streamlstm.errors import ArtifactError
from streamlstm.model import artifact as artifact_module
from streamlstm.model.artifact import (
    CURRENT_FILE,
    META_FILE,
    WEIGHTS_FILE,
    Artifact,
    list_versions,
    load_artifact,
    resolve_model_dir,
    save_artifact,
    set_current,
)
from tests.unit.core_helpers import TINY_WINDOW

MakeArtifact = Callable[[], Artifact]


def windows(n: int = 40, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, TINY_WINDOW, 1)).astype(np.float32)


def rewrite_meta(version_dir: Path, **changes: Any) -> None:
    meta_path = version_dir / META_FILE
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))


def plant_weights(version_dir: Path, payload: bytes) -> None:
    """Replace the weights and record their true checksum, as a careful attacker would."""
    (version_dir / WEIGHTS_FILE).write_bytes(payload)
    rewrite_meta(version_dir, weights_sha256=hashlib.sha256(payload).hexdigest())


def load_error(path: Path) -> str:
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    text = str(info.value)
    assert "\n" not in text
    return text


class _Payload:
    """Unpickling this creates ``marker``: proof that pickle code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_save_then_load_gives_identical_errors(tmp_path: Path,
                                              fresh_artifact: MakeArtifact) -> None:
    original = fresh_artifact()
    target = save_artifact(original, tmp_path / "models")
    assert target.parent == tmp_path / "models"
    assert (target / WEIGHTS_FILE).is_file() and (target / META_FILE).is_file()
    assert original.path == target and original.version == target.name

    loaded = load_artifact(target)
    assert loaded.version == original.version
    assert loaded.architecture == original.architecture
    assert loaded.feature_names == original.feature_names
    assert loaded.calibration == original.calibration
    assert loaded.normalisation == original.normalisation
    assert loaded.training["epochs"] == original.training["epochs"]
    assert loaded.state_dict.keys() == original.state_dict.keys()
    for name, tensor in original.state_dict.items():
        assert torch.equal(loaded.state_dict[name], tensor), name

    batch = windows()
    np.testing.assert_array_equal(Scorer(loaded).errors(batch), Scorer(original).errors(batch))


def test_meta_json_records_what_is_needed(tmp_path: Path, fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    meta = json.loads((target / META_FILE).read_text())
    assert meta["format"] == artifact_module.FORMAT_VERSION
    assert meta["architecture"]["window"] == TINY_WINDOW
    assert meta["feature_names"] == ["value"]
    weights = (target / WEIGHTS_FILE).read_bytes()
    assert meta["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert meta["version"] == target.name
    assert {"threshold", "alarm_hold"} <= set(meta["calibration"])


def test_no_staging_directory_is_left_behind(tmp_path: Path, fresh_artifact: MakeArtifact) -> None:
    save_artifact(fresh_artifact(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_current_pointer_follows_the_latest_save(tmp_path: Path,
                                                 fresh_artifact: MakeArtifact) -> None:
    first = save_artifact(fresh_artifact(), tmp_path)
    assert (tmp_path / CURRENT_FILE).read_text().strip() == first.name
    assert resolve_model_dir(tmp_path) == first
    assert load_artifact(tmp_path).version == first.name

    changed = fresh_artifact()
    changed.state_dict["output.bias"] += 1.0
    second = save_artifact(changed, tmp_path)
    assert second != first
    assert resolve_model_dir(tmp_path) == second

    third_artifact = fresh_artifact()
    third_artifact.state_dict["output.bias"] += 2.0
    third = save_artifact(third_artifact, tmp_path, make_current=False)
    assert resolve_model_dir(tmp_path) == second  # not made current

    set_current(tmp_path, first.name)
    assert load_artifact(tmp_path).version == first.name
    assert resolve_model_dir(third) == third  # a version directory resolves to itself


def test_set_current_refuses_an_unknown_version(tmp_path: Path,
                                                fresh_artifact: MakeArtifact) -> None:
    save_artifact(fresh_artifact(), tmp_path)
    with pytest.raises(ArtifactError, match="no such model version"):
        set_current(tmp_path, "20990101T000000Z-deadbeef")


@pytest.mark.parametrize("pointer", ["", "../elsewhere", ".hidden"])
def test_a_bad_current_pointer_is_refused(tmp_path: Path, pointer: str) -> None:
    (tmp_path / CURRENT_FILE).write_text(pointer + "\n")
    assert "expected a version name" in load_error(tmp_path)


def test_list_versions_oldest_first_with_the_current_marked(
        tmp_path: Path, fresh_artifact: MakeArtifact, monkeypatch: pytest.MonkeyPatch) -> None:
    moments = iter([datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                    datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)])

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return next(moments)

    monkeypatch.setattr(artifact_module, "datetime", Clock)
    older = save_artifact(fresh_artifact(), tmp_path)
    newer_artifact = fresh_artifact()
    newer_artifact.state_dict["output.bias"] -= 1.0
    newer = save_artifact(newer_artifact, tmp_path, make_current=False)

    rows = list_versions(tmp_path)
    assert [r["version"] for r in rows] == [older.name, newer.name]
    assert [r["current"] for r in rows] == [True, False]
    assert rows[0]["created_at"] == "2026-01-02T03:04:05Z"
    assert rows[0]["window"] == TINY_WINDOW
    assert rows[0]["cell"] == "lstm"
    assert rows[0]["validation_loss"] == pytest.approx(fresh_artifact().training["validation_loss"])


def test_list_versions_of_an_empty_directory(tmp_path: Path) -> None:
    assert list_versions(tmp_path) == []


def test_truncated_weights_are_refused(tmp_path: Path, fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    weights = (target / WEIGHTS_FILE).read_bytes()
    (target / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    text = load_error(target)
    assert WEIGHTS_FILE in text and "checksum" in text


def test_truncated_weights_with_a_matching_checksum_are_refused(
        tmp_path: Path, fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    weights = (target / WEIGHTS_FILE).read_bytes()
    plant_weights(target, weights[: len(weights) // 2])
    text = load_error(target)
    assert WEIGHTS_FILE in text and "cannot read weights" in text


def test_an_edited_checksum_in_meta_json_is_refused(tmp_path: Path,
                                                    fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    rewrite_meta(target, weights_sha256="0" * 64)
    assert "checksum mismatch" in load_error(target)


def test_modified_weights_are_refused(tmp_path: Path, fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    weights = bytearray((target / WEIGHTS_FILE).read_bytes())
    weights[-100] ^= 0xFF
    (target / WEIGHTS_FILE).write_bytes(bytes(weights))
    assert "checksum mismatch" in load_error(tmp_path)


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, META_FILE])
def test_a_missing_file_is_named(tmp_path: Path, fresh_artifact: MakeArtifact,
                                 missing: str) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    (target / missing).unlink()
    text = load_error(tmp_path)  # through `current`
    assert f"missing {missing}" in text
    assert str(target) in text


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    text = load_error(tmp_path / "nowhere")
    assert "no such model directory" in text


def test_a_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    assert "neither a model version" in load_error(tmp_path)


@pytest.mark.parametrize("fmt", [2, 0, None, "1"])
def test_an_unsupported_format_is_refused(tmp_path: Path, fresh_artifact: MakeArtifact,
                                          fmt: object) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    rewrite_meta(target, format=fmt)
    text = load_error(target)
    assert f"format {fmt!r} is not supported" in text


def test_meta_json_that_is_not_json_is_refused(tmp_path: Path,
                                               fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    (target / META_FILE).write_text('{"format": 1, "version": ')
    assert "unreadable" in load_error(target)


def test_meta_json_missing_keys_is_refused(tmp_path: Path, fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    meta = json.loads((target / META_FILE).read_text())
    del meta["calibration"]
    (target / META_FILE).write_text(json.dumps(meta))
    assert "missing keys calibration" in load_error(target)


def test_an_architecture_that_does_not_fit_the_weights_is_refused(
        tmp_path: Path, fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    meta = json.loads((target / META_FILE).read_text())
    rewrite_meta(target, architecture=meta["architecture"] | {"hidden_size": 9})
    assert "do not fit the architecture" in load_error(target)


def test_an_unknown_architecture_field_is_refused(tmp_path: Path,
                                                  fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    meta = json.loads((target / META_FILE).read_text())
    rewrite_meta(target, architecture=meta["architecture"] | {"attention": True})
    assert "bad architecture" in load_error(target)


def test_pickled_objects_in_the_weights_are_not_executed(
        tmp_path: Path, fresh_artifact: MakeArtifact) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    state = dict(fresh_artifact().state_dict)
    state["output.bias"] = _Payload(marker)  # type: ignore[assignment]
    torch.save(state, buffer)
    plant_weights(target, buffer.getvalue())  # the checksum matches: only weights_only saves us

    text = load_error(target)
    assert "cannot read weights" in text
    assert not marker.exists(), "unpickling ran code from the weights file"


def test_torch_load_is_called_with_weights_only(tmp_path: Path, fresh_artifact: MakeArtifact,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = save_artifact(fresh_artifact(), tmp_path)
    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_artifact(target)
    assert calls, "torch.load was not used"
    assert all(call.get("weights_only") is True for call in calls)


def test_a_saved_version_is_never_overwritten(tmp_path: Path, fresh_artifact: MakeArtifact,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    moment = datetime(2026, 5, 1, tzinfo=UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return moment

    monkeypatch.setattr(artifact_module, "datetime", Frozen)
    first = save_artifact(fresh_artifact(), tmp_path)
    before = (first / WEIGHTS_FILE).read_bytes()
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(fresh_artifact(), tmp_path)  # same weights, same second: same version
    assert (first / WEIGHTS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, CURRENT_FILE])
