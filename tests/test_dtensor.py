"""gelu_ext on DTensor (tensor parallelism) and FSDP2: the ops' sharding strategies (gelu_ext/dtensor_sharding.py),
the functional API and modules on DTensors, a tensor-parallel MLP and fully_shard on two gloo processes.

The placement rules run on a one-process mesh, where a DTensor's local tensor is the whole tensor: every result
must have the placement the rules give and the bits of the op on the plain tensor. The two-process tests (this file
is also their worker script) add real collectives: Partial reductions, reshards, and whole models against the same
model in one process.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import gelu_ext
from gelu_ext.testing import assert_bitwise_equal

if dist.is_available():
    from torch.distributed.tensor import DeviceMesh, DTensor, Partial, Replicate, Shard

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this torch is built without torch.distributed")

MODES = ("none", "tanh")
SHAPE = (2, 3, 4)  # three dims, so that a row-sharding dim (0, 1) and the bias dim (2) both occur


def placements_of_3d():
    """For the loops over every combination of operands: a row dim, the last dim, Replicate and both Partials."""
    return [Shard(0), Shard(2), Replicate(), Partial("sum"), Partial("avg")]


def placements_of_bias():
    return [Shard(0), Replicate(), Partial("sum"), Partial("avg")]


def linear_partials():
    return [Partial("sum"), Partial("avg")]


def bias_placement_for(x_placement):
    """What bias_gelu's bias needs next to x's placement: Shard(0) for x sharded along its last dim, else
    Replicate."""
    return Shard(0) if x_placement == Shard(len(SHAPE) - 1) else Replicate()


@pytest.fixture(scope="module")
def mesh():
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield DeviceMesh("cpu", [0])
    if created:
        dist.destroy_process_group()


def on(mesh, tensor, placement):
    """`tensor` as a DTensor with one placement; on a one-process mesh the local tensor is the whole tensor."""
    return DTensor.from_local(tensor, mesh, [placement], run_check=False)


def plain(*shapes, dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for shape in shapes]


def assert_dtensor(result, placement, expected):
    """`result` is a DTensor with one `placement` whose whole value has `expected`'s bits."""
    assert isinstance(result, DTensor), type(result)
    assert result.placements == (placement,), f"placements {result.placements}, expected ({placement},)"
    assert_bitwise_equal(result.full_tensor(), expected)


def assert_partial_only_from(result, partial_operand, what):
    """A Partial result may only come from an operand the op is linear in (gelu is not linear in x)."""
    if isinstance(result.placements[0], Partial):
        assert isinstance(partial_operand, Partial) and result.placements[0] == partial_operand, (
            f"{what}: Partial result {result.placements} from a non-linear operand"
        )


# ---- the placement rules, one op at a time ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_gelu_keeps_shard_and_replicate_and_reduces_partial(mesh, mode):
    (x,) = plain(SHAPE)
    expected = gelu_ext.gelu(x, mode)
    for placement in placements_of_3d():
        result = torch.ops.gelu_ext.gelu(on(mesh, x, placement), mode)
        aten = F.gelu(on(mesh, x, placement), approximate=mode)
        kept = Replicate() if isinstance(placement, Partial) else placement
        assert_dtensor(result, kept, expected)
        assert result.placements == aten.placements, f"{placement}: aten.gelu gives {aten.placements}"


@pytest.mark.parametrize("mode", MODES)
def test_gelu_backward_placements(mesh, mode):
    grad, x = plain(SHAPE, SHAPE)
    expected = gelu_ext.gelu_backward(grad, x, mode)
    for p in [Shard(0), Shard(1), Shard(2), Replicate()]:
        assert_dtensor(torch.ops.gelu_ext.gelu_backward(on(mesh, grad, p), on(mesh, x, p), mode), p, expected)
    # linear in grad_output: a Partial grad_output with x replicated needs no collective
    for p in linear_partials():
        result = torch.ops.gelu_ext.gelu_backward(on(mesh, grad, p), on(mesh, x, Replicate()), mode)
        assert_dtensor(result, p, expected)
    for p_grad, p_x in itertools.product(placements_of_3d(), repeat=2):
        result = torch.ops.gelu_ext.gelu_backward(on(mesh, grad, p_grad), on(mesh, x, p_x), mode)
        assert_bitwise_equal(result.full_tensor(), expected)
        assert_partial_only_from(result, p_grad, f"gelu_backward({p_grad}, {p_x})")


