"""gelu_ext in the models people already run: `patch_model(model)` swaps every exact GELU for gelu_ext's and fuses the
MLP patterns it recognizes, in place, and says what it did.

    report = gelu_ext.patch_model(model)          # any nn.Module: transformers, timm, diffusers, torchvision, yours
    print(report)                                 # what was replaced, what was fused, what was left and why

What it changes (each only where the module computes exactly GELU, erf or tanh form; see the registry below):
  - activations: torch.nn.GELU, transformers' GELUActivation, GELUTanh, NewGELUActivation, FastGELUActivation and
    AccurateGELUActivation, timm's GELU and GELUTanh -> gelu_ext.GELU with the same mode;
  - Linear followed by GELU -> one module that runs the matmul and gelu_ext.bias_gelu (LinearGELU; Conv1DGELU for
    GPT-2's Conv1D, whose weight is stored transposed), sharing the parameters: nn.Sequential(..., Linear, GELU, ...)
    (torchvision's MLPBlock), transformers' BertIntermediate, ViTMLP, CLIPMLP, GPT2MLP (and MLPs whose forward is
    `h = self.<linear>(h); h = self.<act>(h)`), timm's Mlp, diffusers' GELU;
  - a GELU-gated pair -> gelu_ext.geglu: diffusers' GEGLU, timm's GluMlp, T5 v1.1's T5DenseGatedActDense, Gemma MLPs
    (down(act(gate(x)) * up(x)), which transformers' Llama-style MLPs share).
QuickGELU (x * sigmoid(1.702 x)), clipped GELU and anything unknown stay as they are, and the report says so.

State dicts keep their keys (the fused modules hold the original parameter objects under the original names), so
checkpoints load before and after patching. transformers, timm and diffusers are never imported here: classes are
recognized by their qualified names, so this works with whichever of them is installed.

Transformers' own mechanism (`use_kernel_forward_from_hub` layer names "GeLU", "GeluTanh", "NewGELU", "FastGELU"):
gelu_ext's layers are HubGELU (erf) and HubGELUTanh (tanh: GeluTanh, NewGELU, FastGELU). `kernel_mapping()` gives them
as the `kernels` package's `use_kernel_mapping` / `kernelize` accept, for CPU and CUDA, and `kernelize(model)` applies
them; `write_kernel_repository(path)` writes a local layer repository (kernels.LocalLayerRepository, or transformers'
KernelConfig(kernel_config_mapping(path), use_local_kernel=True)). transformers' own `model.kernelize()` and
KernelConfig need a kernels release that transformers accepts (5.24: 0.18.2 <= kernels < 0.19.0; older ones leave its
decorators no-ops), and its KernelConfig takes no "cpu" device (KERNELS_SUPPORTED_DEVICE_TYPES), so on CPU only the
kernels-package route works.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from .fused import bias_gelu, geglu
from .modules import GELU, LinearGELU
from .ops import check_approximate, gelu

__all__ = [
    "Conv1DGELU",
    "GatedGELU",
    "GatedGELUSpec",
    "LinearGELUSpec",
    "PatchReport",
    "ProjectionGELU",
    "kernel_config_mapping",
    "kernel_mapping",
    "kernelize",
    "patch_model",
    "register_activation",
    "register_gated_gelu",
    "register_linear_gelu",
    "register_not_gelu",
    "write_kernel_repository",
]


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _key(cls_or_name: type | str) -> str:
    if isinstance(cls_or_name, str):
        if "." not in cls_or_name:
            raise ValueError(
                f"gelu_ext.patching: {cls_or_name!r} is not a qualified class name: give the class itself or "
                f"'module.ClassName' as type(m).__module__ + '.' + type(m).__qualname__ spells it"
            )
        return cls_or_name
    if not (isinstance(cls_or_name, type) and issubclass(cls_or_name, nn.Module)):
        raise TypeError(f"gelu_ext.patching: expected an nn.Module class or its qualified name, got {cls_or_name!r}")
    return _qualified_name(cls_or_name)


# ------------------------------------------------------------------------------------------------------------------
# The registry: which classes compute exactly GELU, which hold a Linear followed by GELU, which a GELU-gated pair.
# Keys are qualified class names and matching is by exact class (a subclass may override forward).
# ------------------------------------------------------------------------------------------------------------------
ActivationRule = Callable[[nn.Module], "str | None"]  # "none" / "tanh", or None when this instance is not exact GELU


@dataclasses.dataclass(frozen=True)
class LinearGELUSpec:
    """A module whose forward applies child `activation` to the output of child `linear` and uses that output
    nowhere else: `linear` becomes the fused module (same parameters, same name) and `activation` an nn.Identity."""

    linear: str
    activation: str


@dataclasses.dataclass(frozen=True)
class GatedGELUSpec:
    """A module computing `gelu(gate) * up`, then its children `after` in order: replaced by GatedGELU, which keeps
    the original children under their names.

    The gate and up come either from two children, `gate` and `up`, or from one child `projection` whose output's last
    dimension holds both halves (`gate_half`: which half is the gate). The mode comes from child `activation` (a
    registered GELU), or is fixed by `approximate` when the module calls GELU as a function. `cast_to_weight_of`: the
    product is cast to that child's weight dtype before it (T5 keeps `wo` in float32 under half precision).
    """

    gate: str | None = None
    up: str | None = None
    projection: str | None = None
    gate_half: str = "second"
    activation: str | None = None
    approximate: str | None = None
    after: tuple[str, ...] = ()
    cast_to_weight_of: str | None = None

    def __post_init__(self):
        if (self.projection is None) == (self.gate is None or self.up is None):
            raise ValueError("GatedGELUSpec: give either `projection` or both `gate` and `up`")
        if (self.activation is None) == (self.approximate is None):
            raise ValueError("GatedGELUSpec: give either `activation` (a child) or a fixed `approximate`")
        if self.approximate is not None:
            check_approximate(self.approximate)
        if self.gate_half not in ("first", "second"):
            raise ValueError(f"GatedGELUSpec: gate_half must be 'first' or 'second', got {self.gate_half!r}")
        if self.cast_to_weight_of is not None and self.cast_to_weight_of not in self.after:
            raise ValueError("GatedGELUSpec: cast_to_weight_of must name one of the `after` children")

    def children(self) -> tuple[str, ...]:
        inputs = (self.projection,) if self.projection is not None else (self.gate, self.up)
        return (*inputs, *self.after)


_ACTIVATIONS: dict[str, ActivationRule] = {}
_NOT_GELU: dict[str, str] = {}
_LINEAR_GELU: dict[str, Callable[[nn.Module], LinearGELUSpec | None]] = {}
_GATED_GELU: dict[str, Callable[[nn.Module], GatedGELUSpec | None]] = {}
# diffusers' GELU: a projection whose forward calls F.gelu itself. (child name, rule for the mode)
_PROJECTION_GELU: dict[str, tuple[str, ActivationRule]] = {}


def _as_rule(spec_or_rule):
    return (
        spec_or_rule if callable(spec_or_rule) and not isinstance(spec_or_rule, type) else (lambda module: spec_or_rule)
    )


def register_activation(cls: type | str, approximate: str | ActivationRule) -> None:
    """Declare that instances of `cls` compute exactly GELU: `approximate` is "none" or "tanh", or a function of the
    instance that returns one of them, or None where that instance is not exact GELU (it is then left as it is)."""
    if isinstance(approximate, str):
        check_approximate(approximate)
    elif not callable(approximate):
        raise TypeError(f"register_activation: approximate must be 'none', 'tanh' or a callable, got {approximate!r}")
    _ACTIVATIONS[_key(cls)] = _as_rule(approximate)
    _NOT_GELU.pop(_key(cls), None)


def register_not_gelu(cls: type | str, reason: str) -> None:
    """Declare a GELU look-alike that must stay as it is (the report gives `reason`)."""
    _NOT_GELU[_key(cls)] = reason
    _ACTIVATIONS.pop(_key(cls), None)


def register_linear_gelu(cls: type | str, spec: LinearGELUSpec | Callable[[nn.Module], LinearGELUSpec | None]) -> None:
    """Declare a module class whose forward is `activation(linear(x))` at the spec's children (see LinearGELUSpec).
    A callable gets the instance and may return None (not this instance)."""
    if not isinstance(spec, LinearGELUSpec) and not callable(spec):
        raise TypeError(f"register_linear_gelu: expected a LinearGELUSpec or a callable, got {spec!r}")
    _LINEAR_GELU[_key(cls)] = _as_rule(spec)


def register_gated_gelu(cls: type | str, spec: GatedGELUSpec | Callable[[nn.Module], GatedGELUSpec | None]) -> None:
    """Declare a module class whose forward is `after(gelu(gate) * up)` (see GatedGELUSpec). A callable gets the
    instance and may return None (not this instance)."""
    if not isinstance(spec, GatedGELUSpec) and not callable(spec):
        raise TypeError(f"register_gated_gelu: expected a GatedGELUSpec or a callable, got {spec!r}")
    _GATED_GELU[_key(cls)] = _as_rule(spec)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _approximate_attribute(module):
    value = getattr(module, "approximate", None)
    return value if value in ("none", "tanh") else None


def _transformers_gelu(module):
    # GELUActivation.act is F.gelu, or _gelu_python (0.5 x (1 + erf(x / sqrt 2))): both the erf form.
    act = module.__dict__.get("act")
    if act is torch.nn.functional.gelu or getattr(act, "__func__", None) is getattr(type(module), "_gelu_python", 0):
        return "none"
    return None


def _transformers_gelu_tanh(module):
    # GELUTanh.act is partial(F.gelu, approximate="tanh"), or _gelu_tanh_python (PyTorch's tanh formula, same constants)
    act = module.__dict__.get("act")
    if isinstance(act, functools.partial) and act.func is torch.nn.functional.gelu and not act.args:
        return "tanh" if act.keywords == {"approximate": "tanh"} else None
    if getattr(act, "__func__", None) is getattr(type(module), "_gelu_tanh_python", 0):
        return "tanh"
    return None


def _transformers_accurate_gelu(module):
    # 0.5 x (1 + tanh(c (x + 0.044715 x^3))) with c = module.precomputed_constant: the tanh form when c is sqrt(2/pi)
    return "tanh" if getattr(module, "precomputed_constant", None) == _SQRT_2_OVER_PI else None


_QUICK = "QuickGELU computes x * sigmoid(1.702 x), not GELU"

register_activation(nn.GELU, _approximate_attribute)
register_activation("gelu_ext.modules.GELU", _approximate_attribute)  # already patched: recognized for fusion only
register_activation("transformers.activations.GELUActivation", _transformers_gelu)
register_activation("transformers.activations.GELUTanh", _transformers_gelu_tanh)
# NewGELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), PyTorch's tanh form with PyTorch's constants.
register_activation("transformers.activations.NewGELUActivation", "tanh")
# FastGELU: 0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2))): the same polynomial, factored, with sqrt(2/pi) rounded
# to 10 digits (3.6e-12 relative; the same float32 and float16 constant), so the tanh form to far below float32's
# resolution (float64 results move by ~4e-12 relative at most).
register_activation("transformers.activations.FastGELUActivation", "tanh")
register_activation("transformers.activations.AccurateGELUActivation", _transformers_accurate_gelu)
register_activation("timm.layers.activations.GELU", "none")
register_activation("timm.layers.activations.GELUTanh", "tanh")
register_not_gelu("transformers.activations.QuickGELUActivation", _QUICK)
register_not_gelu("transformers.activations.ClippedGELUActivation", "clipped GELU clamps its output to [min, max]")
register_not_gelu("timm.layers.activations.QuickGELU", _QUICK)
register_not_gelu("diffusers.models.activations.ApproximateGELU", "ApproximateGELU computes x * sigmoid(1.702 x)")

_INTERMEDIATE = LinearGELUSpec(linear="dense", activation="intermediate_act_fn")
for _name in ("bert.modeling_bert.BertIntermediate", "roberta.modeling_roberta.RobertaIntermediate"):
    register_linear_gelu(f"transformers.models.{_name}", _INTERMEDIATE)
register_linear_gelu("transformers.models.gpt2.modeling_gpt2.GPT2MLP", LinearGELUSpec(linear="c_fc", activation="act"))
for _name in ("clip.modeling_clip.CLIPMLP", "vit.modeling_vit.ViTMLP"):
    register_linear_gelu(f"transformers.models.{_name}", LinearGELUSpec(linear="fc1", activation="activation_fn"))
register_linear_gelu("timm.layers.mlp.Mlp", LinearGELUSpec(linear="fc1", activation="act"))

register_gated_gelu("transformers.models.t5.modeling_t5.T5DenseGatedActDense",
                    GatedGELUSpec(gate="wi_0", up="wi_1", activation="act", after=("dropout", "wo"),
                                  cast_to_weight_of="wo"))  # fmt: skip
_GEMMA = GatedGELUSpec(gate="gate_proj", up="up_proj", activation="act_fn", after=("down_proj",))
for _name in ("gemma.modeling_gemma.GemmaMLP", "gemma2.modeling_gemma2.Gemma2MLP", "gemma3.modeling_gemma3.Gemma3MLP"):
    register_gated_gelu(f"transformers.models.{_name}", _GEMMA)
register_gated_gelu("diffusers.models.activations.GEGLU", GatedGELUSpec(projection="proj", approximate="none"))


def _timm_glu_mlp(module):
    # x1, x2 = fc1(x).chunk(2, dim=chunk_dim); x1 * act(x2) if gate_last else act(x1) * x2; then drop1, norm, fc2, drop2
    if getattr(module, "chunk_dim", None) != -1:  # use_conv: 1x1 convolutions over channels, not a Linear
        return None
    gate_half = "second" if module.gate_last else "first"
    return GatedGELUSpec(
        projection="fc1", gate_half=gate_half, activation="act", after=("drop1", "norm", "fc2", "drop2")
    )


register_gated_gelu("timm.layers.mlp.GluMlp", _timm_glu_mlp)
_PROJECTION_GELU["diffusers.models.activations.GELU"] = ("proj", _approximate_attribute)

# transformers copies one MLP forward into ~130 models (Llama, Mistral, Qwen2, ...): recognized by that forward's
# source, so any of them configured with a GELU gate is fused (each one is also checked numerically when patched).
_LLAMA_STYLE_FORWARD = "down_proj=self.down_proj(self.act_fn(self.gate_proj(x))*self.up_proj(x))returndown_proj"


@functools.cache
def _forward_source(cls: type) -> str:
    """cls.forward's source without comments and whitespace ("" when there is none to read)."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""
    return re.sub(r"\s+", "", re.sub(r"#[^\n]*", "", source))


