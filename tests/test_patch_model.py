"""gelu_ext.patch_model on real model classes from small configs (random init, offline): what it replaces and fuses,
outputs and gradients against the unpatched model in train and eval mode, state_dict round trips, torch.compile;
the registry, the report and its refusals; the `kernels` layers for transformers' kernel mechanism.

Every model is built with dropout 0 (or has none), so train mode is deterministic and its outputs comparable."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import gelu_ext
from gelu_ext import patching
from gelu_ext.testing import assert_bitwise_equal

ATOL, RTOL = 2e-5, 1e-4  # float32: GELU's, the matmul's and the fused epilogue's rounding differ, nothing more


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def _outputs_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = _first_tensor(model(*inputs))
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)  # a loss that sees every output
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def assert_same_function(original, patched, inputs, what=""):
    """Outputs and every parameter's gradient agree, in eval and in train mode."""
    for training in (False, True):
        original.train(training)
        patched.train(training)
        out, grads = _outputs_and_grads(original, inputs)
        patched_out, patched_grads = _outputs_and_grads(patched, inputs)
        where = f"{what} {'train' if training else 'eval'}"
        torch.testing.assert_close(patched_out, out, atol=ATOL, rtol=RTOL, msg=lambda m, w=where: f"{w} output: {m}")
        assert patched_grads.keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(patched_grads[name], grad, atol=ATOL, rtol=RTOL,
                                       msg=lambda m, w=where, n=name: f"{w} grad {n}: {m}")  # fmt: skip


def check_model(make, inputs, replaced, fused, left=0, fuse=True):
    """Patch a fresh model and check the counts, the function, shared parameters and state_dict round trips."""
    torch.manual_seed(0)
    original = make()
    patched = copy.deepcopy(original)
    report = gelu_ext.patch_model(patched, fuse=fuse)
    assert report.counts() == {"replaced": replaced, "fused": fused, "left": left}, str(report)
    assert_same_function(original, patched, inputs, type(original).__name__)
    # the same keys, in the same order, with the same values
    original_state, patched_state = original.state_dict(), patched.state_dict()
    assert list(patched_state) == list(original_state)
    for key, value in original_state.items():
        assert_bitwise_equal(patched_state[key], value)
    # an unpatched checkpoint loads into a patched model and back (strict: no missing or unexpected keys)
    torch.manual_seed(1)
    other = make()
    gelu_ext.patch_model(other, fuse=fuse)
    other.load_state_dict(original_state)
    fresh = make()
    fresh.load_state_dict(other.state_dict())
    assert_same_function(original, other, inputs, "loaded")
    assert_same_function(original, fresh, inputs, "reloaded")
    return original, patched, report


def _kinds(entries):
    return sorted({(e.original, getattr(e, "replacement", getattr(e, "reason", None))) for e in entries})


# ------------------------------------------------------------------------------------------------------------------
# transformers
# ------------------------------------------------------------------------------------------------------------------
def _ids(vocab=64, shape=(2, 7)):
    return (torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(3)),)


def _bert_config(transformers, **kwargs):
    return transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kwargs,
    )


def test_bert_intermediate_layers_are_fused():
    transformers = pytest.importorskip("transformers")
    config = _bert_config(transformers)
    _, patched, report = check_model(lambda: transformers.BertModel(config), _ids(), replaced=0, fused=2)
    assert _kinds(report.fused) == [("transformers.BertIntermediate", "LinearGELU(dense + intermediate_act_fn, none)")]
    intermediate = patched.encoder.layer[0].intermediate
    assert isinstance(intermediate.dense, gelu_ext.LinearGELU) and intermediate.dense.approximate == "none"
    assert isinstance(intermediate.intermediate_act_fn, nn.Identity)
    assert "2 fused" in str(report) and "encoder.layer.0.intermediate" in str(report)


def test_bert_unfused_swaps_only_the_activations():
    transformers = pytest.importorskip("transformers")
    config = _bert_config(transformers)
    _, patched, report = check_model(lambda: transformers.BertModel(config), _ids(), replaced=2, fused=0, fuse=False)
    assert _kinds(report.replaced) == [("transformers.GELUActivation", "gelu_ext.GELU('none')")]
    assert type(patched.encoder.layer[1].intermediate.intermediate_act_fn) is gelu_ext.GELU