@pytest.mark.parametrize("mode", MODES)
def test_bias_gelu_bias_follows_the_last_dim(mesh, mode):
    x, bias = plain(SHAPE, SHAPE[-1:])
    expected = gelu_ext.bias_gelu(x, bias, mode)
    for p in [Shard(0), Shard(1), Shard(2), Replicate()]:
        result = torch.ops.gelu_ext.bias_gelu(on(mesh, x, p), on(mesh, bias, bias_placement_for(p)), mode)
        assert_dtensor(result, p, expected)
    # every pair, mismatched and Partial ones included: resolved as DTensor resolves gelu(x + bias) in aten ops
    for p_x, p_bias in itertools.product(placements_of_3d(), placements_of_bias()):
        result = torch.ops.gelu_ext.bias_gelu(on(mesh, x, p_x), on(mesh, bias, p_bias), mode)
        aten = F.gelu(on(mesh, x, p_x) + on(mesh, bias, p_bias), approximate=mode)
        assert result.placements == aten.placements, f"({p_x}, {p_bias}): aten gives {aten.placements}"
        assert not isinstance(result.placements[0], Partial)
        assert_bitwise_equal(result.full_tensor(), expected)


@pytest.mark.parametrize("mode", MODES)
def test_bias_gelu_backward_grad_bias_is_a_partial_sum_of_row_shards(mesh, mode):
    grad, x, bias = plain(SHAPE, SHAPE, SHAPE[-1:])
    expected_x, expected_bias = torch.ops.gelu_ext.bias_gelu_backward(grad, x, bias, mode)
    last = Shard(len(SHAPE) - 1)
    for p in [Shard(0), Shard(1), last, Replicate()]:
        args = on(mesh, grad, p), on(mesh, x, p), on(mesh, bias, bias_placement_for(p))
        grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(*args, mode)
        assert_dtensor(grad_x, p, expected_x)
        # rows split across ranks: each rank's column sums are a part of the whole sum, left Partial (no all-reduce)
        row_sharded = isinstance(p, Shard) and p != last
        assert_dtensor(grad_bias, Partial("sum") if row_sharded else bias_placement_for(p), expected_bias)
    for p in linear_partials():
        args = on(mesh, grad, p), on(mesh, x, Replicate()), on(mesh, bias, Replicate())
        grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(*args, mode)
        assert_dtensor(grad_x, p, expected_x)
        assert_dtensor(grad_bias, p, expected_bias)
    for p_grad, p_x, p_bias in itertools.product(placements_of_3d(), placements_of_3d(), placements_of_bias()):
        args = on(mesh, grad, p_grad), on(mesh, x, p_x), on(mesh, bias, p_bias)
        grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(*args, mode)
        assert_bitwise_equal(grad_x.full_tensor(), expected_x)
        assert_bitwise_equal(grad_bias.full_tensor(), expected_bias)
        assert_partial_only_from(grad_x, p_grad, f"bias_gelu_backward({p_grad}, {p_x}, {p_bias})")


@pytest.mark.parametrize("mode", MODES)
def test_geglu_gate_and_up_share_placements(mesh, mode):
    gate, up = plain(SHAPE, SHAPE)
    expected = gelu_ext.geglu(gate, up, mode)
    for p in [Shard(0), Shard(1), Shard(2), Replicate()]:
        assert_dtensor(torch.ops.gelu_ext.geglu(on(mesh, gate, p), on(mesh, up, p), mode), p, expected)
    # linear in up: a Partial up with gate replicated stays Partial, as for aten.mul
    for p in linear_partials():
        assert_dtensor(torch.ops.gelu_ext.geglu(on(mesh, gate, Replicate()), on(mesh, up, p), mode), p, expected)
    for p_gate, p_up in itertools.product(placements_of_3d(), repeat=2):
        result = torch.ops.gelu_ext.geglu(on(mesh, gate, p_gate), on(mesh, up, p_up), mode)
        aten = F.gelu(on(mesh, gate, p_gate), approximate=mode) * on(mesh, up, p_up)
        assert result.placements == aten.placements, f"({p_gate}, {p_up}): aten gives {aten.placements}"
        assert_bitwise_equal(result.full_tensor(), expected)
        assert_partial_only_from(result, p_up, f"geglu({p_gate}, {p_up})")


