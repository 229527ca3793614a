"""DTensor sharding strategies for gelu_ext's ops, so that tensor-parallel models (torch.distributed.tensor) can use
them: gelu, gelu_backward, bias_gelu, bias_gelu_backward, geglu, geglu_backward.

They follow the strategies DTensor gives the aten ops these ops fuse (aten.gelu, add, mul, gelu_backward):
- Every output keeps the Shard(d) or Replicate placement of its elementwise operands, and is sharded only along
  dims that an operand is sharded along already.
- A Partial operand that the result depends on non-linearly (x, gate, bias) is reduced first, as for aten.gelu.
  Where an op is linear in an operand (grad_output in every backward, up in geglu) a Partial of that operand with the
  others replicated gives a Partial result, as for aten.mul: no collective is needed.
- bias_gelu's bias broadcasts along the rows: x Shard(last dim) pairs with bias Shard(0), x Shard(any other dim)
  with bias Replicate. In the backward, grad_bias of row-sharded x is a Partial sum (each rank sums its own rows; the
  op runs no all-reduce).
- Operands whose placements match no strategy are redistributed to the cheapest one that matches, as DTensor does
  for the aten ops (x Shard(1) with bias Replicate takes bias's local slice; gate Shard(0) with up Shard(1)
  reshards one of them). A model therefore runs wherever the same model with nn.GELU, x + bias or gelu(gate) * up
  runs, and ends with the same placements (tests/test_dtensor.py compares them; one difference: for bias_gelu with
  a Partial("avg") operand, aten.add keeps the Partial and the composite reduces after the add, where bias_gelu
  reduces first). Operands DTensor cannot combine at all (a DTensor with a plain tensor, two meshes) get DTensor's
  error, which names the op.

Registration is lazy: importing torch.distributed.tensor takes ~0.7 s, more than ten times gelu_ext's own import,
so `import gelu_ext` does not import it. It registers the strategies at once if torch.distributed.tensor is already
imported, and otherwise as soon as it is: no DTensor can exist before then. Where torch.distributed is not built in,
nothing is registered and nothing is imported.
"""

from __future__ import annotations

import threading

import torch

from ._import_hooks import run_after_import, warn_on_failure

DTENSOR_MODULE = "torch.distributed.tensor"

_ops = torch.ops.gelu_ext
_registered = False
_registration_lock = threading.Lock()


def _placements():
    # Imported here, not at module level: this module is imported by `import gelu_ext`, before DTensor is loaded.
    from torch.distributed.tensor import Partial, Replicate, Shard

    return Partial, Replicate, Shard


def _linear_partials():
    """The Partial reductions that commute with a function linear in the partial operand."""
    Partial, _, _ = _placements()
    return (Partial("sum"), Partial("avg"))


def _sharded_dims(ndim, *operands):
    """The dims of the ndim-dim output along which some operand is sharded (operands align with the output at the
    right, as they broadcast: bias's dim 0 is the last). Like DTensor's strategies for aten's pointwise ops, the output
    is sharded only along these: a Partial or replicated input is reduced or kept whole, never split anew (which would
    give gelu of a Partial a Shard output where aten.gelu's is Replicate)."""
    _, _, Shard = _placements()
    dims = set()
    for spec in operands:
        for placement in spec.placements:
            if isinstance(placement, Shard):
                dims.add(placement.dim % spec.ndim + ndim - spec.ndim)
    return sorted(dims)


# Each strategy function takes the op's arguments (tensors as DTensorSpec) and returns DTensor's
# register_sharding list: (output placements, input placements), one entry per argument, None for the mode string.
# DTensor expands these one-mesh-dim strategies to every dim of the mesh and picks the one that is cheapest to
# redistribute the operands to.


def gelu_strategy(x, approximate="none"):
    _, Replicate, Shard = _placements()
    strategies = [([Replicate()], [Replicate(), None])]
    strategies += [([Shard(d)], [Shard(d), None]) for d in _sharded_dims(x.ndim, x)]
    return strategies


def gelu_backward_strategy(grad_output, x, approximate="none"):
    # grad_output * gelu'(x): elementwise, and linear in grad_output.
    _, Replicate, Shard = _placements()
    strategies = [([Replicate()], [Replicate(), Replicate(), None])]
    strategies += [([Shard(d)], [Shard(d), Shard(d), None]) for d in _sharded_dims(x.ndim, grad_output, x)]
    strategies += [([p], [p, Replicate(), None]) for p in _linear_partials()]
    return strategies


