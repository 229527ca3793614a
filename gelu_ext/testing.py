"""Shared test matrix and numerical helpers (used by tests/ and benchmarks/).

One place lists the devices and dtypes every test runs over: a CUDA build on a machine with a GPU adds "cuda"
to the same matrix.
"""

from __future__ import annotations

import contextlib

import torch

from . import _extension
from ._extension import build_info
from .fused import compute_dtype
from .ops import APPROXIMATE_MODES
from .reference import _TANH_C1, _TANH_C2, gelu_derivative_terms

__all__ = ["APPROXIMATE_MODES", "compute_dtype"]  # re-exported: the test matrix's modes and types are the API's

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# The maxima of the float32 math over every finite float32 (benchmarks/exhaustive_ulp.cpp; forward in ulp of the
# result, derivative in ulp of the larger of its two terms). The README states these figures and the tests hold every
# code path to them (tests/test_accuracy.py).
MEASURED_MAX_ULP = {
    "none": {"forward": 3.830, "derivative": 4.180},
    "tanh": {"forward": 2.434, "derivative": 4.599},
}

# geglu's forward, gelu(gate) * up, over 2.2e8 random (gate, up) pairs (every 61st finite float32 gate with |gate| < 20,
# |up| in [2^-20, 2^9]; tests/test_geglu.py re-measures a sample): gelu's error plus one rounding, in ulp of the
# product, where the same relative error can count up to twice as many ulp as in gelu's own result. Below |gate| = 1/8
# (erf mode) the product comes from the series (csrc/gelu_math.h, gelu_erf_small_times): 1.54 ulp at most there.
GEGLU_MEASURED_MAX_ULP = {"none": 3.837, "tanh": 2.908}


def bias_gelu_sum(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The sum bias_gelu applies GELU to, as float64: x + bias rounded once to the compute type (float32 for the half
    types too: never to the half type itself, as eager F.gelu(x + b) would)."""
    compute = compute_dtype(x.dtype)
    return (x.to(compute) + bias.to(compute)).to(torch.float64)


def column_sum_error_bound(
    terms: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, x: torch.Tensor, approximate: str
) -> torch.Tensor:
    """How far bias_gelu_backward's grad_bias may be from the float64 sum over rows of the exact terms
    grad * gelu'(x + bias) (`terms`, float64, [rows, cols]; `scales`: |grad| times the larger of the derivative's two
    terms, the scale its error is measured against, gelu_ext.reference.gelu_derivative_terms; `x`: the sums x + bias
    the terms were taken at, same shape).

    Each term is within the derivative's contract in the compute type (reference_tolerance: twice rtol times its
    scale, as tests/test_gelu.py holds gelu_backward to; |term| <= 2 scale), or for a 16-bit dtype the 16-bit math's
    (SIXTEEN_BIT_MATH_RTOL); the kernels add the terms in the compute
    type in some order (runs per thread or row lane, then partial sums), and any order of n - 1 additions is within
    (n - 1) u of the sum of the magnitudes; then one rounding to `dtype`.
    """
    compute = compute_dtype(dtype)
    atol, rtol = reference_tolerance(compute, x, approximate)
    if dtype in SIXTEEN_BIT_MATH_RTOL:  # the terms of a 16-bit grad_bias come from the 16-bit math
        rtol = max(rtol, SIXTEEN_BIT_MATH_RTOL[dtype])
    u = torch.finfo(compute).eps / 2
    rows = terms.shape[0]
    out_rounding = torch.finfo(dtype).eps / 2 if dtype != compute else 0.0
    bound = (2 * rtol * scales).sum(0) + 2 * max(rows - 1, 0) * u * scales.sum(0) + out_rounding * terms.sum(0).abs()
    return bound + rows * atol + torch.finfo(dtype).tiny


def devices() -> list[str]:
    """ "cpu", plus "cuda" when this build has CUDA kernels and a GPU is visible."""
    found = ["cpu"]
    if build_info()["with_cuda"] and torch.cuda.is_available():
        found.append("cuda")
    return found


# Tolerances of gelu_ext against a float64 reference, as (atol, rtol), per dtype. Why these numbers:
#   float64:  the C library's erfc and exp are good to a few double ulp: 1e-13. In the negative tail every float64
#             evaluation (the reference's included) also loses the rounding of exp's or erfc's argument, amplified by
#             them; reference_tolerance adds that, element by element (tail_conditioning).
#   float32:  the float-only kernels are within 4 ulp (tests/test_accuracy.py asserts the measured ulp figures
#             directly); 4 ulp is at most 2^-21 relative. atol: the smallest subnormal.
#   float16:  the 16-bit math's faithful result (benchmarks/exhaustive_ulp.cpp --pairs): within one float16 ulp, at
#             most 2^-10 relative, and correctly rounded almost everywhere; atol covers subnormals.
#   bfloat16: likewise, 2^-7 relative.
REFERENCE_TOLERANCES = {
    torch.float64: (1e-300, 1e-13),
    torch.float32: (1e-44, 2.0**-21),
    torch.float16: (2.0**-24, 2.0**-10),
    torch.bfloat16: (1e-38, 2.0**-7),
}

# The float results of the 16-bit math (math::gelu_erf16 / gelu_tanh16, before their rounding to the 16-bit type):
# the largest error relative to the value (the derivative: its larger term) over every 61st finite float32, measured
# 2026-12-02: bfloat16 2^-13.4 (erf gelu', at x ~ -11.8, where the polynomial's Horner steps round at |D| ~ 100) and
# 2^-17.2 (tanh); float16 2^-12.5 below its clamp (|x| < 8; beyond, gelu' is taken at the clamp, below 4e-14) and
# 2^-17.8 (tanh). bias_gelu's grad_bias adds these float results, so its bound uses them (column_sum_error_bound).
SIXTEEN_BIT_MATH_RTOL = {torch.float16: 2.0**-12, torch.bfloat16: 2.0**-13}

# The derivative is a sum of two terms that cancel next to its zero at x ~ -0.75, where no format keeps relative
# accuracy; its error is measured against the larger term instead (derivative_ulp_error), and in the shape/layout
# matrix that scale enters as an absolute tolerance of rtol * max(|first|, |second|) (tests/test_gelu.py).


def tail_conditioning(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """Per element, how many double ulp of relative error any float64 evaluation of gelu or gelu' at x inherits from
    rounding the argument of exp or erfc: exp(-|s|) turns an error of |s| ulp in s into |s| ulp in the result (tanh
    mode; |s| reaches 745 before the result underflows), erfc(z) one of z's relative ulp into 2 z^2 = x^2 (erf mode)."""
    xc = x.to(torch.float64).nan_to_num(0.0, 0.0, 0.0).clamp(-1e4, 1e4)
    if approximate == "tanh":
        return (xc * (_TANH_C1 + _TANH_C2 * xc * xc)).abs()  # s: gelu_tanh = x sigmoid(s)
    return xc * xc