@pytest.mark.parametrize("mode", MODES)
def test_geglu_backward_placements(mesh, mode):
    grad, gate, up = plain(SHAPE, SHAPE, SHAPE)
    expected = torch.ops.gelu_ext.geglu_backward(grad, gate, up, mode)
    for p in [Shard(0), Shard(1), Shard(2), Replicate()]:
        results = torch.ops.gelu_ext.geglu_backward(on(mesh, grad, p), on(mesh, gate, p), on(mesh, up, p), mode)
        for result, want in zip(results, expected, strict=True):
            assert_dtensor(result, p, want)
    for p in linear_partials():
        args = on(mesh, grad, p), on(mesh, gate, Replicate()), on(mesh, up, Replicate())
        for result, want in zip(torch.ops.gelu_ext.geglu_backward(*args, mode), expected, strict=True):
            assert_dtensor(result, p, want)
    for p_grad, p_gate, p_up in itertools.product(placements_of_3d(), repeat=3):
        args = on(mesh, grad, p_grad), on(mesh, gate, p_gate), on(mesh, up, p_up)
        for result, want in zip(torch.ops.gelu_ext.geglu_backward(*args, mode), expected, strict=True):
            assert_bitwise_equal(result.full_tensor(), want)
            assert_partial_only_from(result, p_grad, f"geglu_backward({p_grad}, {p_gate}, {p_up})")


def test_two_dimensional_mesh(mesh):
    """A strategy is one mesh dim's; DTensor expands it to every dim of the mesh (here 1 x 1)."""
    mesh_2d = DeviceMesh("cpu", [[0]])
    x, bias, grad = plain(SHAPE, SHAPE[-1:], SHAPE)
    rows_and_columns = (Shard(0), Shard(2))
    args = [DTensor.from_local(t, mesh_2d, p) for t, p in
            ((grad, rows_and_columns), (x, rows_and_columns), (bias, (Replicate(), Shard(0))))]  # fmt: skip
    y = torch.ops.gelu_ext.bias_gelu(args[1], args[2])
    assert y.placements == rows_and_columns
    assert_bitwise_equal(y.full_tensor(), gelu_ext.bias_gelu(x, bias))
    grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(*args)
    assert grad_x.placements == rows_and_columns and grad_bias.placements == (Partial("sum"), Shard(0))
    expected_x, expected_bias = torch.ops.gelu_ext.bias_gelu_backward(grad, x, bias)
    assert_bitwise_equal(grad_x.full_tensor(), expected_x)
    assert_bitwise_equal(grad_bias.full_tensor(), expected_bias)


# ---- the functional API and the modules on DTensors ---------------------------------------------------------------


def leaves(mesh, tensors, placements):
    plain_leaves = [t.clone().requires_grad_() for t in tensors]
    dtensor_leaves = [on(mesh, t.clone(), p).requires_grad_() for t, p in zip(tensors, placements, strict=True)]
    return plain_leaves, dtensor_leaves


