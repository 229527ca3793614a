"""gelu_ext.gelu and gelu_backward: values, gradients, layouts, dtypes, errors, torch.library integration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gelu_ext
from gelu_ext import _extension
from gelu_ext.reference import gelu_derivative_terms, gelu_reference, gelu_second_derivative
from gelu_ext.testing import (
    APPROXIMATE_MODES,
    DTYPES,
    F_GELU_TOLERANCES,
    assert_bitwise_equal,
    assert_compiled_matches_eager,
    assert_transforms_match,
    assert_within,
    assert_within_one_ulp,
    available_cpu_capabilities,
    cpu_capability,
    devices,
    every_finite_float32,
    reference_tolerance,
    ulps_apart,
)

# Shapes x memory layouts the op must handle. (129, 257) has 33,153 elements: above the CPU kernel's grain of
# 16,384, so several threads' chunks run. channels_last needs 4 dimensions; "broadcast" is an expand() (stride 0).
SHAPES = [(), (0,), (1,), (7,), (1023,), (4097,), (3, 5, 7), (2, 0, 3), (129, 257), (2, 3, 5, 7)]
LAYOUTS = ["contiguous", "transposed", "strided", "channels_last", "broadcast"]
CASES = [
    (shape, layout)
    for shape in SHAPES
    for layout in LAYOUTS
    if (layout != "channels_last" or len(shape) == 4)
    and (layout not in ("transposed", "strided", "broadcast") or shape)
]


def make_input(shape, layout, dtype, device, scale=3.0):
    """A tensor of `shape` (as seen by the op) in the given memory layout, values ~ N(0, scale^2)."""

    def randn(size):
        return (torch.randn(size, dtype=torch.float64, device=device) * scale).to(dtype)

    if layout == "channels_last":
        return randn(shape).contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return randn(tuple(reversed(shape))).permute(tuple(reversed(range(len(shape)))))
    if layout == "strided":
        return randn((*shape[:-1], 2 * shape[-1] + 1))[..., 1::2]  # every other element, from an odd offset
    if layout == "broadcast":
        return randn((*shape[:-1], 1)).expand(shape)  # stride 0 along the last dimension
    return randn(shape)


def assert_close_to_reference(actual, x, reference_fn, approximate):
    atol, rtol = reference_tolerance(actual.dtype, x, approximate)
    assert_within(actual, reference_fn(x.to(torch.float64), approximate), atol, rtol)


def assert_derivative_close(dx, grad, x, approximate):
    """dx = grad * gelu'(x), within the dtype's tolerance of grad * (the larger of the derivative's two terms): the
    scale its error is measured against (gelu_ext.testing.derivative_ulp_error), and one rounding for the product."""
    atol, rtol = reference_tolerance(dx.dtype, x, approximate)
    first, second = gelu_derivative_terms(x.to(torch.float64), approximate)
    g = grad.to(torch.float64)
    expected = g * (first + second)
    allowed = atol + 2 * rtol * g.abs() * torch.maximum(first.abs(), second.abs())
    err = (dx.to(torch.float64) - expected).abs()
    ok = (err <= allowed) | (dx.isnan() & expected.isnan())
    assert ok.all(), (
        f"{int((~ok).sum())} of {ok.numel()} off; worst error / allowed: {float((err / allowed).max()):.3g}"
    )


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout"), CASES, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_forward_and_backward_matrix(device, dtype, shape, layout, approximate):
    x = make_input(shape, layout, dtype, device)
    expected_layout = F.gelu(x, approximate=approximate)

    y = gelu_ext.gelu(x, approximate)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.stride() == expected_layout.stride(), "output layout must match F.gelu's"
    assert_close_to_reference(y, x, gelu_reference, approximate)
    # F.gelu's tail (x < -4) is the inaccurate one (1 + erf cancels): compare where it is meaningful.
    moderate = x.to(torch.float64) > -4
    atol, rtol = F_GELU_TOLERANCES[dtype]
    torch.testing.assert_close(y[moderate], expected_layout[moderate], atol=atol, rtol=rtol)

    # grad in another layout than x's: a contiguous grad for a strided x, a transposed one for a contiguous x.
    grad_layout = "transposed" if layout == "contiguous" and len(shape) >= 2 else "contiguous"
    grad = make_input(shape, grad_layout, dtype, device, scale=1.0)
    dx = gelu_ext.gelu_backward(grad, x, approximate)
    assert dx.shape == x.shape and dx.stride() == y.stride()
    assert_derivative_close(dx, grad, x, approximate)
    aten = torch.ops.aten.gelu_backward(grad, x, approximate=approximate)
    torch.testing.assert_close(dx[moderate], aten[moderate], atol=atol, rtol=rtol)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_types_against_the_float32_result_rounded(device, dtype, approximate):
    """float16 and bfloat16 have their own math (math::gelu_erf16, math::gelu_tanh16). In bfloat16 it and the float32
    math rounded are both correctly rounded on every input, so they agree bit for bit; in float16 each rounds a few
    inputs to the other side of a midpoint (tests/test_rounding16.py), so they may differ there by one ulp. The
    backward's random grads make more such midpoints; both faithful, so still at most one ulp apart."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)  # every finite value of the type
    x = bits.view(dtype).to(device)
    x = x[x.isfinite()]
    grad = torch.randn(x.shape, device=device, generator=torch.Generator(device).manual_seed(0)).to(dtype)
    expected = gelu_ext.gelu(x.float(), approximate).to(dtype)
    expected_grad = gelu_ext.gelu_backward(grad.float(), x.float(), approximate).to(dtype)
    y, dx = gelu_ext.gelu(x, approximate), gelu_ext.gelu_backward(grad, x, approximate)
    if dtype == torch.bfloat16:
        assert_bitwise_equal(y, expected)
    else:
        assert 0 < int((ulps_apart(y, expected) != 0).sum()) <= 12  # the 16-bit math runs, and differs rarely
    assert_within_one_ulp(y, expected)
    assert_within_one_ulp(dx, expected_grad)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_special_values(device, dtype, approximate):
    x = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0], dtype=dtype, device=device)
    y = gelu_ext.gelu(x, approximate)
    assert y[0] == math.inf
    assert y[1] == 0.0 and math.copysign(1.0, y[1].item()) == -1.0, "gelu(-inf) is -0.0"
    assert y[2].isnan()
    assert y[3] == 0.0 and y[4] == 0.0
    d = gelu_ext.gelu_backward(torch.ones_like(x), x, approximate)
    assert d[0] == 1.0 and d[1] == 0.0 and d[2].isnan()
    assert d[3] == 0.5 and d[4] == 0.5