def reference_tolerance(dtype: torch.dtype, x: torch.Tensor, approximate: str):
    """(atol, rtol) against the float64 reference at inputs x: REFERENCE_TOLERANCES, and for float64 an rtol per
    element that adds twice the tail's conditioning (kernel and reference each lose it) in units of 2^-52."""
    atol, rtol = REFERENCE_TOLERANCES[dtype]
    if dtype != torch.float64:
        return atol, rtol
    return atol, rtol + 2 * torch.finfo(torch.float64).eps * tail_conditioning(x, approximate)


def assert_within(actual: torch.Tensor, expected: torch.Tensor, atol, rtol, what: str = "") -> None:
    """|actual - expected| <= atol + rtol |expected| elementwise (rtol may be a tensor); NaN matches NaN and an
    infinity itself."""
    a = actual.to(torch.float64)
    err = (a - expected).abs()
    ok = (err <= atol + rtol * expected.abs()) | (a == expected) | (a.isnan() & expected.isnan())
    if not ok.all():
        worst = int((err.nan_to_num(float("inf")) * ~ok).argmax())
        raise AssertionError(f"{what}{int((~ok).sum())} of {ok.numel()} elements off; first worst: "
                             f"{a.flatten()[worst].item()!r} vs {expected.flatten()[worst].item()!r}")  # fmt: skip


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