FUNCTIONAL_CASES = {
    # name: (function, shapes of its tensors, their placements)
    "gelu": (gelu_ext.gelu, [SHAPE], [Shard(1)]),
    "gelu_backward": (gelu_ext.gelu_backward, [SHAPE, SHAPE], [Shard(2), Shard(2)]),
    "bias_gelu": (gelu_ext.bias_gelu, [SHAPE, SHAPE[-1:]], [Shard(0), Replicate()]),
    "bias_gelu_columns": (gelu_ext.bias_gelu, [SHAPE, SHAPE[-1:]], [Shard(2), Shard(0)]),
    "geglu": (gelu_ext.geglu, [SHAPE, SHAPE], [Shard(1), Shard(1)]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FUNCTIONAL_CASES)
def test_functional_api_forward_and_backward_on_dtensors(mesh, name, mode):
    """Through the API's autograd.Functions (grad mode), and below autograd (no_grad): DTensor in, DTensor out,
    gradients DTensors placed like their inputs, bits of the plain call."""
    function, shapes, placements = FUNCTIONAL_CASES[name]
    tensors = plain(*shapes, dtype=torch.float64)
    plain_leaves, dtensor_leaves = leaves(mesh, tensors, placements)
    expected = function(*plain_leaves, mode)
    result = function(*dtensor_leaves, mode)
    assert isinstance(result, DTensor) and result.placements == (placements[0],)
    assert_bitwise_equal(result.full_tensor(), expected.detach())
    (cotangent,) = plain(SHAPE, dtype=torch.float64)
    expected_grads = torch.autograd.grad(expected, plain_leaves, cotangent)
    grads = torch.autograd.grad(result, dtensor_leaves, on(mesh, cotangent, placements[0]))
    for grad, want, placement in zip(grads, expected_grads, placements, strict=True):
        # grad_bias of row-sharded x is a Partial sum; DTensor's autograd hands the leaf that Partial
        assert isinstance(grad, DTensor)
        assert grad.placements in ((placement,), (Partial("sum"),)), grad.placements
        assert_bitwise_equal(grad.full_tensor(), want)
    with torch.no_grad():
        assert_bitwise_equal(function(*dtensor_leaves, mode).full_tensor(), expected.detach())


@pytest.mark.slow
def test_torch_compile_on_dtensors(mesh):
    """The functional API under torch.compile (the op itself is traced) with DTensor inputs: same placements and bits
    as eager, and backward."""
    x, bias = plain(SHAPE, SHAPE[-1:])
    eager_leaves = [on(mesh, x.clone(), Shard(2)).requires_grad_(), on(mesh, bias.clone(), Shard(0)).requires_grad_()]
    compiled_leaves = [t.detach().clone().requires_grad_() for t in eager_leaves]

    def block(x, bias):
        return gelu_ext.geglu(gelu_ext.bias_gelu(x, bias, "tanh"), gelu_ext.gelu(x))

    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)(*compiled_leaves)
    eager = block(*eager_leaves)
    assert compiled.placements == eager.placements == (Shard(2),)
    assert_bitwise_equal(compiled.full_tensor(), eager.full_tensor())
    compiled.sum().backward()
    eager.sum().backward()
    for compiled_leaf, eager_leaf in zip(compiled_leaves, eager_leaves, strict=True):
        assert compiled_leaf.grad.placements == eager_leaf.grad.placements
        assert_bitwise_equal(compiled_leaf.grad.full_tensor(), eager_leaf.grad.full_tensor())


def test_double_backward_on_dtensor(mesh):
    (x,) = plain(SHAPE, dtype=torch.float64)
    (plain_x,), (dtensor_x,) = leaves(mesh, [x], [Shard(1)])
    results = []
    for leaf in (plain_x, dtensor_x):
        (grad,) = torch.autograd.grad(gelu_ext.gelu(leaf).sum(), leaf, create_graph=True)
        results.append(torch.autograd.grad(grad.sum(), leaf)[0])
    assert results[1].placements == (Shard(1),)
    assert_bitwise_equal(results[1].full_tensor(), results[0])


@pytest.mark.parametrize("mode", MODES)
def test_modules_on_dtensors(mesh, mode):
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    (x,) = plain((5, 6), dtype=torch.float64)
    linear_gelu = gelu_ext.LinearGELU(6, 8, approximate=mode, dtype=torch.float64)
    reference = copy.deepcopy(linear_gelu)
    parallelize_module(linear_gelu, mesh, ColwiseParallel(use_local_output=False))
    assert isinstance(linear_gelu.bias, DTensor)  # so its forward runs bias_gelu on DTensors
    result = linear_gelu(x)
    assert result.placements == (Shard(1),)
    assert_bitwise_equal(result.full_tensor(), reference(x).detach())
    result.full_tensor().sum().backward()
    reference(x).sum().backward()
    for name, parameter in reference.named_parameters():
        assert_bitwise_equal(linear_gelu.get_parameter(name).grad.full_tensor(), parameter.grad)

    (h,) = plain((5, 8), dtype=torch.float64)
    for module, placement in ((gelu_ext.GELU(mode), Shard(1)), (gelu_ext.GEGLU(mode), Shard(0))):
        result = module(on(mesh, h, placement))
        assert isinstance(result, DTensor)
        assert_bitwise_equal(result.full_tensor(), module(h))