@pytest.mark.parametrize("device", devices())
def test_autograd_paths_agree(device):
    x = torch.randn(257, dtype=torch.float64, device=device, requires_grad=True)
    for approximate in APPROXIMATE_MODES:
        grads = []
        for fn in (
            lambda t, mode=approximate: gelu_ext.gelu(t, mode),
            lambda t, mode=approximate: gelu_ext.GELUFunction.apply(t, mode),
            gelu_ext.GELU(approximate),
        ):
            (g,) = torch.autograd.grad(fn(x).sin().sum(), x)
            grads.append(g)
        expected = torch.autograd.grad(F.gelu(x, approximate=approximate).sin().sum(), x)[0]
        for g in grads:
            torch.testing.assert_close(g, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_gradcheck_and_gradgradcheck(device, approximate):
    x = (torch.randn(31, dtype=torch.float64, device=device) * 3).requires_grad_()
    grad = torch.randn(31, dtype=torch.float64, device=device, requires_grad=True)
    for fn in (lambda t: gelu_ext.gelu(t, approximate), lambda t: gelu_ext.GELUFunction.apply(t, approximate)):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))
    assert torch.autograd.gradcheck(lambda g, t: gelu_ext.gelu_backward(g, t, approximate), (grad, x))
    assert torch.autograd.gradgradcheck(lambda g, t: gelu_ext.gelu_backward(g, t, approximate), (grad, x))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_forward_mode_ad_and_torch_func(device, approximate):
    # gelu_ext.gelu and gelu_backward under forward-mode AD, torch.func.{jvp, grad, jacrev, jacfwd, hessian, vmap},
    # against the same transforms of F.gelu and aten.gelu_backward.
    x = torch.randn(3, 5, dtype=torch.float64, device=device) * 3
    grad = torch.randn(3, 5, dtype=torch.float64, device=device)
    assert_transforms_match(lambda t: gelu_ext.gelu(t, approximate), lambda t: F.gelu(t, approximate=approximate), (x,))
    assert_transforms_match(
        lambda g, t: gelu_ext.gelu_backward(g, t, approximate),
        lambda g, t: torch.ops.aten.gelu_backward(g, t, approximate=approximate),
        (grad, x),
    )