def ulp_error(result: torch.Tensor, reference: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """|result - reference| in units of result.dtype's ulp at `scale` (default: the reference itself).

    NaN where the reference is not NaN, or an infinity other than the reference's, counts as inf.
    """
    result64 = result.to(torch.float64)
    err = (result64 - reference).abs() / ulp(reference if scale is None else scale, result.dtype)
    same_special = (result64 == reference) | (result64.isnan() & reference.isnan())
    err = torch.where(same_special, torch.zeros_like(err), err)
    return torch.where(err.isnan(), torch.full_like(err, float("inf")), err)


def derivative_ulp_error(
    result: torch.Tensor, x: torch.Tensor, approximate: str = "none", grad: torch.Tensor | None = None
) -> torch.Tensor:
    """Error of a GELU derivative at x (times `grad`, if given), in ulp of the larger of the two terms it sums
    (Phi(x) and x phi(x), or their tanh-mode counterparts). That is the result's own ulp everywhere but next to the
    zero at x ~ -0.75, and in particular in the whole negative tail, where a kernel returning 0 or aten's cancelling
    formula is caught."""
    first, second = gelu_derivative_terms(x.to(torch.float64), approximate)
    scale = torch.maximum(first.abs(), second.abs())
    if grad is None:
        return ulp_error(result, first + second, scale)
    g = grad.to(torch.float64)
    return ulp_error(result, g * (first + second), g.abs() * scale)


def every_finite_float32(stride: int = 1, offset: int = 0) -> torch.Tensor:
    """Every `stride`-th finite float32 (both signs), from bit pattern `offset` on."""
    bits = torch.arange(offset, 0x7F800000, stride, dtype=torch.int64)
    positive = bits.to(torch.int32).view(torch.float32)
    return torch.cat([positive, -positive])


@contextlib.contextmanager
def cpu_capability(isa: str):
    """Run the CPU kernels with one instruction set inside the block, then go back to the best one."""
    best = _extension._C.cpu_capability()
    try:
        _extension._C.set_cpu_capability(isa)
        yield
    finally:
        _extension._C.set_cpu_capability(best)


def available_cpu_capabilities() -> list[str]:
    """The CPU code paths this machine can run: "baseline", plus "avx2", "avx512" and "avx512_bf16" (AVX-512 with
    AVX512-BF16's bfloat16 conversions) where supported."""
    paths = ["baseline", "avx2", "avx512", "avx512_bf16"]
    best = _extension._C.cpu_capability()
    return paths[: paths.index(best) + 1] if best in paths else ["baseline"]


_SAME_WIDTH_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}  # fmt: skip


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal bit patterns, so -0.0 differs from +0.0. NaN matches NaN whatever its payload (GPUs return the
    canonical NaN, CPUs propagate the input's)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    a, e = actual.cpu(), expected.cpu()
    both_nan = a.isnan() & e.isnan()
    a_bits, e_bits = a.view(_SAME_WIDTH_INT[a.dtype]), e.view(_SAME_WIDTH_INT[e.dtype])
    differ = (a_bits != e_bits) & ~both_nan
    if differ.any():
        i = int(differ.flatten().nonzero()[0, 0])
        raise AssertionError(f"{int(differ.sum())} elements differ in their bits, first at flat index {i}: "
                             f"{a.flatten()[i].item()!r} vs {e.flatten()[i].item()!r}")  # fmt: skip


def ulps_apart(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """How many steps of their (16-bit) dtype apart two results are, elementwise, as int32: 0 for the same bits,
    1 for neighbours; -0.0 and +0.0 are one step apart, so a wrong sign of zero counts. NaN is 0 steps from NaN."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype and actual.element_size() == 2

    def position(t: torch.Tensor) -> torch.Tensor:
        bits = t.cpu().view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF) - 1, bits)  # ..., -0.0 -> -1, +0.0 -> 0, ...

    both_nan = actual.cpu().isnan() & expected.cpu().isnan()
    return torch.where(both_nan, 0, (position(actual) - position(expected)).abs())


def assert_within_one_ulp(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Each 16-bit result equal to expected or one of its two neighbours (the erf mode's 16-bit math against the
    float32 math rounded: both faithful, so where one is correctly rounded and the other not they are neighbours)."""
    apart = ulps_apart(actual, expected)
    if int(apart.max()) > 1:
        i = int(apart.flatten().argmax())
        raise AssertionError(f"{int((apart > 1).sum())} elements more than one ulp apart, the worst at flat index "
                             f"{i}: {actual.flatten()[i].item()!r} vs {expected.flatten()[i].item()!r}")  # fmt: skip


def assert_compiled_matches_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """torch.compile(model, fullgraph=True) gives the eager model's output and parameter gradients."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def assert_transforms_match(ours, reference, inputs: tuple) -> None:
    """`ours` (a gelu_ext function of the float64 tensors `inputs`) agrees with `reference` (the same function in
    torch ops) under forward-mode AD and every torch.func transform: jvp, grad, jacrev, jacfwd, hessian (forward over
    reverse) and vmap; and gradcheck passes with forward-mode AD and forward-over-reverse checks."""
    argnums = tuple(range(len(inputs)))
    tangents = tuple(torch.randn_like(t) for t in inputs)
    leaves = torch.utils._pytree.tree_leaves

    def close(actual, expected, what):
        for a, e in zip(leaves(actual), leaves(expected), strict=True):
            torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-10, msg=lambda m: f"{what}: {m}")

    def loss(fn):
        return lambda *t: fn(*t).sin().sum()

    forward_ad = torch.autograd.forward_ad
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(t, d) for t, d in zip(inputs, tangents, strict=True)]
        tangent = forward_ad.unpack_dual(ours(*duals)).tangent
    assert tangent is not None, "forward-mode AD dropped the tangent"
    close(tangent, torch.func.jvp(reference, inputs, tangents)[1], "forward-mode AD")
    close(torch.func.jvp(ours, inputs, tangents), torch.func.jvp(reference, inputs, tangents), "torch.func.jvp")
    for name in ("grad", "hessian", "jacrev", "jacfwd"):
        transform = getattr(torch.func, name)
        f, g = (loss(ours), loss(reference)) if name in ("grad", "hessian") else (ours, reference)
        close(transform(f, argnums=argnums)(*inputs), transform(g, argnums=argnums)(*inputs), f"torch.func.{name}")
    batched = tuple(torch.stack([t, 2 * t]) for t in inputs)
    close(torch.func.vmap(ours)(*batched), torch.func.vmap(reference)(*batched), "torch.func.vmap")
    differentiable = tuple(t.detach().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(ours, differentiable, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(ours, differentiable, check_fwd_over_rev=True)
