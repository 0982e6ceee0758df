"""The LSTM autoencoder and its on-disk artifact."""

from streamlstm.model.artifact import Artifact, load_artifact, resolve_model_dir, save_artifact
from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder

__all__ = [
    "Architecture",
    "Artifact",
    "LSTMAutoencoder",
    "load_artifact",
    "resolve_model_dir",
    "save_artifact",
]