def test_forward_mode_ad_through_the_public_function_class_is_an_error_not_a_zero():
    # GELUFunction is the compile-friendly class without a jvp: PyTorch says so instead of dropping the tangent.
    x = torch.randn(4, dtype=torch.float64)
    with torch.autograd.forward_ad.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
        gelu_ext.GELUFunction.apply(torch.autograd.forward_ad.make_dual(x, torch.ones_like(x)), "none")


def test_function_class_defaults_to_the_exact_mode():
    x = torch.randn(9, dtype=torch.float64, requires_grad=True)
    y = gelu_ext.GELUFunction.apply(x)
    assert_bitwise_equal(y, gelu_ext.gelu(x.detach()))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert_bitwise_equal(g, gelu_ext.gelu_backward(torch.ones_like(x), x.detach()))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_double_backward_is_the_second_derivative(device, approximate):
    x = torch.cat([torch.randn(200, dtype=torch.float64) * 4, torch.tensor([-30.0, 0.0, 30.0, math.inf, -math.inf])])
    x = x.to(device).requires_grad_()
    (dx,) = torch.autograd.grad(gelu_ext.gelu(x, approximate).sum(), x, create_graph=True)
    (d2x,) = torch.autograd.grad(dx.sum(), x)
    expected = gelu_second_derivative(x.detach(), approximate)
    torch.testing.assert_close(d2x, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_opcheck(device, dtype, approximate):
    x = make_input((3, 11), "transposed", dtype, device).requires_grad_(dtype.is_floating_point)
    grad = torch.randn(x.shape, device=device).to(dtype)
    torch.library.opcheck(torch.ops.gelu_ext.gelu.default, (x, approximate))
    torch.library.opcheck(torch.ops.gelu_ext.gelu_backward.default, (grad, x.detach(), approximate))


@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), gelu_ext.GELU(), torch.nn.Linear(32, 32), gelu_ext.GELU("tanh"), torch.nn.Linear(32, 4)
    ).to(device)
    assert_compiled_matches_eager(model, torch.randn(8, 16, device=device))
    # The autograd.Function (which gelu_ext.gelu records eagerly) compiles too, with its backward.
    x = torch.randn(33, device=device, requires_grad=True)
    fn = torch.compile(lambda t: gelu_ext.GELUFunction.apply(t, "tanh").exp(), fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(fn(x).sum(), x)
    (expected,) = torch.autograd.grad(gelu_ext.gelu(x, "tanh").exp().sum(), x)
    torch.testing.assert_close(grad, expected)


@pytest.mark.slow
def test_torch_compile_inductor_cpu():
    torch._dynamo.reset()
    fn = torch.compile(lambda t: gelu_ext.gelu(t * 2, "none") + 1, fullgraph=True)
    x = torch.randn(100, requires_grad=True)
    y = fn(x)
    torch.testing.assert_close(y, gelu_ext.gelu(x * 2) + 1)
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * gelu_ext.gelu_backward(torch.ones(100), 2 * x.detach()))


