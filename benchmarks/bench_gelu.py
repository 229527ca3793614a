"""Speed and accuracy of gelu_ext against F.gelu, torch.compile(F.gelu), the lab report's composite and a copy.

    python benchmarks/bench_gelu.py                                  # CPU sweep 2^10..2^24, float32, both modes
    python benchmarks/bench_gelu.py --sizes 24 --modes fwd bwd       # the 2^24 figures only
    python benchmarks/bench_gelu.py --isa avx2                       # as on a CPU without AVX-512 (see below)
    python benchmarks/bench_gelu.py --device cuda --dtypes float32 bfloat16 float16   # 2^10..2^28
    python benchmarks/bench_gelu.py --accuracy                       # max ulp error per provider and range

Effective bandwidth counts the fewest bytes each pass must move: forward reads and writes N elements (2N),
backward reads grad and x and writes N (3N), forward+backward through autograd 5N. The copy provider (dst.copy_(src),
2N) is the memory ceiling every row is compared with, measured in the same run.

Memory regimes (CPU, --memory): every provider allocates its outputs, so the allocator is part of what a call costs.
`warm` makes glibc keep freed memory mapped and reuse it (mallopt: no mmap, no trimming), as in a training loop
whose activations recycle the same blocks; `fresh` makes every allocation of 128 KiB or more a new mmap, whose
pages fault on first touch (the cost of a process's first pass over a tensor). Both providers always run under the
same setting. PyTorch's own THP_MEM_ALLOC_ENABLE=1 (huge pages for large CPU tensors) applies to every op alike.

--isa avx2 re-runs the benchmark with gelu_ext's, ATen's and oneDNN's CPU code limited to AVX2
(GELU_EXT_CPU_CAPABILITY, ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA): F.gelu's erf forward on contiguous float
tensors is oneDNN's JIT kernel, which otherwise picks AVX-512 by itself.

Inputs are random normals rotated through up to 16 sets (--input-sets), so a repeat does not find its input in the
first-level caches; below ~2^18 elements the whole working set still fits in the last-level cache, so those rows time
cache-resident data (as when the previous layer has just written it). --input-sets 1 keeps the input in cache at
every size, where arithmetic rather than memory sets the time. Every provider is validated before timing
and a sample of its output at the timed size is checked against the float64 reference after timing. The compile
provider is compiled afresh for every configuration, and a recompilation or a call that did not run a compiled
graph is an error, not a silent fallback to eager. Rows go to a CSV (--csv) with the device, instruction sets,
torch version, git commit, thread count and time; every ratio in it is computable from rows of the same file.
plot.py draws it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import datetime
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import gelu_ext
from gelu_ext.reference import gelu_derivative, gelu_reference
from gelu_ext.testing import derivative_ulp_error, every_finite_float32, ulp_error

HERE = Path(__file__).resolve().parent
PROVIDERS = ("gelu_ext", "aten", "compile", "composite", "copy")
MODES = ("fwd", "bwd", "fwdbwd")
MEMORY_REGIMES = ("fresh", "warm")  # fresh first: see set_memory_regime
BYTES_PER_ELEMENT_PASS = {"fwd": 2, "bwd": 3, "fwdbwd": 5}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CSV_FIELDS = ("device", "device_name", "isa", "torch", "git_commit", "threads", "timestamp", "memory", "provider",
              "mode", "approximate", "dtype", "size", "ms", "gbps", "pct_of_copy", "speedup_vs_aten")  # fmt: skip
MAX_INPUT_SETS = 16
ROTATE_BELOW_BYTES = 256 * 2**20
ISA_ENV = {"GELU_EXT_CPU_CAPABILITY": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# Error bounds of the post-timing check, in float32 ulp (gelu_ext: its contract, tests/test_accuracy.py) or as a
# relative tolerance for the providers that cancel (F.gelu: ~2,000 ulp in [-3, 3]; the composite: ~100 ulp, worse in
# the tail, which N(0, 1) inputs reach rarely).
# grad * gelu'(x) rounds once more than gelu'(x), and its scale can sit a binade lower: 2 ulp more than the contract.
GELU_EXT_ULP_BOUND = {"fwd": 4.0, "bwd": 10.0, "fwdbwd": 10.0}
OTHER_RTOL = {torch.float32: 2e-3, torch.bfloat16: 2e-2, torch.float16: 4e-3}


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


def _aten_backward(g, x, approximate):
    return torch.ops.aten.gelu_backward(g, x, approximate=approximate)


def forward_fn(provider):
    return {
        "gelu_ext": gelu_ext.gelu,
        "aten": lambda x, a: F.gelu(x, approximate=a),
        "composite": composite_forward,
    }[provider]


def backward_fn(provider):
    return {"gelu_ext": gelu_ext.gelu_backward, "aten": _aten_backward, "composite": composite_backward}[provider]


class CompiledProvider:
    """torch.compile of an eager pass (here F.gelu / aten.gelu_backward; bench_fused.py: the fused ops' composites),
    compiled afresh for one configuration.

    dynamo keeps its cache per code object: one compiled function serving every size, dtype and mode would hit the
    recompile limit and silently run eagerly. So each configuration starts from torch._dynamo.reset(), is compiled
    with fullgraph=True, must produce a graph, and may not recompile while it is timed.
    """

    def __init__(self, eager):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        self.fn = torch.compile(eager, dynamic=False, fullgraph=True)

    @contextlib.contextmanager
    def timed(self):
        if torch._dynamo.utils.counters["stats"]["unique_graphs"] < 1:
            raise RuntimeError("the compile provider ran eagerly: torch.compile produced no graph")
        with torch._dynamo.config.patch(error_on_recompile=True):
            yield


# ------------------------------------------------------------------------------------------------------------------
# Memory regimes (glibc malloc settings, process-wide, so every provider runs under the same one)
# ------------------------------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def set_memory_regime(regime: str) -> None:
    """Warm: freed memory stays mapped and is reused. Fresh: large blocks are mmap'd per allocation and unmapped when
    freed, and the heap's free pages are handed back to the OS first (malloc_trim), so nothing a warm phase left
    behind serves a fresh allocation. (Even so, fresh runs first: a warm phase grows the heap.)"""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError) as error:
        raise SystemExit(f"--memory needs glibc (mallopt) to control the allocator: {error}") from error
    if regime == "warm":
        settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)]
    else:
        settings = [(_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 128 * 1024), (_M_TRIM_THRESHOLD, 128 * 1024)]
    for param, value in settings:
        if mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            raise SystemExit(f"mallopt({param}, {value}) failed")
    if regime == "fresh":
        malloc_trim(ctypes.c_size_t(0))


# ------------------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------------------
def make_inputs(size, dtype, device, count):
    return [
        (torch.randn(size, device=device).to(dtype), torch.randn(size, device=device).to(dtype)) for _ in range(count)
    ]


def make_callable(provider, mode, approximate, sets):
    """A no-argument callable running one pass on the next input set; returns (output, x, grad) of that pass."""
    state = {"i": 0}

    def next_set():
        state["i"] = (state["i"] + 1) % len(sets)
        return sets[state["i"]]

    if provider == "copy":
        dsts = [torch.empty_like(x) for x, _ in sets]

        def run_copy():
            x, g = next_set()
            return dsts[state["i"]].copy_(x), x, g

        return run_copy
    compiled = None
    if provider == "compile":  # of the aten provider's own callables
        compiled = CompiledProvider(backward_fn("aten") if mode == "bwd" else forward_fn("aten"))
    if mode == "fwd":
        fn = compiled.fn if compiled else forward_fn(provider)

        def run_fwd():
            x, g = next_set()
            return fn(x, approximate), x, g

        run = run_fwd
    elif mode == "bwd":
        fn = compiled.fn if compiled else backward_fn(provider)

        def run_bwd():
            x, g = next_set()
            return fn(g, x, approximate), x, g

        run = run_bwd
    else:
        fn = compiled.fn if compiled else (_Composite.apply if provider == "composite" else forward_fn(provider))
        leaves = [(x.clone().requires_grad_(), g) for x, g in sets]

        def run_fwdbwd():
            state["i"] = (state["i"] + 1) % len(leaves)
            x, g = leaves[state["i"]]
            fn(x, approximate).backward(g)
            grad, x.grad = x.grad, None
            return grad, x.detach(), g

        run = run_fwdbwd
    run.compiled = compiled
    return run


def significant(value: float, digits: int) -> float:
    """`value` to `digits` significant digits: a slow row's bandwidth stays above 0 in the CSV (a fixed number of
    decimals rounded 0.004 GB/s to 0.0)."""
    return float(f"{value:.{digits}g}")


def time_ms(run, device, min_run_time: float = 0.5) -> float:
    for _ in range(3):  # warm-up: compilation, allocator, first-touch
        run()
    compiled = getattr(run, "compiled", None)
    with compiled.timed() if compiled else contextlib.nullcontext():
        if device.type == "cuda":
            try:
                from triton.testing import do_bench

                return float(do_bench(run, warmup=25, rep=200, return_mode="median"))
            except ImportError:
                return _cuda_events_ms(run)
        from torch.utils.benchmark import Timer

        timer = Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


# CPU rounds per configuration (--rounds): the providers are timed in turn, round after round, and each keeps its
# fastest round. Why: a shared 2-core machine runs slower for seconds at a time (another tenant on the core or its
# memory), so timing one provider after the other put a slow phase on one side of a ratio only; run-to-run spread was
# up to 2x. Interleaved, a slow phase hits every provider alike and the min over rounds drops it.
CPU_ROUNDS = 5


def time_providers(runs: dict, device, rounds: int = CPU_ROUNDS) -> dict:
    """Median ms per call of each of `runs` ({name: callable}), timed in turn `rounds` times (CPU; CUDA: once, as
    do_bench already takes its median over a long run), keeping each one's fastest round."""
    rounds = rounds if device.type == "cpu" else 1
    best = {}
    for _ in range(rounds):
        for name, run in runs.items():
            ms = time_ms(run, device, min_run_time=0.5 / rounds)
            best[name] = min(best.get(name, math.inf), ms)
    return best


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
    """Before timing: every provider computes GELU (on the moderate range where all of them are accurate)."""
    if provider in ("copy", "compile"):
        return  # the copy computes nothing; compile is checked per configuration, after timing
    x = torch.linspace(-4, 4, 1001, device=device).to(dtype)
    g = torch.randn_like(x)
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    ref_y = gelu_reference(x.double(), approximate)
    ref_dx = g.double() * gelu_derivative(x.double(), approximate)
    torch.testing.assert_close(forward_fn(provider)(x, approximate).double(), ref_y, atol=tol, rtol=tol)
    torch.testing.assert_close(backward_fn(provider)(g, x, approximate).double(), ref_dx, atol=4 * tol, rtol=tol)