def test_gpt2_mlp_conv1d_transposed_weight_is_fused():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)  # fmt: skip
    _, patched, report = check_model(lambda: transformers.GPT2Model(config), _ids(), replaced=0, fused=2)
    assert _kinds(report.fused) == [("transformers.GPT2MLP", "Conv1DGELU(c_fc + act, tanh)")]  # gelu_new: the tanh form
    c_fc = patched.h[0].mlp.c_fc
    assert isinstance(c_fc, patching.Conv1DGELU) and c_fc.weight.shape == (32, 128)  # [in, out], as Conv1D stores it


def test_vit_mlps_are_fused():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=16, patch_size=8, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0)  # fmt: skip
    pixels = (torch.randn(2, 3, 16, 16),)
    _, _, report = check_model(lambda: transformers.ViTModel(config, add_pooling_layer=False), pixels, 0, fused=2)
    assert _kinds(report.fused) == [("transformers.ViTMLP", "LinearGELU(fc1 + activation_fn, none)")]


def _t5_config(transformers, num_layers=2):
    return transformers.T5Config(d_model=32, d_ff=64, num_layers=num_layers, num_heads=2, d_kv=16, vocab_size=64,
                                 feed_forward_proj="gated-gelu", dropout_rate=0.0)  # fmt: skip


def test_t5_v1_1_gated_gelu_becomes_geglu():
    transformers = pytest.importorskip("transformers")
    config = _t5_config(transformers)
    _, patched, report = check_model(lambda: transformers.T5EncoderModel(config), _ids(), replaced=0, fused=2)
    assert _kinds(report.fused) == [("transformers.T5DenseGatedActDense", "GatedGELU(geglu, tanh)")]
    ff = patched.encoder.block[0].layer[1].DenseReluDense
    assert isinstance(ff, patching.GatedGELU) and list(ff._modules) == ["wi_0", "wi_1", "wo", "dropout"]


def test_t5_unfused_keeps_its_classes_and_swaps_the_activation():
    transformers = pytest.importorskip("transformers")
    config = _t5_config(transformers)
    _, patched, report = check_model(lambda: transformers.T5EncoderModel(config), _ids(), 2, 0, fuse=False)
    ff = patched.encoder.block[0].layer[1].DenseReluDense
    assert type(ff).__name__ == "T5DenseGatedActDense" and type(ff.act) is gelu_ext.GELU
    assert _kinds(report.replaced) == [("transformers.NewGELUActivation", "gelu_ext.GELU('tanh')")]


def test_gemma_mlp_gate_becomes_geglu():
    transformers = pytest.importorskip("transformers")
    config = transformers.GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, head_dim=16, vocab_size=64)  # fmt: skip
    _, patched, report = check_model(lambda: transformers.GemmaModel(config), _ids(), replaced=0, fused=2)
    assert _kinds(report.fused) == [("transformers.GemmaMLP", "GatedGELU(geglu, tanh)")]  # gelu_pytorch_tanh
    assert list(patched.layers[0].mlp._modules) == ["gate_proj", "up_proj", "down_proj"]


def test_llama_style_mlp_with_a_gelu_gate_is_recognized_by_its_forward_and_silu_is_left_alone():
    transformers = pytest.importorskip("transformers")
    kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    check_model(lambda: transformers.LlamaModel(transformers.LlamaConfig(hidden_act="gelu", **kwargs)), _ids(), 0, 1)
    check_model(lambda: transformers.LlamaModel(transformers.LlamaConfig(hidden_act="silu", **kwargs)), _ids(), 0, 0)


def test_clip_with_quick_gelu_is_numerically_unchanged():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, vocab_size=64)  # fmt: skip
    assert config.hidden_act == "quick_gelu"  # CLIP's default
    torch.manual_seed(0)
    original = transformers.CLIPTextModel(config).eval()
    patched = copy.deepcopy(original)
    report = gelu_ext.patch_model(patched)
    assert report.counts() == {"replaced": 0, "fused": 0, "left": 2}
    assert all("1.702" in entry.reason for entry in report.left)
    (ids,) = _ids()
    assert_bitwise_equal(patched(ids).last_hidden_state, original(ids).last_hidden_state)


