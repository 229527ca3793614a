"""How well the 16-bit results are rounded, over every finite float16 and bfloat16 input: per op and mode, how many
results are not the correctly rounded value of the exact function (a float64 reference), how many are not even
faithful (one of the two 16-bit neighbours of the exact value), and the worst error in ulp of the 16-bit type.

    python benchmarks/rounding16.py            # gelu and its derivative (gelu_backward with grad = 1), both modes

The 16-bit results are the float32 math rounded once more, so near a rounding midpoint of the 16-bit type the float
result's few-ulp error can push them to the wrong side: that is where correct rounding fails (issue 24's goal for a
16-bit evaluation; its floor is faithful everywhere). The float64 reference is ~1e-16 relative, far below the
distance of any 16-bit result to a midpoint that this check could misjudge (gelu of a 16-bit input is never a
midpoint itself, except at exact ties such as gelu(2^-24) ~ 2^-25 in float16, where the reference's sign decides).
"""

from __future__ import annotations

import argparse
import sys

import torch


def every_finite(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value of a 16-bit dtype, both zeros included."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    return values[torch.isfinite(values.to(torch.float32))]


def rounding_report(result: torch.Tensor, exact: torch.Tensor) -> dict:
    """result (a 16-bit tensor) against exact (float64): counts of results that are not correctly rounded and not
    faithful, and the worst error in units of the local spacing (the larger gap to the two neighbours, so a faithful
    result is < 1 and a correctly rounded one <= 1/2 of the gap on its side)."""
    up = torch.nextafter(result, torch.full_like(result, float("inf"))).to(torch.float64)
    down = torch.nextafter(result, torch.full_like(result, float("-inf"))).to(torch.float64)
    value = result.to(torch.float64)
    error = (value - exact).abs()
    nearest = (error <= (up - exact).abs()) & (error <= (down - exact).abs())
    spacing = torch.maximum(up - value, value - down)
    # faithful: the exact value lies strictly between result's neighbours (result is one of its two brackets)
    faithful = (exact > down) & (exact < up)
    same = (value == exact) | (value.isnan() & exact.isnan())
    nearest, faithful = nearest | same, faithful | same
    worst = torch.where(same, torch.zeros_like(error), error / spacing)
    index = int(worst.argmax())
    return {"inputs": result.numel(), "not_nearest": int((~nearest).sum()), "not_faithful": int((~faithful).sum()),
            "worst_ulp": float(worst[index]), "worst_at": index}  # fmt: skip


def measure(dtype: torch.dtype, approximate: str, what: str) -> dict:
    import gelu_ext
    from gelu_ext.reference import gelu_derivative, gelu_reference

    x = every_finite(dtype)
    x64 = x.to(torch.float64)
    if what == "forward":
        result, exact = gelu_ext.gelu(x, approximate=approximate), gelu_reference(x64, approximate)
    else:
        result = gelu_ext.ops.gelu_backward(torch.ones_like(x), x, approximate=approximate)
        exact = gelu_derivative(x64, approximate)
    report = rounding_report(result, exact)
    report["worst_x"] = float(x[report["worst_at"]])
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    print("| dtype | mode | op | inputs | not correctly rounded | not faithful | worst (ulp of the 16-bit type) |")
    print("|---|---|---|---|---|---|---|")
    unfaithful = 0
    for dtype in (torch.bfloat16, torch.float16):
        for approximate in ("none", "tanh"):
            for what in ("forward", "derivative"):
                r = measure(dtype, approximate, what)
                unfaithful += r["not_faithful"]
                name = str(dtype).removeprefix("torch.")
                worst = f"{r['worst_ulp']:.3f} at x = {r['worst_x']:.4g}"
                print(f"| {name} | {approximate} | {what} | {r['inputs']} | {r['not_nearest']} | {r['not_faithful']} | "
                      f"{worst} |")  # fmt: skip
    return 1 if unfaithful else 0


if __name__ == "__main__":
    sys.exit(main())