def test_module_is_a_drop_in_for_torch_nn_gelu():
    for approximate in APPROXIMATE_MODES:
        ours, theirs = gelu_ext.GELU(approximate), torch.nn.GELU(approximate)
        assert repr(ours) == repr(theirs)
        assert ours.state_dict() == theirs.state_dict() == {}
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    ours = torch.nn.Sequential(torch.nn.Linear(4, 8), gelu_ext.GELU(), torch.nn.Linear(8, 2))
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 4)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=1e-5)
    assert gelu_ext.GELU().approximate == "none"


def test_bitwise_comparison_sees_the_sign_of_zero_and_accepts_any_nan():
    assert_bitwise_equal(torch.tensor([0.0, math.nan, -1.5]), torch.tensor([0.0, -math.nan, -1.5]))
    with pytest.raises(AssertionError, match="differ in their bits"):
        assert_bitwise_equal(torch.tensor([-0.0, 1.0]), torch.tensor([0.0, 1.0]))  # planted: a sign-of-zero flip


@pytest.mark.skipif(len(available_cpu_capabilities()) < 2, reason="this CPU runs only the baseline code path")
def test_cpu_instruction_sets_are_bit_identical():
    # ~1M values over every binade of both signs, the special values, and odd lengths (vector tails).
    specials = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, -30.0, -14.0, -9.9, 1e-30, -1e-30, 5e-39])
    x = torch.cat([every_finite_float32(stride=4099, offset=5), torch.randn(4099) * 4, specials])
    grad = torch.randn(x.shape)
    results = {}
    for isa in available_cpu_capabilities():
        with cpu_capability(isa):
            results[isa] = [gelu_ext.gelu(x, m) for m in APPROXIMATE_MODES]
            results[isa] += [gelu_ext.gelu_backward(grad, x, m) for m in APPROXIMATE_MODES]
            for dtype in (torch.float16, torch.bfloat16):
                # every op and loop form on 16-bit storage (float16 is staged through float buffers with F16C
                # in the AVX2 and AVX-512 variants): flat, rows with a column sum, and two outputs
                x16, grad16, up16 = x.to(dtype), grad.to(dtype), grad.flip(0).to(dtype)
                rows, bias = x16[: 257 * 129].view(257, 129), grad16[:129]
                for m in APPROXIMATE_MODES:
                    results[isa] += [gelu_ext.gelu(x16, m), gelu_ext.gelu_backward(grad16, x16, m)]
                    results[isa] += [
                        torch.ops.gelu_ext.bias_gelu(rows, bias, m),
                        torch.ops.gelu_ext.geglu(x16, up16, m),
                    ]
                    results[isa] += torch.ops.gelu_ext.bias_gelu_backward(rows.flip(0), rows, bias, m)
                    results[isa] += torch.ops.gelu_ext.geglu_backward(grad16, x16, up16, m)
    best = _extension._C.cpu_capability()
    for outputs in results.values():
        for a, b in zip(outputs, results[best], strict=True):
            assert_bitwise_equal(a, b)
    with pytest.raises(ValueError, match="unknown CPU capability"):
        _extension._C.set_cpu_capability("sse9")


# ----------------------------------------------------------------------------------------------------------------
# Errors: a clear message naming the problem. The kernels raise RuntimeError for everything (the stable ABI carries
# only standard exceptions, translated differently by different torch releases), as F.gelu does for a dtype; the
# Python API raises ValueError for a bad mode or shape before the kernel runs.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64], ids=str)
def test_unsupported_dtype_is_named(dtype):
    x = torch.ones(4, dtype=dtype)
    with pytest.raises(RuntimeError, match=r"x has dtype .*but only float32, float64, float16 and bfloat16"):
        gelu_ext.gelu(x)
    with pytest.raises(RuntimeError, match="grad_output has dtype"):
        gelu_ext.gelu_backward(x, torch.ones(4))