def _activation(name, **kwargs):
    from transformers import activations

    return getattr(activations, name)(**kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "mode"),
    [
        ("GELUActivation", {}, "none"),
        ("GELUActivation", {"use_gelu_python": True}, "none"),
        ("GELUTanh", {}, "tanh"),
        ("GELUTanh", {"use_gelu_tanh_python": True}, "tanh"),
        ("NewGELUActivation", {}, "tanh"),
        ("FastGELUActivation", {}, "tanh"),
        ("AccurateGELUActivation", {}, "tanh"),
    ],
)
def test_transformers_activations_get_the_mode_their_forward_computes(name, kwargs, mode):
    pytest.importorskip("transformers")
    model = nn.Sequential(_activation(name, **kwargs))
    report = gelu_ext.patch_model(model)
    assert report.counts()["replaced"] == 1 and model[0].approximate == mode
    # float64 on [-6, 6]: the two forms differ by ~1e-3 there, the original and the replacement by ~1e-12 at most
    # (FastGELU's sqrt(2/pi) has 10 digits), away from the deep tail where the originals cancel.
    x = torch.linspace(-6, 6, 4001, dtype=torch.float64)
    torch.testing.assert_close(model(x), _activation(name, **kwargs)(x), atol=1e-11, rtol=1e-10)


def test_quick_and_clipped_gelu_and_unknown_gelus_are_left_with_reasons():
    pytest.importorskip("transformers")

    class MyGELU(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.6 * x)

    model = nn.Sequential(nn.Linear(4, 4), _activation("QuickGELUActivation"), nn.Linear(4, 4),
                          _activation("ClippedGELUActivation", min=-10, max=10), nn.Linear(4, 4), MyGELU())  # fmt: skip
    before = copy.deepcopy(model)
    report = gelu_ext.patch_model(model)
    assert report.counts() == {"replaced": 0, "fused": 0, "left": 3}
    reasons = {entry.original.rsplit(".", 1)[-1]: entry.reason for entry in report.left}
    assert "1.702" in reasons["QuickGELUActivation"] and "clamps" in reasons["ClippedGELUActivation"]
    assert "unknown" in reasons["MyGELU"]
    x = torch.randn(3, 4)
    assert_bitwise_equal(model(x), before(x))


def test_gelu_activation_with_an_unexpected_function_is_left():
    pytest.importorskip("transformers")
    act = _activation("GELUActivation")
    act.act = torch.nn.functional.silu  # no longer GELU: must not become one
    report = gelu_ext.patch_model(nn.Sequential(nn.Linear(2, 2), act))
    assert report.counts() == {"replaced": 0, "fused": 0, "left": 1} and "not exactly GELU" in report.left[0].reason


# ------------------------------------------------------------------------------------------------------------------
# timm, diffusers, torchvision
# ------------------------------------------------------------------------------------------------------------------
def test_timm_vit_mlps_are_fused():
    timm = pytest.importorskip("timm")

    def make():
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=32,
                                 depth=2, num_heads=2, num_classes=5)  # fmt: skip

    _, patched, report = check_model(make, (torch.randn(2, 3, 16, 16),), replaced=0, fused=2)
    assert _kinds(report.fused) == [("timm.Mlp", "LinearGELU(fc1 + act, none)")]
    assert isinstance(patched.blocks[0].mlp.fc1, gelu_ext.LinearGELU)


@pytest.mark.parametrize("gate_last", [True, False])
def test_timm_glu_mlp_with_a_gelu_gate_becomes_geglu(gate_last):
    layers = pytest.importorskip("timm.layers")

    def make():
        return nn.Sequential(layers.GluMlp(16, 64, act_layer=nn.GELU, gate_last=gate_last, norm_layer=nn.LayerNorm))

    _, patched, _ = check_model(make, (torch.randn(2, 5, 16),), replaced=0, fused=1)
    assert isinstance(patched[0], patching.GatedGELU) and patched[0].gate_is_second_half == gate_last


