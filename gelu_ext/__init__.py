"""gelu_ext: an accurate, fast GELU for PyTorch, and the two fused GELU patterns transformers run.

    >>> import torch, gelu_ext
    >>> gelu_ext.gelu(torch.tensor([-10.0, 0.0, 1.0]))      # functional
    >>> gelu_ext.GELU(approximate="tanh")                     # drop-in for torch.nn.GELU
    >>> gelu_ext.GELUFunction.apply(x, "none")                # torch.autograd.Function
    >>> gelu_ext.bias_gelu(x, bias)                           # gelu(x + bias) in one pass
    >>> gelu_ext.geglu(gate, up)                              # gelu(gate) * up in one pass
    >>> gelu_ext.LinearGELU(768, 3072)                        # nn.Sequential(nn.Linear, nn.GELU), fused epilogue
    >>> gelu_ext.GEGLU()                                      # value * gelu(gate) of x.chunk(2, dim=-1)

Everything runs the C++/CUDA kernels registered as torch.ops.gelu_ext.{gelu, gelu_backward, bias_gelu,
bias_gelu_backward, geglu, geglu_backward}.
"""

from . import _extension  # loads the compiled ops first, with a clear error if the build does not match torch
from . import dtensor_sharding as dtensor_sharding  # DTensor sharding strategies, registered when DTensor loads
from ._version import __version__
from .fused import bias_gelu, geglu  # importing fused and ops also registers the fake kernels and autograd
from .modules import GEGLU, GELU, LinearGELU
from .ops import GELUFunction, gelu, gelu_backward
from .patching import patch_model

build_info = _extension.build_info

__all__ = [
    "GEGLU",
    "GELU",
    "GELUFunction",
    "LinearGELU",
    "__version__",
    "bias_gelu",
    "build_info",
    "geglu",
    "gelu",
    "gelu_backward",
    "patch_model",
]
