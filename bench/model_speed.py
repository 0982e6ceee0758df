"""Reconstruction-error speed of the bundled model: windows/s by implementation, batch, threads.

    python bench/model_speed.py [--reps 5] [--seconds 0.4] [--batches 256,512,1024,2000,8192]
                                [--threads 1,2] [--no-compile] [--no-onnx]

Every implementation computes ``((windows - model(windows)) ** 2).mean(dim=(1, 2))`` for the same
weights (the bundled LSTM, window 32, hidden 32):

- ``eager``: the ``nn.LSTM`` module under ``torch.inference_mode`` (what the Scorer runs);
- ``torchscript``: the same module through ``torch.jit.script`` (``trace`` if scripting fails);
- ``compile``: ``torch.compile`` of the module (``nn.LSTM`` stays an ATen/oneDNN call);
- ``compile-fused``: ``torch.compile`` of the fused maths written functionally, so Inductor can
  fuse each step's element-wise ops (one shape per compile, batches of 1024 only);
- ``onnxrt`` / ``onnxrt-fused``: ONNX Runtime on the exported module / fused maths traced;
- ``onnxrt-lstm``: ONNX Runtime's fused ``LSTM`` operator for the encoder and the decoder (the
  decoder fed the code W times: no constant-projection trick possible);
- ``onnxrt-graph``: `streamlstm.model.fast.OnnxAutoencoder`, the unrolled per-gate graph (what
  the Scorer runs when the ``onnx`` extra is installed);
- ``fused``: `streamlstm.model.fast.FusedAutoencoder` (plain Python step loops, the torch
  backend), ``fused-script`` the same with TorchScript step loops.

The ONNX Runtime rows need ``pip install streamlstm[onnx]``. Ratios are against ``eager`` at the
same batch and threads, measured in the same run.

Each figure is the median over ``--reps`` rounds; a round visits every thread count, variant and
batch in turn (interleaved, so load from other processes hits all alike) and runs each for about
``--seconds``. The machine's load average is printed: on a shared box it decides the threads.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import streamlstm
from streamlstm.model.artifact import load_artifact
from streamlstm.model.fast import FusedAutoencoder, OnnxAutoencoder
from streamlstm.model.lstm_ae import LSTMAutoencoder

Errors = Callable[[torch.Tensor], torch.Tensor]
BUNDLED = Path(streamlstm.__file__).parent / "data" / "model"


class ErrorModule(nn.Module):
    """The model plus the scorer's error, as one module to script, compile or export."""

    def __init__(self, model: LSTMAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return ((windows - self.model(windows)) ** 2).mean(dim=(1, 2))


def functional_fused(fused: FusedAutoencoder) -> Errors:
    """The fused maths (single-layer LSTM) without in-place ops, for Inductor and ONNX."""
    assert fused.cell == "lstm" and len(fused.encoder) == 1
    enc, dec, hidden = fused.encoder[0], fused.decoder[0], fused.hidden
    w_out_t, b_out = fused.w_out_t, fused.b_out

    def step(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.sigmoid(gates)  # the g rows are doubled: tanh(g) = 2 * sigmoid(2g) - 1
        i, f, o = s[:, :hidden], s[:, hidden : 2 * hidden], s[:, 2 * hidden : 3 * hidden]
        c = f * c + i * (2 * s[:, 3 * hidden :] - 1)
        return o * torch.tanh(c), c

    def errors(windows: torch.Tensor) -> torch.Tensor:
        batch, steps, features = windows.shape
        x = windows.transpose(0, 1)
        proj = (x.reshape(steps * batch, features) @ enc.w_ih_t + enc.bias).view(steps, batch, -1)
        h = windows.new_zeros(batch, hidden)
        c = windows.new_zeros(batch, hidden)
        for t in range(steps):
            h, c = step(torch.addmm(proj[t], h, enc.w_hh_t), c)
        code_proj = torch.addmm(dec.bias, h, dec.w_ih_t)
        total = windows.new_zeros(batch)
        for t in range(steps):
            h, c = step(torch.addmm(code_proj, h, dec.w_hh_t), c)
            r = torch.addmm(b_out, h, w_out_t) - x[t]
            total = total + (r * r).sum(dim=1)
        return total / (steps * features)

    return errors


def chunked(fn: Errors, chunk: int) -> Errors:
    """Run ``fn`` on pieces of exactly ``chunk`` windows (batches must be multiples of it)."""

    def run(windows: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(part) for part in windows.split(chunk)])

    return run


def in_inference(fn: Callable[[torch.Tensor], torch.Tensor]) -> Errors:
    def run(windows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(windows)

    return run


def onnx_session(module: nn.Module | None, fn: Errors | None, threads: int,
                 example: torch.Tensor) -> Errors:
    """Export ``module`` (or trace ``fn``) to ONNX and run it in ONNX Runtime on the CPU."""
    import onnxruntime as ort

    class Wrap(nn.Module):
        def forward(self, windows: torch.Tensor) -> torch.Tensor:
            assert fn is not None
            return fn(windows)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module or Wrap(), (example,), buffer, input_names=["x"],
                          output_names=["e"], dynamic_axes={"x": {0: "b"}, "e": {0: "b"}},
                          dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options,
                                   providers=["CPUExecutionProvider"])

    def run(windows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": windows.numpy()})[0])

    return run


def onnx_lstm_op(model: LSTMAutoencoder, threads: int) -> Errors:
    """The autoencoder as two ONNX ``LSTM`` nodes (ONNX Runtime's fused LSTM kernel)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    arch = model.architecture
    hidden, steps, features = arch.hidden_size, arch.window, arch.n_features
    assert arch.cell == "lstm" and arch.num_layers == 1
    # torch's gates (i, f, g, o) -> ONNX's (i, o, f, c)
    order = np.r_[0:hidden, 3 * hidden : 4 * hidden, hidden : 2 * hidden, 2 * hidden : 3 * hidden]

    def weights(lstm: nn.Module, name: str) -> list:
        def get(attr: str) -> np.ndarray:
            return getattr(lstm, attr).detach().numpy()

        w, r = get("weight_ih_l0"), get("weight_hh_l0")
        b = np.concatenate([get("bias_ih_l0")[order], get("bias_hh_l0")[order]])
        return [numpy_helper.from_array(w[order][None].copy(), f"{name}_W"),
                numpy_helper.from_array(r[order][None].copy(), f"{name}_R"),
                numpy_helper.from_array(b[None].copy(), f"{name}_B")]

    out_w = model.output.weight.detach().numpy().T.copy()
    inits = [*weights(model.encoder, "enc"), *weights(model.decoder, "dec"),
             numpy_helper.from_array(out_w, "w_out"),
             numpy_helper.from_array(model.output.bias.detach().numpy().copy(), "b_out"),
             numpy_helper.from_array(np.array([steps, 1, 1], np.int64), "repeat"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([0, 2], np.int64), "axes02")]
    node = helper.make_node
    nodes = [node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             node("LSTM", ["xt", "enc_W", "enc_R", "enc_B"], ["", "h", "c"], hidden_size=hidden),
             node("Tile", ["h", "repeat"], ["code"]),
             node("LSTM", ["code", "dec_W", "dec_R", "dec_B", "", "h", "c"], ["y", "", ""],
                  hidden_size=hidden),
             node("Squeeze", ["y", "axis1"], ["ys"]),
             node("MatMul", ["ys", "w_out"], ["ym"]), node("Add", ["ym", "b_out"], ["r"]),
             node("Sub", ["r", "xt"], ["d"]), node("Mul", ["d", "d"], ["d2"]),
             node("ReduceMean", ["d2", "axes02"], ["e"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "ae",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", steps, features])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["b"])], inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx_model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda windows: torch.from_numpy(session.run(None, {"x": windows.numpy()})[0])


def build_variants(model: LSTMAutoencoder, threads: list[int], compile_: bool, onnx: bool,
                   ) -> dict[tuple[str, int], Errors]:
    """``(variant, threads) -> errors function``; prints what could not be built and why."""
    fused = FusedAutoencoder(model)
    module = ErrorModule(model).eval()
    example = torch.randn(64, model.architecture.window, model.architecture.n_features)
    shared: dict[str, Errors] = {
        "eager": in_inference(module),
        "fused": fused.errors,
        "fused-script": FusedAutoencoder(model, script=True).errors,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(module)
        shared["torchscript"] = in_inference(scripted)
    except Exception as exc:
        print(f"torch.jit.script failed ({type(exc).__name__}), using torch.jit.trace")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shared["torchscript"] = in_inference(torch.jit.trace(module, example))
    if compile_:
        for name, target in (("compile", module),
                             ("compile-fused", functional_fused(fused))):
            began = time.perf_counter()
            try:
                compiled = torch.compile(target, dynamic=False)
                probe = in_inference(compiled)
                probe(torch.randn(1024, *example.shape[1:]))  # compiles the 1024 shape
            except Exception as exc:
                print(f"{name}: torch.compile failed: {type(exc).__name__}: {exc}"[:300])
                continue
            print(f"{name}: first call (compile) {time.perf_counter() - began:.1f} s")
            shared[name] = probe if name == "compile" else chunked(probe, 1024)
    variants = {(name, n): fn for name, fn in shared.items() for n in threads}
    if onnx:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime not installed: skipping the ONNX Runtime rows")
        else:
            for n in threads:
                variants[("onnxrt", n)] = onnx_session(module, None, n, example)
                variants[("onnxrt-fused", n)] = onnx_session(None, functional_fused(fused), n,
                                                             example)
                variants[("onnxrt-lstm", n)] = onnx_lstm_op(model, n)
                variants[("onnxrt-graph", n)] = OnnxAutoencoder(model, threads=n).errors
    return variants


def speed(fn: Errors, windows: torch.Tensor, seconds: float) -> float:
    """Windows per second of ``fn`` on ``windows``, run for about ``seconds`` (once at least)."""
    done, began = 0, time.perf_counter()
    while True:
        fn(windows)
        done += len(windows)
        elapsed = time.perf_counter() - began
        if elapsed >= seconds:
            return done / elapsed


def applicable(name: str, batch: int) -> bool:
    return not (name == "compile-fused" and batch % 1024)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--batches", default="256,512,1024,2000,8192")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--chunks", default="512,1024,2048",
                        help="FusedAutoencoder chunk sizes to sweep at the largest batch")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(n) for n in args.threads.split(",")]
    chunks = [int(c) for c in args.chunks.split(",") if c]

    artifact = load_artifact(BUNDLED)
    model = artifact.build_model(torch.device("cpu"))
    arch = artifact.architecture
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads by default, "
          f"model {arch.cell} window {arch.window} hidden {arch.hidden_size} "
          f"layers {arch.num_layers}; load average {loadavg()}")
    torch.set_num_threads(threads[0])
    variants = build_variants(model, threads, not args.no_compile, not args.no_onnx)
    for c in chunks:
        for n in threads:
            variants[(f"fused chunk={c}", n)] = FusedAutoencoder(model, chunk=c).errors
    windows = torch.randn(max(batches), arch.window, arch.n_features,
                          generator=torch.Generator().manual_seed(0))

    # Same answer from every variant.
    probe = windows[:1024]
    expected = variants[("eager", threads[0])](probe)
    for (name, n), fn in variants.items():
        if n == threads[0] and applicable(name, 1024):
            worst = (fn(probe) - expected).abs().max().item() / expected.abs().max().item()
            if worst > 1e-4:
                print(f"WARNING {name}: relative difference from eager {worst:.1e}")

    cells: list[tuple[str, int, int]] = []
    for (name, n) in variants:
        for b in ([max(batches)] if name.startswith("fused chunk") else batches):
            if applicable(name, b):
                cells.append((name, n, b))
    for n in threads:  # warm up every cell at its thread count (TorchScript profiles 2 calls)
        torch.set_num_threads(n)
        for name, m, b in cells:
            if m == n:
                variants[(name, n)](windows[:b])
                variants[(name, n)](windows[:b])
    results: dict[tuple[str, int, int], list[float]] = {cell: [] for cell in cells}
    for rep in range(args.reps):
        for n in threads:
            torch.set_num_threads(n)
            for name, m, b in cells:
                if m == n:
                    results[(name, m, b)].append(speed(variants[(name, n)], windows[:b],
                                                       args.seconds))
        print(f"round {rep + 1}/{args.reps} done, load average {loadavg()}", flush=True)

    names = list(dict.fromkeys(name for name, _, _ in cells))
    print(f"\nwindows/s, median of {args.reps} (x: against eager at the same batch and threads)")
    header = f"{'variant':<20}{'threads':>8}" + "".join(f"{b:>16}" for b in batches)
    print(header)
    print("-" * len(header))
    for name in names:
        for n in threads:
            row = f"{name:<20}{n:>8}"
            for b in batches:
                v = results.get((name, n, b))
                eager = results.get(("eager", n, b))
                ratio = statistics.median(v) / statistics.median(eager) if v and eager else 0.0
                row += f"{statistics.median(v):>10,.0f} {ratio:4.2f}x" if v else f"{'-':>16}"

            print(row)
    best = max(results, key=lambda cell: statistics.median(results[cell]))
    print(f"\nfastest: {best[0]} at {best[1]} thread(s), batch {best[2]}: "
          f"{statistics.median(results[best]):,.0f} windows/s; load average {loadavg()}")


if __name__ == "__main__":
    main()