def _bias_placement(x_dim, ndim):
    """bias's placement for x sharded along x_dim: bias spans x's last dimension and repeats along the others."""
    _, Replicate, Shard = _placements()
    return Shard(0) if x_dim == ndim - 1 else Replicate()


def bias_gelu_strategy(x, bias, approximate="none"):
    _, Replicate, Shard = _placements()
    strategies = [([Replicate()], [Replicate(), Replicate(), None])]
    strategies += [([Shard(d)], [Shard(d), _bias_placement(d, x.ndim), None]) for d in _sharded_dims(x.ndim, x, bias)]
    return strategies


def bias_gelu_backward_strategy(grad_output, x, bias, approximate="none"):
    # (grad_x, grad_bias) = (grad_output * gelu'(x + bias), grad_x summed over the rows): linear in grad_output.
    Partial, Replicate, Shard = _placements()
    last = x.ndim - 1
    strategies = [([Replicate(), Replicate()], [Replicate(), Replicate(), Replicate(), None])]
    for d in _sharded_dims(x.ndim, grad_output, x, bias):
        bias_placement = _bias_placement(d, x.ndim)
        # Row-sharded: each rank's grad_bias is the sum over its own rows, a Partial sum of the whole.
        grad_bias_placement = bias_placement if d == last else Partial("sum")
        strategies.append(([Shard(d), grad_bias_placement], [Shard(d), Shard(d), bias_placement, None]))
    strategies += [([p, p], [p, Replicate(), Replicate(), None]) for p in _linear_partials()]
    return strategies


def geglu_strategy(gate, up, approximate="none"):
    # gelu(gate) * up: elementwise, and linear in up.
    _, Replicate, Shard = _placements()
    strategies = [([Replicate()], [Replicate(), Replicate(), None])]
    strategies += [([Shard(d)], [Shard(d), Shard(d), None]) for d in _sharded_dims(gate.ndim, gate, up)]
    strategies += [([p], [Replicate(), p, None]) for p in _linear_partials()]
    return strategies


def geglu_backward_strategy(grad_output, gate, up, approximate="none"):
    # (grad_gate, grad_up) = (grad_output * up * gelu'(gate), grad_output * gelu(gate)): linear in grad_output.
    _, Replicate, Shard = _placements()
    strategies = [([Replicate(), Replicate()], [Replicate(), Replicate(), Replicate(), None])]
    dims = _sharded_dims(gate.ndim, grad_output, gate, up)
    strategies += [([Shard(d), Shard(d)], [Shard(d), Shard(d), Shard(d), None]) for d in dims]
    strategies += [([p, p], [p, Replicate(), Replicate(), None]) for p in _linear_partials()]
    return strategies


def strategies_of_ops() -> dict:
    """Each op's strategy function. Built on registration, not at import: looking the ops up costs time."""
    return {
        _ops.gelu.default: gelu_strategy,
        _ops.gelu_backward.default: gelu_backward_strategy,
        _ops.bias_gelu.default: bias_gelu_strategy,
        _ops.bias_gelu_backward.default: bias_gelu_backward_strategy,
        _ops.geglu.default: geglu_strategy,
        _ops.geglu_backward.default: geglu_backward_strategy,
    }


def register_sharding_strategies() -> None:
    """Registers every op's strategy with DTensor (imports torch.distributed.tensor). Idempotent; `import gelu_ext`
    arranges for it to run when DTensor loads, so users never need to call it."""
    global _registered
    with _registration_lock:
        if _registered:
            return
        from torch.distributed.tensor.experimental import register_sharding

        for op, strategy in strategies_of_ops().items():
            register_sharding(op)(strategy)
        _registered = True


_register_after_import = warn_on_failure(
    "register its DTensor sharding strategies",
    "gelu_ext ops on DTensors will raise DTensor's NotImplementedError",
    register_sharding_strategies,
)


def register_when_dtensor_loads() -> None:
    """What `import gelu_ext` runs: registers now if DTensor is loaded, else when it loads; nothing where
    torch.distributed is not built in."""
    if not torch.distributed.is_available():
        return
    run_after_import(DTENSOR_MODULE, _register_after_import)


register_when_dtensor_loads()
