"""gelu_ext: an accurate, fast GELU for PyTorch.

    >>> import torch, gelu_ext
    >>> gelu_ext.gelu(torch.tensor([-10.0, 0.0, 1.0]))      # functional
    >>> gelu_ext.GELU(approximate="tanh")                     # drop-in for torch.nn.GELU
    >>> gelu_ext.GELUFunction.apply(x, "none")                # torch.autograd.Function

All three run the C++/CUDA kernels registered as torch.ops.gelu_ext.gelu and torch.ops.gelu_ext.gelu_backward.
"""

from . import _extension  # loads the compiled ops first, with a clear error if the build does not match torch
from .modules import GELU
from .ops import GELUFunction, gelu, gelu_backward  # importing ops also registers the fake kernels and autograd

__version__ = "0.2.0"

build_info = _extension.build_info

__all__ = ["GELU", "GELUFunction", "__version__", "build_info", "gelu", "gelu_backward"]
