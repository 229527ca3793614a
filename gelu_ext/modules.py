"""gelu_ext's modules: GELU (a drop-in for torch.nn.GELU), LinearGELU (for nn.Sequential(nn.Linear, nn.GELU)) and
GEGLU (the GELU-gated linear unit of T5 v1.1, Gemma and diffusion models)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .fused import bias_gelu, geglu
from .ops import check_approximate, gelu


class _ApproximateModule(nn.Module):
    """What GELU and GEGLU share: the `approximate` argument, checked once, a TorchScript constant, in the repr."""

    __constants__ = ("approximate",)
    approximate: str

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        check_approximate(approximate)
        self.approximate = approximate

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class GELU(_ApproximateModule):
    """Applies GELU elementwise, like torch.nn.GELU, with gelu_ext's kernels.

    Args:
        approximate: "none" for x * Phi(x), "tanh" for the tanh approximation.

    Same constructor, repr and (empty) state_dict as torch.nn.GELU, so it can replace it in existing models and
    load their checkpoints.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return gelu(input, self.approximate)


class LinearGELU(nn.Linear):
    """gelu(x @ weight.T + bias): a drop-in for `nn.Sequential(nn.Linear(...), nn.GELU(approximate))`.

    An nn.Linear (same constructor, parameter names, initialization and state_dict, so nn.Linear checkpoints load)
    whose forward runs the matmul without the bias and then gelu_ext.bias_gelu, which adds the bias and applies GELU in
    one pass (its backward gives the bias gradient from the same pass). Without a bias it is the matmul and
    gelu_ext.gelu.
    """

    __constants__ = ("approximate",)
    approximate: str

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        approximate: str = "none",
        device=None,
        dtype=None,
    ) -> None:
        check_approximate(approximate)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.approximate = approximate

    @classmethod
    def from_linear(cls, linear: nn.Linear, approximate: str = "none") -> LinearGELU:
        """A LinearGELU that shares `linear`'s parameters (no copy): for rebuilding an existing model's MLP blocks."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, approximate=approximate,
                     device="meta")  # fmt: skip
        module.weight = linear.weight
        module.bias = linear.bias
        return module

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = F.linear(input, self.weight)
        if self.bias is None:
            return gelu(y, self.approximate)
        return bias_gelu(y, self.bias, self.approximate)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, approximate={self.approximate!r}"


class GEGLU(_ApproximateModule):
    """`value * gelu(gate)` for `value, gate = input.chunk(2, dim=-1)`: [..., 2H] -> [..., H].

    The order is diffusers' GEGLU (and most GEGLU code): the **first** half of the last dimension is the value, the
    **second** half the gate. The two halves are read in place by gelu_ext.geglu (no copy). This module has no
    projection of its own: put the nn.Linear(d, 2H) in front of it.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return geglu_of_halves(input, self.approximate)


def geglu_of_halves(input: torch.Tensor, approximate: str) -> torch.Tensor:
    """GEGLU's forward: the halves checked, split (views) and handed to gelu_ext.geglu. A function of its own so that
    torch.fx records it as one call (torch.fx.wrap below): its shape check cannot run on a symbolic tensor."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"gelu_ext.GEGLU: the input must be a Tensor, not {type(input).__name__}")
    if not torch.jit.is_tracing() and (input.dim() == 0 or input.shape[-1] % 2 != 0):  # see ops.gelu_backward
        raise ValueError(
            f"gelu_ext.GEGLU: the last dimension must have an even size (value and gate halves), "
            f"got shape {list(input.shape)}"
        )
    halves = input.chunk(2, dim=-1)
    return geglu(halves[1], halves[0], approximate)


torch.fx.wrap("geglu_of_halves")
