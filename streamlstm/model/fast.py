"""Fused inference for `LSTMAutoencoder`: the same reconstruction errors, computed faster.

`FusedAutoencoder(model).errors(windows)` equals
``reconstruction_error(windows, model(windows))`` (float32 rounding aside) but does less work:

- the decoder is fed the same code at every step, so its input projection
  ``code @ W_ih.T + b_ih (+ b_hh)`` is computed once per window instead of W times;
- the encoder's (and deeper layers') input projections of all W steps are one matmul;
- each step is one ``addmm`` for the gates and a few in-place element-wise ops on
  pre-transposed, contiguous weights, the LSTM gates reordered to (i, f, o, g) so the three
  sigmoids are one call;
- the output layer is one matmul over the top decoder layer's W outputs, and the squared error
  is reduced in place;
- large batches are cut into chunks that keep the step buffers in the CPU cache.

The maths mirrors ``nn.LSTM`` / ``nn.GRU`` exactly (layer by layer, decoder layer ``l`` starting
from the encoder's final state of layer ``l``), in plain torch ops, so it runs on CPU and CUDA.

Threads: on a small shared CPU, one intra-op thread is usually fastest for these small matmuls
(OpenMP threads spin waiting for a busy core); `best_threads` measures it instead of guessing.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder

# Floats per [chunk, H] step buffer on CPU: 32768 is 1024 windows at H=32 (measured best there),
# so one step's buffers ([chunk, 4H] gates and a few [chunk, H]) stay in a 1 MiB L2 cache.
CPU_CHUNK_FLOATS = 32768
# On CUDA bigger is better (one kernel launch per op whatever the batch); the [W, chunk, 4H]
# input projection is the largest buffer: 256 MiB at W=32, H=32.
DEFAULT_CUDA_CHUNK = 16384


def default_chunk(device: torch.device, hidden: int) -> int:
    """Windows per internal pass: cache-sized on CPU, large on CUDA."""
    if device.type == "cuda":
        return DEFAULT_CUDA_CHUNK
    return max(64, CPU_CHUNK_FLOATS // hidden)


@dataclass(frozen=True)
class _Layer:
    """One recurrent layer's weights, pre-transposed and with the biases folded."""

    w_ih_t: torch.Tensor  # [input, G*H]
    w_hh_t: torch.Tensor  # [H, G*H]
    bias: torch.Tensor  # [G*H], added to the input projection
    b_hn: torch.Tensor | None  # GRU only: [3H] = (0, 0, b_hn), added to the hidden projection


def _layer(weights: nn.LSTM | nn.GRU, index: int, hidden: int, cell: str) -> _Layer:
    """Weights of layer ``index`` of ``weights`` in the fused layout.

    ``tanh(x) = 2 * sigmoid(2x) - 1`` and ATen's sigmoid is several times faster than its tanh,
    so the rows feeding a tanh (LSTM ``g``, GRU ``n``) are doubled here and the steps only ever
    call sigmoid.
    """
    w_ih = getattr(weights, f"weight_ih_l{index}").detach()
    w_hh = getattr(weights, f"weight_hh_l{index}").detach()
    b_ih = getattr(weights, f"bias_ih_l{index}").detach()
    b_hh = getattr(weights, f"bias_hh_l{index}").detach()
    scale = torch.ones(w_ih.shape[0], 1, dtype=w_ih.dtype, device=w_ih.device)
    if cell == "lstm":
        # (i, f, g, o) -> (i, f, o, g): the sigmoid gates become one block, then the tanh one.
        order = torch.cat([torch.arange(0, 2 * hidden), torch.arange(3 * hidden, 4 * hidden),
                           torch.arange(2 * hidden, 3 * hidden)]).to(w_ih.device)
        scale[3 * hidden :] = 2.0
        w_ih, w_hh, bias = w_ih[order] * scale, w_hh[order] * scale, (b_ih + b_hh)[order]
        return _Layer(w_ih.t().contiguous(), w_hh.t().contiguous(),
                      (bias * scale[:, 0]).contiguous(), None)
    # GRU (r, z, n): b_hr and b_hz fold into the input bias; b_hn must stay inside r * (...).
    scale[2 * hidden :] = 2.0
    bias = b_ih.clone()
    bias[: 2 * hidden] += b_hh[: 2 * hidden]
    b_hn = torch.zeros_like(b_hh)
    b_hn[2 * hidden :] = b_hh[2 * hidden :]
    return _Layer((w_ih * scale).t().contiguous(), (w_hh * scale).t().contiguous(),
                  (bias * scale[:, 0]).contiguous(), (b_hn * scale[:, 0]).contiguous())