def test_float8_is_rejected():
    x = torch.ones(4).to(torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match="Float8_e4m3fn"):
        gelu_ext.gelu(x)


@pytest.mark.parametrize("bad", ["fast", "Tanh", ""])
def test_unknown_approximate_lists_the_modes(bad):
    x = torch.ones(3)
    with pytest.raises(ValueError, match=r'approximate must be "none" or "tanh"'):
        gelu_ext.gelu(x, bad)
    with pytest.raises(ValueError, match=r'approximate must be "none" or "tanh"'):
        gelu_ext.gelu_backward(x, x, bad)
    with pytest.raises(ValueError, match=r'approximate must be "none" or "tanh"'):
        gelu_ext.GELU(bad)


@pytest.mark.parametrize("bad", [None, 0, b"none"])
def test_non_string_approximate_is_named_at_the_python_api(bad):
    x = torch.ones(3)
    for call in (
        lambda: gelu_ext.gelu(x, bad),
        lambda: gelu_ext.gelu_backward(x, x, bad),
        lambda: gelu_ext.GELU(bad),
        lambda: gelu_ext.GELUFunction.apply(x, bad),
    ):
        with pytest.raises(ValueError, match=r'approximate must be "none" or "tanh", got'):
            call()


def test_the_op_itself_names_a_bad_mode_with_a_runtime_error_on_every_torch():
    with pytest.raises(RuntimeError, match=r'gelu_ext.gelu: approximate must be "none" or "tanh", got "fast"'):
        torch.ops.gelu_ext.gelu(torch.ones(3), "fast")
    with pytest.raises(RuntimeError, match=r"grad_output has shape \[3\] but x has shape \[4\]"):
        torch.ops.gelu_ext.gelu_backward(torch.ones(3), torch.ones(4))


def test_backward_argument_mismatches():
    with pytest.raises(ValueError, match=r"grad_output has shape \[3\] but x has shape \[4\]"):
        gelu_ext.gelu_backward(torch.ones(3), torch.ones(4))
    with pytest.raises(RuntimeError, match="grad_output has dtype Double but x has dtype Float"):
        gelu_ext.gelu_backward(torch.ones(3, dtype=torch.float64), torch.ones(3))


# ----------------------------------------------------------------------------------------------------------------
# Property test: random shapes, strides and values, extremes included.
# ----------------------------------------------------------------------------------------------------------------
finite_or_special = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.floats(min_value=-20, max_value=20, width=32),
    st.sampled_from([0.0, -0.0, -0.7518, 1e-38, -1e-45, 3.4e38, -3.4e38]),
)


@pytest.mark.parametrize("device", devices())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(finite_or_special, min_size=1, max_size=300),
    step=st.integers(1, 3),
    offset=st.integers(0, 2),
    dtype=st.sampled_from(DTYPES),
    approximate=st.sampled_from(APPROXIMATE_MODES),
    as_matrix=st.booleans(),
)
def test_property_random_strides_and_values(device, values, step, offset, dtype, approximate, as_matrix):
    base = torch.tensor(values, dtype=torch.float64).to(dtype).to(device)
    x = base[offset::step] if offset < len(values) else base[:1]
    if as_matrix and x.numel() % 2 == 0 and x.numel() > 0:
        x = x.view(2, -1).t()
    y = gelu_ext.gelu(x, approximate)
    assert y.shape == x.shape
    expected = gelu_reference(x.to(torch.float64), approximate)
    atol, rtol = reference_tolerance(dtype, x, approximate)
    assert_within(y, expected.to(dtype).to(torch.float64), atol, rtol)
    ones = torch.ones_like(x)
    assert_derivative_close(gelu_ext.gelu_backward(ones, x, approximate), ones, x, approximate)
