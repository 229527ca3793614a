"""gelu_ext.geglu: gelu(gate) * up and its backward (grad_gate, grad_up) over the shared matrix of devices, dtypes,
shapes and row layouts (the halves of a chunk(2, dim=-1) among them); accuracy; gradients to second order; errors;
torch.library integration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gelu_ext
from gelu_ext.reference import gelu_derivative, gelu_derivative_terms, gelu_reference
from gelu_ext.testing import (
    APPROXIMATE_MODES,
    DTYPES,
    F_GELU_TOLERANCES,
    GEGLU_MEASURED_MAX_ULP,
    assert_bitwise_equal,
    assert_transforms_match,
    assert_within,
    assert_within_one_ulp,
    available_cpu_capabilities,
    compute_dtype,
    cpu_capability,
    devices,
    every_finite_float32,
    reference_tolerance,
    ulp_error,
    ulps_apart,
)

SHAPES = [(1,), (7,), (1023,), (4097,), (3, 5, 7), (0, 7), (4, 0), (2, 0, 3), (129, 257), (2, 3, 1)]
# "chunked": gate and up are the two halves of one tensor's chunk(2, dim=-1) (row stride 2H, read in place);
# "transposed": copied first; "broadcast_rows": one row expand()ed (row stride 0).
LAYOUTS = ["contiguous", "chunked", "transposed", "broadcast_rows"]
CASES = [(s, lay) for s in SHAPES for lay in LAYOUTS if lay in ("contiguous", "chunked") or len(s) >= 2]


def geglu_tolerance(dtype, gate, approximate):
    """geglu's float32 forward is held to its measured maximum (gelu_ext.testing.GEGLU_MEASURED_MAX_ULP, below 4 ulp)
    in test_forward_accuracy; in the matrix, float32 gets twice reference_tolerance's relative 2^-21 (an error of
    4 ulp is up to 2^-20 relative at the bottom of a binade), the other types their own."""
    atol, rtol = reference_tolerance(dtype, gate, approximate)
    return (atol, 2 * rtol) if dtype == torch.float32 else (atol, rtol)


def make_pair(shape, layout, dtype, device, scale=3.0):
    """(gate, up) of `shape` in the given layout."""

    def randn(size):
        return (torch.randn(size, dtype=torch.float64, device=device) * scale).to(dtype)

    if layout == "chunked":
        up, gate = randn((*shape[:-1], 2 * shape[-1])).chunk(2, dim=-1)  # diffusers' order: value first
        return gate, up
    if layout == "transposed":
        flip = tuple(reversed(range(len(shape))))
        return randn(tuple(reversed(shape))).permute(flip), randn(tuple(reversed(shape))).permute(flip)
    if layout == "broadcast_rows":
        row = (*[1] * (len(shape) - 1), shape[-1])
        return randn(row).expand(shape), randn(row).expand(shape)
    return randn(shape), randn(shape)


def geglu_reference(gate, up, approximate):
    return gelu_reference(gate.to(torch.float64), approximate) * up.to(torch.float64)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout"), CASES, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_forward_and_backward_matrix(device, dtype, shape, layout, approximate):
    gate, up = make_pair(shape, layout, dtype, device)
    y = gelu_ext.geglu(gate, up, approximate)
    assert y.shape == gate.shape and y.dtype == dtype and y.device == gate.device and y.is_contiguous()
    atol, rtol = geglu_tolerance(dtype, gate, approximate)
    assert_within(y, geglu_reference(gate, up, approximate), atol, rtol)
    if dtype == torch.float32:
        moderate = gate > -4
        f_atol, f_rtol = F_GELU_TOLERANCES[dtype]
        eager = F.gelu(gate, approximate=approximate) * up
        torch.testing.assert_close(y[moderate], eager[moderate], atol=f_atol * 10, rtol=f_rtol)

    grad = make_pair(shape, "contiguous", dtype, device, scale=1.0)[0]
    grad_gate, grad_up = torch.ops.gelu_ext.geglu_backward(grad, gate, up, approximate)
    assert grad_gate.is_contiguous() and grad_up.is_contiguous() and grad_gate.shape == grad_up.shape == gate.shape
    # grad_up = grad * gelu(gate): geglu's forward with grad as the multiplier
    assert_within(grad_up, geglu_reference(gate, grad, approximate), atol, rtol)
    # grad_gate = (grad * up) * gelu'(gate): gelu_backward's contract for grad * up rounded to the compute type
    g = (grad.to(torch.float64) * up.to(torch.float64)).to(compute_dtype(dtype))
    first, second = gelu_derivative_terms(gate.to(torch.float64), approximate)
    expected = g.to(torch.float64) * (first + second)
    scale = g.to(torch.float64).abs() * torch.maximum(first.abs(), second.abs())
    ref_atol, ref_rtol = reference_tolerance(dtype, gate, approximate)
    err = (grad_gate.to(torch.float64) - expected).abs()
    assert (err <= ref_atol + 3 * ref_rtol * scale).all(), f"grad_gate: worst error {float(err.max()):.3g}"


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_forward_accuracy(approximate):
    # A sample of the measurement behind GEGLU_MEASURED_MAX_ULP: every 4099th finite float32 gate below 20 in size,
    # each with a random up of magnitude 2^-20 to 2^9.
    gen = torch.Generator().manual_seed(0)
    gate = every_finite_float32(stride=4099)
    gate = gate[gate.abs() < 20]
    up = torch.randn(gate.shape, generator=gen) * torch.exp2(torch.randint(-20, 9, gate.shape, generator=gen).float())
    err = ulp_error(gelu_ext.geglu(gate, up, approximate), geglu_reference(gate, up, approximate))
    assert float(err.max()) <= GEGLU_MEASURED_MAX_ULP[approximate]
    # tiny gates (gelu(gate) subnormal, or gate itself) times a large up: still one rounding, no lost bits
    tiny = torch.tensor([-1e-44, 1e-44, -3e-39, 3e-39, -13.5, -14.9, -10.5, 1e-30, -2e-3, 0.1], dtype=torch.float32)
    big_up = torch.full_like(tiny, 300.0)
    err = ulp_error(gelu_ext.geglu(tiny, big_up, approximate), geglu_reference(tiny, big_up, approximate))
    assert float(err.max()) <= 4


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_types_are_within_one_ulp_of_the_float32_result_rounded(device, dtype, approximate):
    gate, up = make_pair((37, 130), "chunked", dtype, device)
    grad = torch.randn(37, 130, device=device).to(dtype)
    # the 16-bit math (math::gelu_erf16, math::gelu_tanh16) against the float32 math rounded once: both faithful
    # (benchmarks/exhaustive_ulp.cpp --pairs), so within one 16-bit ulp of each other
    expected = gelu_ext.geglu(gate.float(), up.float(), approximate).to(dtype)
    assert_within_one_ulp(gelu_ext.geglu(gate, up, approximate), expected)
    halves = torch.ops.gelu_ext.geglu_backward(grad, gate, up, approximate)
    floats = torch.ops.gelu_ext.geglu_backward(grad.float(), gate.float(), up.float(), approximate)
    for h, f in zip(halves, floats, strict=True):
        assert_within_one_ulp(h, f.to(dtype))


def every_finite(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return values[values.isfinite()]


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_16_bit_geglu_is_faithful_for_a_tiny_up_on_small_gates_and_a_large_one_in_the_tail(dtype, approximate):
    """gelu(gate) * up rounded once, where forming either factor alone would lose bits: small gates times an up near
    the bottom of the range (erf mode's series, which scales nothing, and tanh's x up / 2) and tail gates times a
    large up (gelu(gate) kept 2^48 larger and up 2^48 smaller). Faithful: within one ulp of the exact product."""
    gates = every_finite(dtype)
    # float16's clamp, 8, is exact for every float16 up; bfloat16's far side reaches every up (its largest power of two
    # here; every up: tests/test_rounding16.py)
    large = 6e4 if dtype == torch.float16 else 2.0**127
    tiny = 2.0**-20 if dtype == torch.float16 else 1.9921875 * 2.0**-100  # all 8 bits set: 2^-48 of it is subnormal
    for gate, up in ((gates[gates.abs() < 0.125], tiny), (gates[gates < -3], large)):
        up = torch.full_like(gate, up)
        exact = gelu_reference(gate.to(torch.float64), approximate) * up.to(torch.float64)
        result = gelu_ext.geglu(gate, up, approximate)
        below, above = exact.to(dtype), exact.to(dtype)  # the exact value's two neighbours in the 16-bit type
        below = torch.where(below.double() > exact, torch.nextafter(below, torch.full_like(below, -torch.inf)), below)
        above = torch.where(above.double() < exact, torch.nextafter(above, torch.full_like(above, torch.inf)), above)
        faithful = (ulps_apart(result, below) == 0) | (ulps_apart(result, above) == 0)
        assert bool(faithful.all()), (gate[~faithful][:4], result[~faithful][:4], exact[~faithful][:4])


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_float32_grad_gate_is_finite_where_grad_times_up_overflows(approximate):
    """grad_gate = grad * up * gelu'(gate) with grad * up beyond float's range (2^200 here) and a gelu'(gate) that
    brings it back (gelu'(-12) = -2^-100.3): grad * up formed first made it inf. Within 16 float32 ulp of the exact
    value where that is finite (away from gelu''s zero at -0.7525), infinite with its sign where not. The gates stop
    where float32's gelu' leaves float's normal range (-13, tanh mode -9.5), the float path's own limit."""
    gate = torch.linspace(-13.0 if approximate == "none" else -9.5, 6.0, 20001, dtype=torch.float32)
    gate = gate[(gate + 0.7525).abs() > 0.01]
    for grad_value, up_value in ((2.0**100, 2.0**100), (-1.5 * 2.0**100, 1.25 * 2.0**90), (3e38, -1024.0)):
        grad, up = torch.full_like(gate, grad_value), torch.full_like(gate, up_value)
        grad_gate, _ = torch.ops.gelu_ext.geglu_backward(grad, gate, up, approximate=approximate)
        derivative = gelu_derivative(gate.double(), approximate)
        exact = grad.double() * up.double() * derivative
        finite = exact.abs() < torch.finfo(torch.float32).max
        assert finite.sum() > 500 and (~finite).sum() > 500
        relative = ((grad_gate[finite].double() - exact[finite]) / exact[finite]).abs()
        assert float(relative.max()) < 16 * 2.0**-24, (grad_value, float(gate[finite][relative.argmax()]))
        assert torch.equal(grad_gate[~finite].abs(), torch.full_like(grad_gate[~finite], torch.inf))
        assert torch.equal(torch.signbit(grad_gate[~finite]), torch.signbit(exact[~finite]))


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_every_cpu_instruction_set_gives_the_same_bits(approximate):
    gate, up = make_pair((50, 999), "chunked", torch.float32, "cpu")
    grad = torch.randn(50, 999)
    results = []
    for isa in available_cpu_capabilities():
        with cpu_capability(isa):
            results.append((gelu_ext.geglu(gate, up, approximate),
                            *torch.ops.gelu_ext.geglu_backward(grad, gate, up, approximate)))  # fmt: skip
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_chunked_halves_are_read_in_place_and_autograd_reaches_the_source(device, approximate):
    x = torch.randn(6, 2 * 17, device=device, requires_grad=True)
    value, gate = x.chunk(2, dim=-1)
    assert not gate.is_contiguous()
    y = gelu_ext.geglu(gate, value, approximate)
    grad = torch.randn_like(y)
    y.backward(grad)
    x2 = x.detach().clone().requires_grad_()
    v2, g2 = x2.chunk(2, dim=-1)
    (F.gelu(g2, approximate=approximate) * v2).backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_gradcheck_and_gradgradcheck(device, approximate):
    def make(*shape):
        return (torch.randn(*shape, dtype=torch.float64, device=device) * 2).requires_grad_()

    def fn(g, u):
        return gelu_ext.geglu(g, u, approximate)

    up, gate = make(4, 10).chunk(2, dim=-1)
    for inputs in [(make(3, 2, 5), make(3, 2, 5)), (gate, up), (make(7), make(7))]:
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)

    def backward(grad, g, u):
        return torch.ops.gelu_ext.geglu_backward(grad, g, u, approximate)

    inputs = (make(3, 5), make(3, 5), make(3, 5))
    assert torch.autograd.gradcheck(backward, inputs)
    assert torch.autograd.gradgradcheck(backward, inputs)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_opcheck(device, dtype, approximate):
    up, gate = torch.randn(3, 4, 18, device=device).to(dtype).chunk(2, dim=-1)
    gate.requires_grad_()
    up.requires_grad_()
    torch.library.opcheck(torch.ops.gelu_ext.geglu.default, (gate, up, approximate))
    grad = torch.randn(3, 4, 9, device=device).to(dtype)
    torch.library.opcheck(torch.ops.gelu_ext.geglu_backward.default, (grad, gate.detach(), up.detach(), approximate))


@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    x = torch.randn(8, 32, device=device, requires_grad=True)

    def fn(t):
        value, gate = (t * 3).chunk(2, dim=-1)
        return gelu_ext.geglu(gate, value).sum(0)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, fn(x))
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (expected,) = torch.autograd.grad(fn(x).square().sum(), x)
    torch.testing.assert_close(grad, expected)


def test_errors_name_the_problem():
    gate, up = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"up has shape \[3, 5\] but gate has shape \[3, 4\]"):
        gelu_ext.geglu(gate, torch.randn(3, 5))
    with pytest.raises(ValueError, match="at least one dimension"):
        gelu_ext.geglu(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(ValueError, match='approximate must be "none" or "tanh", got None'):
        gelu_ext.geglu(gate, up, None)
    with pytest.raises(RuntimeError, match="up has dtype Half but gate has dtype Float"):
        gelu_ext.geglu(gate, up.half())
    with pytest.raises(RuntimeError, match=r"gelu_ext.geglu: up has shape \[4, 3\] but gate has shape \[3, 4\]"):
        torch.ops.gelu_ext.geglu(gate, up.t())
    with pytest.raises(RuntimeError, match=r"grad_output has shape \[3\] but gate has shape \[3, 4\]"):
        torch.ops.gelu_ext.geglu_backward(torch.randn(3), gate, up)
    with pytest.raises(RuntimeError, match="gate has dtype Long"):
        torch.ops.gelu_ext.geglu(gate.long(), up.long())
    if "cuda" in devices():
        with pytest.raises(RuntimeError, match="up is on cuda:0 but gate is on cpu"):
            gelu_ext.geglu(gate, up.cuda())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_forward_mode_ad_and_torch_func(device, approximate):
    # forward-mode AD and torch.func transforms of geglu (and, through hessian and forward-over-reverse, of its
    # backward), against F.gelu(gate) * up's.
    gate = torch.randn(3, 4, dtype=torch.float64, device=device) * 2
    up = torch.randn(3, 4, dtype=torch.float64, device=device)
    assert_transforms_match(
        lambda g, u: gelu_ext.geglu(g, u, approximate), lambda g, u: F.gelu(g, approximate=approximate) * u, (gate, up)
    )