def _recognized_gated(module: nn.Module) -> GatedGELUSpec | None:
    cls = type(module)
    if not cls.__module__.startswith("transformers.models."):
        return None
    return _GEMMA if _forward_source(cls).endswith(_LLAMA_STYLE_FORWARD) else None


# `h = self.<linear>(h)` then `h = self.<activation>(h)`: the linear's output goes to the activation and nowhere else
# (h is rebound). transformers' and timm's MLPs are written so (ViTMLP, CLIPMLP, *Intermediate, GPT2MLP, Mlp, ...).
_LINEAR_THEN_ACTIVATION = re.compile(r"(\w+)=self\.(\w+)\(\1\)\1=self\.(\w+)\(\1\)")
_RECOGNIZED_LIBRARIES = ("transformers.models.", "timm.")


def _recognized_linear_gelu(module: nn.Module) -> LinearGELUSpec | None:
    cls = type(module)
    if not cls.__module__.startswith(_RECOGNIZED_LIBRARIES):
        return None
    for match in _LINEAR_THEN_ACTIVATION.finditer(_forward_source(cls)):
        linear, act = module._modules.get(match.group(2)), module._modules.get(match.group(3))
        if linear is not None and act is not None and _activation_mode(act) is not None:
            return LinearGELUSpec(linear=match.group(2), activation=match.group(3))
    return None