def test_timm_gelu_layers_and_quick_gelu():
    pytest.importorskip("timm")
    from timm.layers import activations

    model = nn.Sequential(activations.GELU(), activations.GELUTanh(), activations.QuickGELU())
    report = gelu_ext.patch_model(model)
    assert [type(m) for m in model] == [gelu_ext.GELU, gelu_ext.GELU, activations.QuickGELU]
    assert [model[0].approximate, model[1].approximate] == ["none", "tanh"] and report.counts()["left"] == 1


@pytest.mark.parametrize(
    ("activation_fn", "fused", "left"),
    [("geglu", 1, 0), ("gelu", 1, 0), ("gelu-approximate", 1, 0), ("geglu-approximate", 0, 1)],
)
def test_diffusers_feedforward(activation_fn, fused, left):
    attention = pytest.importorskip("diffusers.models.attention")
    _, _, report = check_model(lambda: attention.FeedForward(16, mult=2, activation_fn=activation_fn),
                               (torch.randn(2, 5, 16),), replaced=0, fused=fused, left=left)  # fmt: skip
    if activation_fn == "geglu":
        assert _kinds(report.fused) == [("diffusers.GEGLU", "GatedGELU(geglu, none)")]
    if activation_fn == "gelu-approximate":
        assert _kinds(report.fused) == [("diffusers.GELU", "ProjectionGELU(LinearGELU, tanh)")]


def test_diffusers_geglu_unfused_still_runs_gelu_ext():
    attention = pytest.importorskip("diffusers.models.attention")
    _, _, report = check_model(lambda: attention.FeedForward(16, activation_fn="geglu"),
                               (torch.randn(2, 5, 16),), replaced=1, fused=0, fuse=False)  # fmt: skip
    assert _kinds(report.replaced) == [("diffusers.GEGLU", "GatedGELU(gelu * up, none)")]


def test_diffusers_basic_transformer_block_with_geglu():
    attention = pytest.importorskip("diffusers.models.attention")

    def make():
        return attention.BasicTransformerBlock(16, num_attention_heads=2, attention_head_dim=8, activation_fn="geglu")

    check_model(make, (torch.randn(2, 5, 16),), replaced=0, fused=1)


def test_torchvision_vit_mlp_blocks_are_fused():
    models = pytest.importorskip("torchvision.models")

    def make():
        return models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                        mlp_dim=64, num_classes=5)  # fmt: skip

    _, patched, report = check_model(make, (torch.randn(2, 3, 16, 16),), replaced=0, fused=2)
    assert _kinds(report.fused) == [("torchvision.MLPBlock", "LinearGELU(0 + 1, none)")]
    mlp = patched.encoder.layers[0].mlp
    assert isinstance(mlp[0], gelu_ext.LinearGELU) and isinstance(mlp[1], nn.Identity)


# ------------------------------------------------------------------------------------------------------------------
# Plain PyTorch, the registry, the refusals
# ------------------------------------------------------------------------------------------------------------------
def test_sequential_pairs_and_a_shared_activation():
    act = nn.GELU(approximate="tanh")  # one instance in two places: each place is patched

    def make():
        return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), act, nn.Linear(16, 8), act, nn.ReLU())

    original, patched, _ = check_model(make, (torch.randn(4, 8),), replaced=0, fused=3)
    assert [type(m).__name__ for m in patched] == ["LinearGELU", "Identity"] * 3 + ["ReLU"]
    assert [patched[i].approximate for i in (0, 2, 4)] == ["none", "tanh", "tanh"]
    assert patched[0].weight is not original[0].weight and patched[0].weight.data_ptr() != 0  # a deep copy's own
    check_model(make, (torch.randn(4, 8),), replaced=2, fused=0, fuse=False)  # the shared one: one new instance


def test_parameters_are_shared_not_copied():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    weight, bias = model[0].weight, model[0].bias
    gelu_ext.patch_model(model)
    assert model[0].weight is weight and model[0].bias is bias


