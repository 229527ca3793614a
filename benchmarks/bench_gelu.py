"""Speed and accuracy of gelu_ext against F.gelu, torch.compile(F.gelu), the lab report's composite and a copy.

    python benchmarks/bench_gelu.py                                  # CPU sweep 2^10..2^24, float32, both modes
    python benchmarks/bench_gelu.py --sizes 24 --modes fwd bwd       # the issue's 2^24 figures only
    python benchmarks/bench_gelu.py --device cuda --dtypes float32 bfloat16 float16   # 2^10..2^28
    python benchmarks/bench_gelu.py --accuracy                       # max ulp error per provider and range

Effective bandwidth counts the fewest bytes each pass must move: forward reads and writes N elements (2N),
backward reads grad and x and writes N (3N), forward+backward through autograd 5N. The copy provider (dst.copy_(src),
2N) is the memory ceiling every row is compared with. Inputs are fresh random normals (never zeros); for sizes that
fit in the last-level cache, several input sets are rotated so that repeats do not time the cache.
Rows go to a CSV (--csv) with the device, torch version, git commit, thread count and time; plot.py draws it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import gelu_ext
from gelu_ext.reference import gelu_derivative, gelu_reference
from gelu_ext.testing import every_finite_float32, ulp_error

HERE = Path(__file__).resolve().parent
PROVIDERS = ("gelu_ext", "aten", "compile", "composite", "copy")
MODES = ("fwd", "bwd", "fwdbwd")
BYTES_PER_ELEMENT_PASS = {"fwd": 2, "bwd": 3, "fwdbwd": 5}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CSV_FIELDS = ("device", "device_name", "torch", "git_commit", "threads", "timestamp", "provider", "mode",
              "approximate", "dtype", "size", "ms", "gbps", "pct_of_copy", "speedup_vs_aten")  # fmt: skip
ROTATE_BELOW_BYTES = 256 * 2**20  # rotate input sets until the working set exceeds any cache


# ------------------------------------------------------------------------------------------------------------------
# The lab report's formulation: ATen ops composed, and its hand-written derivative.
# ------------------------------------------------------------------------------------------------------------------
def composite_forward(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def composite_backward(grad, x, approximate="none"):
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        t = torch.tanh(k * (x + 0.044715 * x**3))
        return grad * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x))
    return grad * (0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, approximate):
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return composite_forward(x, approximate)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return composite_backward(grad, x, ctx.approximate), None


_compiled = {}


def compiled(kind):
    if kind not in _compiled:
        fn = (
            F.gelu
            if kind == "fwd"
            else (lambda g, x, approximate: torch.ops.aten.gelu_backward(g, x, approximate=approximate))
        )
        _compiled[kind] = torch.compile(fn, dynamic=False)
    return _compiled[kind]


def forward_fn(provider):
    return {
        "gelu_ext": gelu_ext.gelu,
        "aten": lambda x, a: F.gelu(x, approximate=a),
        "compile": lambda x, a: compiled("fwd")(x, approximate=a),
        "composite": composite_forward,
    }[provider]


def backward_fn(provider):
    return {
        "gelu_ext": gelu_ext.gelu_backward,
        "aten": lambda g, x, a: torch.ops.aten.gelu_backward(g, x, approximate=a),
        "compile": lambda g, x, a: compiled("bwd")(g, x, a),
        "composite": composite_backward,
    }[provider]


def autograd_fn(provider):
    return _Composite.apply if provider == "composite" else forward_fn(provider)


# ------------------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------------------
def make_inputs(size, dtype, device, count):
    return [
        (torch.randn(size, device=device).to(dtype), torch.randn(size, device=device).to(dtype)) for _ in range(count)
    ]


def make_callable(provider, mode, approximate, sets):
    """A no-argument callable that runs one pass, rotating through the input sets."""
    state = {"i": 0}

    def next_set():
        state["i"] = (state["i"] + 1) % len(sets)
        return sets[state["i"]]

    if provider == "copy":
        dsts = [torch.empty_like(x) for x, _ in sets]

        def run():
            x, _ = next_set()
            dsts[state["i"]].copy_(x)

        return run
    if mode == "fwd":
        fn = forward_fn(provider)
        return lambda: fn(next_set()[0], approximate)
    if mode == "bwd":
        fn = backward_fn(provider)

        def run():
            x, g = next_set()
            return fn(g, x, approximate)

        return run
    fn = autograd_fn(provider)
    leaves = [(x.clone().requires_grad_(), g) for x, g in sets]

    def run():
        state["i"] = (state["i"] + 1) % len(leaves)
        x, g = leaves[state["i"]]
        fn(x, approximate).backward(g)
        x.grad = None

    return run


def time_ms(run, device) -> float:
    for _ in range(3):  # warm-up: compilation, allocator, first-touch
        run()
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            return float(do_bench(run, warmup=25, rep=200, return_mode="median"))
        except ImportError:
            return _cuda_events_ms(run)
    from torch.utils.benchmark import Timer

    measurement = Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=0.5
    )
    return measurement.median * 1e3


def _cuda_events_ms(run, repeats=100):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def validate(provider, approximate, dtype, device):
    """Validation before timing: every provider computes GELU (on the moderate range where all are accurate)."""
    x = torch.linspace(-4, 4, 1001, device=device).to(dtype)
    g = torch.randn_like(x)
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    ref_y = gelu_reference(x.double(), approximate)
    ref_dx = g.double() * gelu_derivative(x.double(), approximate)
    if provider == "copy":
        return
    torch.testing.assert_close(forward_fn(provider)(x, approximate).double(), ref_y, atol=tol, rtol=tol)
    torch.testing.assert_close(backward_fn(provider)(g, x, approximate).double(), ref_dx, atol=4 * tol, rtol=tol)


def environment(device):
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                                         stderr=subprocess.DEVNULL).strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "git_commit": commit,
        "threads": torch.get_num_threads(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def sweep(args, device):
    env = environment(device)
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for approximate in args.approximate:
            for provider in args.providers:
                validate(provider, approximate, dtype, device)
            for log2 in args.sizes:
                size = 2**log2
                elem = torch.tensor([], dtype=dtype).element_size()
                count = max(1, min(16, ROTATE_BELOW_BYTES // (3 * size * elem)))
                sets = make_inputs(size, dtype, device, count)
                timings = {}
                for mode in args.modes:
                    for provider in args.providers:
                        timings[(provider, mode)] = time_ms(make_callable(provider, mode, approximate, sets), device)
                copy_ms = timings.get(("copy", args.modes[0])) or time_ms(
                    make_callable("copy", "fwd", approximate, sets), device
                )
                copy_gbps = 2 * size * elem / copy_ms / 1e6
                for mode in args.modes:
                    for provider in args.providers:
                        ms = timings[(provider, mode)]
                        passes = 2 if provider == "copy" else BYTES_PER_ELEMENT_PASS[mode]
                        gbps = passes * size * elem / ms / 1e6
                        aten_ms = timings.get(("aten", mode))
                        rows.append({**env, "provider": provider, "mode": mode, "approximate": approximate,
                                     "dtype": dtype_name, "size": size, "ms": round(ms, 5), "gbps": round(gbps, 2),
                                     "pct_of_copy": round(100 * gbps / copy_gbps, 1),
                                     "speedup_vs_aten": speedup(aten_ms, ms, provider)})  # fmt: skip
                        print_row(rows[-1])
    return rows


def speedup(aten_ms, ms, provider):
    return round(aten_ms / ms, 3) if aten_ms and provider != "copy" else ""


def print_row(row):
    if not getattr(print_row, "header", False):
        print(f"{'provider':>10} {'mode':>6} {'approx':>6} {'dtype':>8} {'size':>10} {'ms':>10} {'GB/s':>8} "
              f"{'% copy':>7} {'vs aten':>8}")  # fmt: skip
        print_row.header = True
    speed = f"{row['speedup_vs_aten']:.2f}x" if row["speedup_vs_aten"] != "" else "-"
    size = f"2^{int(math.log2(row['size']))}"
    print(f"{row['provider']:>10} {row['mode']:>6} {row['approximate']:>6} {row['dtype']:>8} {size:>10}"
          f"{row['ms']:>10.4f} {row['gbps']:>8.1f} {row['pct_of_copy']:>7.1f} {speed:>8}", flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------------
# Accuracy
# ------------------------------------------------------------------------------------------------------------------
RANGES = {"[-3, 3]": (-3, 3), "[-5, -3]": (-5, -3), "[-8, -5]": (-8, -5), "[3, 10]": (3, 10)}


def derivative_error(result, reference):
    """Max ulp error of a derivative, not counting points within 2^-24 absolute (issue #2's criterion next to the
    derivative's zero at x ~ -0.75, where no float format keeps relative accuracy)."""
    err = ulp_error(result, reference)
    within_abs = (result.double() - reference).abs() <= 2.0**-24
    return float(torch.where(within_abs, torch.zeros_like(err), err).max())


def accuracy_table(device, approximate_modes):
    inputs = {
        name: torch.linspace(lo, hi, 1_000_001, dtype=torch.float32, device=device) for name, (lo, hi) in RANGES.items()
    }
    inputs["finite (sampled)"] = every_finite_float32(stride=997).to(device)
    print("max |error| in float32 ulp against a float64 reference: forward (derivative: ulp, or 0 where the absolute")
    print("error is <= 2^-24). inf: a NaN or infinity where the true value is finite.")
    print(f"{'provider':>10} {'approx':>6} " + " ".join(f"{name:>22}" for name in inputs))
    results = []
    for approximate in approximate_modes:
        for provider in ("gelu_ext", "aten", "compile", "composite"):
            cells = []
            for name, x in inputs.items():
                y = forward_fn(provider)(x, approximate)
                d = backward_fn(provider)(torch.ones_like(x), x, approximate)
                fwd = float(ulp_error(y, gelu_reference(x.double(), approximate)).max())
                bwd = derivative_error(d, gelu_derivative(x.double(), approximate))
                cells.append(f"{fwd:.3g} ({bwd:.3g})")
                results.append({"provider": provider, "approximate": approximate, "range": name, "fwd_ulp": fwd,
                                "bwd_ulp": bwd})  # fmt: skip
            print(f"{provider:>10} {approximate:>6} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    return results


def isolated_sweep(args):
    """One subprocess per provider; rows of F.gelu and the copy come from the first one only."""
    rows = []
    candidates = [p for p in args.providers if p not in ("aten", "copy")] or ["aten"]
    for i, provider in enumerate(candidates):
        with tempfile.TemporaryDirectory() as tmp:
            csv_path = Path(tmp) / "rows.csv"
            cmd = [sys.executable, __file__, "--device", args.device, "--providers", provider, "--csv", str(csv_path),
                   "--sizes", *map(str, args.sizes), "--dtypes", *args.dtypes, "--approximate", *args.approximate,
                   "--modes", *args.modes]  # fmt: skip
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            subprocess.run(cmd, check=True)
            with open(csv_path, newline="") as f:
                rows += [r for r in csv.DictReader(f) if i == 0 or r["provider"] == provider]
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", help="log2 sizes (default 10 12 ... 24 on CPU, ... 28 on CUDA)")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default float32 on CPU, all three on CUDA")
    p.add_argument("--approximate", nargs="+", choices=["none", "tanh"], default=["none", "tanh"])
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--csv", type=Path, help="where to write the rows (default benchmarks/results/<device>-<time>.csv)")
    p.add_argument("--accuracy", action="store_true", help="print the ulp-error table instead of timing")
    p.add_argument("--isolate", action="store_true",
                   help="time each provider in a fresh process, beside F.gelu and the copy: on the CPU, large "
                        "outputs cost page faults whose price depends on what the process did before")  # fmt: skip
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    args.sizes = args.sizes or list(range(10, 25 if cpu else 29, 2))
    args.dtypes = args.dtypes or (["float32"] if cpu else list(DTYPES))
    # F.gelu first and the copy ceiling last, in every run: the ratios are always side by side in one process.
    args.providers = ["aten", *(p for p in args.providers if p not in ("aten", "copy")), "copy"]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.accuracy:
        return accuracy_table(device, args.approximate)
    rows = isolated_sweep(args) if args.isolate else sweep(args, device)
    path = args.csv or HERE / "results" / f"{args.device}-{datetime.datetime.now():%Y%m%d-%H%M%S}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
