"""Pure-PyTorch GELU in numerically careful form: the reference the tests compare against.

Used in float64 these are accurate to ~1e-15 relative for |x| up to ~5 and never cancel (unlike
0.5*x*(1+erf(x/sqrt(2))) for x < 0); further into the negative tail exp and erfc amplify the rounding of their
argument, to ~1e-13 relative where the result underflows (gelu_ext.testing, tail_conditioning). They share
nothing with the C++ code they check: the constants are written out from their definitions here, and the second
derivative is not a formula at all but torch autograd applied to the first (tests/test_reference.py checks all
three against mpmath at 50 digits).
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


def gelu_reference(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x) = x * Phi(x), or x * sigmoid(2z) (== 0.5 x (1 + tanh z)) in tanh mode."""
    _check_mode(approximate)
    xc = x.clamp(-_CLAMP, _CLAMP)
    if approximate == "tanh":
        factor = torch.sigmoid(xc * (_TANH_C1 + _TANH_C2 * xc * xc))
    else:
        factor = 0.5 * torch.special.erfc(-xc * _SQRT_HALF)
    return torch.where(x < 0, xc, x) * factor


def gelu_derivative_terms(x: torch.Tensor, approximate: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms whose sum is d gelu(x) / dx: (Phi(x), x phi(x)), or (sigmoid(s), x s' sigmoid(s) sigmoid(-s)).

    They cancel next to the derivative's zero (x ~ -0.75); elsewhere the larger one is the result's own size, so
    max(|first|, |second|) is the scale a derivative's error is measured against (gelu_ext.testing).
    """
    _check_mode(approximate)
    xc = x.clamp(-_CLAMP, _CLAMP)
    if approximate == "tanh":
        s = xc * (_TANH_C1 + _TANH_C2 * xc * xc)
        ds = _TANH_C1 + 3.0 * _TANH_C2 * xc * xc
        return torch.sigmoid(s), xc * ds * torch.sigmoid(s) * torch.sigmoid(-s)
    return 0.5 * torch.special.erfc(-xc * _SQRT_HALF), xc * _INV_SQRT_2PI * torch.exp(-0.5 * xc * xc)


def gelu_derivative(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """d gelu(x) / dx."""
    first, second = gelu_derivative_terms(x, approximate)
    return first + second


def gelu_second_derivative(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """d^2 gelu(x) / dx^2, by torch autograd of gelu_derivative (differentiable, so higher orders work too)."""
    _check_mode(approximate)
    with torch.enable_grad():
        leaf = x.detach().requires_grad_()
        (second,) = torch.autograd.grad(gelu_derivative(leaf, approximate).sum(), leaf, create_graph=x.requires_grad)
    return second