def test_patching_twice_changes_nothing_more():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.GELU())
    first = gelu_ext.patch_model(model)
    assert first.counts() == {"replaced": 1, "fused": 1, "left": 0}
    snapshot = repr(model)
    assert gelu_ext.patch_model(model).counts() == {"replaced": 0, "fused": 0, "left": 0} and repr(model) == snapshot


def test_unfused_then_fused():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    gelu_ext.patch_model(model, fuse=False)
    assert gelu_ext.patch_model(model).counts()["fused"] == 1 and isinstance(model[0], gelu_ext.LinearGELU)


@pytest.mark.parametrize("activation_fn", ["geglu", "gelu"])
def test_diffusers_unfused_then_fused(activation_fn):
    attention = pytest.importorskip("diffusers.models.attention")
    torch.manual_seed(0)
    original = attention.FeedForward(16, activation_fn=activation_fn)
    model = copy.deepcopy(original)
    assert gelu_ext.patch_model(model, fuse=False).counts()["replaced"] == 1
    assert gelu_ext.patch_model(model).counts() == {"replaced": 0, "fused": 1, "left": 0}
    assert model.net[0].fused and gelu_ext.patch_model(model).counts()["fused"] == 0
    assert_same_function(original, model, (torch.randn(2, 5, 16),))
    assert list(model.state_dict()) == list(original.state_dict())


def test_hooks_and_instance_forwards_are_not_silently_dropped():
    hooked = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    hooked[1].register_forward_hook(lambda module, args, out: out * 2)
    report = gelu_ext.patch_model(hooked)
    assert report.counts() == {"replaced": 0, "fused": 0, "left": 2} and type(hooked[1]) is nn.GELU
    assert all("hooks" in entry.reason for entry in report.left)
    replaced_forward = nn.Sequential(nn.GELU())
    replaced_forward[0].forward = lambda x: x
    report = gelu_ext.patch_model(replaced_forward)
    assert report.counts()["left"] == 1 and "instance" in report.left[0].reason


def test_the_model_itself_cannot_be_replaced_in_place():
    model = nn.GELU()
    report = gelu_ext.patch_model(model)
    assert report.counts() == {"replaced": 0, "fused": 0, "left": 1} and "model itself" in report.left[0].reason


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.down = nn.Linear(16, 8)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class _NotWhatTheEntrySays(_Block):
    def forward(self, x):
        return self.down(self.act(self.up(x) * 2))  # the activation sees more than the linear's output


def test_user_registration_of_a_linear_gelu_block():
    model = nn.Sequential(_Block())
    assert gelu_ext.patch_model(copy.deepcopy(model)).counts() == {"replaced": 1, "fused": 0, "left": 0}
    patching.register_linear_gelu(_Block, patching.LinearGELUSpec(linear="up", activation="act"))
    try:
        check_model(lambda: nn.Sequential(_Block()), (torch.randn(3, 8),), replaced=0, fused=1)
    finally:
        patching._LINEAR_GELU.pop(patching._key(_Block))


def test_a_registry_entry_that_does_not_fit_the_forward_is_caught_and_undone():
    patching.register_linear_gelu(_NotWhatTheEntrySays, patching.LinearGELUSpec(linear="up", activation="act"))
    try:
        model = nn.Sequential(_NotWhatTheEntrySays())
        before = copy.deepcopy(model)
        report = gelu_ext.patch_model(model)
    finally:
        patching._LINEAR_GELU.pop(patching._key(_NotWhatTheEntrySays))
    assert report.counts() == {"replaced": 1, "fused": 0, "left": 1}, str(report)  # the GELU is still swapped
    assert "registry entry" in report.left[0].reason and type(model[0].up) is nn.Linear
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x), before(x), atol=ATOL, rtol=RTOL)


def test_user_registration_of_an_activation_and_a_gated_block():
    class SquarePlusGELU(nn.Module):  # stands for a third-party GELU class under another name
        def forward(self, x):
            return torch.nn.functional.gelu(x)

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(8, 32)
            self.out = nn.Linear(16, 8)
            self.act = SquarePlusGELU()

        def forward(self, x):
            gate, up = self.w(x).chunk(2, dim=-1)
            return self.out(self.act(gate) * up)

    patching.register_activation(SquarePlusGELU, "none")
    patching.register_gated_gelu(Gated, patching.GatedGELUSpec(projection="w", gate_half="first", activation="act",
                                                                after=("out",)))  # fmt: skip
    try:
        _, patched, _ = check_model(lambda: nn.Sequential(Gated()), (torch.randn(3, 8),), replaced=0, fused=1)
        assert isinstance(patched[0], patching.GatedGELU)
    finally:
        patching._ACTIVATIONS.pop(patching._key(SquarePlusGELU))
        patching._GATED_GELU.pop(patching._key(Gated))


