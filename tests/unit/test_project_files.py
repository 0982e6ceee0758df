"""Project hygiene: a LICENSE matching pyproject.toml, a changelog, the version in one place."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import streamlstm

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_file_matches_pyproject() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_the_image_build_gets_the_license_file() -> None:
    """`pip install .` in deploy/Dockerfile fails without the files license-files names."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    copied = " ".join(re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE))
    for name in PYPROJECT["project"]["license-files"]:
        assert name in copied.split(), f"the Dockerfile does not COPY {name}"
        assert f"!{name}\n" in ignore, f"the Dockerfile's .dockerignore leaves out {name}"


def test_the_version_is_written_once() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    source = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert source == {"attr": "streamlstm.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", streamlstm.__version__)
    # What pip installed (scripts/setup: `pip install -e .`) was read from the same place.
    assert metadata.version("streamlstm") == streamlstm.__version__


def test_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text
    assert "## [Unreleased]" in text
    sections = re.findall(r"^### (\w+)$", text, re.MULTILINE)
    assert sections and set(sections) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed",
                                          "Security"}
