"""Speed of the fused ops, bias_gelu and geglu, against what a model runs without them: the eager composite, and
torch.compile of that composite; the copy ceiling measured in the same run.

    python benchmarks/bench_fused.py                                   # CPU: [tokens, 3072|4096], tokens 2^8..2^12
    python benchmarks/bench_fused.py --tokens 8 10 --hidden 3072 --ops geglu
    python benchmarks/bench_fused.py --isa avx2                        # as on a CPU without AVX-512
    python benchmarks/bench_fused.py --device cuda --dtypes float32 bfloat16     # tokens 2^8..2^16

Shapes are a transformer MLP's: [tokens, hidden] with hidden 3072 (BERT/ViT-Base: 4 x 768) or 4096. geglu's gate and
up are the two halves of one [tokens, 2 * hidden] projection output (x.chunk(2, dim=-1)), as in a model.

What each pass is, for every provider:
  bias_gelu fwd   y = gelu(x + b)            eager: F.gelu(x + b)
  bias_gelu bwd   (grad_x, grad_b)           eager: what autograd runs: aten.gelu_backward(g, h) with the saved sum h,
                                                    then grad_x.sum(0)
  geglu fwd       y = gelu(gate) * up        eager: F.gelu(gate) * up
  geglu bwd       (grad_gate, grad_up)       eager: what autograd runs: g * gelu(gate) with the saved gelu(gate),
                                                    and aten.gelu_backward(g * up, gate)
compile is torch.compile(fullgraph=True) of the eager function, compiled afresh per configuration; it may not
recompile while timed.

Effective bandwidth counts the bytes the fused op must move, for every provider alike (so GB/s ratios are speed
ratios): bias_gelu fwd 2 N elements (+ the bias), bwd 3 N (+ bias, grad_b); geglu fwd 3 N, bwd 5 N. The copy provider
(dst.copy_(src), 2 N elements) is the ceiling; "% copy" compares each row's effective GB/s with it. The eager
composites move more: bias_gelu fwd 4 N (the sum written and read back), bwd 4 N; geglu fwd 5 N, bwd 9 N.

Every provider's output is checked against the float64 reference before timing, and the timed output after timing.
Rows go to a CSV (--csv; default benchmarks/results/fused-<device>-<time>.csv) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import gelu_ext
from gelu_ext.ops import call_backward_op
from gelu_ext.reference import gelu_derivative, gelu_reference
from gelu_ext.testing import bias_gelu_sum

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_gelu import (  # noqa: E402
    CPU_ROUNDS,
    DTYPES,
    CompiledProvider,
    environment,
    set_memory_regime,
    significant,
    start,
    time_providers,
    write_csv,
)

OPS = ("bias_gelu", "geglu")
PROVIDERS = ("gelu_ext", "eager", "compile", "copy")
MODES = ("fwd", "bwd")
# Elements of size N the fused op reads or writes (the bias's H elements are added separately).
FUSED_PASSES = {("bias_gelu", "fwd"): 2, ("bias_gelu", "bwd"): 3, ("geglu", "fwd"): 3, ("geglu", "bwd"): 5}
BIAS_VECTORS = {("bias_gelu", "fwd"): 1, ("bias_gelu", "bwd"): 2, ("geglu", "fwd"): 0, ("geglu", "bwd"): 0}
CSV_FIELDS = ("device", "device_name", "isa", "torch", "git_commit", "threads", "timestamp", "op", "provider", "mode",
              "approximate", "dtype", "tokens", "hidden", "ms", "gbps", "pct_of_copy", "speedup_vs_eager")  # fmt: skip
ROTATE_BELOW_BYTES = 256 * 2**20


# ------------------------------------------------------------------------------------------------------------------
# The passes: (inputs) -> outputs, per op, mode and provider. Inputs are made once per input set (make_inputs).
# ------------------------------------------------------------------------------------------------------------------
def eager_fn(op, mode):
    if op == "bias_gelu":
        if mode == "fwd":
            return lambda x, b, g, h, a: F.gelu(x + b, approximate=a)

        def bias_gelu_bwd(x, b, g, h, a):
            grad_x = torch.ops.aten.gelu_backward(g, h, approximate=a)
            return grad_x, grad_x.sum(0)

        return bias_gelu_bwd
    if mode == "fwd":
        return lambda gate, up, g, gelu_gate, a: F.gelu(gate, approximate=a) * up

    def geglu_bwd(gate, up, g, gelu_gate, a):
        return torch.ops.aten.gelu_backward(g * up, gate, approximate=a), g * gelu_gate

    return geglu_bwd


def fused_fn(op, mode):
    # The backward is the kernel call that gelu_ext's autograd makes in a backward pass (call_backward_op), as eager's
    # rows time the aten calls autograd makes: not torch.ops.gelu_ext.*_backward from Python, which adds torch.library's
    # Python autograd layer (~5-10 us) that no backward pass goes through.
    if op == "bias_gelu":
        if mode == "fwd":
            return lambda x, b, g, h, a: gelu_ext.bias_gelu(x, b, a)
        return lambda x, b, g, h, a: call_backward_op(torch.ops.gelu_ext.bias_gelu_backward.default, g, x, b, a)
    if mode == "fwd":
        return lambda gate, up, g, gelu_gate, a: gelu_ext.geglu(gate, up, a)
    return lambda gate, up, g, gelu_gate, a: call_backward_op(torch.ops.gelu_ext.geglu_backward.default, g, gate, up, a)


def make_inputs(op, tokens, hidden, dtype, device):
    """One input set: the op's two inputs, an upstream gradient, and what eager autograd would have saved."""

    def randn(*shape):
        return torch.randn(*shape, device=device).to(dtype)

    g = randn(tokens, hidden)
    if op == "bias_gelu":
        x, b = randn(tokens, hidden), randn(hidden)
        return x, b, g, x + b
    up, gate = randn(tokens, 2 * hidden).chunk(2, dim=-1)
    return gate, up, g, F.gelu(gate)