def check_timed_output(provider, mode, approximate, run, samples=4096):
    """After timing: a sample of the output at the timed size, against the float64 reference."""
    if provider == "copy":
        out, x, _ = run()
        assert torch.equal(out, x), "copy provider: the destination differs from the source"
        return
    out, x, g = run()
    index = torch.randint(0, x.numel(), (samples,), device=x.device)
    xs, gs, ys = x.flatten()[index], g.flatten()[index], out.flatten()[index]
    if mode == "fwd":
        reference = gelu_reference(xs.double(), approximate)
    else:  # bwd and fwdbwd: grad * gelu'(x)
        reference = gs.double() * gelu_derivative(xs.double(), approximate)
    where = f"{provider} {mode} approximate={approximate} at {x.numel()} elements"
    if provider == "gelu_ext" and x.dtype == torch.float32:
        if mode == "fwd":
            err = ulp_error(ys, reference)
        else:  # grad * d, in ulp of grad * (the larger of d's two terms); the product rounds once more
            err = derivative_ulp_error(ys, xs, approximate, grad=gs)
        bound = GELU_EXT_ULP_BOUND[mode]
        if float(err.max()) > bound:
            raise AssertionError(f"{where}: {float(err.max()):.2f} ulp, above {bound}")
        return
    rtol = OTHER_RTOL.get(x.dtype, 1e-3) * (4 if provider == "composite" else 1)
    torch.testing.assert_close(ys.double(), reference, atol=rtol, rtol=rtol, msg=lambda m: f"{where}: {m}")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device):
    try:
        commit = subprocess.check_output(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=HERE, text=True,
                                         stderr=subprocess.DEVNULL).strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    if device.type == "cuda":
        name, isa = torch.cuda.get_device_name(device), "cuda"
    else:
        name = cpu_name()
        onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
        isa = (f"gelu_ext={gelu_ext.build_info()['cpu_capability']} aten={torch.backends.cpu.get_cpu_capability()} "
               f"onednn={onednn}")  # fmt: skip
    return {
        "device": device.type,
        "device_name": name,
        "isa": isa,
        "torch": torch.__version__,
        "git_commit": commit,
        "threads": torch.get_num_threads(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def sweep(args, device):
    env = environment(device)
    rows = []
    for memory in sorted(args.memory, key=MEMORY_REGIMES.index) if device.type == "cpu" else args.memory:
        if device.type == "cpu":
            set_memory_regime(memory)
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            for approximate in args.approximate:
                for provider in args.providers:
                    validate(provider, approximate, dtype, device)
                for log2 in args.sizes:
                    rows += time_configuration(args, device, env, memory, dtype_name, approximate, 2**log2)
    return rows


def time_configuration(args, device, env, memory, dtype_name, approximate, size):
    dtype = DTYPES[dtype_name]
    elem = torch.tensor([], dtype=dtype).element_size()
    count = max(1, min(args.input_sets, ROTATE_BELOW_BYTES // (3 * size * elem)))
    sets = make_inputs(size, dtype, device, count)
    timings = {}
    for mode in args.modes:
        runs = {provider: make_callable(provider, mode, approximate, sets) for provider in args.providers}
        for provider, ms in time_providers(runs, device, args.rounds).items():
            timings[(provider, mode)] = ms
            check_timed_output(provider, mode, approximate, runs[provider])
    copy_gbps = 2 * size * elem / timings[("copy", args.modes[0])] / 1e6
    rows = []
    for mode in args.modes:
        for provider in args.providers:
            ms = timings[(provider, mode)]
            passes = 2 if provider == "copy" else BYTES_PER_ELEMENT_PASS[mode]
            gbps = passes * size * elem / ms / 1e6
            aten_ms = timings[("aten", mode)]
            rows.append({**env, "memory": memory if device.type == "cpu" else "cached", "provider": provider,
                         "mode": mode, "approximate": approximate, "dtype": dtype_name, "size": size,
                         "ms": significant(ms, 5), "gbps": significant(gbps, 4),
                         "pct_of_copy": significant(100 * gbps / copy_gbps, 4),
                         "speedup_vs_aten": round(aten_ms / ms, 3) if provider != "copy" else ""})  # fmt: skip
            print_row(rows[-1])
    return rows


def print_row(row):
    if not getattr(print_row, "header", False):
        print(f"{'memory':>6} {'provider':>10} {'mode':>6} {'approx':>6} {'dtype':>8} {'size':>6} {'ms':>10} "
              f"{'GB/s':>8} {'% copy':>7} {'vs aten':>8}")  # fmt: skip
        print_row.header = True
    speed = f"{row['speedup_vs_aten']:.2f}x" if row["speedup_vs_aten"] != "" else "-"
    size = f"2^{int(math.log2(row['size']))}"
    print(f"{row['memory']:>6} {row['provider']:>10} {row['mode']:>6} {row['approximate']:>6} {row['dtype']:>8} "
          f"{size:>6}{row['ms']:>10.4f} {row['gbps']:>8.1f} {row['pct_of_copy']:>7.1f} {speed:>8}",
          flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------------
# Accuracy
# ------------------------------------------------------------------------------------------------------------------
RANGES = {"[-3, 3]": (-3, 3), "[-5, -3]": (-5, -3), "[-8, -5]": (-8, -5), "[3, 10]": (3, 10)}


def accuracy_table(device, approximate_modes):
    """Max float32 ulp error of each provider per range: forward, and (in brackets) the derivative, measured in ulp of
    the larger of the two terms it sums (gelu_ext.testing.derivative_ulp_error): the result's own ulp everywhere but
    next to its zero at x ~ -0.75."""
    inputs = {
        name: torch.linspace(lo, hi, 1_000_001, dtype=torch.float32, device=device) for name, (lo, hi) in RANGES.items()
    }
    inputs["finite (sampled)"] = every_finite_float32(stride=997).to(device)
    print("max |error| in float32 ulp against a float64 reference: forward (derivative, in ulp of the larger of its")
    print("two terms). inf: a NaN or infinity where the true value is finite.")
    print(f"{'provider':>10} {'approx':>6} " + " ".join(f"{name:>22}" for name in inputs))
    fns = {provider: (forward_fn(provider), backward_fn(provider)) for provider in ("gelu_ext", "aten")}
    fns["compile"] = (torch.compile(forward_fn("aten")), torch.compile(backward_fn("aten")))
    fns["composite"] = (forward_fn("composite"), backward_fn("composite"))
    results = []
    for approximate in approximate_modes:
        for provider, (fwd_fn, bwd_fn) in fns.items():
            cells = []
            for name, x in inputs.items():
                y = fwd_fn(x, approximate)
                d = bwd_fn(torch.ones_like(x), x, approximate)
                fwd = float(ulp_error(y, gelu_reference(x.double(), approximate)).max())
                bwd = float(derivative_ulp_error(d, x, approximate).max())
                cells.append(f"{fwd:.3g} ({bwd:.3g})")
                results.append({"provider": provider, "approximate": approximate, "range": name, "fwd_ulp": fwd,
                                "bwd_ulp": bwd})  # fmt: skip
            print(f"{provider:>10} {approximate:>6} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", help="log2 sizes (default 10 12 ... 24 on CPU, ... 28 on CUDA)")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default float32 on CPU, all three on CUDA")
    p.add_argument("--approximate", nargs="+", choices=["none", "tanh"], default=["none", "tanh"])
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--memory", nargs="+", choices=MEMORY_REGIMES, default=list(MEMORY_REGIMES),
                   help="CPU allocator regimes to time (see above); ignored on CUDA")  # fmt: skip
    p.add_argument("--isa", choices=["native", "avx2"], default="native",
                   help="avx2: limit gelu_ext, ATen and oneDNN to AVX2, as on most users' CPUs")  # fmt: skip
    p.add_argument("--input-sets", type=int, default=MAX_INPUT_SETS,
                   help="input sets to rotate through (1: the input stays in cache)")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=CPU_ROUNDS, help="CPU: timing rounds, providers interleaved")
    p.add_argument("--csv", type=Path, help="where to write the rows (default benchmarks/results/<device>-<time>.csv)")
    p.add_argument("--accuracy", action="store_true", help="print the ulp-error table instead of timing")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    args.sizes = args.sizes or list(range(10, 25 if cpu else 29, 2))
    args.dtypes = args.dtypes or (["float32"] if cpu else list(DTYPES))
    args.memory = args.memory if cpu else ["cached"]
    # F.gelu first and the copy ceiling last, in every run: the ratios are always side by side in one process.
    args.providers = ["aten", *(p for p in args.providers if p not in ("aten", "copy")), "copy"]
    return args


def main(argv=None):
    args = parse_args(argv)
    device = start(args, __file__, argv)
    if device is None:
        return 0
    torch.manual_seed(0)
    if args.accuracy:
        return accuracy_table(device, args.approximate)
    rows = sweep(args, device)
    path = write_csv(args.csv or HERE / "results" / f"{args.device}-{datetime.datetime.now():%Y%m%d-%H%M%S}.csv",
                     CSV_FIELDS, rows)  # fmt: skip
    print(f"wrote {path}")
    return rows


def start(args, script, argv) -> torch.device | None:
    """What every benchmark does first (this one and bench_fused.py). --isa avx2: the instruction sets are fixed at
    library load, so `script` runs again in a process that starts with ISA_ENV set, and None is returned once it has
    succeeded. Otherwise: check the device, set the thread count, and return the device."""
    if args.isa == "avx2" and any(os.environ.get(k) != v for k, v in ISA_ENV.items()):
        cmd = [sys.executable, script, *(argv if argv is not None else sys.argv[1:])]
        subprocess.run(cmd, env={**os.environ, **ISA_ENV}, check=True)
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def write_csv(path: Path, fields, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


if __name__ == "__main__":
    main()
