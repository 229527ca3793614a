"""The benchmark runs end to end at its smallest sizes and writes the documented CSV; the plot is drawn from it; its
checks (compiled code really ran, timed outputs are right) catch what they are there to catch."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

import gelu_ext

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gelu  # noqa: E402
import plot  # noqa: E402


def _read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_benchmark_smoke_writes_csv_and_plot(tmp_path):
    out = tmp_path / "bench.csv"
    bench_gelu.main(["--sizes", "10", "--approximate", "none", "tanh", "--providers", "gelu_ext", "composite",
                     "--csv", str(out)])  # fmt: skip
    fields, rows = _read(out)
    assert tuple(fields) == bench_gelu.CSV_FIELDS
    assert {r["provider"] for r in rows} == {"gelu_ext", "composite", "aten", "copy"}
    assert {r["mode"] for r in rows} == {"fwd", "bwd", "fwdbwd"}
    assert {r["memory"] for r in rows} == {"warm", "fresh"}
    assert len(rows) == 2 * 2 * 4 * 3  # memory regimes x approximate modes x providers x passes
    for r in rows:
        assert float(r["ms"]) > 0 and float(r["gbps"]) > 0 and r["device"] == "cpu" and int(r["threads"]) >= 1
        assert "gelu_ext=" in r["isa"] and "aten=" in r["isa"]
    png = plot.main([str(out), "--output", str(tmp_path / "bench.png")])
    assert png.stat().st_size > 10_000


def test_every_ratio_is_computable_from_rows_of_the_same_csv(tmp_path):
    out = tmp_path / "bench.csv"
    bench_gelu.main(["--sizes", "10", "--approximate", "none", "--providers", "gelu_ext", "--memory", "warm",
                     "--modes", "fwd", "--csv", str(out)])  # fmt: skip
    _, rows = _read(out)
    by_key = {(r["memory"], r["mode"], r["approximate"], r["size"], r["provider"]): r for r in rows}
    for r in rows:
        aten = by_key[(r["memory"], r["mode"], r["approximate"], r["size"], "aten")]
        copy = by_key[(r["memory"], r["mode"], r["approximate"], r["size"], "copy")]
        if r["provider"] != "copy":
            assert float(r["speedup_vs_aten"]) == pytest.approx(float(aten["ms"]) / float(r["ms"]), rel=2e-3)
        assert float(r["pct_of_copy"]) == pytest.approx(100 * float(r["gbps"]) / float(copy["gbps"]), abs=0.2)


def test_compile_provider_runs_compiled_code_and_fails_when_it_would_run_eagerly():
    sets = bench_gelu.make_inputs(1024, torch.float32, torch.device("cpu"), 2)
    run = bench_gelu.make_callable("compile", "fwd", "none", sets)
    bench_gelu.time_ms(run, torch.device("cpu"))  # compiles once, then times under error_on_recompile
    bench_gelu.check_timed_output("compile", "fwd", "none", run)
    # Planted faults: (1) dynamo disabled, so nothing is compiled: fullgraph=True refuses to run eagerly;
    with torch._dynamo.config.patch(disable=True):
        eager = bench_gelu.make_callable("compile", "fwd", "none", sets)
        with pytest.raises(RuntimeError, match="no compiled frames"):
            bench_gelu.time_ms(eager, torch.device("cpu"))
    # (2) no graph recorded for the configuration (as after a silent fallback): the timing refuses to start;
    torch._dynamo.utils.counters.clear()
    with pytest.raises(RuntimeError, match="ran eagerly"), run.compiled.timed():
        pass
    # (3) a recompilation while timed (here: another dtype) is an error, not a silent eager run.
    run = bench_gelu.make_callable("compile", "fwd", "none", sets)
    run()
    with pytest.raises(Exception, match=r"[Rr]ecompil"), run.compiled.timed():
        run.compiled.fn(sets[0][0].double(), "none")


def test_timed_output_check_catches_a_wrong_result():
    sets = bench_gelu.make_inputs(4096, torch.float32, torch.device("cpu"), 1)
    run = bench_gelu.make_callable("gelu_ext", "fwd", "none", sets)
    bench_gelu.check_timed_output("gelu_ext", "fwd", "none", run)

    def wrong():  # planted fault: F.gelu's float result passed off as gelu_ext's (it is 100s of ulp off)
        _, x, g = run()
        return torch.nn.functional.gelu(x), x, g

    with pytest.raises(AssertionError, match="ulp"):
        bench_gelu.check_timed_output("gelu_ext", "fwd", "none", wrong)


def test_accuracy_table_shows_gelu_ext_within_bounds_and_aten_outside(capsys):
    results = bench_gelu.main(["--accuracy", "--approximate", "none"])
    ours = [r for r in results if r["provider"] == "gelu_ext"]
    assert ours and all(r["fwd_ulp"] <= 4 and r["bwd_ulp"] <= 8 for r in ours)
    aten_tail = next(r for r in results if r["provider"] == "aten" and r["range"] == "[-8, -5]")
    assert aten_tail["fwd_ulp"] > 1e5 and aten_tail["bwd_ulp"] > 1e3, "the tail columns must show real figures"
    assert "finite (sampled)" in capsys.readouterr().out


def test_fused_benchmark_smoke_writes_csv_and_plot(tmp_path):
    import bench_fused

    out = tmp_path / "fused.csv"
    bench_fused.main(["--tokens", "4", "--hidden", "40", "--approximate", "tanh", "--providers", "gelu_ext",
                      "--csv", str(out)])  # fmt: skip
    fields, rows = _read(out)
    assert tuple(fields) == bench_fused.CSV_FIELDS
    assert {(r["op"], r["mode"]) for r in rows} == {(op, mode) for op in bench_fused.OPS for mode in bench_fused.MODES}
    assert {r["provider"] for r in rows} == {"gelu_ext", "eager", "copy"}
    for r in rows:
        assert float(r["ms"]) > 0 and float(r["gbps"]) > 0 and r["tokens"] == "16" and r["hidden"] == "40"
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_fused_benchmark_validation_catches_a_wrong_provider():
    import bench_fused

    inputs = bench_fused.make_inputs("geglu", 8, 16, torch.float32, torch.device("cpu"))
    gate, up, _, _ = inputs
    bench_fused.check("geglu", "fwd", "gelu_ext", gelu_ext.geglu(gate, up), inputs, "none")
    with pytest.raises(AssertionError, match="geglu fwd none"):
        bench_fused.check("geglu", "fwd", "broken", gelu_ext.geglu(gate, up) * 1.01, inputs, "none")


def test_transforms_benchmark_smoke_writes_csv(tmp_path):
    import bench_transforms

    out = tmp_path / "transforms.csv"
    bench_transforms.main(["--rows", "4", "--cols", "32", "--jacobian", "8", "--rounds", "1", "--csv", str(out)])
    fields, rows = _read(out)
    assert tuple(fields) == tuple(bench_transforms.CSV_FIELDS)
    assert {(r["transform"], r["approximate"], r["provider"]) for r in rows} == {
        (t, a, p) for t in ("vmap", "jacrev", "plain") for a in ("none", "tanh") for p in ("gelu_ext", "F.gelu")
    }
    assert all(float(r["ms"]) > 0 for r in rows)