def reference(op, mode, inputs, approximate):
    """float64 results of the pass (each output), from the same inputs."""
    a, b, g, _ = (t.double() for t in inputs)
    if op == "bias_gelu":
        h = bias_gelu_sum(inputs[0], inputs[1])
        if mode == "fwd":
            return (gelu_reference(h, approximate),)
        grad_x = g * gelu_derivative(h, approximate)
        return grad_x, grad_x.sum(0)
    if mode == "fwd":
        return (gelu_reference(a, approximate) * b,)
    return g * b * gelu_derivative(a, approximate), g * gelu_reference(a, approximate)


def check(op, mode, provider, outputs, inputs, approximate):
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    expected = reference(op, mode, inputs, approximate)
    dtype = inputs[0].dtype
    rtol = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    # The inputs are N(0, 1): no deep tail, where the eager composites lose their accuracy. Column sums add up
    # `tokens` terms: an absolute tolerance that grows with their count.
    atol = rtol * math.sqrt(inputs[0].shape[0])
    for out, ref in zip(outputs, expected, strict=True):
        torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{provider} {op} {mode} {approximate}: {m}")  # fmt: skip


def make_callable(op, mode, provider, approximate, sets):
    state = {"i": 0}
    if provider == "copy":
        pairs = [(inputs[2], torch.empty_like(inputs[2])) for inputs in sets]

        def run_copy():
            state["i"] = (state["i"] + 1) % len(pairs)
            src, dst = pairs[state["i"]]
            return dst.copy_(src)

        run_copy.compiled = None
        return run_copy
    compiled = CompiledProvider(eager_fn(op, mode)) if provider == "compile" else None
    fn = compiled.fn if compiled else (fused_fn if provider == "gelu_ext" else eager_fn)(op, mode)

    def run():
        state["i"] = (state["i"] + 1) % len(sets)
        return fn(*sets[state["i"]], approximate)

    run.compiled = compiled
    run.current = lambda: sets[state["i"]]
    return run


