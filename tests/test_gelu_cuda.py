"""CUDA-only behaviour: CPU/CUDA bit-identity, misaligned and huge tensors, streams and devices.

The shared matrix in test_gelu.py and test_accuracy.py already runs every case on "cuda" when a GPU is present;
this file adds what only a GPU has. On a machine without one it collects no tests.
"""

from __future__ import annotations

import pytest
import torch

import gelu_ext
from gelu_ext.testing import APPROXIMATE_MODES, assert_bitwise_equal, devices

CUDA = "cuda" in devices()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a GPU and a CUDA build of gelu_ext")
BIT_IDENTICAL = [torch.float32, torch.float16, torch.bfloat16]  # float64 uses libm's vs CUDA's erfc


def _values(n, dtype):
    x = torch.randn(n, dtype=torch.float64) * 4
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -13.9, -0.7518, 1e-30, -1e3])
    return torch.cat([x, specials]).to(dtype)


@pytest.mark.parametrize("dtype", BIT_IDENTICAL, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("offset", [0, 1, 3], ids=lambda o: f"offset{o}")  # 1 and 3: misaligned -> scalar kernel
def test_cuda_matches_cpu_bit_for_bit(dtype, approximate, offset):
    # slice on the GPU: the views start `offset` elements into 16-byte-aligned allocations
    xc = _values(100_003, dtype).cuda()[offset:]
    gc = torch.randn(100_012, device="cuda").to(dtype)[offset : offset + xc.numel()]
    x, g = xc.cpu(), gc.cpu()
    assert xc.data_ptr() % 16 == offset * xc.element_size() % 16
    assert_bitwise_equal(gelu_ext.gelu(xc, approximate).cpu(), gelu_ext.gelu(x, approximate))
    assert_bitwise_equal(gelu_ext.gelu_backward(gc, xc, approximate).cpu(), gelu_ext.gelu_backward(g, x, approximate))


@pytest.mark.parametrize("dtype", BIT_IDENTICAL, ids=str)
@pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
@pytest.mark.parametrize("cols", [4096, 1023, 7], ids=lambda c: f"cols{c}")  # 1023 and 7: the rows kernel's scalar path
def test_fused_ops_match_cpu_bit_for_bit(dtype, approximate, cols):
    # bias_gelu, geglu and their backwards, gate and up as chunk halves (row stride 2H); grad_bias adds in another
    # order on the GPU (per row lane, then the lanes): close, not bitwise.
    rows = 301
    x = _values(rows * cols, dtype)[: rows * cols].reshape(rows, cols)
    bias = torch.randn(cols).to(dtype)
    grad = torch.randn(rows, cols).to(dtype)
    up, gate = torch.cat([torch.randn(rows, cols).to(dtype), x], dim=1).chunk(2, dim=-1)
    xc, bc, gc, upc, gatec = (t.cuda() for t in (x, bias, grad, up, gate))
    assert_bitwise_equal(gelu_ext.bias_gelu(xc, bc, approximate).cpu(), gelu_ext.bias_gelu(x, bias, approximate))
    assert_bitwise_equal(gelu_ext.geglu(gatec, upc, approximate).cpu(), gelu_ext.geglu(gate, up, approximate))
    grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(gc, xc, bc, approximate)
    cpu_grad_x, cpu_grad_bias = torch.ops.gelu_ext.bias_gelu_backward(grad, x, bias, approximate)
    assert_bitwise_equal(grad_x.cpu(), cpu_grad_x)
    finite = cpu_grad_bias.isfinite()
    torch.testing.assert_close(grad_bias.cpu()[finite].float(), cpu_grad_bias[finite].float(), rtol=1e-2, atol=1e-2)
    for a, b in zip(torch.ops.gelu_ext.geglu_backward(gc, gatec, upc, approximate),
                    torch.ops.gelu_ext.geglu_backward(grad, gate, up, approximate), strict=True):  # fmt: skip
        assert_bitwise_equal(a.cpu(), b)


def test_bias_gelu_backward_handles_many_rows_and_zero_rows():
    # more rows than the column sums' 256 row lanes, and none at all
    x = torch.randn(70_000, 33, device="cuda")
    bias = torch.randn(33, device="cuda")
    grad = torch.randn_like(x)
    _, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(grad, x, bias)
    _, expected = torch.ops.gelu_ext.bias_gelu_backward(grad.cpu(), x.cpu(), bias.cpu())
    torch.testing.assert_close(grad_bias.cpu(), expected, rtol=1e-4, atol=1e-3)
    empty = torch.empty(0, 33, device="cuda")
    _, zero = torch.ops.gelu_ext.bias_gelu_backward(empty, empty, bias)
    assert torch.equal(zero.cpu(), torch.zeros(33))


def test_runs_on_the_current_stream():
    # The side stream is held up by a sleep kernel before the input is even written on it; an op launched on any
    # other stream would read the input before it exists. Deterministic: no race decides the outcome.
    side = torch.cuda.Stream()
    x = torch.empty(1 << 20, device="cuda")
    expected = gelu_ext.gelu(torch.full((1 << 20,), 0.75))
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time
        x.fill_(0.75)
        y = gelu_ext.gelu(x)
    side.synchronize()
    assert_bitwise_equal(y.cpu(), expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_non_default_device():
    x = torch.randn(1000, device="cuda:1")
    y = gelu_ext.gelu(x)
    assert y.device == x.device
    assert_bitwise_equal(y.cpu(), gelu_ext.gelu(x.cpu()))


def test_torch_compile_inductor_on_cuda():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), gelu_ext.GELU("tanh"), torch.nn.Linear(64, 8)).cuda()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(32, 64, device="cuda")
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.large_gpu
def test_more_than_2_to_the_31_elements():
    n = 2**31 + 4099  # 64-bit indexing; odd tail for the scalar kernel
    if torch.cuda.mem_get_info()[0] < 3 * n * 2 + (2 << 30):
        pytest.skip("needs ~14 GiB of free GPU memory")
    x = torch.empty(n, dtype=torch.bfloat16, device="cuda").uniform_(-6, 6)
    y = gelu_ext.gelu(x)
    for part in (slice(0, 4096), slice(2**31 - 2048, 2**31 + 2048), slice(n - 4096, n)):
        assert_bitwise_equal(y[part].cpu(), gelu_ext.gelu(x[part].cpu()))
    del y
    d = gelu_ext.gelu_backward(x, x)
    assert_bitwise_equal(d[-4096:].cpu(), gelu_ext.gelu_backward(x[-4096:].cpu(), x[-4096:].cpu()))
