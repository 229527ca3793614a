"""The registered ops' Python side: the functional API and the fake (meta) kernels torch.compile traces with.

The schemas, the CPU/CUDA kernels and autograd are in csrc/ (autograd in C++: csrc/gelu_autograd.cpp, for the
per-call cost on small tensors). gelu_backward is an op of its own with its own derivative, so double backward
(and higher) works.
"""

from __future__ import annotations

import torch

_gelu = torch.ops.gelu_ext.gelu.default
_gelu_backward = torch.ops.gelu_ext.gelu_backward.default


APPROXIMATE_MODES = ("none", "tanh")


def check_approximate(approximate) -> None:
    """A clear error for an `approximate` that is not one of the modes (None included, which the dispatcher would
    reject with a bare type-cast message). The ops check the string too, in C++."""
    if not isinstance(approximate, str) or approximate not in APPROXIMATE_MODES:
        raise ValueError(f'approximate must be "none" or "tanh", got {approximate!r}')


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU of `x`: x * Phi(x) (approximate="none") or its tanh approximation (approximate="tanh").

    Same signature and layout of the result as torch.nn.functional.gelu; more accurate (see README).
    """
    if approximate.__class__ is not str:  # the common, valid call pays one identity test
        check_approximate(approximate)
    return _gelu(x, approximate)


def gelu_backward(grad_output: torch.Tensor, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """grad_output * d gelu(x) / dx, like torch.ops.aten.gelu_backward. Differentiable."""
    if approximate.__class__ is not str:
        check_approximate(approximate)
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
