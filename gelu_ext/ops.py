"""The registered ops' Python side: fake (meta) kernels for torch.compile, and autograd.

The schemas and the CPU/CUDA kernels are in csrc/. gelu_backward is an op of its own with its own autograd
formula, so double backward (and higher) works.
"""

from __future__ import annotations

import torch

from .reference import gelu_second_derivative

_gelu = torch.ops.gelu_ext.gelu.default
_gelu_backward = torch.ops.gelu_ext.gelu_backward.default


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU of `x`: x * Phi(x) (approximate="none") or its tanh approximation (approximate="tanh").

    Same signature and layout of the result as torch.nn.functional.gelu; more accurate (see README).
    """
    return _gelu(x, approximate)


def gelu_backward(grad_output: torch.Tensor, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """grad_output * d gelu(x) / dx, like torch.ops.aten.gelu_backward. Differentiable."""
    return _gelu_backward(grad_output, x, approximate)


@torch.library.register_fake("gelu_ext::gelu")
def _gelu_fake(x, approximate="none"):
    return _empty_output_like(x)


@torch.library.register_fake("gelu_ext::gelu_backward")
def _gelu_backward_fake(grad_output, x, approximate="none"):
    torch._check(grad_output.shape == x.shape, lambda: "gelu_ext.gelu_backward: grad_output and x differ in shape")
    return _empty_output_like(x)


def _empty_output_like(x):
    # Mirrors empty_output_like in csrc/gelu_op_common.h (TensorIterator's output layout).
    if x.numel() == 0:
        return x.new_empty(x.shape)
    return x.new_empty_strided(x.shape, torch._prims_common.compute_elementwise_output_strides(x))


def _setup_gelu(ctx, inputs, output):
    x, approximate = inputs
    ctx.save_for_backward(x)
    ctx.approximate = approximate


def _gelu_autograd(ctx, grad):
    (x,) = ctx.saved_tensors
    return _gelu_backward(grad, x, ctx.approximate), None


def _setup_gelu_backward(ctx, inputs, output):
    grad_output, x, approximate = inputs
    ctx.save_for_backward(grad_output, x)
    ctx.approximate = approximate


def _gelu_backward_autograd(ctx, grad):
    grad_output, x = ctx.saved_tensors
    grad_grad_output = grad_x = None
    if ctx.needs_input_grad[0]:
        grad_grad_output = _gelu_backward(grad, x, ctx.approximate)
    if ctx.needs_input_grad[1]:
        grad_x = grad * grad_output * gelu_second_derivative(x, ctx.approximate)
    return grad_grad_output, grad_x, None


torch.library.register_autograd("gelu_ext::gelu", _gelu_autograd, setup_context=_setup_gelu)
torch.library.register_autograd("gelu_ext::gelu_backward", _gelu_backward_autograd, setup_context=_setup_gelu_backward)