# ------------------------------------------------------------------------------------------------------------------
# The fused modules
# ------------------------------------------------------------------------------------------------------------------
class Conv1DGELU(nn.Module):
    """gelu(x @ weight + bias) for GPT-2's Conv1D (weight stored [in, out], transposed from nn.Linear's): the matmul,
    then gelu_ext.bias_gelu. Shares the Conv1D's parameters, under the same names."""

    __constants__ = ("approximate",)
    approximate: str

    def __init__(self, conv1d: nn.Module, approximate: str = "none") -> None:
        super().__init__()
        check_approximate(approximate)
        self.weight = conv1d.weight
        self.bias = conv1d.bias
        self.nf = self.weight.shape[1]
        self.nx = self.weight.shape[0]
        self.approximate = approximate

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return bias_gelu(torch.matmul(input, self.weight), self.bias, self.approximate)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, approximate={self.approximate!r}"


class ProjectionGELU(nn.Module):
    """gelu(proj(x)), for modules that hold a projection and call GELU in their forward (diffusers' GELU). Fused,
    `proj` is a LinearGELU with the original parameters; unfused, the original Linear followed by gelu_ext.gelu."""

    __constants__ = ("approximate", "fused")

    def __init__(self, proj: nn.Linear, approximate: str, fuse: bool) -> None:
        super().__init__()
        self.proj = LinearGELU.from_linear(proj, approximate) if fuse else proj
        self.approximate = approximate
        self.fused = fuse

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.proj(hidden_states)
        return hidden_states if self.fused else gelu(hidden_states, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, fused={self.fused}"


class GatedGELU(nn.Module):
    """`gelu(gate) * up` from a model's own projections (gelu_ext.geglu, in one pass, when fused), then the model's
    own layers after it: the replacement for a GELU-gated MLP, holding the original children under their names."""

    def __init__(self, original: nn.Module, spec: GatedGELUSpec, approximate: str, fuse: bool) -> None:
        super().__init__()
        check_approximate(approximate)
        wanted = set(spec.children())
        for name, child in original._modules.items():  # the original order, so state_dict keys come in that order
            if name in wanted:
                self.add_module(name, child)
        self.gate_name, self.up_name, self.projection_name = spec.gate, spec.up, spec.projection
        self.gate_is_second_half = spec.gate_half == "second"
        self.after_names = spec.after
        self.cast_to_weight_of = spec.cast_to_weight_of
        self.approximate = approximate
        self.fused = fuse
        self.original_class = type(original).__name__
        self.train(original.training)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.projection_name is not None:
            first, second = getattr(self, self.projection_name)(hidden_states).chunk(2, dim=-1)
            gate, up = (second, first) if self.gate_is_second_half else (first, second)
        else:
            gate = getattr(self, self.gate_name)(hidden_states)
            up = getattr(self, self.up_name)(hidden_states)
        hidden_states = geglu(gate, up, self.approximate) if self.fused else gelu(gate, self.approximate) * up
        for name in self.after_names:
            layer = getattr(self, name)
            if name == self.cast_to_weight_of:
                weight = layer.weight
                if (
                    isinstance(weight, torch.Tensor)
                    and hidden_states.dtype != weight.dtype
                    and weight.dtype != torch.int8
                ):
                    hidden_states = hidden_states.to(weight.dtype)
            hidden_states = layer(hidden_states)
        return hidden_states

    def extra_repr(self) -> str:
        return f"{self.original_class}, approximate={self.approximate!r}, fused={self.fused}"


_FUSED_OR_OURS = (GELU, LinearGELU, Conv1DGELU, ProjectionGELU, GatedGELU)
_CONV1D = "transformers.pytorch_utils.Conv1D"


# ------------------------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Change:
    path: str  # dotted path in the model ("" is the model itself)
    original: str  # the class that was there
    replacement: str  # what is there now


@dataclasses.dataclass(frozen=True)
class Left:
    path: str
    original: str
    reason: str


@dataclasses.dataclass
class PatchReport:
    """What patch_model did: `replaced` (activations swapped for gelu_ext.GELU, or unfused gelu_ext modules),
    `fused` (patterns now running bias_gelu or geglu), `left` (GELU-like modules it did not touch, and why)."""

    replaced: list[Change] = dataclasses.field(default_factory=list)
    fused: list[Change] = dataclasses.field(default_factory=list)
    left: list[Left] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"replaced": len(self.replaced), "fused": len(self.fused), "left": len(self.left)}

    def __str__(self) -> str:
        lines = [f"gelu_ext.patch_model: {len(self.replaced)} replaced, {len(self.fused)} fused, {len(self.left)} left"]
        for title, entries in (("replaced", self.replaced), ("fused", self.fused), ("left", self.left)):
            groups: dict[tuple[str, str], list[str]] = {}
            for entry in entries:
                what = entry.reason if title == "left" else entry.replacement
                groups.setdefault((entry.original, what), []).append(entry.path or "<model>")
            for (original, what), paths in groups.items():
                where = paths[0] if len(paths) == 1 else f"{paths[0]}, ... ({len(paths)} places)"
                lines.append(
                    f"  {title} {len(paths)} x {original}{': ' if title == 'left' else ' -> '}{what}  [{where}]"
                )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# patch_model
