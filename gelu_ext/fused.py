"""The fused ops' Python side: bias_gelu (gelu(x + bias)) and geglu (gelu(gate) * up), with their autograd and fake
kernels.

The schemas and kernels are in csrc/ (gelu_ops.cpp, cpu/*_cpu.cpp, cuda/*_cuda.cpp). As for gelu, each backward is
an op of its own with its own registered derivative, so double backward and higher work; every derivative beyond
the first is written in differentiable torch ops and gelu_ext's own gelu/gelu_backward.

What the forward saves: bias_gelu saves x and bias, not the sum x + bias. Either is one tensor of x's size, so memory
is the same; but saving the sum would make the forward write it as a second output (8 -> 12 bytes per float32
element), while the backward kernel recomputes it for one add per element from the x it reads anyway, rounded
exactly as in the forward, so the derivative is taken at the same point.
"""

from __future__ import annotations

import math

import torch

from .ops import (
    _MODES,
    _is_tracing,
    _Tensor,
    apply_op,
    call_backward_op,
    check_approximate,
    check_same_device,
    gelu,
    gelu_backward,
    gelu_second_derivative,
    handle_torch_function,
    onnx_gelu,
    op_functions,
    overridden,
    register_elementwise_vmap,
    register_onnx_symbolic,
    register_script_builtins,
)

_bias_gelu = torch.ops.gelu_ext.bias_gelu.default
_bias_gelu_backward = torch.ops.gelu_ext.bias_gelu_backward.default
_geglu = torch.ops.gelu_ext.geglu.default
_geglu_backward = torch.ops.gelu_ext.geglu_backward.default


def _check_bias(x: torch.Tensor, bias: torch.Tensor, op: str) -> None:
    if x.dim() == 0:
        raise ValueError(f"gelu_ext.{op}: x must have at least one dimension (bias is added along the last one)")
    if bias.dim() != 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(
            f"gelu_ext.{op}: bias has shape {list(bias.shape)} but x has shape {list(x.shape)}: "
            f"bias must have shape [{x.shape[-1]}]"
        )


def _check_same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str, op: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"gelu_ext.{op}: {a_name} has shape {list(a.shape)} but {b_name} has shape {list(b.shape)}")


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x + bias) in one pass, bias of shape [x.shape[-1]] (the epilogue of a linear layer). Under autocast a
    bias of another dtype is cast to x's, as autocast casts nn.Linear's; otherwise the dtypes must match.

    The sum is rounded once to float32 (float64 for float64 inputs) and never to a half type; the result is
    contiguous. Backward returns grad_x and grad_bias (grad_x summed over all leading dimensions, in the same pass).
    """
    if (x.__class__ is not _Tensor or bias.__class__ is not _Tensor) and overridden(
        "bias_gelu", ("x", "bias"), x, bias
    ):
        return handle_torch_function(bias_gelu, (x, bias), x, bias, approximate)
    if approximate.__class__ is not str or approximate not in _MODES:
        check_approximate(approximate)
    if bias.dtype is not x.dtype and torch.is_autocast_enabled(x.device.type):
        bias = bias.to(x.dtype)  # autocast ran the matmul in a lower precision: the bias follows, as in nn.Linear
    if not _is_tracing():  # shape checks: see ops.gelu_backward
        _check_bias(x, bias, "bias_gelu")
    return apply_op(BIAS_GELU_FUNCTIONS, _bias_gelu, (x, bias), x, bias, approximate)


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(gate) * up in one pass (the GELU-gated linear unit), rounded once; the result is contiguous.

    gate and up may be the two halves of one tensor's `chunk(2, dim=-1)`: they are read in place, no copy.
    """
    if (gate.__class__ is not _Tensor or up.__class__ is not _Tensor) and overridden("geglu", ("gate", "up"), gate, up):
        return handle_torch_function(geglu, (gate, up), gate, up, approximate)
    if approximate.__class__ is not str or approximate not in _MODES:
        check_approximate(approximate)
    if not _is_tracing():  # shape checks: see ops.gelu_backward
        if gate.dim() == 0:
            raise ValueError("gelu_ext.geglu: gate and up must have at least one dimension")
        _check_same_shape(up, "up", gate, "gate", "geglu")
    return apply_op(GEGLU_FUNCTIONS, _geglu, (gate, up), gate, up, approximate)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' arithmetic type: float32 for float32 and the half types, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sum_rows(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the last (torch.sum(dim=()) would sum over all of them for a 1-d t)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1]).sum(0)


# ---- autograd: bias_gelu -------------------------------------------------------------------------------------------


def _bias_gelu_setup_context(ctx, inputs, output):
    x, bias, ctx.approximate = inputs
    ctx.save_for_backward(x, bias)