# ------------------------------------------------------------------------------------------------------------------
# Sweep
# ------------------------------------------------------------------------------------------------------------------
def time_configuration(args, device, env, op, dtype_name, approximate, tokens, hidden):
    dtype = DTYPES[dtype_name]
    elem = torch.tensor([], dtype=dtype).element_size()
    n = tokens * hidden
    count = max(1, min(8, ROTATE_BELOW_BYTES // (6 * n * elem)))
    sets = [make_inputs(op, tokens, hidden, dtype, device) for _ in range(count)]
    rows, timings = [], {}
    for mode in args.modes:
        runs = {provider: make_callable(op, mode, provider, approximate, sets) for provider in args.providers}
        for provider, run in runs.items():
            if provider != "copy":
                check(op, mode, provider, run(), run.current(), approximate)  # validation before timing
        for provider, ms in time_providers(runs, device, args.rounds).items():
            timings[(provider, mode)] = ms
            if provider != "copy":
                run = runs[provider]
                check(op, mode, provider, run(), run.current(), approximate)  # and the timed output after
    copy_gbps = 2 * n * elem / timings[("copy", args.modes[0])] / 1e6
    for mode in args.modes:
        fused_bytes = (FUSED_PASSES[(op, mode)] * n + BIAS_VECTORS[(op, mode)] * hidden) * elem
        for provider in args.providers:
            ms = timings[(provider, mode)]
            gbps = (2 * n * elem if provider == "copy" else fused_bytes) / ms / 1e6
            eager_ms = timings[("eager", mode)]
            rows.append({**env, "op": op, "provider": provider, "mode": mode, "approximate": approximate,
                         "dtype": dtype_name, "tokens": tokens, "hidden": hidden, "ms": significant(ms, 5),
                         "gbps": significant(gbps, 4), "pct_of_copy": significant(100 * gbps / copy_gbps, 4),
                         "speedup_vs_eager": significant(eager_ms / ms, 4) if provider != "copy" else ""})  # fmt: skip
            print_row(rows[-1])
    return rows


def print_row(row):
    if not getattr(print_row, "header", False):
        print(f"{'op':>9} {'provider':>9} {'mode':>4} {'approx':>6} {'dtype':>8} {'tokens':>6} {'hidden':>6} "
              f"{'ms':>10} {'GB/s':>8} {'% copy':>7} {'vs eager':>8}")  # fmt: skip
        print_row.header = True
    speed = f"{row['speedup_vs_eager']:.2f}x" if row["speedup_vs_eager"] != "" else "-"
    print(f"{row['op']:>9} {row['provider']:>9} {row['mode']:>4} {row['approximate']:>6} {row['dtype']:>8} "
          f"{'2^' + str(int(math.log2(row['tokens']))):>6} {row['hidden']:>6} {row['ms']:>10.4f} {row['gbps']:>8.1f} "
          f"{row['pct_of_copy']:>7.1f} {speed:>8}", flush=True)  # fmt: skip


def plot(csv_path: Path, output: Path) -> Path:
    """GB/s against tokens, a line per provider and hidden size; a panel per op and pass (first dtype and mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    dtype, approximate = rows[0]["dtype"], rows[0]["approximate"]
    rows = [r for r in rows if r["dtype"] == dtype and r["approximate"] == approximate]
    panels = list(dict.fromkeys((r["op"], r["mode"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    styles = {"gelu_ext": "o-", "eager": "s--", "compile": "^--", "copy": "-"}
    for ax, (op, mode) in zip(axes[0], panels, strict=True):
        for provider in dict.fromkeys(r["provider"] for r in rows):
            for hidden in dict.fromkeys(r["hidden"] for r in rows):
                key = (op, mode, provider, hidden)
                points = sorted(
                    (int(r["tokens"]), float(r["gbps"]))
                    for r in rows
                    if (r["op"], r["mode"], r["provider"], r["hidden"]) == key
                )
                if points:
                    alpha = 1.0 if hidden == rows[0]["hidden"] else 0.5
                    label = f"{provider} H={hidden}"
                    ax.plot(*zip(*points, strict=True), styles.get(provider, ".-"), ms=4, label=label, alpha=alpha)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="tokens", ylabel="effective GB/s (the fused op's bytes)", title=f"{op} {mode}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{rows[0]['device_name']}, {dtype}, approximate={approximate}, {rows[0]['threads']} threads")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--tokens", type=int, nargs="+", help="log2 token counts (default 8 10 12 on CPU, 8 ... 16 on CUDA)")
    p.add_argument("--hidden", type=int, nargs="+", default=[3072, 4096])
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default float32 on CPU, all three on CUDA")
    p.add_argument("--approximate", nargs="+", choices=["none", "tanh"], default=["none", "tanh"])
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--isa", choices=["native", "avx2"], default="native",
                   help="avx2: limit gelu_ext, ATen and oneDNN to AVX2, as on most users' CPUs")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=CPU_ROUNDS, help="CPU: timing rounds, providers interleaved")
    p.add_argument("--csv", type=Path, help="where to write the rows")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    args.tokens = args.tokens or ([8, 10, 12] if cpu else [8, 10, 12, 14, 16])
    args.dtypes = args.dtypes or (["float32"] if cpu else list(DTYPES))
    # eager first and the copy ceiling last in every run: the ratios are always from one process.
    args.providers = ["eager", *(p for p in args.providers if p not in ("eager", "copy")), "copy"]
    return args


def main(argv=None):
    args = parse_args(argv)
    device = start(args, __file__, argv)
    if device is None:
        return []
    if device.type == "cpu":
        set_memory_regime("warm")  # freed blocks are reused, as in a training loop (bench_gelu.py: --memory)
    torch.manual_seed(0)
    env = environment(device)
    rows = []
    for op in args.ops:
        for dtype_name in args.dtypes:
            for approximate in args.approximate:
                for hidden in args.hidden:
                    for log2 in args.tokens:
                        rows += time_configuration(args, device, env, op, dtype_name, approximate, 2**log2, hidden)
    default = HERE / "results" / f"fused-{args.device}-{datetime.datetime.now():%Y%m%d-%H%M%S}.csv"
    path = write_csv(args.csv or default, CSV_FIELDS, rows)
    png = plot(path, path.with_suffix(".png"))
    print(f"wrote {path} and {png}")
    return rows


if __name__ == "__main__":
    main()
