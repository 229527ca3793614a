"""The registered ops' Python side: the functional API, the fake (meta) kernels torch.compile traces with, and
autograd.

The schemas and the CPU/CUDA kernels are in csrc/. Autograd is registered here with torch.library.register_autograd:
the LibTorch stable ABI that the compiled libraries use has no C++ autograd. gelu_backward is an op of its own with
its own derivative (gelu'' in differentiable torch ops), so double backward and higher work.

The functional API (gelu_ext.gelu, gelu_backward, bias_gelu, geglu) records autograd through autograd.Functions of
each op instead (op_functions): the same kernels and formulas, plus forward-mode AD and torch.func (grad, vjp, jvp,
jacrev, jacfwd, hessian, vmap), which torch.library's generated autograd cannot serve (it drops forward-mode
tangents, and torch.func rejects it: pytorch/pytorch#170834). Where nothing is to be recorded the kernel is called
below the autograd key. Under torch.compile the ops and their registered autograd are traced as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch._decomp.decompositions import gelu_backward as _aten_gelu_backward_decomposition
from torch.overrides import handle_torch_function, has_torch_function

from ._import_hooks import run_after_import, warn_on_failure

_gelu = torch.ops.gelu_ext.gelu.default
_gelu_backward = torch.ops.gelu_ext.gelu_backward.default
_Tensor = torch.Tensor
_is_grad_enabled = torch.is_grad_enabled
_below_autograd = torch._C._AutoDispatchBelowAutograd
_is_compiling = torch.compiler.is_compiling
_is_tracing = torch.jit.is_tracing  # torch.jit.trace (Dynamo folds it to False)
_forward_ad = torch.autograd.forward_ad
_functorch_active = torch._C._are_functorch_transforms_active
_interpreter_stack = torch._C._functorch.get_interpreter_stack
_VMAP = torch._C._functorch.TransformType.Vmap


def _only_vmap() -> bool:
    """Whether every active torch.func transform is a vmap (no grad, jvp or functionalize level)."""
    return all(interpreter.key() == _VMAP for interpreter in _interpreter_stack())


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


def overridden(function: str, names: tuple[str, ...], *tensors) -> bool:
    """Whether the call goes to a __torch_function__ override instead (torch.fx's symbolic tracing proxies and other
    tensor-likes: the call is then recorded as one call of the public function, as for torch's own functions); a
    TypeError naming the argument for anything that is neither a tensor nor such an object (a list, a NumPy array,
    None, a number). The public functions call this only when an argument is not exactly a torch.Tensor."""
    if has_torch_function(tensors):
        return True
    for name, t in zip(names, tensors, strict=True):
        if not isinstance(t, _Tensor):
            raise TypeError(f"gelu_ext.{function}(): argument '{name}' must be a Tensor, not {type(t).__name__}")
    return False


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU of `x`: x * Phi(x) (approximate="none") or its tanh approximation (approximate="tanh").

    Same signature and layout of the result as torch.nn.functional.gelu; more accurate (see README).
    """
    if x.__class__ is not _Tensor and overridden("gelu", ("x",), x):
        return handle_torch_function(gelu, (x,), x, approximate)
    # The Python API raises ValueError for a bad mode on every torch release (the kernels raise RuntimeError:
    # csrc/gelu_op_common.h). The common, valid call pays one identity test and one set lookup.
    if approximate.__class__ is not str or approximate not in _MODES:
        check_approximate(approximate)
    return apply_op(GELU_FUNCTIONS, _gelu, (x,), x, approximate)


def gelu_backward(grad_output: torch.Tensor, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """grad_output * d gelu(x) / dx, like torch.ops.aten.gelu_backward. Differentiable."""
    if (grad_output.__class__ is not _Tensor or x.__class__ is not _Tensor) and overridden(
        "gelu_backward", ("grad_output", "x"), grad_output, x
    ):
        return handle_torch_function(gelu_backward, (grad_output, x), grad_output, x, approximate)
    if approximate.__class__ is not str or approximate not in _MODES:
        check_approximate(approximate)
    # Shape checks in Python give a ValueError; under torch.jit.trace sizes are traced values that a Python
    # comparison would freeze (with a TracerWarning), so there the kernel checks them (RuntimeError).
    if not _is_tracing() and grad_output.shape != x.shape:
        raise ValueError(
            f"gelu_ext.gelu_backward: grad_output has shape {list(grad_output.shape)} but x has shape {list(x.shape)}"
        )
    return apply_op(GELU_BACKWARD_FUNCTIONS, _gelu_backward, (grad_output, x), grad_output, x, approximate)


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
# `python benchmarks/bench_gelu.py --sizes 12 --modes fwdbwd`. Each formula below serves both the op's registered
# autograd (torch.ops.gelu_ext.*, torch.compile) and its autograd.Function (the functional API).


class OpFunctions(NamedTuple):
    """The two autograd.Functions of one registered op (op_functions), and what an ONNX export records for it."""

    eager: type  # plain autograd: legacy forward(ctx, ...), no per-call signature binding; no jvp
    transforms: type  # forward-mode AD and torch.func: forward / setup_context / jvp, and a generated vmap rule
    # The op in aten ops, as torch.nn.GELU would record it: what ONNX exports hold (README, "Works with")
    composite: Callable


def apply_op(functions, op, tensors, *args):
    """One functional-API call of `op(*args)`:
    - while a graph is captured (torch.compile, torch.export, torch.jit.trace): the op itself, which the graph keeps,
      with its registered autograd and fake kernel; an ONNX export (either exporter) records the composite in aten
      ops instead, so the ONNX file holds what torch.nn.GELU's holds (the standard Gelu op from opset 20 on);
    - through the op's autograd.Function for transforms when a forward-mode AD level is open (its tangents are
      invisible to requires_grad) or a torch.func transform is active;
    - through its eager autograd.Function when a tensor in `tensors` requires grad in grad mode;
    - otherwise the kernel itself, below the autograd key (a no-grad call would only pass through torch.library's
      Python autograd layer, ~3-10 us on CPU).
    torch.jit.script compiles the public functions to the ops themselves (register_script_builtins) and torch.fx
    records them as one call (overridden), so neither reaches this."""
    if _is_compiling() or _is_tracing():
        if _is_in_onnx_export():
            return functions.composite(*args)
        return op(*args)
    if _forward_ad._current_level >= 0 or _functorch_active():
        if _forward_ad._current_level < 0 and _only_vmap():
            # vmap alone: the op's batching rule runs the kernel once over the batch, and any autograd outside the
            # vmap is the op's registered one, below the vmap level (the Function would cost ~0.3 ms per call)
            return op(*args)
        return functions.transforms.apply(*args)
    if _is_grad_enabled():
        for t in tensors:
            if t.requires_grad:
                return functions.eager.apply(*args)
    with _below_autograd():
        return op(*args)


def op_functions(name, op, tensor_inputs, setup_context, backward, jvp, composite) -> OpFunctions:
    """The autograd.Functions of a registered op whose arguments are `tensor_inputs` tensors and the mode:
    `Function.apply(*tensors, approximate)` (the mode positional, or left out for "none"). Both run the kernel below
    the autograd key and use the formulas registered with torch.library for the op (setup_context, backward); the one
    for transforms adds jvp, the forward-mode derivative, jvp(ctx, *tangents) with the op's tensors in
    ctx.saved_tensors. `composite(*args)` is the op in aten ops, for ONNX exports (apply_op). Why two Functions:
    PyTorch calls a Function with setup_context through inspect.signature on every call (~20 us), and Dynamo cannot
    trace one with a jvp; the legacy form has neither cost nor limit, but torch.func rejects it. A bad mode is a
    ValueError, as in the functional API."""

    def with_mode(args):
        return args if len(args) > tensor_inputs else (*args, "none")

    def run(args):
        mode = args[-1]
        if mode.__class__ is not str or mode not in _MODES:
            check_approximate(mode)
        if _is_compiling():
            return op(*args)
        with _below_autograd():
            return op(*args)

    def backward_of_inputs(ctx, *grads):
        result = backward(ctx, *grads)
        return result if ctx.mode_given else result[:tensor_inputs]

    def eager_forward(ctx, *args):
        full = with_mode(args)
        output = run(full)
        ctx.mode_given = len(args) > tensor_inputs
        setup_context(ctx, full, output)
        return output

    def forward(*args):
        return run(with_mode(args))

    def setup(ctx, inputs, output):
        ctx.mode_given = len(inputs) > tensor_inputs
        setup_context(ctx, with_mode(inputs), output)
        ctx.save_for_forward(*inputs[:tensor_inputs])

    common = {"__module__": __name__, "backward": staticmethod(backward_of_inputs)}
    eager = type(name, (torch.autograd.Function,), {**common, "forward": staticmethod(eager_forward)})
    transforms = {**common, "forward": staticmethod(forward), "setup_context": staticmethod(setup)}
    transforms["generate_vmap_rule"] = True  # torch.func.vmap (jacrev, jacfwd, hessian) batch the forward as it is
    transforms["jvp"] = staticmethod(jvp)
    functions = OpFunctions(eager, type(name + "ForTransforms", (torch.autograd.Function,), transforms), composite)
    _FUNCTIONS_OF_OP[op] = functions
    return functions


_FUNCTIONS_OF_OP: dict = {}


def _gelu_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.approximate = inputs[1]


def call_backward_op(op, *args):
    """A derivative formula's kernel call (backward or jvp), dispatched like the functional API (apply_op): with
    create_graph=True, under forward-mode AD (forward-over-reverse) and under torch.func, the op's Function records the
    next derivative; in a plain first-order backward it is the kernel alone (~3 us less per call on 2^12 elements)."""
    return apply_op(_FUNCTIONS_OF_OP[op], op, args[:-1], *args)  # every op: its tensors, then the mode


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
        wrt_grad = call_backward_op(_gelu_backward, grad_grad_x, x, ctx.approximate)
    if ctx.needs_input_grad[1]:
        wrt_x = grad_grad_x * grad * gelu_second_derivative(x, ctx.approximate)
    return wrt_grad, wrt_x, None


torch.library.register_autograd("gelu_ext::gelu", _gelu_grad, setup_context=_gelu_setup_context)
torch.library.register_autograd(
    "gelu_ext::gelu_backward", _gelu_backward_grad, setup_context=_gelu_backward_setup_context
)


def _gelu_jvp(ctx, x_tangent, *_):
    (x,) = ctx.saved_tensors
    return gelu_backward(x_tangent, x, ctx.approximate)


def _gelu_backward_jvp(ctx, grad_tangent, x_tangent, *_):
    # d/dt [grad gelu'(x)] = grad' gelu'(x) + grad gelu''(x) x'
    grad, x = ctx.saved_tensors
    result = None
    if grad_tangent is not None:
        result = gelu_backward(grad_tangent, x, ctx.approximate)
    if x_tangent is not None:
        second = grad * x_tangent * gelu_second_derivative(x, ctx.approximate)
        result = second if result is None else result + second
    return result


def _gelu_composite(x, approximate):
    return torch.nn.functional.gelu(x, approximate=approximate)


def _gelu_backward_composite(grad, x, approximate):
    # aten's own decomposition of gelu_backward, in elementary ops that both ONNX exporters translate
    return _aten_gelu_backward_decomposition(grad, x, approximate=approximate)


# What gelu_ext.gelu and gelu_ext.gelu_backward record. gelu_ext.GELUFunction, `GELUFunction.apply(x, approximate)`,
# is the eager one: torch.compile(fullgraph=True) traces it; for forward-mode AD and torch.func use gelu_ext.gelu.
GELU_FUNCTIONS = op_functions(
    "GELUFunction", _gelu, 1, _gelu_setup_context, _gelu_grad, _gelu_jvp, _gelu_composite
)  # fmt: skip
GELU_BACKWARD_FUNCTIONS = op_functions(
    "GELUBackwardFunction", _gelu_backward, 2, _gelu_backward_setup_context, _gelu_backward_grad, _gelu_backward_jvp,
    _gelu_backward_composite,
)  # fmt: skip
GELUFunction = GELU_FUNCTIONS.eager


# ---- fake kernels --------------------------------------------------------------------------------------------------


@torch.library.register_fake("gelu_ext::gelu")
def _gelu_fake(x, approximate="none"):
    check_approximate(approximate)
    return _empty_output_like(x)


@torch.library.register_fake("gelu_ext::gelu_backward")
def _gelu_backward_fake(grad_output, x, approximate="none"):
    check_approximate(approximate)
    torch._check(grad_output.shape == x.shape, lambda: "gelu_ext.gelu_backward: grad_output and x differ in shape")
    check_same_device("gelu_backward", x, "x", grad_output, "grad_output")
    return _empty_output_like(x)


def check_same_device(op: str, first: torch.Tensor, first_name: str, *others) -> None:
    """Every operand on `first`'s device, as ATen's meta functions check and as the kernels do (csrc/
    gelu_op_common.h). The fake kernels need it: a call that mixes a meta tensor with a real one dispatches to the
    fake kernel, which would otherwise return a real, unwritten tensor. `others`: tensor, name, tensor, name..."""
    for t, name in zip(others[::2], others[1::2], strict=True):
        if t.device != first.device:
            raise RuntimeError(
                f"gelu_ext.{op}: {name} is on {t.device} but {first_name} is on {first.device}: "
                "every operand must be on one device"
            )


def _empty_output_like(x):
    # Mirrors empty_output_like in csrc/gelu_op_common.h (TensorIterator's output layout).
    if x.numel() == 0:
        return x.new_empty(x.shape)
    return x.new_empty_strided(x.shape, torch._prims_common.compute_elementwise_output_strides(x))


# ---- torch.func.vmap: batching rules, so that a batched call is one kernel call ----------------------------------


def batch_first(tensors, in_dims, batch_size: int) -> list[torch.Tensor]:
    """Each of `tensors` with its batch dimension moved to the front; an unbatched one (in_dim None) expanded to the
    batch (stride 0, no copy): the shape every entry shares, with the batch as one more leading dimension."""
    return [
        t.movedim(d, 0) if d is not None else t.expand(batch_size, *t.shape)
        for t, d in zip(tensors, in_dims, strict=True)
    ]


def register_elementwise_vmap(name: str, tensor_inputs: int) -> None:
    """The batching rule of an op whose result is elementwise in its `tensor_inputs` same-shape tensors (gelu,
    gelu_backward, geglu, geglu_backward): the batch is one more leading dimension of every operand, one kernel call.
    Without a rule torch.func.vmap runs the kernels once per batch entry and warns."""
    op = getattr(torch.ops.gelu_ext, name).default

    def rule(info, in_dims, *args):
        tensors = batch_first(args[:tensor_inputs], in_dims[:tensor_inputs], info.batch_size)
        out = op(*tensors, *args[tensor_inputs:])
        return out, (0,) * len(out) if isinstance(out, tuple) else 0

    torch.library.register_vmap(f"gelu_ext::{name}", rule)


register_elementwise_vmap("gelu", 1)
register_elementwise_vmap("gelu_backward", 2)


# ---- torch.jit.script ----------------------------------------------------------------------------------------------


def register_script_builtins(*functions) -> None:
    """torch.jit.script compiles a call of each public function to its op (torch.ops.gelu_ext.<same name>), as it
    compiles torch.nn.functional.gelu to aten::gelu: a scripted model runs the kernels with the op's registered
    autograd, and a saved one loads wherever gelu_ext is imported."""
    for function in functions:
        torch.jit._builtins._register_builtin(function, f"gelu_ext::{function.__name__}")


register_script_builtins(gelu, gelu_backward)


# ---- ONNX: the op itself, where a graph holds it --------------------------------------------------------------------
# The public functions record torch's GELU under an ONNX export (apply_op). A graph that holds the op itself (a
# scripted model, a direct torch.ops.gelu_ext call) goes through the TorchScript-based exporter with these: the same
# ONNX as aten::gelu's at each opset (torch's own translations, Gelu from opset 20, the composite before).


def onnx_gelu(g, x, approximate):
    """aten::gelu's ONNX translation at the export's opset (for the gelu_ext ops' symbolic functions)."""
    from torch.onnx import symbolic_opset9, symbolic_opset20

    return (symbolic_opset20 if g.opset >= 20 else symbolic_opset9).gelu(g, x, approximate)


ONNX_MODULE = "torch.onnx"


def register_onnx_symbolic(name: str, symbolic) -> None:
    """Registers `symbolic` for gelu_ext::name once torch.onnx is imported (no export can run before), so that
    `import gelu_ext` does not import torch.onnx's 26 modules."""

    def register() -> None:
        torch.onnx.register_custom_op_symbolic(f"gelu_ext::{name}", symbolic, 9)  # 9: the oldest opset with Erf

    run_after_import(ONNX_MODULE, warn_on_failure(
        f"register the ONNX symbolic function of gelu_ext::{name}",
        "exporting a graph that holds the op itself (a scripted model) will fail", register))  # fmt: skip


def _not_exporting() -> bool:
    return False


# apply_op's check, until torch.onnx is imported: before that, no export can be running
_is_in_onnx_export = _not_exporting


def _use_onnx_export_check() -> None:
    global _is_in_onnx_export
    _is_in_onnx_export = torch.onnx.is_in_onnx_export


run_after_import(ONNX_MODULE, _use_onnx_export_check)
register_onnx_symbolic("gelu", onnx_gelu)