# ------------------------------------------------------------------------------------------------------------------
def _activation_mode(module: nn.Module) -> str | None:
    rule = _ACTIVATIONS.get(_qualified_name(type(module)))
    return rule(module) if rule is not None else None


def _short_name(module: nn.Module) -> str:
    """The class with its top-level package: diffusers.GELU and torch.GELU are different classes."""
    return f"{type(module).__module__.split('.')[0]}.{type(module).__qualname__}"


def _untouchable(module: nn.Module) -> str | None:
    """Why a module must not be swapped or folded into another: what it does would silently change."""
    if module._forward_hooks or module._forward_pre_hooks or getattr(module, "_backward_hooks", None):
        return "it has hooks, which replacing it would drop"
    if "forward" in module.__dict__:
        return "its forward was replaced on the instance (e.g. by kernels.kernelize)"
    return None


class _Patcher:
    def __init__(self, model: nn.Module, fuse: bool) -> None:
        self.model = model
        self.fuse = fuse
        self.report = PatchReport()
        self.visited: set[int] = set()
        self.replacements: dict[int, nn.Module] = {}
        self.left_ids: set[int] = set()

    def leave(self, path, module, reason):
        if id(module) not in self.left_ids:
            self.left_ids.add(id(module))
            self.report.left.append(Left(path, _short_name(module), reason))

    # Pass 1: patterns, top-down on the live tree (a replaced module's new children are visited, not its old ones).
    def fuse_patterns(self, module: nn.Module, path: str) -> None:
        if id(module) in self.visited:
            return
        self.visited.add(id(module))
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            child_path = f"{path}.{name}" if path else name
            new = self.replacements.get(id(child))
            if new is None:
                new = self.replace_pattern(child, child_path)
            if new is not None:
                setattr(module, name, new)
                child = new
            self.fuse_patterns(child, child_path)
        self.fuse_children(module, path)

    def replace_pattern(self, module, path) -> nn.Module | None:
        """A module replaced as a whole (GatedGELU, ProjectionGELU), or None."""
        key = _qualified_name(type(module))
        rule = _GATED_GELU.get(key)
        spec = rule(module) if rule is not None else _recognized_gated(module)
        if spec is not None:
            return self.replace_gated(module, path, spec)
        if key in _PROJECTION_GELU:
            proj_name, mode_rule = _PROJECTION_GELU[key]
            return self.replace_projection(module, path, proj_name, mode_rule(module))
        return None

    def check_replaceable(self, module, path, children) -> str | None:
        reason = _untouchable(module)
        if reason:
            return reason
        if module._parameters or module._buffers:
            return "it holds parameters or buffers of its own"
        for name in children:
            if not isinstance(module._modules.get(name), nn.Module):
                return f"it has no child module {name!r}"
        for name, child in module._modules.items():
            if name not in children and child is not None and any(True for _ in child.parameters()):
                return f"its child {name!r} has parameters that the fused module would not hold"
        return None

    def replace_gated(self, module, path, spec: GatedGELUSpec) -> nn.Module | None:
        if spec.activation is not None and not self.fuse:
            return None  # unfused, only the activation child changes (pass 2): the module keeps its class
        mode = spec.approximate
        if spec.activation is not None:
            act = module._modules.get(spec.activation)
            mode = _activation_mode(act) if act is not None else None
            if mode is None:
                return None  # not a GELU gate (SiLU in a Llama MLP): nothing of gelu_ext's to put there
            if _untouchable(act):
                self.leave(path, module, f"its activation: {_untouchable(act)}")
                return None
        reason = self.check_replaceable(module, path, spec.children())
        inputs = [module._modules.get(n) for n in (spec.projection, spec.gate, spec.up) if n is not None]
        if reason is None and not all(type(m) is nn.Linear for m in inputs):
            reason = "its gate and up projections are not nn.Linear"
        if reason is not None:
            self.leave(path, module, reason)
            return None
        new = GatedGELU(module, spec, mode, self.fuse)
        reason = _verify(module, new, inputs[0].in_features, inputs[0].weight)
        if reason is not None:
            self.leave(path, module, reason)
            return None
        return self.record(path, module, new, f"GatedGELU({'geglu' if self.fuse else 'gelu * up'}, {mode})")

    def replace_projection(self, module, path, proj_name, mode) -> nn.Module | None:
        if mode is None:
            self.leave(path, module, "its approximate mode is neither 'none' nor 'tanh'")
            return None
        proj = module._modules.get(proj_name)
        reason = self.check_replaceable(module, path, (proj_name,))
        if reason is None and type(proj) is not nn.Linear:
            reason = f"its {proj_name!r} is not an nn.Linear"
        if reason is not None:
            self.leave(path, module, reason)
            return None
        new = ProjectionGELU(proj, mode, self.fuse)
        new.train(module.training)
        reason = _verify(module, new, proj.in_features, proj.weight)
        if reason is not None:
            self.leave(path, module, reason)
            return None
        return self.record(
            path, module, new, f"ProjectionGELU({'LinearGELU' if self.fuse else 'Linear + gelu'}, {mode})"
        )

    def record(self, path, module, new, description):
        self.replacements[id(module)] = new
        target = self.report.fused if self.fuse else self.report.replaced
        target.append(Change(path, _short_name(module), description))
        return new

    def fuse_children(self, module: nn.Module, path: str) -> None:
        """Patterns inside `module` that swap two of its children: a registered Linear + GELU pair, or consecutive
        Linear, GELU in an nn.Sequential."""
        if not self.fuse:
            return
        if isinstance(module, (GatedGELU, ProjectionGELU)) and not module.fused:  # patched before with fuse=False
            if isinstance(module, ProjectionGELU):
                module.proj = LinearGELU.from_linear(module.proj, module.approximate)
            module.fused = True
            self.report.fused.append(Change(path, _short_name(module), f"fused ({module.approximate})"))
            return
        rule = _LINEAR_GELU.get(_qualified_name(type(module)))
        spec = rule(module) if rule is not None else _recognized_linear_gelu(module)
        if spec is not None:
            self.fuse_pair(module, path, spec.linear, spec.activation, verify=True)
        elif isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            names = list(module._modules)
            for linear_name, act_name in itertools.pairwise(names):
                if type(module._modules[linear_name]) is nn.Linear:
                    self.fuse_pair(module, path, linear_name, act_name, verify=False)

    def fuse_pair(self, module, path, linear_name, act_name, verify: bool) -> None:
        linear, act = module._modules.get(linear_name), module._modules.get(act_name)
        if linear is None or act is None:
            return
        mode = _activation_mode(act)
        if mode is None:
            return  # not a GELU (or one the report lists in pass 2)
        linear_path = f"{path}.{linear_name}" if path else linear_name
        is_conv1d = _qualified_name(type(linear)) == _CONV1D
        reason = _untouchable(linear) or _untouchable(act)
        if reason is None and type(linear) is not nn.Linear and not is_conv1d:
            reason = f"{linear_name!r} is a {type(linear).__name__}, not an nn.Linear"
        if reason is not None:
            self.leave(linear_path, linear, f"not fused with {act_name!r}: {reason}")
            return
        fused = Conv1DGELU(linear, mode) if is_conv1d else LinearGELU.from_linear(linear, mode)
        fused.train(linear.training)
        identity = nn.Identity()
        identity.train(act.training)
        probe = (
            _Probe(module, linear.weight.shape[0] if is_conv1d else linear.in_features, linear.weight)
            if verify
            else None
        )
        setattr(module, linear_name, fused)
        setattr(module, act_name, identity)
        reason = probe.mismatch(module) if probe is not None else None
        if reason is not None:  # the class's forward is not what its registry entry says: undo
            setattr(module, linear_name, linear)
            setattr(module, act_name, act)
            self.leave(path, module, reason)
            return
        fused_name = "Conv1DGELU" if is_conv1d else "LinearGELU"
        self.report.fused.append(Change(path, _short_name(module),
                                        f"{fused_name}({linear_name} + {act_name}, {mode})"))  # fmt: skip

    # Pass 2: every remaining activation edge.
    def swap_activations(self) -> None:
        seen: set[int] = set()
        for path, module in list(self.model.named_modules()):
            if id(module) in seen:
                continue
            seen.add(id(module))
            for name, child in list(module._modules.items()):
                if child is None or isinstance(child, _FUSED_OR_OURS):
                    continue
                child_path = f"{path}.{name}" if path else name
                new = self.activation_replacement(child, child_path)
                if new is not None:
                    setattr(module, name, new)

    def activation_replacement(self, child, path) -> nn.Module | None:
        if id(child) in self.replacements:
            return self.replacements[id(child)]
        key = _qualified_name(type(child))
        if key in _NOT_GELU:
            self.leave(path, child, _NOT_GELU[key])
            return None
        if key not in _ACTIVATIONS:
            if "gelu" in type(child).__name__.lower():
                self.leave(path, child, "unknown GELU-like class (register_activation it if it computes exactly GELU)")
            return None
        mode = _activation_mode(child)
        reason = "it is not exactly GELU in this configuration" if mode is None else _untouchable(child)
        if reason is not None:
            self.leave(path, child, reason)
            return None
        new = GELU(mode)
        new.train(child.training)
        self.replacements[id(child)] = new
        self.report.replaced.append(Change(path, _short_name(child), f"gelu_ext.GELU({mode!r})"))
        return new


