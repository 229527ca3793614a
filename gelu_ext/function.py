"""gelu_ext.GELUFunction: the op as a classic torch.autograd.Function."""

from __future__ import annotations

import torch

from .ops import gelu, gelu_backward


class GELUFunction(torch.autograd.Function):
    """`GELUFunction.apply(x, approximate="none")`.

    Runs the same registered kernels as gelu_ext.gelu. Its backward calls the differentiable gelu_backward op,
    so double backward works too.
    """

    @staticmethod
    def forward(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        return gelu(x, approximate)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, approximate = (*inputs, "none")[:2]  # apply(x) leaves approximate at its default
        ctx.save_for_backward(x)
        ctx.approximate = approximate

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return gelu_backward(grad_output, x, ctx.approximate), None
