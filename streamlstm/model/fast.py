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

`OnnxAutoencoder` runs the same maths (LSTM cells, CPU) as an unrolled ONNX graph in ONNX Runtime,
about 1.5x faster than the torch loops on one thread (MLAS's activations and fused Gemm+activation
kernels); `fast_autoencoder` picks it when ``onnxruntime`` is installed (the ``onnx`` extra).

Determinism: a row's error depends only on that row (not on the batch's size or the row's place
in it), in either backend; tests/unit/test_fast_model_determinism.py checks it bit for bit.

Threads: on a small shared CPU, one intra-op thread is usually fastest for these small matmuls
(OpenMP threads spin waiting for a busy core); `best_threads` measures it instead of guessing.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from streamlstm.model.lstm_ae import Architecture, LSTMAutoencoder

# Floats per [chunk, H] step buffer on CPU: 32768 is 1024 windows at H=32 (measured best there),
# so one step's buffers ([chunk, 4H] gates and a few [chunk, H]) stay in a 1 MiB L2 cache.
CPU_CHUNK_FLOATS = 32768
# On CUDA bigger is better (one kernel launch per op whatever the batch); the [W, chunk, 4H]
# input projection is the largest buffer: 256 MiB at W=32, H=32.
DEFAULT_CUDA_CHUNK = 16384


# MKL computes products of 1 to 3 rows with other kernels (other rounding) than larger ones, and
# on some CPUs (AVX-512) the last row of an odd count too; the torch path pads every batch to a
# multiple of ROW_BLOCK rows so a row's error does not depend on the batch's size.
ROW_BLOCK = 16


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

    backend = "torch"

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
        short = -windows.shape[0] % ROW_BLOCK
        if short:  # see ROW_BLOCK
            pad = windows.new_zeros(short, *windows.shape[1:])
            return self._errors(torch.cat([windows, pad]), per_feature)[: windows.shape[0]]
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
        # Summed step by step, feature by feature: ATen's sum over dims picks its order by shape,
        # which made a row's error depend on how many rows the batch had.
        total = diff[0].clone()  # [B, F]
        for t in range(1, steps):
            total.add_(diff[t])
        if per_feature:
            return total.div_(steps)
        errors = total[:, 0].clone()
        for j in range(1, features):
            errors.add_(total[:, j])
        return errors.div_(steps * features)

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


# --- ONNX Runtime backend -----------------------------------------------------------------------

# Windows per ONNX Runtime call: the graph's step tensors ([chunk, H] each) stay in the caches.
ONNX_CHUNK = 512