def _bias_gelu_grad(ctx, grad):
    x, bias = ctx.saved_tensors
    grad_x, grad_bias = call_backward_op(_bias_gelu_backward, grad, x, bias, ctx.approximate)
    return grad_x, grad_bias, None


def _bias_gelu_backward_setup_context(ctx, inputs, output):
    grad, x, bias, ctx.approximate = inputs
    ctx.save_for_backward(grad, x, bias)


def _bias_gelu_second_order(grad, direction, x, bias, approximate):
    """grad * direction * gelu''(h) in the compute dtype, h = x + bias rounded as the kernels round it: the term of
    grad * gelu'(h) that moves with h, for the double backward (direction: the upstream cotangent) and the jvp of the
    backward (direction: h's tangent). `direction` is already in the compute dtype."""
    compute = compute_dtype(x.dtype)
    h = x.to(compute) + bias.to(compute)
    return grad.to(compute) * direction * gelu_second_derivative(h, approximate)


def _bias_gelu_backward_grad(ctx, grad_grad_x, grad_grad_bias):
    # grad_x = grad * gelu'(h) with h = x + bias, grad_bias = grad_x summed over rows: both outputs pull back through
    # grad_x, so the cotangent of grad_x is grad_grad_x + grad_grad_bias (broadcast along the rows).
    grad, x, bias = ctx.saved_tensors
    upstream = grad_grad_x + grad_grad_bias
    wrt_grad = wrt_x = wrt_bias = None
    if ctx.needs_input_grad[0]:
        wrt_grad = call_backward_op(_bias_gelu_backward, upstream, x, bias, ctx.approximate)[0]
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        upstream = upstream.to(compute_dtype(x.dtype))
        wrt_h = _bias_gelu_second_order(grad, upstream, x, bias, ctx.approximate)
        if ctx.needs_input_grad[1]:
            wrt_x = wrt_h.to(x.dtype)
        if ctx.needs_input_grad[2]:
            wrt_bias = _sum_rows(wrt_h).to(bias.dtype)
    return wrt_grad, wrt_x, wrt_bias, None


def _bias_gelu_jvp(ctx, x_tangent, bias_tangent, *_):
    # d/dt gelu(x + bias) = gelu'(x + bias) (x' + bias'): the backward kernel with the tangent as its grad
    x, bias = ctx.saved_tensors
    tangent = x_tangent if x_tangent is not None else torch.zeros_like(x)
    if bias_tangent is not None:
        tangent = tangent + bias_tangent
    return call_backward_op(_bias_gelu_backward, tangent, x, bias, ctx.approximate)[0]


def _bias_gelu_backward_jvp(ctx, grad_tangent, x_tangent, bias_tangent, *_):
    # d/dt [grad gelu'(h)] = grad' gelu'(h) + grad gelu''(h) h', h = x + bias; grad_bias's tangent is its row sum.
    grad, x, bias = ctx.saved_tensors
    compute = compute_dtype(x.dtype)
    grad_x_t = grad_bias_t = None
    if grad_tangent is not None:
        grad_x_t, grad_bias_t = call_backward_op(_bias_gelu_backward, grad_tangent, x, bias, ctx.approximate)
    if x_tangent is not None or bias_tangent is not None:
        h_t = torch.zeros_like(x, dtype=compute)
        if x_tangent is not None:
            h_t = h_t + x_tangent.to(compute)
        if bias_tangent is not None:
            h_t = h_t + bias_tangent.to(compute)
        second = _bias_gelu_second_order(grad, h_t, x, bias, ctx.approximate)
        second_x, second_bias = second.to(x.dtype), _sum_rows(second).to(bias.dtype)
        grad_x_t = second_x if grad_x_t is None else grad_x_t + second_x
        grad_bias_t = second_bias if grad_bias_t is None else grad_bias_t + second_bias
    return grad_x_t, grad_bias_t


torch.library.register_autograd("gelu_ext::bias_gelu", _bias_gelu_grad, setup_context=_bias_gelu_setup_context)
torch.library.register_autograd(
    "gelu_ext::bias_gelu_backward", _bias_gelu_backward_grad, setup_context=_bias_gelu_backward_setup_context
)


def _bias_gelu_composite(x, bias, approximate):
    return torch.nn.functional.gelu(x + bias, approximate=approximate)


def _bias_gelu_backward_composite(grad, x, bias, approximate):
    grad_x = gelu_backward(grad, x + bias, approximate)  # the aten composite too, under an ONNX export
    return grad_x, _sum_rows(grad_x)