class _Probe:
    """A module's output on a fixed random input, before a change, to compare with its output after it: registered
    classes are matched by name, and this catches a library version whose forward no longer fits the entry."""

    def __init__(self, module: nn.Module, in_features: int, weight: torch.Tensor) -> None:
        self.skip = weight.device.type == "meta" or not weight.dtype.is_floating_point
        if self.skip:
            return
        generator = torch.Generator(device=weight.device).manual_seed(0x6E1)
        self.input = torch.randn(3, in_features, generator=generator, device=weight.device, dtype=weight.dtype)
        self.dtype = weight.dtype
        self.expected = self.run(module)

    def run(self, module):
        modes = [(m, m.training) for m in module.modules()]
        module.eval()  # dropout off; restored below
        try:
            with torch.no_grad():
                return module(self.input)
        finally:
            for m, training in modes:
                m.training = training

    def mismatch(self, module) -> str | None:
        if self.skip:
            return None
        try:
            actual = self.run(module)
        except Exception as error:  # gelu_ext cannot run this (device, dtype): the module stays as it was
            return f"the patched module fails on a probe input ({type(error).__name__}: {error})"
        tolerance = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(
            self.dtype
        )
        if not isinstance(actual, torch.Tensor) or actual.shape != self.expected.shape:
            return (
                "the patched module's output does not have the original's shape: its forward is not the registered one"
            )
        error = (actual.double() - self.expected.double()).abs().max().item()
        scale = self.expected.double().abs().max().item()
        if tolerance is None or not error <= tolerance * scale:
            return (f"the patched module's output differs from the original's by {error:.3g} (scale {scale:.3g}): its "
                    f"forward is not the one its registry entry describes")  # fmt: skip
        return None


