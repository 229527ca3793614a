"""gelu_ext goes wherever torch.nn.GELU goes: every public module and function, both modes, through every path a
model takes to be deployed or transformed (the README's "Works with" table).

Each case is a small model around one public name and its twin in torch ops (torch.nn.GELU, F.gelu, aten's
gelu_backward) with the same weights. Paths: eager, torch.jit.script (and save/load), torch.jit.trace (with its
checks), torch.fx.symbolic_trace, torch.compile, torch.export, AOTInductor, ONNX (both exporters, checked and run in
onnxruntime), torch.func.vmap (batching rules, one kernel call), plus the argument errors (non-tensors, mixed
devices) and signed zeros of every op. DTensor: tests/test_dtensor.py.

Tolerances: a path that runs gelu_ext's kernels (script, trace, FX, export, compile) must give gelu_ext's eager bits
(assert_bitwise_equal: same kernels, same formulas). Against the torch-ops twin, and for ONNX (which holds torch's
own GELU, run by onnxruntime's kernels), float32 closeness at 1e-5 / 1e-4: F.gelu and onnxruntime are hundreds of
float32 ulp off in places (README, Accuracy), still far below 1e-4 relative.
"""

from __future__ import annotations

import concurrent.futures
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gelu_ext
from gelu_ext.testing import APPROXIMATE_MODES, assert_bitwise_equal

IN, HIDDEN, OUT = 16, 32, 4


class Model(nn.Module):
    """Linear -> the case's GELU -> Linear, with `twin` selecting gelu_ext (False) or torch ops (True)."""

    __constants__ = ("approximate", "case", "twin")

    def __init__(self, case: str, approximate: str, twin: bool = False) -> None:
        super().__init__()
        self.case, self.approximate, self.twin = case, approximate, twin
        width = 2 * HIDDEN if case in ("GEGLU", "geglu") else HIDDEN
        self.fc1 = nn.Linear(IN, width, bias=case != "bias_gelu")
        self.bias = nn.Parameter(torch.randn(HIDDEN)) if case == "bias_gelu" else None
        if case == "GELU":
            self.act = nn.GELU(approximate) if twin else gelu_ext.GELU(approximate)
        elif case == "LinearGELU":
            self.fc1 = nn.Linear(IN, HIDDEN)
            self.act = nn.GELU(approximate) if twin else gelu_ext.LinearGELU(IN, HIDDEN, approximate=approximate)
        elif case == "GEGLU":
            self.act = nn.Identity() if twin else gelu_ext.GEGLU(approximate)
        else:
            self.act = nn.Identity()
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.case == "LinearGELU" and not self.twin:
            h = self.act(x)  # the fused layer holds fc1's weights (copied in make_models)
        else:
            h = self.act(self.fc1(x))
        if self.case == "GEGLU" and self.twin:
            halves = h.chunk(2, dim=-1)
            h = halves[0] * F.gelu(halves[1], approximate=self.approximate)
        elif self.case == "gelu":
            h = F.gelu(h, approximate=self.approximate) if self.twin else gelu_ext.gelu(h, self.approximate)
        elif self.case == "gelu_backward":
            if self.twin:
                h = torch.ops.aten.gelu_backward(h.cos(), h, approximate=self.approximate)
            else:
                h = gelu_ext.gelu_backward(h.cos(), h, self.approximate)
        elif self.case == "bias_gelu":
            bias = self.bias
            assert bias is not None
            if self.twin:
                h = F.gelu(h + bias, approximate=self.approximate)
            else:
                h = gelu_ext.bias_gelu(h, bias, self.approximate)
        elif self.case == "geglu":
            halves = h.chunk(2, dim=-1)
            if self.twin:
                h = F.gelu(halves[1], approximate=self.approximate) * halves[0]
            else:
                h = gelu_ext.geglu(halves[1], halves[0], self.approximate)
        return self.fc2(h)


CASES = ["GELU", "LinearGELU", "GEGLU", "gelu", "gelu_backward", "bias_gelu", "geglu"]
# What each case's graph must hold, once: the public function FX records, and the op everything else records.
OP_OF_CASE = {"GELU": "gelu", "LinearGELU": "bias_gelu", "GEGLU": "geglu", "gelu": "gelu",
              "gelu_backward": "gelu_backward", "bias_gelu": "bias_gelu", "geglu": "geglu"}  # fmt: skip