def test_bad_arguments_name_the_problem():
    with pytest.raises(TypeError, match=r"expected an nn\.Module"):
        gelu_ext.patch_model("bert")
    with pytest.raises(TypeError, match="fuse must be True or False"):
        gelu_ext.patch_model(nn.GELU(), fuse="yes")
    with pytest.raises(ValueError, match="approximate"):
        patching.register_activation(nn.GELU, "erf")
    with pytest.raises(ValueError, match="qualified class name"):
        patching.register_activation("GELU", "none")
    with pytest.raises(TypeError, match=r"nn\.Module class"):
        patching.register_not_gelu(int, "not a module")
    with pytest.raises(ValueError, match="either `projection` or both"):
        patching.GatedGELUSpec(gate="a", activation="act")
    with pytest.raises(ValueError, match="gate_half"):
        patching.GatedGELUSpec(projection="p", approximate="none", gate_half="left")
    with pytest.raises(ValueError, match="'cpu' and 'cuda'"):
        patching.kernel_mapping(("mps",))


def test_a_model_on_a_device_without_gelu_ext_kernels_is_refused_before_patching(monkeypatch):
    import types

    from gelu_ext import _extension

    build_info = _extension.build_info()
    monkeypatch.setattr(_extension, "build_info",
                        lambda: {**build_info, "with_cuda": False, "no_cuda_reason": "built without CUDA"})  # fmt: skip
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    assert gelu_ext.patch_model(copy.deepcopy(model)).counts()["fused"] == 1  # CPU is fine
    # a CUDA parameter (stood in for: this machine may have no GPU) on a build without CUDA kernels
    monkeypatch.setattr(
        model, "parameters", lambda recurse=True: iter([types.SimpleNamespace(device=torch.device("cuda"))])
    )
    with pytest.raises(ValueError, match=r"on 'cuda', where gelu_ext has no kernels \(built without CUDA\)"):
        gelu_ext.patch_model(model)
    assert type(model[1]) is nn.GELU  # nothing was changed


def test_bfloat16_model_matches_within_bfloat16_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)).to(torch.bfloat16)
    patched = copy.deepcopy(model)
    assert gelu_ext.patch_model(patched).counts()["fused"] == 1
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(patched(x), model(x), atol=3e-2, rtol=3e-2)


# ------------------------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True)
# ------------------------------------------------------------------------------------------------------------------
def _assert_compiles(model, inputs):
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = _first_tensor(compiled(*inputs))
    torch.testing.assert_close(out, _first_tensor(model(*inputs)), atol=ATOL, rtol=RTOL)
    out.sum().backward()


def test_compile_fullgraph_of_patched_transformers_models():
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=64, vocab_size=64))  # fmt: skip
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64,
                                                          bos_token_id=0, eos_token_id=0))  # fmt: skip
    t5 = transformers.T5EncoderModel(_t5_config(transformers, num_layers=1))
    for model in (bert, gpt2, t5):
        assert gelu_ext.patch_model(model.eval()).counts()["fused"] == 1
        _assert_compiles(model, _ids())


def test_compile_fullgraph_of_patched_timm_diffusers_torchvision_blocks():
    timm_mlp = pytest.importorskip("timm.layers").Mlp(16, 32)
    feed_forward = pytest.importorskip("diffusers.models.attention").FeedForward(16, activation_fn="geglu")
    mlp_block = pytest.importorskip("torchvision.models.vision_transformer").MLPBlock(16, 32, 0.0)
    for model in (timm_mlp, feed_forward, mlp_block):
        assert gelu_ext.patch_model(model).counts()["fused"] == 1
        _assert_compiles(model, (torch.randn(2, 5, 16),))


