"""Model artifacts on disk: ``weights.pt`` (a state_dict, no pickle) beside ``meta.json``.

A models directory holds one sub-directory per version and a ``current`` file naming the version
in service::

    models/
      current                      -> "20261123T101500Z-3f2a9c1b"
      20261123T101500Z-3f2a9c1b/
        weights.pt                 torch.save(state_dict); read with weights_only=True
        meta.json                  architecture, features, normalisation, calibration, training

A version is written under a temporary name and renamed into place, and ``current`` is replaced
with ``os.replace``, so a reader never sees a half-written model. ``meta.json`` records the
SHA-256 of the weights; a truncated or edited file is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from streamlstm.errors import ArtifactError
from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
META_FILE = "meta.json"
CURRENT_FILE = "current"


@dataclass
class Artifact:
    """A trained model and everything needed to use it the way it was trained."""

    architecture: Architecture
    state_dict: dict[str, torch.Tensor]
    feature_names: list[str]
    # {"series_scale": {series: [scale per feature]}, "default_scale": [..] | None}
    normalisation: dict[str, Any]
    # Calibration parameters and the error distribution seen on validation data.
    calibration: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    created_at: str = ""
    path: Path | None = None

    def build_model(self, device: torch.device | str = "cpu") -> LSTMAutoencoder:
        """A ready-to-run network in eval mode on ``device``."""
        model = LSTMAutoencoder(self.architecture)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"{self._where()}: weights do not fit the architecture: "
                                f"{_first_line(exc)}") from exc
        return model.to(device).eval()

    def meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "version": self.version,
            "created_at": self.created_at,
            "architecture": self.architecture.to_dict(),
            "feature_names": self.feature_names,
            "normalisation": self.normalisation,
            "calibration": self.calibration,
            "training": self.training,
        }

    def _where(self) -> str:
        return str(self.path) if self.path else f"model {self.version or '(unsaved)'}"


def save_artifact(artifact: Artifact, models_dir: str | Path, make_current: bool = True) -> Path:
    """Write ``artifact`` as a new version under ``models_dir``; return its directory."""
    models = Path(models_dir)
    models.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in artifact.state_dict.items()}, buffer)
    weights = buffer.getvalue()
    digest = hashlib.sha256(weights).hexdigest()
    now = datetime.now(UTC)
    artifact.created_at = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    artifact.version = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{digest[:8]}"
    meta = artifact.meta() | {"weights_sha256": digest}
    target = models / artifact.version
    if target.exists():
        raise ArtifactError(f"{target}: a model with this version already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{artifact.version}-", dir=models))
    try:
        (staging / WEIGHTS_FILE).write_bytes(weights)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for name in (WEIGHTS_FILE, META_FILE):
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(staging, target)
    except OSError as exc:
        raise ArtifactError(f"{target}: cannot write the model: {exc}") from exc
    finally:
        if staging.exists():
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
    artifact.path = target
    if make_current:
        set_current(models, artifact.version)
    return target


def set_current(models_dir: str | Path, version: str) -> None:
    """Point ``models_dir/current`` at ``version`` atomically."""
    models = Path(models_dir)
    if not (models / version / META_FILE).is_file():
        raise ArtifactError(f"{models / version}: no such model version")
    pointer = models / CURRENT_FILE
    temporary = models / f".{CURRENT_FILE}.{os.getpid()}.tmp"
    temporary.write_text(version + "\n")
    os.replace(temporary, pointer)


def resolve_model_dir(path: str | Path) -> Path:
    """The version directory that ``path`` means: itself, or what its ``current`` names."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    pointer = path / CURRENT_FILE
    if pointer.is_file():
        version = pointer.read_text().strip()
        if not version or "/" in version or version.startswith("."):
            raise ArtifactError(f"{pointer}: expected a version name, got {version!r}")
        return path / version
    if not path.exists():
        raise ArtifactError(f"{path}: no such model directory (train one with `streamlstm train`)")
    raise ArtifactError(f"{path}: neither a model version ({META_FILE}) nor a models directory "
                        f"with a '{CURRENT_FILE}' file")


def load_artifact(path: str | Path) -> Artifact:
    """Load and check the model at ``path`` (a version directory or a models directory)."""
    directory = resolve_model_dir(path)
    meta_path = directory / META_FILE
    weights_path = directory / WEIGHTS_FILE
    try:
        meta = json.loads(meta_path.read_text())
        weights = weights_path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{directory}: missing {Path(exc.filename).name}") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{meta_path}: unreadable: {_first_line(exc)}") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{meta_path}: expected a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{meta_path}: format {meta.get('format')!r} is not supported "
                            f"(this streamlstm reads format {FORMAT_VERSION})")
    missing = [k for k in ("version", "architecture", "feature_names", "normalisation",
                           "calibration", "weights_sha256") if k not in meta]
    if missing:
        raise ArtifactError(f"{meta_path}: missing keys {', '.join(missing)}")
    digest = hashlib.sha256(weights).hexdigest()
    if digest != meta["weights_sha256"]:
        raise ArtifactError(f"{weights_path}: checksum mismatch (truncated or modified file)")
    try:
        architecture = Architecture.from_dict(meta["architecture"])
    except TypeError as exc:
        raise ArtifactError(f"{meta_path}: bad architecture: {exc}") from exc
    try:
        state_dict = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for corrupt files
        raise ArtifactError(f"{weights_path}: cannot read weights: {_first_line(exc)}") from exc
    if len(meta["feature_names"]) != architecture.n_features:
        raise ArtifactError(f"{meta_path}: {len(meta['feature_names'])} feature names for a "
                            f"model of {architecture.n_features} features")
    artifact = Artifact(
        architecture=architecture,
        state_dict=state_dict,
        feature_names=list(meta["feature_names"]),
        normalisation=meta["normalisation"],
        calibration=meta["calibration"],
        training=meta.get("training", {}),
        version=str(meta["version"]),
        created_at=str(meta.get("created_at", "")),
        path=directory,
    )
    artifact.build_model("cpu")  # proves the weights fit before anyone relies on them
    return artifact


def list_versions(models_dir: str | Path) -> list[dict[str, Any]]:
    """Summaries of the versions under ``models_dir``, oldest first, the current one marked."""
    models = Path(models_dir)
    try:
        current = (models / CURRENT_FILE).read_text().strip()
    except OSError:
        current = ""
    rows: list[dict[str, Any]] = []
    for meta_path in sorted(models.glob(f"*/{META_FILE}")):
        if meta_path.parent.name.startswith("."):
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            rows.append({"version": meta_path.parent.name, "error": "unreadable meta.json"})
            continue
        training = meta.get("training", {})
        rows.append({
            "version": meta.get("version", meta_path.parent.name),
            "created_at": meta.get("created_at", ""),
            "current": meta_path.parent.name == current,
            "cell": meta.get("architecture", {}).get("cell", ""),
            "window": meta.get("architecture", {}).get("window", ""),
            "validation_loss": training.get("validation_loss"),
            "series": training.get("data", {}).get("series"),
            "windows": training.get("data", {}).get("windows"),
        })
    rows.sort(key=lambda r: str(r.get("created_at", "")))
    return rows


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