def test_operands_dtensor_cannot_combine_get_an_error_naming_the_op(mesh):
    x, bias = plain(SHAPE, SHAPE[-1:])
    with pytest.raises(RuntimeError, match=r"gelu_ext\.bias_gelu\.default got mixed torch\.Tensor and DTensor"):
        gelu_ext.bias_gelu(on(mesh, x, Shard(0)), bias)
    with pytest.raises(ValueError, match=r"bias has shape \[3\] but x has shape \[2, 3, 4\]"):
        gelu_ext.bias_gelu(on(mesh, x, Shard(0)), on(mesh, torch.randn(3), Replicate()))
    with pytest.raises(ValueError, match=r"up has shape \[2, 3\] but gate has shape \[2, 3, 4\]"):
        gelu_ext.geglu(on(mesh, x, Shard(0)), on(mesh, torch.randn(2, 3), Shard(0)))


# ---- lazy registration --------------------------------------------------------------------------------------------

_ALL_REGISTERED = [
    "from torch.distributed.tensor import DTensor",
    "registered = set(DTensor._op_dispatcher.sharding_propagator.op_strategy_funcs)",
    "names = ('gelu', 'gelu_backward', 'bias_gelu', 'bias_gelu_backward', 'geglu', 'geglu_backward')",
    "assert all(getattr(torch.ops.gelu_ext, n).default in registered for n in names), 'not registered'",
]
_HOOKS = "hooks = [f for f in sys.meta_path if getattr(f, 'module_name', None) == 'torch.distributed.tensor']"
LAZY_REGISTRATION_SCRIPTS = {
    # gelu_ext first: DTensor is not imported; importing a part of it (its parent package loads first) registers
    # the strategies and takes the import hook away
    "gelu_ext first": [
        "import sys, torch, gelu_ext",
        "assert 'torch.distributed.tensor' not in sys.modules, 'gelu_ext imported DTensor'",
        _HOOKS,
        "assert len(hooks) == 1, hooks",
        "import torch.distributed.tensor.parallel",
        *_ALL_REGISTERED,
        _HOOKS,
        "assert not hooks, hooks",
    ],
    "DTensor first": [
        "import sys, torch, torch.distributed.tensor, gelu_ext",
        *_ALL_REGISTERED,
        _HOOKS,
        "assert not hooks",
    ],
}


@pytest.mark.slow
def test_registration_is_lazy_and_happens_whatever_the_import_order():
    """Fresh interpreters (slow: each imports torch), since this one has imported both already."""
    processes = {name: subprocess.Popen([sys.executable, "-c", "; ".join(script)], stderr=subprocess.PIPE, text=True)
                 for name, script in LAZY_REGISTRATION_SCRIPTS.items()}  # fmt: skip
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, f"{name}: {stderr[-2000:]}"


def test_nothing_is_hooked_without_torch_distributed(monkeypatch):
    """Where torch.distributed is not built in, `import gelu_ext` neither imports DTensor nor hooks imports."""
    from gelu_ext import _import_hooks, dtensor_sharding

    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, _import_hooks.RunAfterImport)])
    monkeypatch.delitem(sys.modules, dtensor_sharding.DTENSOR_MODULE)  # as if DTensor were not loaded yet
    dtensor_sharding.register_when_dtensor_loads()
    assert _import_hooks.hook_for(dtensor_sharding.DTENSOR_MODULE) is None


