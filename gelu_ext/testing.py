"""Shared test matrix and numerical helpers (used by tests/ and benchmarks/).

One place lists the devices and dtypes every test runs over: a CUDA build on a machine with a GPU adds "cuda"
to the same matrix.
"""

from __future__ import annotations

import torch

from ._extension import build_info

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
APPROXIMATE_MODES = ("none", "tanh")


def devices() -> list[str]:
    """ "cpu", plus "cuda" when this build has CUDA kernels and a GPU is visible."""
    found = ["cpu"]
    if build_info()["with_cuda"] and torch.cuda.is_available():
        found.append("cuda")
    return found


# Tolerances of gelu_ext against a float64 reference, as (atol, rtol), per dtype. Why these numbers:
#   float64:  the C library's erfc is good to a few double ulp; 1e-13 leaves room for the tail's sensitivity.
#   float32:  the kernels are within 1 ulp (2^-23 relative) -- tests/test_accuracy.py asserts ulp bounds
#             directly; this loose form is for the layout/shape matrix.
#   float16:  the float32 result rounded once: half an ulp, 2^-11 relative; atol covers subnormal results.
#   bfloat16: likewise, 2^-8 relative.
REFERENCE_TOLERANCES = {
    torch.float64: (1e-300, 1e-13),
    torch.float32: (1e-44, 2.0**-22),
    torch.float16: (2.0**-24, 2.0**-11),
    torch.bfloat16: (1e-38, 2.0**-8),
}

# The derivative crosses zero at x ~ -0.75, where no format keeps relative accuracy: there the float32 bound is
# absolute, 2^-24 (the polynomials are float-accurate, so near the zero the error is ~1e-9 absolute).
DERIVATIVE_ATOL = {torch.float32: 2.0**-24, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-24}

# Against torch.nn.functional.gelu, which is the less accurate of the two (about 2,000 float32 ulp in [-3, 3] and
# no correct bits below -5), so only on moderate inputs, with its error budget rather than ours:
#   float32: 2,000 ulp of 2^-23 is ~2.5e-4 relative on the small negative values; atol for values near 0.
#   half types: F.gelu rounds its own float result, which may land on the neighbouring value: 1 ulp.
F_GELU_TOLERANCES = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-6, 3e-4),
    torch.float16: (1e-3, 2.0**-10),
    torch.bfloat16: (1e-2, 2.0**-7),
}


def ulp(reference: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The spacing of `dtype` at each |reference| (the smallest subnormal's spacing below the normal range)."""
    info = torch.finfo(dtype)
    magnitude = reference.abs().to(torch.float64).clamp_min(info.tiny)
    exponent = torch.floor(torch.log2(magnitude))
    # log2 can round up just below a power of two; correct with one comparison.
    exponent = torch.where(torch.exp2(exponent) > magnitude, exponent - 1, exponent)
    return torch.exp2(exponent - (info.bits - 1 - _exponent_bits(dtype)))


def _exponent_bits(dtype: torch.dtype) -> int:
    return {torch.float32: 8, torch.float64: 11, torch.float16: 5, torch.bfloat16: 8}[dtype]


def ulp_error(result: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|result - reference| in units of result.dtype's ulp at the reference; NaN or a wrong infinity is inf."""
    result64 = result.to(torch.float64)
    err = (result64 - reference).abs() / ulp(reference, result.dtype)
    same_special = (result64 == reference) | (result64.isnan() & reference.isnan())
    err = torch.where(same_special, torch.zeros_like(err), err)
    return torch.where(err.isnan(), torch.full_like(err, float("inf")), err)


def every_finite_float32(stride: int = 1, offset: int = 0) -> torch.Tensor:
    """Every `stride`-th finite float32 (both signs), from bit pattern `offset` on."""
    bits = torch.arange(offset, 0x7F800000, stride, dtype=torch.int64)
    positive = bits.to(torch.int32).view(torch.float32)
    return torch.cat([positive, -positive])
