"""What gelu_ext.patch_model buys in a model: a training step (forward + backward) of a BERT-base-sized encoder layer
and of a ViT-B-sized MLP block, original against patched, and patched against torch.compile of the original.

    python benchmarks/bench_models.py                                  # both models, float32 and bfloat16, 2 threads
    python benchmarks/bench_models.py --models vit_mlp --dtypes float32 --rounds 9

Models (random init, dropout 0 so that every provider computes the same function in train mode):
  bert_layer  transformers' BertLayer, hidden 768, 12 heads, intermediate 3072 (BERT-base); input [batch, 128, 768].
              patch_model fuses its BertIntermediate (dense + GELU -> LinearGELU).
  vit_mlp     torchvision's MLPBlock(768, 3072) (ViT-B/16); input [batch, 197, 768]. patch_model fuses
              Linear + GELU -> LinearGELU.
Providers:
  original    the model as built (eager).
  patched     a deep copy after gelu_ext.patch_model (eager).
  compile     torch.compile(original, fullgraph=True) (inductor), compiled afresh per configuration; it may not
              recompile while timed.
One timed call is `model.zero_grad(set_to_none=True); model(x).backward(g)`: a training step without the optimizer.
The providers are timed in interleaved rounds (bench_gelu.time_providers), each keeping its fastest; every provider's
output and gradients are checked against the original's before timing and after.

CSV columns: ms (per step, fastest round), speedup_vs_original (original ms / this ms), patched_speedup (this ms /
patched ms: above 1, the patched model is faster than this provider), paired_speedup_vs_original (the median over
--pairs rounds of back-to-back single calls: the steadier ratio on a loaded machine; the PNG's bars), paired_low and
paired_high (a 95% confidence interval of that median, from the order statistics of the ratios: no assumption about
their distribution; paired_low above 1 says the provider is faster than the original at that confidence). Rows go to a
CSV (--csv; default benchmarks/results/models-<device>-<time>.csv) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import gelu_ext

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

MODELS = ("bert_layer", "vit_mlp")
PROVIDERS = ("original", "patched", "compile")
CSV_FIELDS = ("device", "device_name", "isa", "torch", "git_commit", "threads", "timestamp", "model", "provider",
              "dtype", "batch", "tokens", "ms", "speedup_vs_original", "patched_speedup",
              "paired_speedup_vs_original", "paired_low", "paired_high", "pairs")  # fmt: skip
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def _first_tensor(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def make_model(name: str, hidden: int, intermediate: int) -> tuple[nn.Module, int]:
    """The model and its sequence length."""
    if name == "bert_layer":
        try:
            from transformers import BertConfig
            from transformers.models.bert.modeling_bert import BertLayer
        except ImportError as error:
            raise SystemExit("bert_layer needs transformers: pip install transformers") from error
        heads = max(1, hidden // 64)
        config = BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
        config._attn_implementation = "sdpa"  # what BertModel picks; a standalone layer has no default
        return BertLayer(config), 128
    from torchvision.models.vision_transformer import MLPBlock

    return MLPBlock(hidden, intermediate, dropout=0.0), 197


class Step:
    """One training step of a model: forward, then backward with a fixed upstream gradient."""

    def __init__(self, model: nn.Module, x: torch.Tensor, grad: torch.Tensor, compiled: CompiledProvider | None = None):
        self.model, self.x, self.grad, self.compiled = model, x, grad, compiled
        self.forward = compiled.fn if compiled is not None else model

    def __call__(self):
        self.model.zero_grad(set_to_none=True)  # as a training loop does: backward writes fresh gradients
        out = _first_tensor(self.forward(self.x))
        out.backward(self.grad)
        return out

    def outputs(self):
        """The output and the parameter gradients of one step."""
        out = self()
        grads = [p.grad.clone() for p in self.model.parameters()]
        self.model.zero_grad(set_to_none=True)
        return out.detach(), grads


def check(provider: str, step: Step, expected, dtype) -> None:
    out, grads = step.outputs()
    expected_out, expected_grads = expected
    tolerance = TOLERANCE[dtype]
    scale = expected_out.abs().max().item()
    torch.testing.assert_close(out, expected_out, atol=tolerance * scale, rtol=tolerance,
                               msg=lambda m: f"{provider} output: {m}")  # fmt: skip
    # One scale for every gradient: some are ~0 in exact arithmetic (the attention's key bias), rounding noise only.
    scale = max(g.abs().max().item() for g in expected_grads)
    for i, (grad, expected_grad) in enumerate(zip(grads, expected_grads, strict=True)):
        torch.testing.assert_close(grad, expected_grad, atol=tolerance * scale, rtol=tolerance,
                                   msg=lambda m, i=i: f"{provider} gradient {i}: {m}")  # fmt: skip


def paired_speedups(steps: dict, pairs: int, device) -> dict:
    """Median over `pairs` rounds of (original's time / each provider's time), the providers' single calls of a round
    back to back and their order reversed every other round: a slow phase of a shared machine that lasts longer than
    one round hits both sides of each ratio, where the fastest-round times of time_providers may come from different
    phases. Each value is (median, low, high): the median and its 95% confidence interval (median_interval)."""
    names = list(steps)
    ratios = {name: [] for name in names}
    for i in range(pairs):
        seconds = {}
        for name in names if i % 2 == 0 else names[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start_time = time.perf_counter()
            steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name] = time.perf_counter() - start_time
        for name in names:
            ratios[name].append(seconds["original"] / seconds[name])
    return {name: (statistics.median(values), *median_interval(values)) for name, values in ratios.items()}


def median_interval(values, z: float = 1.96) -> tuple[float, float]:
    """The distribution-free 95% confidence interval of the median of `values`: the order statistics of ranks
    n/2 -+ z sqrt(n)/2 (the normal approximation to the binomial count of values below the median). With fewer than 8
    values it is their whole range."""
    ordered = sorted(values)
    n = len(ordered)
    k = max(0, int((n - z * math.sqrt(n)) / 2))
    return ordered[k], ordered[n - 1 - k]


def time_configuration(args, device, env, name: str, dtype_name: str) -> list[dict]:
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    original, seq = make_model(name, args.hidden, args.intermediate)
    original = original.to(device=device, dtype=dtype).train()
    patched = copy.deepcopy(original)
    report = gelu_ext.patch_model(patched)
    if not report.fused:
        raise RuntimeError(f"{name}: patch_model fused nothing:\n{report}")
    print(f"{name} {dtype_name}: {report}", flush=True)
    x = torch.randn(args.batch, seq, args.hidden, device=device, dtype=dtype)
    grad = torch.randn_like(x)
    steps = {"original": Step(original, x, grad), "patched": Step(patched, x, grad)}
    if "compile" in args.providers:
        steps["compile"] = Step(original, x, grad, CompiledProvider(original))
    steps = {p: steps[p] for p in args.providers}
    expected = steps["original"].outputs()
    for provider, step in steps.items():
        if provider != "original":
            check(provider, step, expected, dtype)  # validation before timing (compiles the compile provider)
    timings = time_providers(steps, device, args.rounds)
    paired = paired_speedups(steps, args.pairs, device) if args.pairs else {}
    for provider, step in steps.items():
        if provider != "original":
            check(provider, step, expected, dtype)  # and after
    rows = []
    for provider, ms in timings.items():
        patched_speedup = significant(ms / timings["patched"], 4) if "patched" in timings else ""
        rows.append({**env, "model": name, "provider": provider, "dtype": dtype_name, "batch": args.batch,
                     "tokens": args.batch * seq, "ms": significant(ms, 5),
                     "speedup_vs_original": significant(timings["original"] / ms, 4),
                     "patched_speedup": patched_speedup,
                     "paired_speedup_vs_original": significant(paired[provider][0], 4) if paired else "",
                     "paired_low": significant(paired[provider][1], 4) if paired else "",
                     "paired_high": significant(paired[provider][2], 4) if paired else "",
                     "pairs": args.pairs})  # fmt: skip
        print_row(rows[-1])
    return rows


def print_row(row):
    if not getattr(print_row, "header", False):
        print(f"{'model':>10} {'provider':>9} {'dtype':>8} {'tokens':>6} {'ms':>10} {'vs original':>11} "
              f"{'patched is':>10} {'paired (95% interval)':>24}")  # fmt: skip
        print_row.header = True
    patched_vs = f"{row['patched_speedup']:.3f}x" if row["patched_speedup"] != "" else "-"
    paired = "-"
    if row["paired_speedup_vs_original"] != "":
        paired = f"{row['paired_speedup_vs_original']:.3f}x ({row['paired_low']:.3f}-{row['paired_high']:.3f})"
    print(f"{row['model']:>10} {row['provider']:>9} {row['dtype']:>8} {row['tokens']:>6} {row['ms']:>10.3f} "
          f"{row['speedup_vs_original']:>10.3f}x {patched_vs:>10} {paired:>24}", flush=True)  # fmt: skip


def plot(csv_path: Path, output: Path) -> Path:
    """Speed over the original (higher is faster), a group of bars per model and dtype, a bar per provider: the paired
    median ratio with its 95% interval as an error bar, and the fastest-round ratio as a dot."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    groups = list(dict.fromkeys((r["model"], r["dtype"]) for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(groups), 4.2))
    width = 0.8 / len(providers)
    for i, provider in enumerate(providers):
        chosen = [next(r for r in rows if (r["model"], r["dtype"]) == group and r["provider"] == provider)
                  for group in groups]  # fmt: skip
        positions = [g + (i - (len(providers) - 1) / 2) * width for g in range(len(groups))]
        paired = [float(r["paired_speedup_vs_original"] or r["speedup_vs_original"]) for r in chosen]
        bars = ax.bar(positions, paired, width, label=provider)
        if all(r.get("paired_low") for r in chosen):  # CSVs from before the interval have no such column
            low = [p - float(r["paired_low"]) for p, r in zip(paired, chosen, strict=True)]
            high = [float(r["paired_high"]) - p for p, r in zip(paired, chosen, strict=True)]
            ax.errorbar(positions, paired, yerr=[low, high], fmt="none", ecolor="k", elinewidth=0.8, capsize=2)
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
        fastest = [float(r["speedup_vs_original"]) for r in chosen]
        ax.plot(positions, fastest, "k.", ms=5, label="fastest rounds" if i == len(providers) - 1 else None)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(groups)), [f"{m}\n{d}" for m, d in groups])
    ax.set(
        ylabel="speed over the original, forward + backward\n"
        "(bars: paired median and its 95% interval; dots: fastest rounds)"
    )
    ax.legend(fontsize=8)
    r0 = rows[0]
    ax.set_title(f"{r0['device_name']}, {r0['threads']} threads, torch {r0['torch']}, {r0['timestamp'][:10]}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--batch", type=int, default=4, help="sequences per step (128 tokens each for BERT, 197 for ViT)")
    p.add_argument("--hidden", type=int, default=768, help="768: BERT-base and ViT-B")
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--rounds", type=int, default=CPU_ROUNDS, help="CPU: timing rounds, providers interleaved")
    p.add_argument("--pairs", type=int, default=20, help="rounds of back-to-back single calls for the paired ratios")
    p.add_argument("--isa", choices=["native", "avx2"], default="native",
                   help="avx2: limit gelu_ext, ATen and oneDNN to AVX2")  # fmt: skip
    p.add_argument("--csv", type=Path, help="where to write the rows")
    args = p.parse_args(argv)
    args.providers = ["original", *(p for p in args.providers if p != "original")]  # every ratio from one process
    return args


def main(argv=None):
    args = parse_args(argv)
    device = start(args, __file__, argv)
    if device is None:
        return []
    if device.type == "cpu":
        set_memory_regime("warm")  # freed blocks are reused, as in a training loop (bench_gelu.py: --memory)
    env = environment(device)
    rows = []
    for name in args.models:
        for dtype_name in args.dtypes:
            rows += time_configuration(args, device, env, name, dtype_name)
    default = HERE / "results" / f"models-{args.device}-{datetime.datetime.now():%Y%m%d-%H%M%S}.csv"
    path = write_csv(args.csv or default, CSV_FIELDS, rows)
    png = plot(path, path.with_suffix(".png"))
    print(f"wrote {path} and {png}")
    return rows


if __name__ == "__main__":
    main()
