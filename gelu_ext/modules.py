"""gelu_ext.GELU: a drop-in replacement for torch.nn.GELU."""

from __future__ import annotations

import torch
from torch import nn

from .ops import check_approximate, gelu


class GELU(nn.Module):
    """Applies GELU elementwise, like torch.nn.GELU, with gelu_ext's kernels.

    Args:
        approximate: "none" for x * Phi(x), "tanh" for the tanh approximation.

    Same constructor, repr and (empty) state_dict as torch.nn.GELU, so it can replace it in existing models and
    load their checkpoints.
    """

    __constants__ = ("approximate",)
    approximate: str

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        check_approximate(approximate)
        self.approximate = approximate

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return gelu(input, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
