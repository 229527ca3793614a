"""The registered ops' Python side: the functional API, the fake (meta) kernels torch.compile traces with, and
autograd.

The schemas and the CPU/CUDA kernels are in csrc/. Autograd is registered here with torch.library.register_autograd:
the LibTorch stable ABI that the compiled libraries use has no C++ autograd. gelu_backward is an op of its own with
its own derivative (gelu'' in differentiable torch ops), so double backward and higher work.
"""

from __future__ import annotations

import torch

_gelu = torch.ops.gelu_ext.gelu.default
_gelu_backward = torch.ops.gelu_ext.gelu_backward.default
_is_grad_enabled = torch.is_grad_enabled
_below_autograd = torch._C._AutoDispatchBelowAutograd
_is_compiling = torch.compiler.is_compiling


APPROXIMATE_MODES = ("none", "tanh")
_MODES = frozenset(APPROXIMATE_MODES)

# The constants of csrc/gelu_math.h's double path, for gelu''.
_INV_SQRT_2PI = 0.39894228040143268  # 1 / sqrt(2 pi)
_TANH_C1 = 1.5957691216057308  # 2 sqrt(2 / pi)
_TANH_C2 = 0.071354816272600250  # 2 sqrt(2 / pi) * 0.044715
_CLAMP = 1.0e4  # |x| beyond this behaves like +-inf: no inf * 0 in gelu''


def check_approximate(approximate) -> None:
    """A clear error for an `approximate` that is not one of the modes (None included, which the dispatcher would
    reject with a bare type-cast message). The ops check the string too, in C++ (RuntimeError)."""
    if not isinstance(approximate, str) or approximate not in APPROXIMATE_MODES:
        raise ValueError(f'approximate must be "none" or "tanh", got {approximate!r}')


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU of `x`: x * Phi(x) (approximate="none") or its tanh approximation (approximate="tanh").

    Same signature and layout of the result as torch.nn.functional.gelu; more accurate (see README).
    """
    # The Python API raises ValueError for a bad mode on every torch release (the kernels raise RuntimeError:
    # csrc/gelu_op_common.h). The common, valid call pays one identity test and one set lookup.
    if approximate.__class__ is not str or approximate not in _MODES:
        check_approximate(approximate)
    if x.requires_grad and _is_grad_enabled() and not _is_compiling():
        return GELUFunction.apply(x, approximate)
    return _gelu(x, approximate)


def gelu_backward(grad_output: torch.Tensor, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """grad_output * d gelu(x) / dx, like torch.ops.aten.gelu_backward. Differentiable."""
    if approximate.__class__ is not str or approximate not in _MODES:
        check_approximate(approximate)
    if grad_output.shape != x.shape:
        raise ValueError(
            f"gelu_ext.gelu_backward: grad_output has shape {list(grad_output.shape)} but x has shape {list(x.shape)}"
        )
    return _gelu_backward(grad_output, x, approximate)


def gelu_second_derivative(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """d^2 gelu / dx^2 in differentiable torch ops, so that every further order is differentiable too.

    Only the double backward uses it (gelu' itself is the gelu_backward kernel); gelu_ext.reference checks it
    against autograd through the float64 reference.
    """
    xc = x.clamp(-_CLAMP, _CLAMP)
    if approximate == "tanh":
        s = xc * (_TANH_C1 + _TANH_C2 * xc * xc)
        sig = torch.sigmoid(s)
        ds = _TANH_C1 + 3.0 * _TANH_C2 * xc * xc
        sig_prime = sig * torch.sigmoid(-s)  # sigmoid(s) (1 - sigmoid(s))
        return sig_prime * (2.0 * ds + xc * ((1.0 - 2.0 * sig) * ds * ds + 6.0 * _TANH_C2 * xc))
    return _INV_SQRT_2PI * torch.exp(-0.5 * xc * xc) * (2.0 - xc * xc)


# ---- autograd ------------------------------------------------------------------------------------------------------
# Kept lean: these run on every training step. The per-call cost on small tensors (README, Speed: "Small tensors") is
# `python benchmarks/bench_gelu.py --sizes 12 --modes fwdbwd`. Most of it is torch.library's own Python autograd
# layer, which replaced the C++ one that the stable ABI cannot express.


def _gelu_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.approximate = inputs[1]


def call_backward_op(op, *args):
    """A first-order backward's kernel call: the op itself when grad mode is on (create_graph=True: its registered
    autograd records the double backward) or under torch.compile (Dynamo cannot trace the guard below); otherwise
    straight to the kernel below the autograd key, because the op's Python autograd kernel would only find nothing to
    record (~3 us per call on 2^12 elements)."""
    if _is_grad_enabled() or _is_compiling():
        return op(*args)
    with _below_autograd():
        return op(*args)


def _gelu_grad(ctx, grad):
    (x,) = ctx.saved_tensors
    return call_backward_op(_gelu_backward, grad, x, ctx.approximate), None


def _gelu_backward_setup_context(ctx, inputs, output):
    grad, x, ctx.approximate = inputs
    ctx.save_for_backward(grad, x)


def _gelu_backward_grad(ctx, grad_grad_x):
    grad, x = ctx.saved_tensors
    wrt_grad = wrt_x = None
    if ctx.needs_input_grad[0]:
        wrt_grad = _gelu_backward(grad_grad_x, x, ctx.approximate)
    if ctx.needs_input_grad[1]:
        wrt_x = grad_grad_x * grad * gelu_second_derivative(x, ctx.approximate)
    return wrt_grad, wrt_x, None


torch.library.register_autograd("gelu_ext::gelu", _gelu_grad, setup_context=_gelu_setup_context)
torch.library.register_autograd(
    "gelu_ext::gelu_backward", _gelu_backward_grad, setup_context=_gelu_backward_setup_context
)


class GELUFunction(torch.autograd.Function):
    """`GELUFunction.apply(x, approximate="none")`: the gelu op as a classic torch.autograd.Function.

    gelu_ext.gelu records its autograd node through this class in eager mode: the same kernels and backward as the
    op's registered autograd, without the Python dispatcher layer torch.library puts around it (its kernel entry,
    fill_defaults and redispatch), which on 2^12 elements is a quarter of a training step's per-call cost. Under
    torch.compile and for torch.ops.gelu_ext.gelu itself, the registered autograd above is what runs.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        if approximate.__class__ is not str or approximate not in _MODES:
            check_approximate(approximate)
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        if _is_compiling():  # Dynamo traces the op (and its registered autograd), not the guard below
            return _gelu(x, approximate)
        # Grad mode is off in forward, so the op's autograd kernel would only redispatch: skip it.
        with _below_autograd():
            return _gelu(x, approximate)

    backward = staticmethod(_gelu_grad)


# ---- fake kernels --------------------------------------------------------------------------------------------------


@torch.library.register_fake("gelu_ext::gelu")
def _gelu_fake(x, approximate="none"):
    check_approximate(approximate)
    return _empty_output_like(x)


@torch.library.register_fake("gelu_ext::gelu_backward")
def _gelu_backward_fake(grad_output, x, approximate="none"):
    check_approximate(approximate)
    torch._check(grad_output.shape == x.shape, lambda: "gelu_ext.gelu_backward: grad_output and x differ in shape")
    return _empty_output_like(x)


def _empty_output_like(x):
    # Mirrors empty_output_like in csrc/gelu_op_common.h (TensorIterator's output layout).
    if x.numel() == 0:
        return x.new_empty(x.shape)
    return x.new_empty_strided(x.shape, torch._prims_common.compute_elementwise_output_strides(x))
