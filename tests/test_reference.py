"""An arbiter that shares nothing with the code: mpmath at 50 digits, for gelu, gelu' and gelu'' in both modes.

It checks the float64 reference the other tests trust (gelu_ext/reference.py), and gelu_ext itself in float32 and
float64, forward and both derivative orders (the second through autograd's double backward), tails included.
"""

from __future__ import annotations

import mpmath
import pytest
import torch

import gelu_ext
from gelu_ext.reference import gelu_derivative, gelu_derivative_terms, gelu_reference, gelu_second_derivative
from gelu_ext.testing import APPROXIMATE_MODES, MEASURED_MAX_ULP, derivative_ulp_error, ulp_error

mpmath.mp.dps = 50

# ~300 points: both tails (to where float32 results underflow), the zero of the derivative, around 0, large |x|.
POINTS = sorted(
    {round(v, 6) for v in [i / 8 for i in range(-112, 81)]}
    | {-13.9, -12.25, -9.7, -7.77, -5.03, -3.3, -1.1, -0.7518, -0.75, -1e-3, -1e-7, 1e-7, 1e-3, 0.0, 12.5, 30.0}
    | {-0.74 - i / 100 for i in range(3)}
    | {float(2**k) for k in range(-20, 5)}
)


def _gelu_exact(approximate):
    if approximate == "tanh":
        c = mpmath.sqrt(2 / mpmath.pi)
        # x/2 (1 + tanh z) written as x / (1 + exp(-2z)): 1 + tanh(z) would cancel even at 50 digits in the tail
        return lambda x: x / (1 + mpmath.exp(-2 * c * (x + mpmath.mpf("0.044715") * x**3)))
    return lambda x: x / 2 * mpmath.erfc(-x / mpmath.sqrt(2))


def _exact(approximate, order, points=POINTS):
    f = _gelu_exact(approximate)
    return torch.tensor([float(mpmath.diff(f, mpmath.mpf(p), order)) for p in points], dtype=torch.float64)


POINTS32 = torch.tensor(POINTS, dtype=torch.float32).double().tolist()  # the same points, as float32 inputs


@pytest.fixture(scope="module", params=APPROXIMATE_MODES)
def exact(request):
    approximate = request.param
    values = {order: _exact(approximate, order) for order in (0, 1, 2)}
    values["float32"] = {order: _exact(approximate, order, POINTS32) for order in (0, 1)}
    return approximate, values


def test_the_float64_reference_agrees_with_mpmath(exact):
    approximate, values = exact
    x = torch.tensor(POINTS, dtype=torch.float64)
    torch.testing.assert_close(gelu_reference(x, approximate), values[0], rtol=1e-13, atol=1e-300)
    first, second = gelu_derivative_terms(x, approximate)
    scale = torch.maximum(first.abs(), second.abs())  # the derivative cancels next to its zero
    assert ((gelu_derivative(x, approximate) - values[1]).abs() <= 1e-13 * scale + 1e-300).all()
    # gelu'' cancels too (at x = +-sqrt(2) in erf mode): measured against its own size or 1e-13 absolute
    torch.testing.assert_close(gelu_second_derivative(x, approximate), values[2], rtol=1e-12, atol=1e-13)


def test_gelu_ext_float32_agrees_with_mpmath(exact):
    approximate, values = exact
    x = torch.tensor(POINTS32, dtype=torch.float32)
    x64 = x.double()
    exact0, exact1 = values["float32"][0], values["float32"][1]
    assert ulp_error(gelu_ext.gelu(x, approximate), exact0).max() <= MEASURED_MAX_ULP[approximate]["forward"]
    d = gelu_ext.gelu_backward(torch.ones_like(x), x, approximate)
    assert derivative_ulp_error(d, x, approximate).max() <= MEASURED_MAX_ULP[approximate]["derivative"]
    # derivative_ulp_error's reference is reference.py; against mpmath directly, with the same scale:
    first, second = gelu_derivative_terms(x64, approximate)
    assert ulp_error(d, exact1, torch.maximum(first.abs(), second.abs())).max() <= (
        MEASURED_MAX_ULP[approximate]["derivative"] + 0.01
    )


def test_gelu_ext_float64_and_its_double_backward_agree_with_mpmath(exact):
    approximate, values = exact
    x = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    y = gelu_ext.gelu(x, approximate)
    (d1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    torch.testing.assert_close(y.detach(), values[0], rtol=1e-13, atol=1e-300)
    first, second = gelu_derivative_terms(x.detach(), approximate)
    assert ((d1.detach() - values[1]).abs() <= 1e-13 * torch.maximum(first.abs(), second.abs()) + 1e-300).all()
    torch.testing.assert_close(d2, values[2], rtol=1e-12, atol=1e-13)
