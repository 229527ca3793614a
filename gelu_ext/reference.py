"""Pure-PyTorch GELU in numerically careful form: the reference the tests compare against.

Used in float64 these are accurate to ~1e-15 relative over the whole range (unlike 0.5*x*(1+erf(x/sqrt(2))),
which cancels for x < 0). They are written independently of the C++ code they check.
"""

from __future__ import annotations

import math

import torch

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_C1 = 2.0 * math.sqrt(2.0 / math.pi)  # s = 2z = x * (C1 + C2 x^2)
_TANH_C2 = _TANH_C1 * 0.044715
_CLAMP = 1.0e4  # beyond this every formula has reached its limit; clamping avoids inf * 0


def _check_mode(approximate: str) -> None:
    if approximate not in ("none", "tanh"):
        raise ValueError(f'approximate must be "none" or "tanh", got {approximate!r}')


def _tanh_parts(xc: torch.Tensor):
    """s = 2z, sigmoid(s) and ds/dx."""
    s = xc * (_TANH_C1 + _TANH_C2 * xc * xc)
    return s, torch.sigmoid(s), _TANH_C1 + 3.0 * _TANH_C2 * xc * xc


def gelu_reference(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x) = x * Phi(x), or x * sigmoid(2z) (== 0.5 x (1 + tanh z)) in tanh mode."""
    _check_mode(approximate)
    xc = x.clamp(-_CLAMP, _CLAMP)
    if approximate == "tanh":
        factor = torch.sigmoid(xc * (_TANH_C1 + _TANH_C2 * xc * xc))
    else:
        factor = 0.5 * torch.special.erfc(-xc * _SQRT_HALF)
    return torch.where(x < 0, xc, x) * factor


def gelu_derivative(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """d gelu(x) / dx."""
    _check_mode(approximate)
    xc = x.clamp(-_CLAMP, _CLAMP)
    if approximate == "tanh":
        s, sig, ds = _tanh_parts(xc)
        return sig * (1.0 + xc * ds * torch.sigmoid(-s))
    return 0.5 * torch.special.erfc(-xc * _SQRT_HALF) + xc * _INV_SQRT_2PI * torch.exp(-0.5 * xc * xc)


def gelu_second_derivative(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """d^2 gelu(x) / dx^2 (differentiable torch ops, so higher-order gradients work too)."""
    _check_mode(approximate)
    xc = x.clamp(-_CLAMP, _CLAMP)
    if approximate == "tanh":
        s, sig, ds = _tanh_parts(xc)
        sig_1m = sig * torch.sigmoid(-s)  # sigmoid'(s) = sigmoid(s) (1 - sigmoid(s))
        return sig_1m * (2.0 * ds + xc * ((1.0 - 2.0 * sig) * ds * ds + 6.0 * _TANH_C2 * xc))
    return _INV_SQRT_2PI * torch.exp(-0.5 * xc * xc) * (2.0 - xc * xc)
