"""Turn a bench_gelu.py CSV into a PNG: effective GB/s against size, one line per provider, a panel per pass (columns)
and memory regime (rows).

python benchmarks/plot.py benchmarks/results/cpu-....csv [--output out.png] [--dtype float32] [--approximate none]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

STYLES = {"gelu_ext": "o-", "aten": "s--", "compile": "^--", "composite": "x:", "copy": "k-"}
TITLES = {"fwd": "forward", "bwd": "backward (gelu_backward)", "fwdbwd": "forward + backward (autograd)"}


def plot(csv_path: Path, output: Path, dtype: str, approximate: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["dtype"] == dtype and r["approximate"] == approximate]
    if not rows:
        raise SystemExit(f"{csv_path} has no rows for dtype={dtype} approximate={approximate}")
    modes = [m for m in TITLES if any(r["mode"] == m for r in rows)]
    memories = list(dict.fromkeys(r["memory"] for r in rows))
    fig, axes = plt.subplots(len(memories), len(modes), figsize=(5.5 * len(modes), 4.2 * len(memories)), squeeze=False)
    for axes_row, memory in zip(axes, memories, strict=True):
        for ax, mode in zip(axes_row, modes, strict=True):
            series = defaultdict(list)
            for r in rows:
                if r["mode"] == mode and r["memory"] == memory:
                    series[r["provider"]].append((int(r["size"]), float(r["gbps"])))
            for provider, points in series.items():
                points.sort()
                ax.plot(*zip(*points, strict=True), STYLES.get(provider, ".-"), label=provider, ms=4)
            ax.set(xlabel="elements", ylabel="effective GB/s", title=f"{TITLES[mode]}, {memory} memory")
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"GELU ({approximate}, {dtype}) on {r0['device_name']} ({r0['isa']}), {r0['threads']} threads, "
                 f"torch {r0['torch']}, commit {r0['git_commit']}, {r0['timestamp'][:10]}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def markdown_table(csv_path: Path, dtype: str = "float32", min_log2: int = 12) -> str:
    """The README's speed table: per memory regime, mode and pass, gelu_ext's and F.gelu's time at the largest size,
    their ratio there, and the smallest and largest ratio over every size from 2^min_log2 up."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["dtype"] == dtype]
    by_key = defaultdict(dict)
    for r in rows:
        by_key[(r["memory"], r["approximate"], r["mode"], int(r["size"]))][r["provider"]] = r
    largest = max(int(r["size"]) for r in rows)
    lines = [
        f"| memory | approximate | pass | gelu_ext ms (2^{largest.bit_length() - 1}) | F.gelu ms | ratio | "
        f"ratio, 2^{min_log2}..2^{largest.bit_length() - 1} (min - max) | copy ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = sorted({k[:3] for k in by_key}, key=lambda k: (k[0] != "warm", k[1] != "none", list(TITLES).index(k[2])))
    for memory, approximate, mode in groups:
        big = by_key[(memory, approximate, mode, largest)]
        ratios = [float(v["gelu_ext"]["speedup_vs_aten"]) for k, v in by_key.items()
                  if k[:3] == (memory, approximate, mode) and k[3] >= 2**min_log2]  # fmt: skip
        lines.append(
            f"| {memory} | {approximate} | {TITLES[mode]} | {float(big['gelu_ext']['ms']):.3f} | "
            f"{float(big['aten']['ms']):.3f} | **{float(big['gelu_ext']['speedup_vs_aten']):.2f}x** | "
            f"{min(ratios):.2f}x - {max(ratios):.2f}x | {float(big['copy']['ms']):.3f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path)
    p.add_argument("--output", type=Path, help="default: the CSV's path with .png")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--approximate", default="none")
    p.add_argument("--table", action="store_true", help="print the README's markdown speed table instead")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table(args.csv, args.dtype))
        return None
    out = plot(args.csv, args.output or args.csv.with_suffix(".png"), args.dtype, args.approximate)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
