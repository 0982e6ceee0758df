"""First start without training (`streamlstm models init`) and the optional extras.

The deploy files run `models init` before the daemon (Kubernetes init container, systemd
ExecStartPre, the compose one-shot); the daemon's image has no [train]/[eval] extras, so the
run path must not import what only they bring.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from streamlstm import cli
from streamlstm.model.artifact import CURRENT_FILE, META_FILE, load_artifact, save_artifact

ROOT = Path(__file__).resolve().parents[2]
EXTRA_ONLY = ("matplotlib", "pyarrow", "tqdm")


def _bundled_sha() -> str:
    return json.loads((cli.BUNDLED_MODEL / META_FILE).read_text())["weights_sha256"]


def test_models_init_installs_the_bundled_model_into_an_empty_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"  # does not exist yet: a fresh volume mount point may not
    assert cli.main(["models", "init", "--models", str(models)]) == 0
    artifact = load_artifact(models)  # what `run` loads: the current version
    assert json.loads((artifact.path / META_FILE).read_text())["weights_sha256"] == _bundled_sha()
    assert "installed the bundled model" in capsys.readouterr().out


def test_models_init_leaves_a_model_in_service_alone(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    assert cli.main(["models", "init", "--models", str(models)]) == 0
    first = (models / CURRENT_FILE).read_text()
    versions = sorted(p.name for p in models.iterdir())
    capsys.readouterr()
    assert cli.main(["models", "init", "--models", str(models)]) == 0  # every restart runs it
    assert (models / CURRENT_FILE).read_text() == first
    assert sorted(p.name for p in models.iterdir()) == versions
    assert "already in service" in capsys.readouterr().out


def test_models_init_never_replaces_a_trained_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    trained = load_artifact(cli.BUNDLED_MODEL)
    trained.training = {"note": "trained here"}
    target = save_artifact(trained, models)
    assert cli.main(["models", "init", "--models", str(models)]) == 0
    assert load_artifact(models).path == target


def test_models_init_repairs_a_pointer_to_a_missing_version(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / CURRENT_FILE).write_text("20200101T000000Z-deadbeef\n")  # a half-restored volume
    assert cli.main(["models", "init", "--models", str(models)]) == 0
    assert load_artifact(models).version != "20200101T000000Z-deadbeef"


def test_models_init_takes_the_model_path_variable(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLSTM_MODEL_PATH", str(tmp_path / "from-env"))
    assert cli.main(["models", "init"]) == 0
    assert load_artifact(tmp_path / "from-env")


def test_training_and_evaluation_dependencies_are_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for name in EXTRA_ONLY:
        assert name not in core, f"{name} is a core dependency"
    assert {"pyarrow", "tqdm"} <= {d.split(">")[0] for d in extras["train"]}
    assert "matplotlib" in " ".join(extras["eval"])
    assert "streamlstm[train,eval,onnx]" in extras["dev"]  # tests cover both backends
    assert {"onnxruntime", "onnx"} <= {d.split(">")[0] for d in extras["onnx"]}


_BLOCKER = textwrap.dedent(f"""
    import sys
    for name in {EXTRA_ONLY!r}:  # as if not installed: import fails, find_spec says None
        sys.modules[name] = None
""")


def _without_extras(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCKER + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_daemon_path_runs_without_the_extras(tmp_path: Path) -> None:
    result = _without_extras(f"""
        import sys
        from streamlstm import cli, config
        import streamlstm.service, streamlstm.sources.kafka, streamlstm.sinks.influx
        import streamlstm.checkpoints.checkpointer, streamlstm.checkpoints.kafka_topic
        from streamlstm.model.artifact import load_artifact
        from streamlstm.core.pipeline import Pipeline, PipelineSettings
        assert cli.main(["models", "init", "--models", {str(tmp_path / "m")!r}]) == 0
        pipeline = Pipeline(load_artifact({str(tmp_path / "m")!r}), PipelineSettings())
        assert cli.main(["replay", {str(ROOT / "streamlstm/data/art_daily_jumpsup.csv")!r},
                         "--output", {str(tmp_path / "out.csv")!r}]) == 0
        leaked = sorted(m for m, module in sys.modules.items()
                        if module is not None and m.split(".")[0] in {EXTRA_ONLY!r})
        assert not leaked, leaked
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
    assert (tmp_path / "out.csv").read_text().count("\n") > 1000


def test_without_the_extras_parquet_and_plots_say_what_to_install(tmp_path: Path) -> None:
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1")
    result = _without_extras(f"""
        import sys
        from streamlstm import cli
        sys.exit(cli.main(["replay", {str(parquet)!r}, "--output", {str(tmp_path / "o.csv")!r}]))
    """)
    assert result.returncode == 1
    assert "pip install 'streamlstm[train]'" in result.stderr
    assert "Traceback" not in result.stderr
    labels = tmp_path / "windows.json"
    labels.write_text("{}")
    result = _without_extras(f"""
        import sys
        from streamlstm import cli
        sys.exit(cli.main(["evaluate", "--labels", {str(labels)!r},
                           {str(ROOT / "streamlstm/data/art_daily_jumpsup.csv")!r},
                           "--plots", {str(tmp_path / "plots")!r}]))
    """)
    assert result.returncode == 1, result.stderr
    assert "pip install 'streamlstm[eval]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_without_tqdm_trains_without_a_progress_bar(tmp_path: Path) -> None:
    result = _without_extras(f"""
        import sys
        from streamlstm import cli
        sys.exit(cli.main(["train", "--synthetic", "3", "--epochs", "1", "--max-windows", "300",
                           "--output", {str(tmp_path / "m")!r}]))
    """)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / CURRENT_FILE).is_file()