def _replaced_as_a_whole(module: nn.Module) -> bool:
    if isinstance(module, _FUSED_OR_OURS):
        return False
    key = _qualified_name(type(module))
    rule = _GATED_GELU.get(key)
    spec = rule(module) if rule is not None else _recognized_gated(module)
    if spec is not None and spec.activation is not None:
        act = module._modules.get(spec.activation)
        return act is not None and _activation_mode(act) is not None
    return spec is not None or _activation_mode(module) is not None or key in _PROJECTION_GELU


def _verify(original: nn.Module, new: nn.Module, in_features: int, weight: torch.Tensor) -> str | None:
    return _Probe(original, in_features, weight).mismatch(new)


def _check_devices(model: nn.Module) -> None:
    """gelu_ext runs on CPU, and on CUDA when its CUDA kernels are loaded: say so before patching, not at the first
    forward. (meta tensors are fine: the model is patched before it is materialized.)"""
    from ._extension import build_info

    info = build_info()
    supported = {"cpu", "meta"} | ({"cuda"} if info.get("with_cuda") else set())
    tensors = itertools.chain(model.parameters(), model.buffers())
    for device in sorted({t.device.type for t in tensors} - supported):
        why = f" ({info.get('no_cuda_reason')})" if device == "cuda" else ""
        raise ValueError(
            f"gelu_ext.patch_model: the model has tensors on {device!r}, where gelu_ext has no kernels{why}; "
            f"it runs on {sorted(supported - {'meta'})}"
        )