def _run_lstm(proj: torch.Tensor, w_hh_t: torch.Tensor, h: torch.Tensor, c2: torch.Tensor,
              out: Optional[torch.Tensor], steps: int) -> None:  # noqa: UP045 (TorchScript)
    """Unroll one LSTM layer in place on ``h`` and ``c2`` (twice the cell state), both [B, H].

    ``proj`` is the input projection with biases, ``[W, B, 4H]`` or ``[B, 4H]`` (the same input at
    every step). Step ``t``'s hidden state is written to ``out[t]`` when ``out`` is given.
    """
    hidden = h.shape[1]
    gates = torch.empty(h.shape[0], 4 * hidden, dtype=h.dtype, device=h.device)
    tanh_c = torch.empty_like(h)
    i, f = gates[:, :hidden], gates[:, hidden : 2 * hidden]
    o, g = gates[:, 2 * hidden : 3 * hidden], gates[:, 3 * hidden :]
    for t in range(steps):
        torch.addmm(proj if proj.dim() == 2 else proj[t], h, w_hh_t, out=gates)
        gates.sigmoid_()  # g now holds sigmoid(2 g), so tanh(g) = 2 * g - 1
        # 2c' = f * 2c + 2 * i * tanh(g) = f * 2c + 4 * i * g - 2 * i
        c2.mul_(f).addcmul_(i, g, value=4.0).sub_(i, alpha=2.0)
        torch.sigmoid(c2, out=tanh_c).mul_(2.0).sub_(1.0)  # tanh(c)
        if out is not None:
            h = out[t]
        torch.mul(o, tanh_c, out=h)


def _run_gru(proj: torch.Tensor, w_hh_t: torch.Tensor, b_hn: torch.Tensor, h: torch.Tensor,
             out: Optional[torch.Tensor], steps: int) -> None:  # noqa: UP045 (TorchScript)
    """Unroll one GRU layer in place on ``h`` ([B, H]); ``proj`` and ``out`` as `_run_lstm`."""
    hidden = h.shape[1]
    gh = torch.empty(h.shape[0], 3 * hidden, dtype=h.dtype, device=h.device)
    diff = torch.empty_like(h)
    rz, n = gh[:, : 2 * hidden], gh[:, 2 * hidden :]
    r, z = gh[:, :hidden], gh[:, hidden : 2 * hidden]
    for t in range(steps):
        gi = proj if proj.dim() == 2 else proj[t]
        torch.addmm(b_hn, h, w_hh_t, out=gh)
        rz.add_(gi[:, : 2 * hidden]).sigmoid_()
        n.mul_(r).add_(gi[:, 2 * hidden :]).sigmoid_().mul_(2.0).sub_(1.0)  # tanh, doubled rows
        # h' = (1 - z) * n + z * h = n + z * (h - n)
        torch.sub(h, n, out=diff).mul_(z)
        if out is not None:
            h = out[t]
        torch.add(n, diff, out=h)


_StepLoops = tuple[Callable[..., None], Callable[..., None]]
_scripted: _StepLoops | None = None


def _step_loops(script: bool) -> _StepLoops:
    """``(_run_lstm, _run_gru)``, TorchScript-compiled when ``script`` and TorchScript works.

    Scripting saves the Python interpreter ~1 ms per 64 steps (5% at 1024 windows, more on
    small batches). It is compiled once per process; any failure (TorchScript is deprecated and
    may go) falls back to the identical Python functions.
    """
    global _scripted
    if not script:
        return _run_lstm, _run_gru
    if _scripted is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _scripted = (torch.jit.script(_run_lstm), torch.jit.script(_run_gru))
        except Exception:  # any TorchScript failure: run the same code in Python
            _scripted = (_run_lstm, _run_gru)
    return _scripted