def test_the_import_hook_runs_its_callback_once_the_module_has_run(monkeypatch, tmp_path):
    """The hook that registers the strategies when DTensor loads (and the ONNX symbolics when torch.onnx does), on a
    package of its own: every callback, in order, once the package has run; a failing one is a warning."""
    from gelu_ext import _import_hooks

    package = tmp_path / "hooked_package"
    package.mkdir()
    (package / "__init__.py").write_text("LOADED = True\n")
    (package / "child.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    _import_hooks.run_after_import("hooked_package", lambda: seen.append(sys.modules["hooked_package"].LOADED))

    def fail():
        raise RuntimeError("planted")

    _import_hooks.run_after_import("hooked_package", _import_hooks.warn_on_failure("do it", "so be it", fail))
    _import_hooks.run_after_import("hooked_package", lambda: seen.append("second"))
    hook = _import_hooks.hook_for("hooked_package")
    assert len(hook.callbacks) == 3  # one finder per module
    try:
        with pytest.warns(RuntimeWarning, match=r"could not do it \(RuntimeError: planted\); so be it"):
            import hooked_package.child  # noqa: F401 - a child first: the parent package loads, and the hook fires
    finally:
        for name in ("hooked_package.child", "hooked_package"):
            sys.modules.pop(name, None)
    assert seen == [True, "second"]
    assert hook not in sys.meta_path
    _import_hooks.run_after_import("sys", lambda: seen.append("at once"))  # imported already: runs now, no hook
    assert seen[-1] == "at once" and _import_hooks.hook_for("sys") is None


# ---- two processes ------------------------------------------------------------------------------------------------

WORLD_SIZE = 2
WORKER_CASES = ("tp_gelu", "tp_linear_gelu", "tp_geglu", "collectives", "fsdp2")


@pytest.mark.slow
def test_tensor_parallel_and_fsdp2_on_two_gloo_processes():
    """Two processes on loopback, rendezvous through a TCPStore that this process serves on a free port (port 0:
    the OS picks it, no race). Each worker runs WORKER_CASES and prints one line per case that passed."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=60))  # fmt: skip
    # gloo's own connections on the loopback interface too ("lo" on Linux, "lo0" on macOS)
    loopback = next(name for _, name in socket.if_nameindex() if name.startswith("lo"))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": loopback, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, __file__, str(rank), str(store.port)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for rank in range(WORLD_SIZE)]  # fmt: skip
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=240))
        except subprocess.TimeoutExpired:  # gloo's 60 s timeout should have ended a rank waiting for a failed one
            worker.kill()
            outputs.append(worker.communicate())
    failures = [f"rank {rank} exited with {worker.returncode}:\n{stderr[-3000:]}"
                for rank, (worker, (_, stderr)) in enumerate(zip(workers, outputs, strict=True))
                if worker.returncode != 0]  # fmt: skip
    assert not failures, "\n".join(failures)  # every failed rank's error: the first to fail may not be rank 0
    for stdout, _ in outputs:
        passed = [line for line in stdout.split() if line.startswith("passed:")]
        assert passed == [f"passed:{case}" for case in WORKER_CASES], stdout


def _tp_case(mesh, model, plan, check_activation_input=None):
    """`model` with `plan` (parallelize_module) against `model` in one process: outputs and every gradient."""
    from torch.distributed.tensor.parallel import parallelize_module

    reference = copy.deepcopy(model)
    parallelize_module(model, mesh, plan)
    seen = []
    if check_activation_input is not None:
        activation = model.get_submodule(check_activation_input)
        activation.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
    x, cotangent = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    out = model(x)
    expected = reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    (out * cotangent).sum().backward()
    (expected * cotangent).sum().backward()
    for name, parameter in reference.named_parameters():
        grad = model.get_parameter(name).grad
        torch.testing.assert_close(grad.full_tensor(), parameter.grad, rtol=1e-12, atol=1e-12, msg=name)
    if check_activation_input is not None:
        # the activation got the sharded DTensor (not a local tensor) and kept its placement
        (activation_input, activation_output) = seen[0]
        assert isinstance(activation_input, DTensor) and activation_input.placements == (Shard(1),)
        assert isinstance(activation_output, DTensor) and activation_output.placements == (Shard(1),)


def _spread(mesh, rank, full, placement):
    """`full` as a DTensor on the two ranks: scattered for Shard and Replicate; for Partial, a different random local
    tensor on each rank (the whole value is then whatever they reduce to, `full_tensor()`)."""
    from torch.distributed.tensor import distribute_tensor

    if isinstance(placement, Partial):
        local = torch.randn(full.shape, dtype=full.dtype, generator=torch.Generator().manual_seed(10 + rank))
        return DTensor.from_local(local, mesh, [placement])
    return distribute_tensor(full, mesh, [placement])


def _collectives_case(mesh, rank):
    """The rules with real collectives and real redistribution costs: every pair of operands' placements for the
    forward ops against DTensor's aten composites (gelu, gelu(x + bias), gelu(gate) * up), Partials kept where an op
    is linear, and grad_bias Partial."""
    torch.manual_seed(1)  # the same tensors on every rank
    x, other, grad = (torch.randn(4, 6, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(6, dtype=torch.float64)
    placements = [Shard(0), Shard(1), Replicate(), Partial("sum"), Partial("avg")]
    for p in placements:
        dx = _spread(mesh, rank, x, p)
        result = gelu_ext.gelu(dx)
        assert result.placements == F.gelu(dx).placements and not isinstance(result.placements[0], Partial), p
        assert_bitwise_equal(result.full_tensor(), gelu_ext.gelu(dx.full_tensor()))
        for p_bias in (Shard(0), Replicate(), Partial("sum"), Partial("avg")):
            dbias = _spread(mesh, rank, bias, p_bias)
            result = gelu_ext.bias_gelu(dx, dbias)
            assert not isinstance(result.placements[0], Partial)
            # aten.add keeps a Partial("avg") operand Partial, and the composite reduces after the add instead; the
            # fused op reduces it first and keeps the other operand's Shard (one small collective, not two)
            if Partial("avg") not in (p, p_bias):
                assert result.placements == F.gelu(dx + dbias).placements, (p, p_bias, result.placements)
            assert_bitwise_equal(result.full_tensor(), gelu_ext.bias_gelu(dx.full_tensor(), dbias.full_tensor()))
        for p_up in placements:
            dup = _spread(mesh, rank, other, p_up)
            result = gelu_ext.geglu(dx, dup)
            assert result.placements == (F.gelu(dx) * dup).placements, (p, p_up, result.placements)
            # close, not equal in bits: a Partial up is reduced after the op, sum(gelu(gate) * up_r)
            expected = gelu_ext.geglu(dx.full_tensor(), dup.full_tensor())
            torch.testing.assert_close(result.full_tensor(), expected, rtol=1e-13, atol=1e-13)

    # linear in grad_output (and geglu in up): a Partial stays Partial, no collective in the op
    replicated = DTensor.from_local(other, mesh, [Replicate()])
    partial = _spread(mesh, rank, x, Partial("sum"))
    cases = {
        "gelu_backward": (torch.ops.gelu_ext.gelu_backward, (partial, replicated)),
        "geglu_backward": (torch.ops.gelu_ext.geglu_backward, (partial, replicated, replicated)),
        "bias_gelu_backward": (torch.ops.gelu_ext.bias_gelu_backward,
                               (partial, replicated, DTensor.from_local(bias, mesh, [Replicate()]))),
    }  # fmt: skip
    for name, (op, args) in cases.items():
        results, expected = op(*args), op(*(a.full_tensor() for a in args))
        if name == "gelu_backward":  # one output
            results, expected = (results,), (expected,)
        for result, want in zip(results, expected, strict=True):
            assert result.placements == (Partial("sum"),), (name, result.placements)
            torch.testing.assert_close(result.full_tensor(), want, rtol=1e-13, atol=1e-13, msg=name)

    # row-sharded x: grad_bias is each rank's own row sum, a Partial sum, and the leaf's gradient adds them up
    x_rows = DTensor.from_local(x.chunk(2)[rank], mesh, [Shard(0)]).requires_grad_()
    bias_leaf = DTensor.from_local(bias, mesh, [Replicate()]).requires_grad_()
    grad_rows = DTensor.from_local(grad.chunk(2)[rank], mesh, [Shard(0)])
    grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(grad_rows, x_rows.detach(), bias_leaf.detach())
    assert grad_x.placements == (Shard(0),) and grad_bias.placements == (Partial("sum"),)
    expected_x, expected_bias = torch.ops.gelu_ext.bias_gelu_backward(grad, x, bias)
    assert_bitwise_equal(grad_x.full_tensor(), expected_x)
    own_rows = torch.ops.gelu_ext.bias_gelu_backward(grad.chunk(2)[rank], x.chunk(2)[rank], bias)[1]
    assert_bitwise_equal(grad_bias.to_local(), own_rows)  # the op itself ran no all-reduce
    torch.testing.assert_close(grad_bias.full_tensor(), expected_bias, rtol=1e-13, atol=1e-13)
    gelu_ext.bias_gelu(x_rows, bias_leaf).backward(grad_rows)
    torch.testing.assert_close(bias_leaf.grad.full_tensor(), expected_bias, rtol=1e-13, atol=1e-13)


def _fsdp2_case(mesh, rank):
    """fully_shard with gelu_ext inside: each rank its own batch; FSDP2's gradients (averaged over the ranks) against
    the mean loss of both batches in one process."""
    from torch.distributed.fsdp import fully_shard

    model = nn.Sequential(gelu_ext.LinearGELU(8, 16), nn.Linear(16, 16), gelu_ext.GELU("tanh"), nn.Linear(16, 4))
    model = model.to(torch.float64)
    reference = copy.deepcopy(model)
    for layer in (model[0], model[1], model[3]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    batches = [torch.randn(3, 8, dtype=torch.float64) for _ in range(WORLD_SIZE)]
    out = model(batches[rank])
    torch.testing.assert_close(out, reference(batches[rank]), rtol=1e-12, atol=1e-12)
    out.sum().backward()
    (sum(reference(batch).sum() for batch in batches) / WORLD_SIZE).backward()
    for name, parameter in reference.named_parameters():
        sharded = model.get_parameter(name)
        assert isinstance(sharded, DTensor) and sharded.placements == (Shard(0),)
        torch.testing.assert_close(sharded.grad.full_tensor(), parameter.grad, rtol=1e-12, atol=1e-12, msg=name)


def _worker(rank: int, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    cases = {
        # fc1's output stays a DTensor Shard(-1), so GELU gets the DTensor a tensor-parallel MLP hands it
        "tp_gelu": lambda: _tp_case(
            mesh, nn.Sequential(nn.Linear(8, 16), gelu_ext.GELU(), nn.Linear(16, 4)).double(),
            {"0": ColwiseParallel(use_local_output=False), "2": RowwiseParallel()}, check_activation_input="1"),
        # LinearGELU's weight and bias sharded by rows: bias_gelu on x Shard(-1) and bias Shard(0)
        "tp_linear_gelu": lambda: _tp_case(
            mesh, nn.Sequential(gelu_ext.LinearGELU(8, 16, approximate="tanh"), nn.Linear(16, 4)).double(),
            {"0": ColwiseParallel(), "1": RowwiseParallel()}),
        "tp_geglu": lambda: _tp_case(
            mesh, nn.Sequential(nn.Linear(8, 32), gelu_ext.GEGLU(), nn.Linear(16, 4)).double(),
            {"0": ColwiseParallel(use_local_output=False), "2": RowwiseParallel()}),
        "collectives": lambda: _collectives_case(mesh, rank),
        "fsdp2": lambda: _fsdp2_case(mesh, rank),
    }  # fmt: skip
    for name in WORKER_CASES:
        torch.manual_seed(0)  # the same weights and inputs on every rank and in the reference
        cases[name]()
        print(f"passed:{name}", flush=True)
    # Teardown, made deterministic. Without the barrier, a rank that finished its last collective could close its
    # gloo connections while the other still drained it, and that rank died in std::terminate after every case had
    # passed (2 of 12 runs here, rank 1, SIGABRT). Gloo's worker threads can also still hold work objects that are
    # released during interpreter finalization (pytorch/pytorch#179291), so the worker leaves with os._exit once
    # everything is flushed: its exit status then says whether the cases passed, not how gloo shuts down.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))