# ------------------------------------------------------------------------------------------------------------------
# transformers' kernel mechanism, through the `kernels` package
# ------------------------------------------------------------------------------------------------------------------
def test_kernel_mapping_covers_the_transformers_layer_names_on_cpu_and_cuda():
    mapping = patching.kernel_mapping()
    assert set(mapping) == {"GeLU", "GeluTanh", "NewGELU", "FastGELU"}
    for name, devices in mapping.items():
        assert set(devices) == {"cpu", "cuda"}
        layer = devices["cuda"].load()
        assert layer is devices["cpu"].load() and layer is patching.HUB_LAYERS[name]
    x = torch.randn(64, dtype=torch.float64)
    assert_bitwise_equal(patching.HubGELU().forward(x), gelu_ext.gelu(x))
    assert_bitwise_equal(patching.HubGELUTanh().forward(x), gelu_ext.gelu(x, "tanh"))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_kernels_kernelize_takes_the_layers_for_cpu_and_cuda(device, monkeypatch):
    # through kernels' public API only (its registry's internals moved in kernels 0.19): a module class marked with a
    # layer name, kernelized under gelu_ext's mapping alone, runs gelu_ext's layer. kernelize asks CUDA for the device's
    # compute capability to pick a repository (kept per capability); any capability (here sm_90) gets gelu_ext's, so
    # the CUDA mapping is checked without a GPU.
    kernels = pytest.importorskip("kernels")
    if device == "cuda":
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: (9, 0))
    for name, layer in patching.HUB_LAYERS.items():
        marked = type(f"Marked{name}", (torch.nn.Module,), {"forward": lambda self, x: x})
        kernels.replace_kernel_forward_from_hub(marked, name)
        model = torch.nn.Sequential(marked())
        with kernels.use_kernel_mapping(patching.kernel_mapping(), inherit_mapping=False):
            kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device=device)
        assert model[0].forward.__func__ is layer.forward, (name, device)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"])
def test_kernelize_runs_gelu_ext_in_the_transformers_activations(act):
    kernels = pytest.importorskip("kernels")
    transformers = pytest.importorskip("transformers")
    config = _bert_config(transformers, hidden_act=act)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    swapped = copy.deepcopy(model)
    gelu_ext.patch_model(swapped, fuse=False)  # gelu_ext.GELU in the same places, the same mode
    patching.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")
    act_module = model.encoder.layer[0].intermediate.intermediate_act_fn
    assert act_module.forward.__func__ in (patching.HubGELU.forward, patching.HubGELUTanh.forward)
    (ids,) = _ids()
    assert_bitwise_equal(model(ids).last_hidden_state, swapped(ids).last_hidden_state)


def test_fast_gelu_constant_is_sqrt_2_over_pi_in_float32():
    # the premise of mapping FastGELU to the tanh form: its rounded constant is the same float32 number
    assert torch.tensor(0.7978845608, dtype=torch.float32) == torch.tensor(math.sqrt(2 / math.pi), dtype=torch.float32)


def test_t5_keeps_wo_in_float32_under_bfloat16():
    # T5 keeps `wo` in float32 under half precision (_keep_in_fp32_modules) and casts the product to it
    modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    feed_forward = modeling_t5.T5DenseGatedActDense(_t5_config(transformers))
    feed_forward.wi_0.to(torch.bfloat16)
    feed_forward.wi_1.to(torch.bfloat16)
    model = nn.Sequential(feed_forward)
    patched = copy.deepcopy(model)
    assert gelu_ext.patch_model(patched).counts() == {"replaced": 0, "fused": 1, "left": 0}
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    out = patched(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x), atol=3e-2, rtol=3e-2)


# ------------------------------------------------------------------------------------------------------------------
# benchmarks/bench_models.py: behaviour only (no timing assertions)
# ------------------------------------------------------------------------------------------------------------------
def _bench_models():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_models

    return bench_models