# What gelu_ext.bias_gelu records (ops.op_functions: forward-mode AD and torch.func too).
BIAS_GELU_FUNCTIONS = op_functions(
    "BiasGeluFunction", _bias_gelu, 2, _bias_gelu_setup_context, _bias_gelu_grad, _bias_gelu_jvp, _bias_gelu_composite
)
BIAS_GELU_BACKWARD_FUNCTIONS = op_functions(
    "BiasGeluBackwardFunction",
    _bias_gelu_backward,
    3,
    _bias_gelu_backward_setup_context,
    _bias_gelu_backward_grad,
    _bias_gelu_backward_jvp,
    _bias_gelu_backward_composite,
)


# ---- autograd: geglu -----------------------------------------------------------------------------------------------


def _geglu_setup_context(ctx, inputs, output):
    gate, up, ctx.approximate = inputs
    ctx.save_for_backward(gate, up)


def _geglu_grad(ctx, grad):
    gate, up = ctx.saved_tensors
    grad_gate, grad_up = call_backward_op(_geglu_backward, grad, gate, up, ctx.approximate)
    return grad_gate, grad_up, None


def _geglu_backward_setup_context(ctx, inputs, output):
    grad, gate, up, ctx.approximate = inputs
    ctx.save_for_backward(grad, gate, up)


def _geglu_second_order(factor, gate, approximate):
    """factor * gelu''(gate), in the compute dtype and rounded back to gate's: the term of grad * up * gelu'(gate) that
    moves with gate, for the double backward and the jvp of the backward."""
    compute = compute_dtype(gate.dtype)
    return (factor.to(compute) * gelu_second_derivative(gate.to(compute), approximate)).to(gate.dtype)


def _geglu_backward_grad(ctx, grad_grad_gate, grad_grad_up):
    # grad_gate = grad * up * gelu'(gate), grad_up = grad * gelu(gate).
    grad, gate, up = ctx.saved_tensors
    mode = ctx.approximate
    wrt_grad = wrt_gate = wrt_up = None
    if ctx.needs_input_grad[0]:
        wrt_grad = gelu_backward(grad_grad_gate * up, gate, mode) + grad_grad_up * gelu(gate, mode)
    if ctx.needs_input_grad[1]:
        wrt_gate = _geglu_second_order(grad_grad_gate * grad * up, gate, mode)
        wrt_gate = wrt_gate + gelu_backward(grad_grad_up * grad, gate, mode)
    if ctx.needs_input_grad[2]:
        wrt_up = gelu_backward(grad_grad_gate * grad, gate, mode)
    return wrt_grad, wrt_gate, wrt_up, None


def _geglu_jvp(ctx, gate_tangent, up_tangent, *_):
    # d/dt [gelu(gate) up] = up gelu'(gate) gate' + gelu(gate) up'
    gate, up = ctx.saved_tensors
    result = None
    if gate_tangent is not None:
        result = call_backward_op(_geglu_backward, gate_tangent, gate, up, ctx.approximate)[0]
    if up_tangent is not None:
        wrt_up = geglu(gate, up_tangent, ctx.approximate)
        result = wrt_up if result is None else result + wrt_up
    return result


def _geglu_backward_jvp(ctx, grad_tangent, gate_tangent, up_tangent, *_):
    # grad_gate = grad up gelu'(gate), grad_up = grad gelu(gate), differentiated along (grad', gate', up').
    grad, gate, up = ctx.saved_tensors
    mode = ctx.approximate
    scaled_grad = None  # grad' up + grad up', the factor of gelu'(gate) in grad_gate's tangent
    grad_gate_t = grad_up_t = None
    if grad_tangent is not None:
        scaled_grad = grad_tangent * up
        grad_up_t = geglu(gate, grad_tangent, mode)
    if up_tangent is not None:
        scaled_grad = grad * up_tangent if scaled_grad is None else scaled_grad + grad * up_tangent
    if scaled_grad is not None:
        grad_gate_t = gelu_backward(scaled_grad, gate, mode)
    if gate_tangent is not None:
        second = _geglu_second_order(grad * up * gate_tangent, gate, mode)
        grad_gate_t = second if grad_gate_t is None else grad_gate_t + second
        wrt_gate = gelu_backward(grad * gate_tangent, gate, mode)
        grad_up_t = wrt_gate if grad_up_t is None else grad_up_t + wrt_gate
    return grad_gate_t, grad_up_t


torch.library.register_autograd("gelu_ext::geglu", _geglu_grad, setup_context=_geglu_setup_context)
torch.library.register_autograd(
    "gelu_ext::geglu_backward", _geglu_backward_grad, setup_context=_geglu_backward_setup_context
)


def _geglu_composite(gate, up, approximate):
    return torch.nn.functional.gelu(gate, approximate=approximate) * up


def _geglu_backward_composite(grad, gate, up, approximate):
    return gelu_backward(grad * up, gate, approximate), grad * torch.nn.functional.gelu(gate, approximate=approximate)