class FusedAutoencoder:
    """Inference-only twin of an `LSTMAutoencoder`: reconstruction errors per window.

    It copies the weights (pre-transposed) at construction; rebuild it after the model changes.
    ``chunk`` caps the windows per internal pass (default `default_chunk`: 1024 at H=32 on CPU).
    ``script=True`` runs the step loops through TorchScript, about 5% faster at 1024 windows,
    but its profiling executor changes the rounding after the first calls, so a pipeline
    restored from a snapshot (or a replay) would no longer score bit for bit as one that never
    stopped: the plain Python loops are the default.
    """

    def __init__(self, model: LSTMAutoencoder, chunk: int | None = None,
                 script: bool = False) -> None:
        arch = model.architecture
        self.architecture = arch
        self.cell = arch.cell
        self.hidden = arch.hidden_size
        device = model.output.weight.device
        self.device = device
        self.chunk = chunk or default_chunk(device, self.hidden)
        with torch.no_grad():
            self.encoder = [_layer(model.encoder, k, self.hidden, self.cell)
                            for k in range(arch.num_layers)]
            self.decoder = [_layer(model.decoder, k, self.hidden, self.cell)
                            for k in range(arch.num_layers)]
            self.w_out_t = model.output.weight.detach().t().contiguous()  # [H, F]
            self.b_out = model.output.bias.detach().clone()  # [F]
        self._lstm, self._gru = _step_loops(script)

    @classmethod
    def from_state_dict(cls, architecture: Architecture, state_dict: dict[str, torch.Tensor],
                        device: torch.device | str = "cpu",
                        chunk: int | None = None, script: bool = False) -> FusedAutoencoder:
        """Build from an artifact's architecture and weights without keeping the module."""
        model = LSTMAutoencoder(architecture)
        model.load_state_dict(state_dict, strict=True)
        return cls(model.to(device).eval(), chunk=chunk, script=script)

    def errors(self, windows: torch.Tensor, per_feature: bool = False) -> torch.Tensor:
        """Mean squared reconstruction error of each window: ``[B, W, F]`` -> ``[B]``, or per
        feature ``[B, F]`` (mean over the window's steps) with ``per_feature``."""
        with torch.inference_mode():
            if windows.shape[0] <= self.chunk:
                return self._errors(windows, per_feature)
            return torch.cat([self._errors(part, per_feature)
                              for part in windows.split(self.chunk)])

    def _errors(self, windows: torch.Tensor, per_feature: bool = False) -> torch.Tensor:
        batch, steps, features = windows.shape
        hidden = self.hidden
        # Time-major: every step's slice is contiguous.
        x = windows.transpose(0, 1).contiguous()  # [W, B, F]
        seq = x
        finals: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        buffer = torch.empty(steps, batch, hidden, dtype=x.dtype, device=x.device)
        for k, layer in enumerate(self.encoder):
            top = k == len(self.encoder) - 1
            proj = torch.addmm(layer.bias, seq.reshape(steps * batch, -1), layer.w_ih_t)
            proj = proj.view(steps, batch, -1)
            h = x.new_zeros(batch, hidden)
            c = x.new_zeros(batch, hidden) if self.cell == "lstm" else None
            out = None if top else buffer
            self._run(layer, proj, h, c, out, steps)
            if out is not None:
                h = out[-1].clone()
                seq = out
            finals.append((h, c))
        code = finals[-1][0]
        for k, layer in enumerate(self.decoder):
            if k == 0:
                proj = torch.addmm(layer.bias, code, layer.w_ih_t)  # [B, G*H], once per window
            else:
                proj = torch.addmm(layer.bias, buffer.view(steps * batch, hidden), layer.w_ih_t)
                proj = proj.view(steps, batch, -1)
            h, c = finals[k]
            self._run(layer, proj, h, c, buffer, steps)
        recon = torch.addmm(self.b_out, buffer.view(steps * batch, hidden), self.w_out_t)
        diff = recon.view(steps, batch, features).sub_(x).square_()
        if per_feature:
            return diff.sum(dim=0).div_(steps)
        return diff.sum(dim=(0, 2)).div_(steps * features)

    def _run(self, layer: _Layer, proj: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
             out: torch.Tensor | None, steps: int) -> None:
        """Unroll ``layer`` in place on its state (``c`` is None for a GRU)."""
        if c is not None:
            self._lstm(proj, layer.w_hh_t, h, c, out, steps)
        else:
            self._gru(proj, layer.w_hh_t, layer.b_hn, h, out, steps)


def best_threads(fused: FusedAutoencoder, batch: int = 4096, reps: int = 3,
                 candidates: tuple[int, ...] | None = None) -> int:
    """Measure `FusedAutoencoder.errors` at each thread count, set and return the fastest.

    CPU only (returns the current count on CUDA). ``candidates`` defaults to 1..CPU count.
    """
    if fused.device.type != "cpu":
        return torch.get_num_threads()
    start = torch.get_num_threads()
    options = candidates or tuple(range(1, (os.cpu_count() or 1) + 1))
    arch = fused.architecture
    windows = torch.randn(batch, arch.window, arch.n_features)
    best, best_time = start, float("inf")
    for threads in options:
        torch.set_num_threads(threads)
        fused.errors(windows[:64])  # warm up this thread count
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            fused.errors(windows)
            times.append(time.perf_counter() - began)
        median = sorted(times)[len(times) // 2]
        if median < best_time:
            best, best_time = threads, median
    torch.set_num_threads(best)
    return best
