"""Speed of gelu_ext under torch.func transforms, against F.gelu under the same transform, and the plain call.

    python benchmarks/bench_transforms.py               # vmap over [64, 1024] and jacrev over 256 elements, float32
    python benchmarks/bench_transforms.py --rounds 9

What is timed (each callable's output is checked against the same transform of F.gelu before timing):
  vmap      torch.func.vmap(gelu)(x), x of shape [rows, cols]: with a batching rule, one kernel call over the whole
            batch; without one (PyTorch's per-entry fallback, with its warning) `rows` calls
  jacrev    torch.func.jacrev(gelu)(x), x of `jacobian` elements: a vmap over the backward of `jacobian` one-hot
            cotangents (the backward op's batching rule)
  plain     gelu(x) on the vmap input, no transform: the floor

Rows go to a CSV (--csv; default benchmarks/results/transforms-cpu-<time>.csv). Providers are timed in interleaved
rounds (bench_gelu.time_providers).
"""

from __future__ import annotations

import argparse
import datetime
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_gelu import environment, time_providers, write_csv

import gelu_ext

HERE = Path(__file__).resolve().parent
CSV_FIELDS = [
    "transform",
    "approximate",
    "shape",
    "provider",
    "ms",
    "ratio_vs_F_gelu",
    *environment(torch.device("cpu")),
]


def callables(transform: str, approximate: str, rows: int, cols: int, jacobian: int) -> tuple[dict, str]:
    """{provider: callable} for one transform, and the input's shape as text."""
    if transform == "jacrev":
        x = torch.randn(jacobian)
        shape = f"[{jacobian}]"
        runs = {
            "gelu_ext": lambda: torch.func.jacrev(lambda t: gelu_ext.gelu(t, approximate))(x),
            "F.gelu": lambda: torch.func.jacrev(lambda t: F.gelu(t, approximate=approximate))(x),
        }
    else:
        x = torch.randn(rows, cols)
        shape = f"[{rows}, {cols}]"
        if transform == "vmap":
            runs = {
                "gelu_ext": lambda: torch.func.vmap(lambda t: gelu_ext.gelu(t, approximate))(x),
                "F.gelu": lambda: torch.func.vmap(lambda t: F.gelu(t, approximate=approximate))(x),
            }
        else:
            runs = {
                "gelu_ext": lambda: gelu_ext.gelu(x, approximate),
                "F.gelu": lambda: F.gelu(x, approximate=approximate),
            }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the per-entry fallback's performance warning is a failure here
        ours, theirs = runs["gelu_ext"](), runs["F.gelu"]()
    # F.gelu is hundreds of ulp off in float32 (README, Accuracy); gelu_ext's own accuracy is tested elsewhere
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    return runs, shape


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transforms", nargs="+", choices=["vmap", "jacrev", "plain"], default=["vmap", "jacrev", "plain"])
    p.add_argument("--approximate", nargs="+", choices=["none", "tanh"], default=["none", "tanh"])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--jacobian", type=int, default=256, help="elements of jacrev's input")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--csv", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    env = environment(device)
    rows = []
    for transform in args.transforms:
        for approximate in args.approximate:
            runs, shape = callables(transform, approximate, args.rows, args.cols, args.jacobian)
            ms = time_providers(runs, device, args.rounds)
            for provider, t in ms.items():
                row = {"transform": transform, "approximate": approximate, "shape": shape, "provider": provider,
                       "ms": f"{t:.4f}", "ratio_vs_F_gelu": f"{ms['F.gelu'] / t:.3f}", **env}  # fmt: skip
                rows.append(row)
                print(f"{transform:7s} {approximate:5s} {shape:12s} {provider:9s} {t:8.4f} ms  "
                      f"{ms['F.gelu'] / t:5.2f}x F.gelu")  # fmt: skip
    path = args.csv or HERE / "results" / f"transforms-cpu-{datetime.datetime.now():%Y%m%d-%H%M%S}.csv"
    print(f"wrote {write_csv(path, CSV_FIELDS, rows)}")
    return rows


if __name__ == "__main__":
    main()
