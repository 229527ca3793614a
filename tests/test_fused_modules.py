"""gelu_ext.LinearGELU and gelu_ext.GEGLU: drop-in behaviour (parameters, init, state_dict, order of the halves),
errors, torch.compile, and a torchvision ViT whose MLP blocks are rebuilt with LinearGELU."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gelu_ext
from gelu_ext.testing import APPROXIMATE_MODES, assert_compiled_matches_eager, devices


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gelu_is_a_drop_in_for_linear_then_gelu(approximate, bias):
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(20, 33, bias=bias), nn.GELU(approximate))
    torch.manual_seed(0)
    fused = gelu_ext.LinearGELU(20, 33, bias=bias, approximate=approximate)
    # the same initialization from the same seed, the same parameter names, nn.Linear's state_dict loads
    assert torch.equal(fused.weight, reference[0].weight)
    assert [name for name, _ in fused.named_parameters()] == [name for name, _ in reference[0].named_parameters()]
    fused.load_state_dict(reference[0].state_dict())
    assert isinstance(fused, nn.Linear)
    assert repr(fused) == f"LinearGELU(in_features=20, out_features=33, bias={bias}, approximate={approximate!r})"

    x = torch.randn(5, 7, 20, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = fused(x), reference(x_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-4)
    for p, p_ref in zip(fused.parameters(), reference[0].parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-4, rtol=1e-4)


def test_linear_gelu_device_dtype_and_errors():
    layer = gelu_ext.LinearGELU(4, 6, dtype=torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.bias.dtype == torch.float64
    assert layer(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match='approximate must be "none" or "tanh"'):
        gelu_ext.LinearGELU(4, 6, approximate="exact")
    with pytest.raises(RuntimeError):  # nn.Linear's own shape error
        layer(torch.randn(3, 5, dtype=torch.float64))


def test_linear_gelu_from_linear_shares_the_parameters():
    linear = nn.Linear(8, 12)
    fused = gelu_ext.LinearGELU.from_linear(linear, "tanh")
    assert fused.weight is linear.weight and fused.bias is linear.bias and fused.approximate == "tanh"
    x = torch.randn(4, 8)
    torch.testing.assert_close(fused(x), F.gelu(linear(x), approximate="tanh"), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
def test_geglu_module_takes_value_first_then_gate(approximate):
    module = gelu_ext.GEGLU(approximate)
    x = torch.randn(3, 5, 2 * 9, requires_grad=True)
    y = module(x)
    value, gate = x.chunk(2, dim=-1)
    expected = value * F.gelu(gate, approximate=approximate)  # diffusers' GEGLU, after its projection
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-5)
    assert y.shape == (3, 5, 9) and repr(module) == f"GEGLU(approximate={approximate!r})"
    assert module.state_dict() == {}
    (grad,) = torch.autograd.grad(y.sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-5)


def test_geglu_module_errors():
    with pytest.raises(ValueError, match=r"last dimension must have an even size .* got shape \[3, 7\]"):
        gelu_ext.GEGLU()(torch.randn(3, 7))
    with pytest.raises(ValueError, match='approximate must be "none" or "tanh"'):
        gelu_ext.GEGLU("fast")


@pytest.mark.parametrize("device", devices())
def test_modules_compile_fullgraph(device):
    model = nn.Sequential(gelu_ext.LinearGELU(16, 64), gelu_ext.GEGLU("tanh"), nn.Linear(32, 4)).to(device)
    assert_compiled_matches_eager(model, torch.randn(8, 16, device=device))


def test_vision_transformer_with_linear_gelu_mlp_blocks_matches_the_original():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    original = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=256, num_classes=10
    ).eval()
    rebuilt = copy.deepcopy(original)
    replaced = 0
    for layer in rebuilt.encoder.layers:
        # torchvision's MLPBlock: Linear, GELU, Dropout, Linear, Dropout
        assert isinstance(layer.mlp[0], nn.Linear) and isinstance(layer.mlp[1], nn.GELU)
        layer.mlp[0] = gelu_ext.LinearGELU.from_linear(layer.mlp[0], layer.mlp[1].approximate)
        layer.mlp[1] = nn.Identity()
        replaced += 1
    assert replaced == 3
    # the rebuilt model's state_dict is the original's (same parameter names): checkpoints load both ways
    assert rebuilt.state_dict().keys() == original.state_dict().keys()
    rebuilt.load_state_dict(original.state_dict())

    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([1, 4, 7, 9])
    out = rebuilt(images)
    expected = original(images)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    F.cross_entropy(out, labels).backward()
    F.cross_entropy(expected, labels).backward()
    for (name, p), (_, p_ref) in zip(rebuilt.named_parameters(), original.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")
