"""An LSTM encoder-decoder that learns to reconstruct normal windows.

The encoder (a multi-layer ``nn.LSTM``: input, forget and output gates around a cell state)
reads the window and its last hidden state becomes the code. The decoder is a second recurrent
stack that unrolls the code over W steps; a linear layer maps each step back to the features.
Windows the model has not learnt to reconstruct come back with a large error. ``cell="gru"``
swaps in the lighter GRU cells.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the network before loading its weights."""

    n_features: int = 1
    window: int = 32
    hidden_size: int = 32
    num_layers: int = 1
    cell: Literal["lstm", "gru"] = "lstm"
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(**data)


class LSTMAutoencoder(nn.Module):
    """Reconstructs a batch of windows ``[B, W, F]``."""

    def __init__(self, architecture: Architecture) -> None:
        super().__init__()
        self.architecture = architecture
        rnn = nn.LSTM if architecture.cell == "lstm" else nn.GRU
        dropout = architecture.dropout if architecture.num_layers > 1 else 0.0
        self.encoder = rnn(
            input_size=architecture.n_features,
            hidden_size=architecture.hidden_size,
            num_layers=architecture.num_layers,
            batch_first=True,
            dropout=dropout,
        )
        self.decoder = rnn(
            input_size=architecture.hidden_size,
            hidden_size=architecture.hidden_size,
            num_layers=architecture.num_layers,
            batch_first=True,
            dropout=dropout,
        )
        self.output = nn.Linear(architecture.hidden_size, architecture.n_features)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        _, state = self.encoder(windows)
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
        code = hidden[-1]  # top layer's last hidden state, [B, H]
        steps = code.unsqueeze(1).expand(-1, windows.shape[1], -1)
        # The decoder starts from the encoder's final state (Malhotra et al., 2016) and is fed
        # the code at every step, so it unrolls the window rather than guessing it from nothing.
        decoded, _ = self.decoder(steps, state)
        return self.output(decoded)
