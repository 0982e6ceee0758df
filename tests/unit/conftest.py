"""Fixtures for the core unit tests: one tiny model, trained once per session.

Generated series and the training settings live in ``core_helpers.py`` so tests can import them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streamlstm.model.artifact import Artifact
from streamlstm.training import fit
from tests.unit.core_helpers import TINY_SETTINGS, sine_history


@pytest.fixture(scope="session")
def tiny_artifact() -> Artifact:
    """A small LSTM autoencoder trained once per session on a clean-ish sine (noise 0.05).

    Tests must not mutate it; `save_artifact` does (version, path), so copy it first.
    """
    return fit(sine_history(2000), ["value"], TINY_SETTINGS, progress=False)


@pytest.fixture
def fresh_artifact(tiny_artifact: Artifact) -> Callable[[], Artifact]:
    """A factory of independent copies of the tiny artifact (safe to save or edit)."""

    def make() -> Artifact:
        return Artifact(
            architecture=tiny_artifact.architecture,
            state_dict={k: v.clone() for k, v in tiny_artifact.state_dict.items()},
            feature_names=list(tiny_artifact.feature_names),
            normalisation=dict(tiny_artifact.normalisation),
            calibration=dict(tiny_artifact.calibration),
            training=dict(tiny_artifact.training),
        )

    return make
