"""gelu_ext.bias_gelu: gelu(x + bias) and its backward (grad_x, grad_bias) over the shared matrix of devices, dtypes,
shapes and row layouts; gradients to second order; errors; torch.library integration."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

import gelu_ext
from gelu_ext.reference import gelu_derivative_terms, gelu_reference
from gelu_ext.testing import (
    APPROXIMATE_MODES,
    DTYPES,
    F_GELU_TOLERANCES,
    assert_bitwise_equal,
    assert_transforms_match,
    assert_within,
    assert_within_one_ulp,
    available_cpu_capabilities,
    bias_gelu_sum,
    column_sum_error_bound,
    cpu_capability,
    devices,
    reference_tolerance,
)

# Odd last dimensions (1, 7, 1023, 4097: no 16-byte vector fits evenly), empty tensors, zero rows, and (129, 257):
# 33,153 elements, above the CPU kernel's grain, so several threads and row blocks run.
SHAPES = [(1,), (7,), (1023,), (4097,), (3, 5, 7), (0, 7), (4, 0), (2, 0, 3), (129, 257), (2, 3, 1)]
# How x is laid out: contiguous; "row_strided", the first half of a wider tensor's rows (read in place, row stride
# 2H + 1); "transposed" (copied first); "broadcast_rows", one row expand()ed (row stride 0).
LAYOUTS = ["contiguous", "row_strided", "transposed", "broadcast_rows"]
CASES = [(s, lay) for s in SHAPES for lay in LAYOUTS if lay == "contiguous" or len(s) >= 2]


def make_rows_input(shape, layout, dtype, device, scale=3.0):
    def randn(size):
        return (torch.randn(size, dtype=torch.float64, device=device) * scale).to(dtype)

    if layout == "row_strided":
        return randn((*shape[:-1], 2 * shape[-1] + 1))[..., : shape[-1]]
    if layout == "transposed":
        return randn(tuple(reversed(shape))).permute(tuple(reversed(range(len(shape)))))
    if layout == "broadcast_rows":
        return randn((*[1] * (len(shape) - 1), shape[-1])).expand(shape)
    return randn(shape)


def check_forward(y, x, bias, approximate):
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device and y.is_contiguous()
    h = bias_gelu_sum(x, bias)
    atol, rtol = reference_tolerance(y.dtype, h, approximate)
    assert_within(y, gelu_reference(h, approximate), atol, rtol)


def check_backward(grad_x, grad_bias, grad, x, bias, approximate):
    """grad_x within gelu_backward's contract at the same sum; grad_bias within column_sum_error_bound of the float64
    sum over rows of the exact terms."""
    assert grad_x.shape == x.shape and grad_x.is_contiguous() and grad_bias.shape == bias.shape
    h = bias_gelu_sum(x, bias)
    first, second = gelu_derivative_terms(h, approximate)
    g = grad.to(torch.float64)
    terms = g * (first + second)
    scales = g.abs() * torch.maximum(first.abs(), second.abs())
    atol, rtol = reference_tolerance(grad_x.dtype, h, approximate)
    err = (grad_x.to(torch.float64) - terms).abs()
    assert (err <= atol + 2 * rtol * scales).all(), f"grad_x: worst error {float(err.max()):.3g}"
    rows = (math.prod(x.shape[:-1]), x.shape[-1])
    rows_terms, rows_scales = terms.reshape(rows), scales.reshape(rows)
    bound = column_sum_error_bound(rows_terms, rows_scales, grad_bias.dtype, h.reshape(rows), approximate)
    bias_err = (grad_bias.to(torch.float64) - rows_terms.sum(0)).abs()
    assert (bias_err <= bound).all(), f"grad_bias: worst error / bound {float((bias_err / bound).max()):.3g}"


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout"), CASES, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_forward_and_backward_matrix(device, dtype, shape, layout, approximate):
    x = make_rows_input(shape, layout, dtype, device)
    bias = make_rows_input(shape[-1:], "contiguous", dtype, device, scale=1.0)
    y = gelu_ext.bias_gelu(x, bias, approximate)
    check_forward(y, x, bias, approximate)
    if dtype == torch.float32:  # eager rounds x + b to float32 too: same input to GELU, F.gelu's own error budget
        eager = F.gelu(x + bias, approximate=approximate)
        moderate = (x + bias) > -4
        atol, rtol = F_GELU_TOLERANCES[dtype]
        torch.testing.assert_close(y[moderate], eager[moderate], atol=atol, rtol=rtol)

    grad = make_rows_input(shape, "contiguous" if layout != "contiguous" else "row_strided", dtype, device, scale=1.0)
    grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(grad, x, bias, approximate)
    check_backward(grad_x, grad_bias, grad, x, bias, approximate)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_autograd_gives_the_backward_ops_results(device, approximate):
    x = torch.randn(6, 33, device=device, requires_grad=True)
    bias = torch.randn(33, device=device, requires_grad=True)
    grad = torch.randn(6, 33, device=device)
    gelu_ext.bias_gelu(x, bias, approximate).backward(grad)
    grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(grad, x.detach(), bias.detach(), approximate)
    assert torch.equal(x.grad, grad_x) and torch.equal(bias.grad, grad_bias)
    # and the eager composite agrees within float32 rounding
    x2, b2 = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    F.gelu(x2 + b2, approximate=approximate).backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bias.grad, b2.grad, atol=1e-4, rtol=1e-4)


def test_zero_rows_give_a_zero_bias_gradient():
    x = torch.empty(0, 5)
    bias = torch.randn(5)
    grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(torch.empty(0, 5), x, bias)
    assert grad_x.shape == (0, 5) and torch.equal(grad_bias, torch.zeros(5))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_types_are_within_one_ulp_of_the_float32_result_rounded(device, dtype, approximate):
    x = (torch.randn(37, 129, device=device) * 3).to(dtype)
    bias = torch.randn(129, device=device).to(dtype)
    grad = torch.randn(37, 129, device=device).to(dtype)
    # the 16-bit math (math::gelu_erf16, math::gelu_tanh16) against the float32 math rounded once: both faithful
    # (benchmarks/exhaustive_ulp.cpp --pairs), so within one 16-bit ulp of each other
    expected = gelu_ext.bias_gelu(x.float(), bias.float(), approximate).to(dtype)
    assert_within_one_ulp(gelu_ext.bias_gelu(x, bias, approximate), expected)
    grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(grad, x, bias, approximate)
    grad_x32, grad_bias32 = torch.ops.gelu_ext.bias_gelu_backward(grad.float(), x.float(), bias.float(), approximate)
    assert_within_one_ulp(grad_x, grad_x32.to(dtype))
    assert_within_one_ulp(grad_bias, grad_bias32.to(dtype))  # float sums of the float results, rounded once


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_results_do_not_depend_on_the_thread_count_or_instruction_set(approximate):
    x = torch.randn(300, 1031) * 3
    bias = torch.randn(1031)
    grad = torch.randn(300, 1031)
    threads = torch.get_num_threads()
    results = []
    try:
        for n, isa in [(threads, None), (1, None)] + [(threads, isa) for isa in available_cpu_capabilities()]:
            torch.set_num_threads(n)
            with cpu_capability(isa) if isa else contextlib.nullcontext():
                y = gelu_ext.bias_gelu(x, bias, approximate)
                results.append((y, *torch.ops.gelu_ext.bias_gelu_backward(grad, x, bias, approximate)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_gradcheck_and_gradgradcheck(device, approximate):
    def make(*shape):
        return (torch.randn(*shape, dtype=torch.float64, device=device) * 2).requires_grad_()

    x, bias, grad = make(4, 3, 5), make(5), make(4, 3, 5)
    wide = make(4, 11)[:, 2:7]  # a row-strided x, read in place

    def fn(t, b):
        return gelu_ext.bias_gelu(t, b, approximate)

    for inputs in [(x, bias), (wide, bias), (make(5), bias)]:
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)

    def backward(g, t, b):
        return torch.ops.gelu_ext.bias_gelu_backward(g, t, b, approximate)

    assert torch.autograd.gradcheck(backward, (grad, x, bias))
    assert torch.autograd.gradgradcheck(backward, (grad, x, bias))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_opcheck(device, dtype, approximate):
    x = torch.randn(3, 4, 9, device=device).to(dtype).requires_grad_()
    bias = torch.randn(9, device=device).to(dtype).requires_grad_()
    grad = torch.randn(3, 4, 9, device=device).to(dtype)
    torch.library.opcheck(torch.ops.gelu_ext.bias_gelu.default, (x, bias, approximate))
    torch.library.opcheck(torch.ops.gelu_ext.bias_gelu_backward.default, (grad, x.detach(), bias.detach(), approximate))
    strided = torch.randn(5, 20, device=device).to(dtype)[:, 3:12]
    torch.library.opcheck(torch.ops.gelu_ext.bias_gelu.default, (strided, bias.detach(), approximate))


@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    x = torch.randn(8, 24, device=device, requires_grad=True)
    bias = torch.randn(24, device=device, requires_grad=True)

    def fn(t, b):
        return gelu_ext.bias_gelu(t * 2, b, "tanh").sum(0)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(x, bias)
    torch.testing.assert_close(out, fn(x, bias))
    grads = torch.autograd.grad(out.square().sum(), (x, bias))
    expected = torch.autograd.grad(fn(x, bias).square().sum(), (x, bias))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_errors_name_the_problem():
    x, bias = torch.randn(3, 4), torch.randn(4)
    with pytest.raises(ValueError, match=r"bias has shape \[5\] but x has shape \[3, 4\]: bias must have shape \[4\]"):
        gelu_ext.bias_gelu(x, torch.randn(5))
    with pytest.raises(ValueError, match=r"bias has shape \[1, 4\]"):
        gelu_ext.bias_gelu(x, torch.randn(1, 4))
    with pytest.raises(ValueError, match="x must have at least one dimension"):
        gelu_ext.bias_gelu(torch.tensor(1.0), torch.randn(1))
    with pytest.raises(ValueError, match='approximate must be "none" or "tanh", got \'fast\''):
        gelu_ext.bias_gelu(x, bias, "fast")
    with pytest.raises(RuntimeError, match="bias has dtype Double but x has dtype Float"):
        gelu_ext.bias_gelu(x, bias.double())
    with pytest.raises(RuntimeError, match="x has dtype Int"):
        gelu_ext.bias_gelu(x.int(), bias.int())
    # the op itself checks too (RuntimeError from the kernels, on every torch)
    with pytest.raises(RuntimeError, match=r"gelu_ext.bias_gelu: bias has shape \[5\]"):
        torch.ops.gelu_ext.bias_gelu(x, torch.randn(5))
    with pytest.raises(RuntimeError, match=r"grad_output has shape \[3, 5\] but x has shape \[3, 4\]"):
        torch.ops.gelu_ext.bias_gelu_backward(torch.randn(3, 5), x, bias)
    with pytest.raises(RuntimeError, match='approximate must be "none" or "tanh", got "fast"'):
        torch.ops.gelu_ext.bias_gelu(x, bias, "fast")
    if "cuda" in devices():
        with pytest.raises(RuntimeError, match="bias is on cuda:0 but x is on cpu"):
            gelu_ext.bias_gelu(x, bias.cuda())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_forward_mode_ad_and_torch_func(device, approximate):
    # forward-mode AD and torch.func transforms of bias_gelu (and, through hessian and forward-over-reverse, of its
    # backward), against F.gelu(x + bias)'s.
    x = torch.randn(3, 4, dtype=torch.float64, device=device) * 2
    bias = torch.randn(4, dtype=torch.float64, device=device)
    assert_transforms_match(
        lambda t, b: gelu_ext.bias_gelu(t, b, approximate),
        lambda t, b: F.gelu(t + b, approximate=approximate),
        (x, bias),
    )