def test_model_benchmark_smoke_writes_csv_and_plot(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("torchvision")
    bench_models = _bench_models()
    out = tmp_path / "models.csv"
    bench_models.main(["--hidden", "32", "--intermediate", "64", "--batch", "1", "--rounds", "1", "--dtypes",
                       "float32", "--providers", "patched", "--pairs", "3", "--threads", str(torch.get_num_threads()),
                       "--csv", str(out)])  # fmt: skip
    import csv

    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    assert tuple(fields) == bench_models.CSV_FIELDS
    assert {(r["model"], r["provider"]) for r in rows} == {(m, p) for m in bench_models.MODELS
                                                           for p in ("original", "patched")}  # fmt: skip
    for r in rows:
        assert float(r["ms"]) > 0 and r["dtype"] == "float32" and r["tokens"] in ("128", "197")
        assert float(r["paired_speedup_vs_original"]) > 0 and r["pairs"] == "3"
        assert float(r["paired_low"]) <= float(r["paired_speedup_vs_original"]) <= float(r["paired_high"])
        if r["provider"] == "original":
            assert float(r["speedup_vs_original"]) == 1.0 and float(r["paired_speedup_vs_original"]) == 1.0
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_model_benchmark_median_interval_is_the_order_statistics_around_the_median():
    bench_models = _bench_models()
    values = [float(v) for v in range(100, 0, -1)]  # unsorted: the interval sorts
    # n = 100: ranks 50 -+ 1.96 * 10 / 2, that is the 41st and the 60th smallest (0-based 40 and 59)
    assert bench_models.median_interval(values) == (41.0, 60.0)
    assert bench_models.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few values: their whole range
    assert bench_models.median_interval([2.0] * 7) == (2.0, 2.0)


def test_model_benchmark_validation_catches_a_wrong_model():
    pytest.importorskip("torchvision")
    bench_models = _bench_models()
    torch.manual_seed(0)
    model, seq = bench_models.make_model("vit_mlp", 16, 32)
    x, grad = torch.randn(1, seq, 16), torch.randn(1, seq, 16)
    expected = bench_models.Step(model, x, grad).outputs()
    patched = copy.deepcopy(model)
    gelu_ext.patch_model(patched)
    bench_models.check("patched", bench_models.Step(patched, x, grad), expected, torch.float32)
    patched[1] = nn.GELU()  # planted fault: GELU applied twice (the fused one and the original)
    with pytest.raises(AssertionError, match="patched output"):
        bench_models.check("patched", bench_models.Step(patched, x, grad), expected, torch.float32)


def test_local_kernel_repository_loads_offline_and_kernelizes(tmp_path, monkeypatch):
    kernels = pytest.importorskip("kernels")
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = patching.write_kernel_repository(tmp_path / "gelu_ext_layers")
    mapping = patching.kernel_config_mapping(root)
    assert mapping["NewGELU"] == f"{root}:HubGELUTanh" and set(mapping) == set(patching.HUB_LAYERS)
    repositories = {}
    for name, spec in mapping.items():
        path, layer_name = spec.split(":")
        repository = kernels.LocalLayerRepository(repo_path=Path(path), layer_name=layer_name)
        assert repository.load() is patching.HUB_LAYERS[name]  # the installed gelu_ext's class, through kernels
        repositories[name] = {"cpu": repository}
    torch.manual_seed(0)
    model = transformers.BertModel(_bert_config(transformers, hidden_act="gelu_new")).eval()
    swapped = copy.deepcopy(model)
    gelu_ext.patch_model(swapped, fuse=False)
    patching.kernelize(copy.deepcopy(model), device="cpu")  # marks the transformers classes for kernels
    with kernels.use_kernel_mapping(repositories, inherit_mapping=False):
        kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu", use_fallback=False)
    (ids,) = _ids()
    assert_bitwise_equal(model(ids).last_hidden_state, swapped(ids).last_hidden_state)
    # transformers' KernelConfig accepts the entry for this model's layer (its own checks: every entry must name a
    # layer the model has, so the BERT with gelu_new takes NewGELU's)
    config = transformers.KernelConfig({"NewGELU": mapping["NewGELU"]}, use_local_kernel=True)
    config.sanitize_kernel_mapping(model)
    with pytest.raises(ValueError, match="has no build"):
        patching.kernel_config_mapping(tmp_path)