def make_models(case, approximate):
    torch.manual_seed(0)
    ours, twin = Model(case, approximate), Model(case, approximate, twin=True)
    twin.load_state_dict({k: v for k, v in ours.state_dict().items() if k in twin.state_dict()}, strict=False)
    if case == "LinearGELU":
        ours.act.load_state_dict(ours.fc1.state_dict())
        twin.fc1.load_state_dict(ours.fc1.state_dict())
    return ours, twin


def inputs(batch=5):
    return torch.randn(batch, IN)


def grads(model, x):
    model.zero_grad()
    x = x.detach().requires_grad_()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [x.grad, *(p.grad for p in model.parameters() if p.grad is not None)]


def assert_same_bits_and_grads(model, reference, x):
    out, g = grads(model, x)
    ref_out, ref_g = grads(reference, x)
    assert_bitwise_equal(out, ref_out)
    assert len(g) == len(ref_g)
    for a, b in zip(g, ref_g, strict=True):
        assert_bitwise_equal(a, b)


def gelu_ext_op_targets(graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_function" and "gelu_ext" in str(n.target)]


modes = pytest.mark.parametrize("approximate", APPROXIMATE_MODES)
cases = pytest.mark.parametrize("case", CASES)


@cases
@modes
def test_eager_matches_the_torch_ops_twin(case, approximate):
    ours, twin = make_models(case, approximate)
    x = inputs()
    out, g = grads(ours, x)
    ref_out, ref_g = grads(twin, x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    for a, b in zip(g, ref_g, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@cases
@modes
def test_copies_checkpoints_inference_mode_activation_checkpointing_and_threads(case, approximate):
    ours, twin = make_models(case, approximate)
    x = inputs()
    expected = ours(x).detach()
    buffer = io.BytesIO()
    torch.save(ours, buffer)  # the whole module, as torch.save(model) users do
    buffer.seek(0)
    for copy in (copy_module(ours), torch.load(buffer, weights_only=False)):
        assert_same_bits_and_grads(copy, ours, x)
    with torch.inference_mode():
        assert_bitwise_equal(ours(x), expected)
    assert_same_bits_and_grads(Checkpointed(ours), ours, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # Linear runs in bfloat16, and so do gelu_ext's ops
        out, reference = ours(x), twin(x)
    assert out.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.float(), atol=3e-2, rtol=3e-2)  # a few bfloat16 roundings
    out.float().square().sum().backward()  # a bias cast to bfloat16 gets its float32 gradient
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters() if p.requires_grad
               and p.grad is not None)  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for result in pool.map(lambda _: ours(x).detach(), range(32)):
            assert_bitwise_equal(result, expected)


class Checkpointed(nn.Module):
    """Activation checkpointing: the forward runs again during backward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=False)


def copy_module(module):
    import copy

    return copy.deepcopy(module)


@cases
@modes
def test_torch_jit_script_runs_the_kernels_and_trains_and_saves(case, approximate):
    ours, _ = make_models(case, approximate)
    scripted = torch.jit.script(ours)
    assert f"gelu_ext::{OP_OF_CASE[case]}" in str(scripted.inlined_graph)
    x = inputs()
    assert_same_bits_and_grads(scripted, ours, x)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    assert_same_bits_and_grads(torch.jit.load(buffer), ours, x)


@cases
@modes
def test_torch_jit_trace_with_its_checks(case, approximate):
    ours, _ = make_models(case, approximate)
    x = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no value frozen into the trace
        traced = torch.jit.trace(ours, (x,), check_trace=True, check_inputs=[(inputs(7),)])
    assert f"gelu_ext::{OP_OF_CASE[case]}" in str(traced.inlined_graph)
    assert_same_bits_and_grads(traced, ours, inputs(3))  # another batch size: nothing shape-specific was recorded


@cases
@modes
def test_torch_fx_records_one_call_that_transforms_and_reexecution_keep(case, approximate):
    ours, _ = make_models(case, approximate)
    graph_module = torch.fx.symbolic_trace(ours)
    calls = [n for n in graph_module.graph.nodes if n.op == "call_function" and "gelu_ext" in n.target.__module__]
    assert len(calls) == 1, [n.target for n in calls]
    x = inputs()
    torch.fx.passes.shape_prop.ShapeProp(graph_module).propagate(x)  # a transform that runs every node
    assert calls[0].meta["tensor_meta"].shape[-1] == HIDDEN
    graph_module.recompile()
    assert_same_bits_and_grads(graph_module, ours, x)
    copy = torch.fx.GraphModule(graph_module, graph_module.graph)  # re-executed from the graph alone
    assert_same_bits_and_grads(copy, ours, x)


@cases
@modes
def test_torch_compile_fullgraph_and_torch_export_keep_the_op(case, approximate):
    ours, _ = make_models(case, approximate)
    x = inputs()
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    assert_same_bits_and_grads(compiled, ours, x)
    exported = torch.export.export(ours, (x,))
    assert gelu_ext_op_targets(exported.graph) == [f"gelu_ext.{OP_OF_CASE[case]}.default"]
    assert_bitwise_equal(exported.module()(x), ours(x))
    decomposed = exported.run_decompositions()  # the core-ATen decompositions leave a custom op alone
    assert gelu_ext_op_targets(decomposed.graph) == [f"gelu_ext.{OP_OF_CASE[case]}.default"]


@pytest.mark.slow
@modes
def test_aot_inductor_runs_the_kernels(tmp_path, approximate):
    # One model with every public name (one AOTInductor build per mode: ~30 s each on 2 cores)
    class Everything(nn.Module):
        def __init__(self):
            super().__init__()
            self.models = nn.ModuleList(make_models(case, approximate)[0] for case in CASES)

        def forward(self, x):
            return torch.stack([m(x) for m in self.models])

    model = Everything().eval()
    x = inputs()
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
        assert sorted(set(gelu_ext_op_targets(exported.graph))) == sorted(
            {f"gelu_ext.{op}.default" for op in OP_OF_CASE.values()}
        )
        package = torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp_path / "model.pt2"))
        loaded = torch._inductor.aoti_load_package(package)
        # the Linear layers are inductor's own GEMMs, which round differently from eager's: close, not bitwise
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=1e-6)


onnx = pytest.importorskip("onnx", reason="onnx is a test dependency (scripts/quickstart.sh installs it)")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency")


def export_onnx(model, x, path, dynamo: bool, opset: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and progress notices
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, opset_version=opset, input_names=["x"],
                          dynamic_axes=None if dynamo else {"x": {0: "batch"}},
                          dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamo else None)  # fmt: skip
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def run_onnx(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def onnx_ops(proto) -> set[str]:
    return {node.op_type for node in proto.graph.node}


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
@cases
@modes
def test_onnx_export_holds_what_nn_gelu_exports_and_runs_in_onnxruntime(tmp_path, dynamo, case, approximate):
    ours, twin = make_models(case, approximate)
    ours.eval()
    twin.eval()
    x = inputs()
    proto = export_onnx(ours, x, tmp_path / "ours.onnx", dynamo, opset=20)
    if case != "gelu_backward" or dynamo:  # the TorchScript exporter has no translation of aten's gelu_backward
        twin_proto = export_onnx(twin, x, tmp_path / "twin.onnx", dynamo, opset=20)
        # the same ONNX ops as the torch-ops twin's export; LinearGELU's matmul and bias add may be two (twin: Gemm)
        extra = {"MatMul", "Add"} if case == "LinearGELU" else set()
        assert onnx_ops(twin_proto) <= onnx_ops(proto) <= onnx_ops(twin_proto) | extra
    if case != "gelu_backward":  # aten's gelu_backward exports as its elementary decomposition
        assert "Gelu" in onnx_ops(proto)
    assert not any("gelu_ext" in node.domain or "gelu_ext" in node.op_type for node in proto.graph.node)
    for batch in (5, 9):  # a dynamic batch
        xb = inputs(batch)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(tmp_path / "ours.onnx", xb), ours(xb), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
def test_onnx_export_below_opset_20_is_the_composite(tmp_path, dynamo):
    # Gelu is an ONNX op from opset 20 on; before it the exporters write torch's own composite (Erf / Tanh).
    for approximate, function in (("none", "Erf"), ("tanh", "Tanh")):
        ours, _ = make_models("GELU", approximate)
        x = inputs()
        proto = export_onnx(ours.eval(), x, tmp_path / f"{approximate}.onnx", dynamo, opset=18)
        assert function in onnx_ops(proto) and "Gelu" not in onnx_ops(proto)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(tmp_path / f"{approximate}.onnx", x), ours(x), atol=1e-5, rtol=1e-4)


@modes
def test_onnx_export_of_a_scripted_model_translates_the_ops(tmp_path, approximate):
    # A scripted model holds the ops themselves (gelu_ext::gelu, ...): their ONNX translations are torch's GELU's.
    for case in ("GELU", "bias_gelu", "geglu"):
        ours, _ = make_models(case, approximate)
        scripted = torch.jit.script(ours.eval())
        x = inputs()
        proto = export_onnx(scripted, x, tmp_path / f"{case}.onnx", dynamo=False, opset=20)
        assert "Gelu" in onnx_ops(proto)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(tmp_path / f"{case}.onnx", x), ours(x), atol=1e-5, rtol=1e-4)
        proto = export_onnx(scripted, x, tmp_path / f"{case}-17.onnx", dynamo=False, opset=17)
        assert "Gelu" not in onnx_ops(proto)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(tmp_path / f"{case}-17.onnx", x), ours(x), atol=1e-5, rtol=1e-4)


LAZY_ONNX_SCRIPT = """
import io, sys, torch
{imports}
assert {onnx_before} == ('torch.onnx' in sys.modules), 'import order'
model = torch.jit.script(torch.nn.Sequential(gelu_ext.GELU(), gelu_ext.LinearGELU(4, 4, approximate='tanh')))
buffer = io.BytesIO()
torch.onnx.export(model, (torch.randn(2, 4),), buffer, dynamo=False, opset_version=20)  # torch.onnx loads here
import onnx
ops = [node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node]
assert ops.count('Gelu') == 2, ops
"""


@pytest.mark.slow
@pytest.mark.parametrize("onnx_first", [False, True], ids=["gelu_ext first", "torch.onnx first"])
def test_import_gelu_ext_leaves_torch_onnx_unimported_and_exports_once_it_loads(onnx_first):
    """`import gelu_ext` does not import torch.onnx (26 modules, most of gelu_ext's own import time); its symbolic
    functions register when torch.onnx loads, whichever comes first (fresh interpreters: this one has both)."""
    import subprocess
    import sys

    imports = "import torch.onnx, gelu_ext" if onnx_first else "import gelu_ext"
    script = LAZY_ONNX_SCRIPT.format(imports=imports, onnx_before=onnx_first)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# ---- torch.func.vmap: batching rules -------------------------------------------------------------------------------


class CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the gelu_ext kernel calls below every transform."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "gelu_ext":
            name = func._opname
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def vmap_cases(approximate):
    """(name, function, batched args, in_dims) for every public function, each with an unbatched operand too."""
    b, rows, cols = 6, 3, 8
    x, g, bias = torch.randn(b, rows, cols), torch.randn(b, rows, cols), torch.randn(b, cols)
    return [
        ("gelu", lambda t: gelu_ext.gelu(t, approximate), (x,), 0),
        ("gelu_backward", lambda a, t: gelu_ext.gelu_backward(a, t, approximate), (g, x[0]), (0, None)),
        ("bias_gelu", lambda t, c: gelu_ext.bias_gelu(t, c, approximate), (x, bias[0]), (0, None)),
        ("bias_gelu", lambda t, c: gelu_ext.bias_gelu(t, c, approximate), (x, bias), (0, 0)),
        ("bias_gelu", lambda t, c: gelu_ext.bias_gelu(t, c, approximate), (x[0], bias), (None, 0)),
        ("geglu", lambda a, t: gelu_ext.geglu(a, t, approximate), (x, g.transpose(0, 1)), (0, 1)),
    ]


@modes
def test_vmap_is_one_kernel_call_with_each_entrys_bits(approximate):
    for name, function, args, in_dims in vmap_cases(approximate):
        with warnings.catch_warnings(), CountOps() as counter:
            warnings.simplefilter("error")  # PyTorch's per-entry fallback warns
            batched = torch.func.vmap(function, in_dims=in_dims)(*args)
        assert counter.counts == {name: 1}, (name, counter.counts)
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,)
        for i in range(batched.shape[0]):
            entry = [a if d is None else a.select(d, i) for a, d in zip(args, dims, strict=True)]
            assert_bitwise_equal(batched[i], function(*entry))


@modes
def test_vmap_of_the_backward_ops_keeps_each_entrys_bias_gradient(approximate):
    # jacrev and per-sample gradients batch the backward ops; grad_bias must sum each entry's own rows
    x, bias = torch.randn(5, 4, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)

    def loss(t, c):
        return gelu_ext.bias_gelu(t, c, approximate).sin().sum()

    with warnings.catch_warnings(), CountOps() as counter:
        warnings.simplefilter("error")
        per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(x, bias)
    assert counter.counts == {"bias_gelu": 1, "bias_gelu_backward": 1}
    for i in range(5):
        expected = torch.func.grad(loss, argnums=(0, 1))(x[i], bias[i])
        for a, e in zip(per_sample, expected, strict=True):
            torch.testing.assert_close(a[i], e, atol=1e-12, rtol=1e-12)
    jacobian = torch.func.jacrev(lambda t: gelu_ext.gelu(t, approximate))(x[0, 0])
    torch.testing.assert_close(jacobian, torch.diag(gelu_ext.gelu_backward(torch.ones(8, dtype=torch.float64),
                                                                           x[0, 0], approximate)))  # fmt: skip


# ---- argument errors -----------------------------------------------------------------------------------------------

PUBLIC_CALLS = {
    "gelu": (lambda a: gelu_ext.gelu(a), ["x"]),
    "gelu_backward": (lambda a, b: gelu_ext.gelu_backward(a, b), ["grad_output", "x"]),
    "bias_gelu": (lambda a, b: gelu_ext.bias_gelu(a, b), ["x", "bias"]),
    "geglu": (lambda a, b: gelu_ext.geglu(a, b), ["gate", "up"]),
}


@pytest.mark.parametrize("bad", [[1.0, 2.0], None, 1.5, "x"], ids=["list", "None", "float", "str"])
@pytest.mark.parametrize("function", PUBLIC_CALLS)
def test_non_tensor_arguments_are_a_type_error_naming_the_argument(function, bad):
    np = pytest.importorskip("numpy")
    call, names = PUBLIC_CALLS[function]
    for position, name in enumerate(names):
        for value in (bad, np.ones(4, dtype=np.float32)):
            args = [torch.randn(4) for _ in names]
            args[position] = value
            with pytest.raises(TypeError, match=rf"gelu_ext\.{function}\(\): argument '{name}' must be a Tensor"):
                call(*args)
    for module in (gelu_ext.GELU(), gelu_ext.GEGLU()):
        with pytest.raises(TypeError, match="must be a Tensor"):
            module([1.0, 2.0])


MIXED_DEVICE_CALLS = [
    ("bias_gelu", lambda: torch.ops.gelu_ext.bias_gelu(torch.randn(3, 4), torch.randn(4, device="meta"))),
    ("bias_gelu", lambda: gelu_ext.bias_gelu(torch.randn(3, 4, device="meta"), torch.randn(4))),
    ("geglu", lambda: torch.ops.gelu_ext.geglu(torch.randn(3, 4), torch.randn(3, 4, device="meta"))),
    ("geglu", lambda: gelu_ext.geglu(torch.randn(3, 4, device="meta"), torch.randn(3, 4))),
    ("gelu_backward", lambda: torch.ops.gelu_ext.gelu_backward(torch.randn(3), torch.randn(3, device="meta"))),
    ("gelu_backward", lambda: gelu_ext.gelu_backward(torch.randn(3, device="meta"), torch.randn(3))),
    ("bias_gelu_backward", lambda: torch.ops.gelu_ext.bias_gelu_backward(torch.randn(3, 4, device="meta"),
                                                                         torch.randn(3, 4), torch.randn(4))),
    ("geglu_backward", lambda: torch.ops.gelu_ext.geglu_backward(torch.randn(3, 4), torch.randn(3, 4),
                                                                 torch.randn(3, 4, device="meta"))),
]  # fmt: skip


@pytest.mark.parametrize(
    "op, call", MIXED_DEVICE_CALLS, ids=[f"{op}-{i}" for i, (op, _) in enumerate(MIXED_DEVICE_CALLS)]
)
def test_mixed_devices_are_an_error_never_an_unwritten_tensor(op, call):
    # A meta operand sends the call to the fake kernel, which used to return a real, uninitialized CPU tensor.
    with pytest.raises(RuntimeError, match=rf"gelu_ext\.{op}: \w+ is on (meta|cpu) but \w+ is on (cpu|meta)"):
        call()


@pytest.mark.skipif(not torch.cuda.is_available() or not gelu_ext.build_info()["with_cuda"], reason="needs a GPU")
def test_mixed_cpu_and_cuda_operands_are_an_error():
    x, bias = torch.randn(3, 4, device="cuda"), torch.randn(4)
    calls = (
        lambda: gelu_ext.bias_gelu(x, bias),
        lambda: gelu_ext.geglu(x, x.cpu()),
        lambda: gelu_ext.gelu_backward(x.cpu(), x),
        lambda: gelu_ext.bias_gelu(x.cpu(), bias.cuda()),
    )
    for call in calls:
        with pytest.raises(RuntimeError, match=r"is on (cuda:0|cpu) but \w+ is on (cpu|cuda:0)"):
            call()


def test_meta_tensors_alone_still_give_meta_results():
    x, bias = torch.randn(3, 4, device="meta"), torch.randn(4, device="meta")
    assert gelu_ext.bias_gelu(x, bias).device.type == "meta"
    assert gelu_ext.geglu(x, x).device.type == "meta"
    assert gelu_ext.gelu(x).device.type == "meta"


# ---- signed zeros --------------------------------------------------------------------------------------------------


def _sign_bits(t: torch.Tensor) -> torch.Tensor:
    return torch.signbit(t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@modes
def test_signed_zeros_follow_ieee_products_and_sums_in_every_op(dtype, approximate):
    # gelu(x) = x Phi(x) keeps x's sign at zero; each op's zero results carry the sign IEEE arithmetic gives the
    # same formula: gelu(-0) = -0, (-0) * gelu'(x) = -0 where gelu' > 0, -0 + -0 = -0 but -0 + +0 = +0.
    zero, neg = torch.tensor([0.0], dtype=dtype), torch.tensor([-0.0], dtype=dtype)
    one = torch.ones(1, dtype=dtype)
    for x in (zero, neg):
        assert_bitwise_equal(gelu_ext.gelu(x, approximate), x)
        assert_bitwise_equal(gelu_ext.gelu_backward(x, one, approximate), x)  # gelu'(1) > 0
        assert_bitwise_equal(gelu_ext.gelu_backward(x, -one, approximate), -x)  # gelu'(-1) < 0
        for bias, expected in ((neg, x), (zero, zero)):
            assert_bitwise_equal(gelu_ext.bias_gelu(x.reshape(1, 1), bias, approximate).flatten(), expected)
        for up in (one, -one):
            assert_bitwise_equal(gelu_ext.geglu(x, up, approximate), x * up)
        assert_bitwise_equal(gelu_ext.geglu(one, x, approximate), x)  # gelu(1) > 0
        grad_x, grad_bias = torch.ops.gelu_ext.bias_gelu_backward(x.reshape(1, 1), one.reshape(1, 1), zero,
                                                                   approximate)  # fmt: skip
        assert_bitwise_equal(grad_x.flatten(), x)
        assert_bitwise_equal(grad_bias, grad_x.sum(0))  # torch's sum of one -0 is +0, as the column sum's
        grad_gate, grad_up = torch.ops.gelu_ext.geglu_backward(x, one, one, approximate)
        assert_bitwise_equal(grad_gate, x)
        assert_bitwise_equal(grad_up, x)
    # and in a vector, where the kernels' vector paths run (the loop above is the scalar tail)
    signs = torch.tensor([0.0, -0.0] * 64, dtype=dtype)
    assert_bitwise_equal(gelu_ext.gelu(signs, approximate), signs)
    assert torch.equal(_sign_bits(gelu_ext.geglu(signs, -torch.ones_like(signs), approximate)), ~_sign_bits(signs))