# What gelu_ext.geglu records (ops.op_functions: forward-mode AD and torch.func too).
GEGLU_FUNCTIONS = op_functions(
    "GEGLUFunction", _geglu, 2, _geglu_setup_context, _geglu_grad, _geglu_jvp, _geglu_composite
)  # fmt: skip
GEGLU_BACKWARD_FUNCTIONS = op_functions(
    "GEGLUBackwardFunction", _geglu_backward, 3, _geglu_backward_setup_context, _geglu_backward_grad,
    _geglu_backward_jvp, _geglu_backward_composite,
)  # fmt: skip


# ---- fake kernels: the kernels' outputs are contiguous ----------------------------------------------------------


@torch.library.register_fake("gelu_ext::bias_gelu")
def _bias_gelu_fake(x, bias, approximate="none"):
    check_approximate(approximate)
    _check_bias(x, bias, "bias_gelu")
    check_same_device("bias_gelu", x, "x", bias, "bias")
    return x.new_empty(x.shape)


@torch.library.register_fake("gelu_ext::bias_gelu_backward")
def _bias_gelu_backward_fake(grad_output, x, bias, approximate="none"):
    check_approximate(approximate)
    _check_bias(x, bias, "bias_gelu_backward")
    _check_same_shape(grad_output, "grad_output", x, "x", "bias_gelu_backward")
    check_same_device("bias_gelu_backward", x, "x", bias, "bias", grad_output, "grad_output")
    return x.new_empty(x.shape), bias.new_empty(bias.shape)


@torch.library.register_fake("gelu_ext::geglu")
def _geglu_fake(gate, up, approximate="none"):
    check_approximate(approximate)
    _check_same_shape(up, "up", gate, "gate", "geglu")
    check_same_device("geglu", gate, "gate", up, "up")
    return gate.new_empty(gate.shape)


@torch.library.register_fake("gelu_ext::geglu_backward")
def _geglu_backward_fake(grad_output, gate, up, approximate="none"):
    check_approximate(approximate)
    _check_same_shape(up, "up", gate, "gate", "geglu_backward")
    _check_same_shape(grad_output, "grad_output", gate, "gate", "geglu_backward")
    check_same_device("geglu_backward", gate, "gate", up, "up", grad_output, "grad_output")
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


# ---- torch.func.vmap: batching rules (ops.register_elementwise_vmap for the elementwise ones) -----------------------

register_elementwise_vmap("geglu", 2)
register_elementwise_vmap("geglu_backward", 3)


def _batch_in_columns(t, dim, batch_size):
    """[..., C] with its batch at `dim` (None: unbatched, expanded) as [..., B * C]: the batch entries side by side
    in the last dimension, so that a bias per entry is one bias row of B * C columns (a copy where needed)."""
    t = t.movedim(dim, -2) if dim is not None else t.unsqueeze(-2).expand(*t.shape[:-1], batch_size, t.shape[-1])
    return t.reshape(*t.shape[:-2], -1)


def _bias_gelu_vmap(info, in_dims, x, bias, approximate="none"):
    x_dim, bias_dim = in_dims[:2]  # in_dims has the mode's (None) where the mode was passed
    if bias_dim is None:  # one bias for every entry: the batch is more rows
        return _bias_gelu(x.movedim(x_dim, 0), bias, approximate), 0
    out = _bias_gelu(_batch_in_columns(x, x_dim, info.batch_size), _batch_in_columns(bias, bias_dim,
                     info.batch_size), approximate)  # fmt: skip
    return out.unflatten(-1, (info.batch_size, -1)), out.dim() - 1


def _bias_gelu_backward_vmap(info, in_dims, grad, x, bias, approximate="none"):
    # grad_bias sums each entry's own rows: the entries side by side in the columns keep the sums apart
    grad_dim, x_dim, bias_dim = in_dims[:3]
    b = info.batch_size
    grad_x, grad_bias = _bias_gelu_backward(_batch_in_columns(grad, grad_dim, b), _batch_in_columns(x, x_dim, b),
                                            _batch_in_columns(bias, bias_dim, b), approximate)  # fmt: skip
    return (grad_x.unflatten(-1, (b, -1)), grad_bias.unflatten(-1, (b, -1))), (grad_x.dim() - 1, 0)


torch.library.register_vmap("gelu_ext::bias_gelu", _bias_gelu_vmap)
torch.library.register_vmap("gelu_ext::bias_gelu_backward", _bias_gelu_backward_vmap)

register_script_builtins(bias_gelu, geglu)
register_onnx_symbolic("bias_gelu", lambda g, x, bias, approximate: onnx_gelu(g, g.op("Add", x, bias), approximate))
register_onnx_symbolic("geglu", lambda g, gate, up, approximate: g.op("Mul", onnx_gelu(g, gate, approximate), up))
