"""Turn a bench_gelu.py CSV into a PNG: effective GB/s against size, one line per provider, a panel per pass.

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
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        series = defaultdict(list)
        for r in rows:
            if r["mode"] == mode:
                series[r["provider"]].append((int(r["size"]), float(r["gbps"])))
        for provider, points in series.items():
            points.sort()
            ax.plot(*zip(*points, strict=True), STYLES.get(provider, ".-"), label=provider, ms=4)
        ax.set(xscale="log", xlabel="elements", ylabel="effective GB/s", title=TITLES[mode])
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"GELU ({approximate}, {dtype}) on {r0['device_name']}, {r0['threads']} threads, "
                 f"torch {r0['torch']}, commit {r0['git_commit']}, {r0['timestamp'][:10]}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path)
    p.add_argument("--output", type=Path, help="default: the CSV's path with .png")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--approximate", default="none")
    args = p.parse_args(argv)
    out = plot(args.csv, args.output or args.csv.with_suffix(".png"), args.dtype, args.approximate)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