def onnxruntime_available() -> bool:
    """Whether the optional ONNX Runtime backend can run here (``pip install streamlstm[onnx]``)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Graph:
    """A small ONNX graph builder: named constants and nodes, one fresh name per value."""

    def __init__(self) -> None:
        from onnx import numpy_helper

        self._from_array = numpy_helper.from_array
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, array: Any) -> str:
        import numpy as np

        name = self._name("w")
        self.initializers.append(self._from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        names = [self._name("v") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names if outputs > 1 else names[0]


def _lstm_gate_weights(weights: nn.Module, index: int, hidden: int) -> tuple:
    """Layer ``index``'s weights per gate (i, f, g, o), transposed: ``([W_ih^T], [W_hh^T], [b])``
    with ``W_ih^T`` [input, H], ``W_hh^T`` [H, H] and ``b = b_ih + b_hh`` [H] for each gate."""
    w_ih = getattr(weights, f"weight_ih_l{index}").detach().cpu().float().numpy()
    w_hh = getattr(weights, f"weight_hh_l{index}").detach().cpu().float().numpy()
    bias = (getattr(weights, f"bias_ih_l{index}") + getattr(weights, f"bias_hh_l{index}"))
    bias = bias.detach().cpu().float().numpy()
    rows = [slice(k * hidden, (k + 1) * hidden) for k in range(4)]
    return ([w_ih[r].T for r in rows], [w_hh[r].T for r in rows], [bias[r] for r in rows])


def lstm_onnx_graph(model: LSTMAutoencoder) -> bytes:
    """The reconstruction errors of an LSTM `LSTMAutoencoder` as a serialised ONNX model.

    Input ``x`` ``[B, W, F]`` float32; outputs ``errors`` ``[B]`` and ``feature_errors``
    ``[B, F]`` (mean squared error over the window, per feature). The graph is the fused maths
    unrolled over the W steps, shaped for ONNX Runtime's CPU kernels:

    - each step is four ``Gemm`` nodes, one per gate ([B, H] each, so no slicing copies), that
      ONNX Runtime fuses with their sigmoid / tanh (MLAS's vectorised activations, about twice
      as fast as ATen's); the cell update is a few element-wise nodes;
    - in the encoder (and the decoder's deeper layers) the step's input is concatenated to the
      hidden state, ``[x_t, h] @ [W_ih; W_hh]``, one product instead of a K=F one plus the
      recurrent one; the first step, from a zero state, multiplies ``x_0`` alone;
    - the decoder's first layer is fed the code at every step, so its input projection
      ``code @ W_ih + b`` is computed once and passed as each step's ``Gemm`` bias.
    """
    import numpy as np
    from onnx import TensorProto, checker, helper

    arch = model.architecture
    if arch.cell != "lstm":
        raise ValueError(f"the ONNX graph covers LSTM cells only, not {arch.cell!r}")
    hidden, steps, features = arch.hidden_size, arch.window, arch.n_features
    g = _Graph()
    acts = ("Sigmoid", "Sigmoid", "Tanh", "Sigmoid")  # torch's gate order: i, f, g, o

    def gates(inputs: str, weights: list[str], biases: list[str]) -> list[str]:
        return [g.op(act, [g.op("Gemm", [inputs, w, b])])
                for act, w, b in zip(acts, weights, biases, strict=True)]

    def cell(gate: list[str], c: str | None) -> tuple[str, str]:
        i, f, tg, o = gate
        ig = g.op("Mul", [i, tg])
        c = ig if c is None else g.op("Add", [g.op("Mul", [f, c]), ig])
        return g.op("Mul", [o, g.op("Tanh", [c])]), c

    def run_layer(inputs: list[str], w_ih: list, w_hh: list, b: list,
                  h: str | None, c: str | None) -> tuple[list[str], str]:
        """One layer over per-step inputs ``inputs``, from ``(h, c)`` (None: zeros)."""
        x_only = [g.const(w) for w in w_ih]
        stacked = [g.const(np.concatenate([wi, wh])) for wi, wh in zip(w_ih, w_hh, strict=True)]
        biases = [g.const(v) for v in b]
        outs = []
        for x_t in inputs:
            if h is None:
                h, c = cell(gates(x_t, x_only, biases), None)
            else:
                h, c = cell(gates(g.op("Concat", [x_t, h], axis=1), stacked, biases), c)
            outs.append(h)
        assert c is not None
        return outs, c

    x_steps = g.op("Reshape", [g.op("Transpose", ["x"], perm=[1, 0, 2]),
                               g.const(np.array([-1, features], np.int64))])  # [W*B, F]
    seq = g.op("Split", [x_steps], outputs=steps, axis=0, num_outputs=steps)
    seq = [seq] if isinstance(seq, str) else seq
    finals = []
    for k in range(arch.num_layers):
        w_ih, w_hh, b = _lstm_gate_weights(model.encoder, k, hidden)
        seq, c = run_layer(seq, w_ih, w_hh, b, None, None)
        finals.append((seq[-1], c))
    code = finals[-1][0]
    for k in range(arch.num_layers):
        w_ih, w_hh, b = _lstm_gate_weights(model.decoder, k, hidden)
        h, c = finals[k]
        if k > 0:
            seq, _ = run_layer(seq, w_ih, w_hh, b, h, c)
            continue
        # The same input at every step: its projection (with the biases) once per window.
        projected = [g.op("Gemm", [code, g.const(w), g.const(v)])
                     for w, v in zip(w_ih, b, strict=True)]
        recurrent = [g.const(w) for w in w_hh]
        seq = []
        for _ in range(steps):
            h, c = cell(gates(h, recurrent, projected), c)
            seq.append(h)
    top = g.op("Concat", seq, axis=0) if len(seq) > 1 else seq[0]  # [W*B, H]
    recon = g.op("Gemm", [top, g.const(model.output.weight.detach().cpu().float().numpy().T),
                          g.const(model.output.bias.detach().cpu().float().numpy())])
    diff = g.op("Sub", [recon, x_steps])
    square = g.op("Reshape", [g.op("Mul", [diff, diff]),
                              g.const(np.array([steps, -1, features], np.int64))])
    per_window = g.op("Transpose", [square], perm=[1, 0, 2])  # [B, W, F]
    sums = g.op("ReduceSum", [per_window, g.const(np.array([1], np.int64))], keepdims=0)
    g.nodes.append(helper.make_node("Div", [sums, g.const(np.array(steps, np.float32))],
                                    ["feature_errors"]))
    total = g.op("ReduceSum", [sums, g.const(np.array([1], np.int64))], keepdims=0)
    g.nodes.append(helper.make_node("Div", [total, g.const(np.array(steps * features,
                                                                    np.float32))], ["errors"]))
    graph = helper.make_graph(
        g.nodes, "lstm_autoencoder_errors",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", steps, features])],
        [helper.make_tensor_value_info("errors", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("feature_errors", TensorProto.FLOAT,
                                       ["batch", features])],
        g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx_model.ir_version = 9  # ONNX Runtime >= 1.15 reads it
    checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


class OnnxAutoencoder:
    """`FusedAutoencoder`'s interface on ONNX Runtime (CPU, LSTM cells): the same errors.

    Built from the module's weights (`lstm_onnx_graph`); nothing is written to disk and the
    artifact stays the torch one. ``threads`` (default: torch's intra-op thread count when it is
    built, i.e. ``model.threads``) sets ONNX Runtime's intra-op threads. A row's error depends
    only on that row: one thread, fixed kernels (no JIT), the batch cut into ``chunk`` rows.
    """

    backend = "onnxruntime"

    def __init__(self, model: LSTMAutoencoder, threads: int | None = None,
                 chunk: int = ONNX_CHUNK) -> None:
        import onnxruntime as ort

        if model.output.weight.device.type != "cpu":
            raise ValueError("the ONNX Runtime backend runs on the CPU only")
        self.architecture = model.architecture
        self.cell = model.architecture.cell
        self.hidden = model.architecture.hidden_size
        self.device = torch.device("cpu")
        self.chunk = chunk
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # no warnings about the graph's own constant folding
        # ORT's arena keeps the high-water mark of every run (13 MB at ONNX_CHUNK); without it
        # the buffers go back to malloc, measured as fast here.
        options.enable_cpu_mem_arena = False
        self.threads = options.intra_op_num_threads
        self._session = ort.InferenceSession(lstm_onnx_graph(model), options,
                                             providers=["CPUExecutionProvider"])

    def errors(self, windows: torch.Tensor, per_feature: bool = False) -> torch.Tensor:
        """As `FusedAutoencoder.errors`: ``[B, W, F]`` -> ``[B]`` (``[B, F]`` per feature)."""
        import numpy as np

        output = "feature_errors" if per_feature else "errors"
        x = np.ascontiguousarray(windows.detach().cpu().numpy(), dtype=np.float32)
        if len(x) == 0:
            shape = (0, x.shape[2]) if per_feature else (0,)
            return torch.zeros(shape, dtype=torch.float32)
        parts = [self._session.run([output], {"x": x[start : start + self.chunk]})[0]
                 for start in range(0, len(x), self.chunk)]
        return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))


def backend_problem(backend: str, device: str) -> str | None:
    """Why ``backend`` cannot serve a model on ``device`` (``cpu``, ``cuda``); None if it can."""
    if backend not in ("auto", "torch", "onnxruntime"):
        return f"unknown backend {backend!r}"
    if backend == "onnxruntime" and device != "cpu":
        return "ONNX Runtime runs here on the CPU only"
    if backend == "onnxruntime" and not onnxruntime_available():
        return "ONNX Runtime is not installed: pip install 'streamlstm[onnx]'"
    return None


def fast_autoencoder(model: LSTMAutoencoder, backend: str = "auto",
                     ) -> FusedAutoencoder | OnnxAutoencoder:
    """The fastest inference path for ``model``: ``auto`` takes ONNX Runtime for an LSTM on the
    CPU when ``onnxruntime`` and ``onnx`` are installed (the ``onnx`` extra), else the torch
    `FusedAutoencoder` (CUDA, GRU, or no ONNX Runtime); ``torch`` / ``onnxruntime`` force one."""
    on_cpu = model.output.weight.device.type == "cpu"
    problem = backend_problem(backend, "cpu" if on_cpu else model.output.weight.device.type)
    if problem is not None:
        raise ValueError(problem)
    if backend == "onnxruntime" or (backend == "auto" and on_cpu
                                    and model.architecture.cell == "lstm"
                                    and onnxruntime_available()):
        return OnnxAutoencoder(model)
    return FusedAutoencoder(model)
