"""The benchmark runs end to end at its smallest sizes and writes the documented CSV; the plot is drawn from it."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gelu  # noqa: E402
import plot  # noqa: E402


def test_benchmark_smoke_writes_csv_and_plot(tmp_path):
    out = tmp_path / "bench.csv"
    bench_gelu.main(["--sizes", "10", "--approximate", "none", "tanh", "--providers", "gelu_ext", "composite",
                     "--csv", str(out)])  # fmt: skip
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == bench_gelu.CSV_FIELDS
    providers = {r["provider"] for r in rows}
    assert providers == {"gelu_ext", "composite", "aten", "copy"}
    assert {r["mode"] for r in rows} == {"fwd", "bwd", "fwdbwd"}
    assert len(rows) == 2 * 4 * 3  # approximate modes x providers x passes
    for r in rows:
        assert float(r["ms"]) > 0 and float(r["gbps"]) > 0 and r["device"] == "cpu" and int(r["threads"]) >= 1
    png = plot.main([str(out), "--output", str(tmp_path / "bench.png")])
    assert png.stat().st_size > 10_000


def test_accuracy_table_shows_gelu_ext_within_bounds(capsys):
    results = bench_gelu.main(["--accuracy", "--approximate", "none"])
    ours = [r for r in results if r["provider"] == "gelu_ext"]
    assert ours and all(r["fwd_ulp"] <= 4 and r["bwd_ulp"] <= 8 for r in ours)
    assert "finite (sampled)" in capsys.readouterr().out
