"""streamlstm: a streaming anomaly-detection daemon with an LSTM autoencoder at its core."""

__version__ = "0.1.0"