def patch_model(model: nn.Module, *, fuse: bool = True) -> PatchReport:
    """Put gelu_ext into `model`, in place: every module that computes exactly GELU becomes gelu_ext.GELU, and with
    `fuse` every recognized Linear + GELU becomes one bias_gelu module and every GELU-gated pair a geglu (sharing the
    original parameters, under the original state_dict keys). Returns a PatchReport; print it for a summary.

    Calling it again on a patched model changes nothing. What it recognizes is in this module's registry
    (register_activation, register_linear_gelu, register_gated_gelu, register_not_gelu extend it).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"gelu_ext.patch_model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(fuse, bool):
        raise TypeError(f"gelu_ext.patch_model: fuse must be True or False, got {fuse!r}")
    _check_devices(model)
    patcher = _Patcher(model, fuse)
    if _replaced_as_a_whole(model):  # a module cannot replace itself in place
        patcher.leave("", model, "the model itself is the module to replace: patch a model that contains it")
    patcher.fuse_patterns(model, "")
    patcher.swap_activations()
    return patcher.report


# ------------------------------------------------------------------------------------------------------------------
# Transformers' kernel mechanism (the `kernels` package): layers, mapping, kernelize
# ------------------------------------------------------------------------------------------------------------------
class HubGELU(nn.Module):
    """The layer for `use_kernel_forward_from_hub("GeLU")` (transformers' GELUActivation): erf-form GELU. Stateless,
    as `kernels` requires: its forward is bound to the original module."""

    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return gelu(input, "none")


class HubGELUTanh(nn.Module):
    """The layer for "GeluTanh", "NewGELU" and "FastGELU" (GELUTanh, NewGELUActivation, FastGELUActivation): the
    tanh form."""

    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return gelu(input, "tanh")


HUB_LAYERS: dict[str, type[nn.Module]] = {"GeLU": HubGELU, "GeluTanh": HubGELUTanh, "NewGELU": HubGELUTanh,
                                          "FastGELU": HubGELUTanh}  # fmt: skip
# The transformers classes that declare those layer names (with a kernels release transformers accepts).
_HUB_LAYER_CLASSES = {"GeLU": "GELUActivation", "GeluTanh": "GELUTanh", "NewGELU": "NewGELUActivation",
                      "FastGELU": "FastGELUActivation"}  # fmt: skip


class _InstalledLayerRepository:
    """A `kernels` layer repository (anything with load() -> layer class) that is gelu_ext itself: nothing to fetch."""

    def __init__(self, layer: type[nn.Module]) -> None:
        self.layer_name = layer.__name__
        self._layer = layer

    def load(self) -> type[nn.Module]:
        return self._layer

    def __eq__(self, other):
        return isinstance(other, _InstalledLayerRepository) and other._layer is self._layer

    def __hash__(self):
        return hash(self._layer)

    def __str__(self) -> str:
        return f"gelu_ext (installed), layer `{self.layer_name}`"


def kernel_mapping(devices: Iterable[str] = ("cpu", "cuda")) -> dict:
    """gelu_ext's layers as a `kernels` mapping, for `kernels.use_kernel_mapping(...)` / `register_kernel_mapping`:
    {"GeLU": {"cpu": repo, "cuda": repo}, "GeluTanh": ..., "NewGELU": ..., "FastGELU": ...}, every mode (FALLBACK)."""
    devices = tuple(devices)
    for device in devices:
        if device not in ("cpu", "cuda"):
            raise ValueError(
                f"gelu_ext.patching.kernel_mapping: gelu_ext has kernels for 'cpu' and 'cuda', not {device!r}"
            )
    return {
        name: {device: _InstalledLayerRepository(layer) for device in devices} for name, layer in HUB_LAYERS.items()
    }


_REPOSITORY_NAME = "gelu-ext-layers"  # kernels' metadata wants lowercase letters, digits and dashes
_REPOSITORY_INIT = """# Written by gelu_ext.patching.write_kernel_repository: a `kernels` layer repository whose
# layers are the installed gelu_ext's (nothing is built here, so one directory serves every torch).
from gelu_ext.patching import HubGELU, HubGELUTanh


class layers:  # kernels looks the layer up as <kernel module>.layers.<name>
    HubGELU = HubGELU
    HubGELUTanh = HubGELUTanh
"""


def write_kernel_repository(path) -> Path:
    """Write a local `kernels` layer repository at `path` (a directory, created if needed): the form
    `kernels.LocalLayerRepository(path, layer_name=...)` and transformers' `KernelConfig(..., use_local_kernel=True)`
    load. Its layers, HubGELU and HubGELUTanh, import the installed gelu_ext; its two variants, torch-cpu and
    torch-cuda (kernels picks the one matching torch's build), are the same Python file. Returns the path.
    A wheel cannot ship this directory inside the package (kernels wants build/<variant>/metadata.json), so it is
    written on demand."""
    import json

    root = Path(path).resolve()
    for backend in ("cpu", "cuda"):
        variant = root / "build" / f"torch-{backend}"
        variant.mkdir(parents=True, exist_ok=True)
        metadata = {"id": _REPOSITORY_NAME, "name": _REPOSITORY_NAME, "version": 1, "license": "BSD-3-Clause",
                    "backend": {"type": backend}, "python-depends": []}  # fmt: skip
        (variant / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (variant / "__init__.py").write_text(_REPOSITORY_INIT)
    return root


def kernel_config_mapping(repository) -> dict[str, str]:
    """transformers' KernelConfig mapping for the repository `write_kernel_repository` wrote:
    `KernelConfig(kernel_config_mapping(path), use_local_kernel=True)`, {"GeLU": "/abs/path:HubGELU", ...}."""
    root = Path(repository).resolve()
    if not (root / "build").is_dir():
        raise ValueError(f"gelu_ext.patching.kernel_config_mapping: {root} has no build/: write_kernel_repository it")
    return {name: f"{root}:{layer.__name__}" for name, layer in HUB_LAYERS.items()}


def kernelize(model: nn.Module, *, mode=None, device: str | None = None) -> nn.Module:
    """Transformers' kernel mechanism with gelu_ext's layers: `kernels.kernelize` under `kernel_mapping()`. Every
    GELUActivation / GELUTanh / NewGELUActivation / FastGELUActivation instance then runs gelu_ext's GELU through its
    own module (no module is replaced; other kernel layers in the model keep whatever mapping is registered).

    transformers marks those classes for `kernels` (their `kernel_layer_name`) only when it accepts the installed
    kernels release (transformers 5.24: 0.18.2 <= kernels < 0.19.0); otherwise its decorators are no-ops and its own
    `model.kernelize()` raises ImportError. This function marks the four classes itself (kernels'
    `replace_kernel_forward_from_hub`, which sets a class attribute) when they are not marked, so it works without
    transformers' approval of the kernels release (tested with kernels 0.17.2 and 0.19.1). mode: a kernels.Mode; default
    TRAINING or INFERENCE from model.training.
    """
    try:
        import kernels
    except ImportError as error:
        raise ImportError("gelu_ext.patching.kernelize needs the `kernels` package: pip install kernels") from error
    try:
        from transformers import activations
    except ImportError as error:
        raise ImportError(
            "gelu_ext.patching.kernelize applies to transformers models: transformers is not installed"
        ) from error
    for layer_name, class_name in _HUB_LAYER_CLASSES.items():
        cls = getattr(activations, class_name)
        if getattr(cls, "kernel_layer_name", None) is None:
            kernels.replace_kernel_forward_from_hub(cls, layer_name)
    if mode is None:
        mode = kernels.Mode.TRAINING if model.training else kernels.Mode.INFERENCE
    if device is None:
        param = next(model.parameters(), None)
        device = param.device.type if param is not None else "cpu"
    with kernels.use_kernel_mapping(kernel_mapping((device,))):
        kernels.kernelize(model, mode=mode, device=device, use_fallback=True)
    return model
