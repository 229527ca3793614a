"""LeNet-5 on MNIST: model, data and checkpoints shared by train_lenet.py and predict_lenet.py."""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import gelu_ext

EXAMPLES_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = EXAMPLES_DIR / "data"
RUNS_DIR = EXAMPLES_DIR / "runs"  # one directory per training run: best.pt, last.pt, curves, TensorBoard events
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
def make_activation(name: str, approximate: str = "none") -> nn.Module:
    if name == "gelu_ext":
        return gelu_ext.GELU(approximate)
    if name == "torch":
        return nn.GELU(approximate)
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}: use gelu_ext, torch or sigmoid")


def make_lenet(arch: str = "lenet5", activation: str = "gelu_ext", approximate: str = "none") -> nn.Sequential:
    """LeNet-5. "lenet5": 28x28 input, conv 6 and 16 (5x5), average pooling, fully connected 256-120-84-10.
    "classic": LeCun's 32x32 layout (input padded by 2), conv 6, 16 and 120, fully connected 84-10."""

    def act():
        return make_activation(activation, approximate)

    if arch == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5), act(), nn.AvgPool2d(2),          # 6x24x24 -> 6x12x12
            nn.Conv2d(6, 16, 5), act(), nn.AvgPool2d(2),         # 16x8x8 -> 16x4x4
            nn.Flatten(),
            nn.Linear(256, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, 10),
        )  # fmt: skip
    if arch == "classic":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), act(), nn.AvgPool2d(2),  # 6x28x28 -> 6x14x14
            nn.Conv2d(6, 16, 5), act(), nn.AvgPool2d(2),            # 16x10x10 -> 16x5x5
            nn.Conv2d(16, 120, 5), act(),                           # 120x1x1
            nn.Flatten(),
            nn.Linear(120, 84), act(), nn.Linear(84, 10),
        )  # fmt: skip
    raise ValueError(f"unknown arch {arch!r}: use lenet5 or classic")


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def _unpack_shipped_archives(raw: Path) -> None:
    """The repository ships the IDX files gzipped; torchvision reads them uncompressed."""
    for name in MNIST_FILES:
        archive, target = raw / f"{name}.gz", raw / name
        if archive.exists() and not target.exists():
            tmp = target.with_suffix(".tmp")
            with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)


def load_mnist(data_dir: str | Path = DEFAULT_DATA_DIR, train: bool = True):
    """torchvision's MNIST from `data_dir`/MNIST/raw; downloaded only when absent and the network allows."""
    from torchvision.datasets import MNIST

    data_dir = Path(data_dir)
    _unpack_shipped_archives(data_dir / "MNIST" / "raw")
    try:
        return MNIST(str(data_dir), train=train, download=False)
    except RuntimeError:
        pass
    try:
        return MNIST(str(data_dir), train=train, download=True)
    except Exception as error:
        raise SystemExit(
            f"MNIST is not in {data_dir}/MNIST/raw and could not be downloaded ({error}). Put the four IDX files "
            f"(.gz or uncompressed) there, or pass --data-dir pointing at a folder that has MNIST/raw."
        ) from None


def mnist_tensors(data_dir, train: bool, device, subset: int | None = None):
    """The whole split as normalized float tensors on `device`: (N, 1, 28, 28) images and (N,) labels."""
    dataset = load_mnist(data_dir, train)
    images, labels = dataset.data, dataset.targets
    if subset:
        images, labels = images[:subset], labels[:subset]
    images = (images.to(device=device, dtype=torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    return images.unsqueeze(1).contiguous(), labels.to(device)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, truncated, not ours, or for another model."""


def save_atomically(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """torch.load(weights_only=True) with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a gelu_ext LeNet checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


def model_from_checkpoint(checkpoint: dict, path="checkpoint") -> nn.Module:
    config = checkpoint.get("config", {})
    model = make_lenet(config.get("arch", "lenet5"), config.get("activation", "gelu_ext"),
                       config.get("approximate", "none"))  # fmt: skip
    load_model_state(model, checkpoint["model"], path)
    return model


def load_model_state(model: nn.Module, state: dict, path="checkpoint") -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path} was saved for a different model: {error}") from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help of the example scripts: the module docstring as written, and each option's default where it has one."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------------------------------
# Run directories: each training run keeps its checkpoints, curves and events apart, so no run overwrites another's.
# ---------------------------------------------------------------------------------------------------------------------
def new_run_name(config: dict) -> str:
    """A name that says when and with what a run was started, e.g. 20261125-103000-lenet5-gelu_ext-seed0."""
    mode = "-tanh" if config.get("approximate") == "tanh" else ""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{config['arch']}-{config['activation']}{mode}-seed{config['seed']}"


def latest_run(runs_dir: str | Path, needs: str) -> Path:
    """The run directory under `runs_dir` whose `needs` file (best.pt or last.pt) was written last."""
    candidates = sorted(Path(runs_dir).glob(f"*/{needs}"), key=lambda path: path.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"no run under {runs_dir} has a {needs}: train one with examples/train_lenet.py")
    return candidates[-1].parent


def describe(config: dict) -> str:
    """What a checkpoint's model is, from its own config: 'LeNet-5 + gelu_ext GELU (tanh)'."""
    arch = {"lenet5": "LeNet-5", "classic": "classic LeNet"}.get(config.get("arch"), str(config.get("arch")))
    activation = {"gelu_ext": "gelu_ext GELU", "torch": "torch.nn.GELU", "sigmoid": "sigmoid"}.get(
        config.get("activation"), str(config.get("activation"))
    )
    mode = " (tanh)" if config.get("approximate") == "tanh" and config.get("activation") != "sigmoid" else ""
    return f"{arch} + {activation}{mode}"
