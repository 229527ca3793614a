"""Predict MNIST test digits with the best checkpoint of train_lenet.py, and draw them.

    python examples/predict_lenet.py --count 16

Prints predicted vs actual labels and writes a PNG grid of the digits titled "pred / true" (wrong ones in red).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lenet import (
    DEFAULT_DATA_DIR,
    EXAMPLES_DIR,
    MNIST_MEAN,
    MNIST_STD,
    CheckpointError,
    load_checkpoint,
    mnist_tensors,
    model_from_checkpoint,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=EXAMPLES_DIR / "checkpoints" / "best.pt")
    p.add_argument("--count", type=int, default=16, help="how many test images")
    p.add_argument("--start", type=int, default=0, help="index of the first test image")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--output", type=Path, default=EXAMPLES_DIR / "runs" / "predictions.png")
    args = p.parse_args(argv)
    if args.count < 1 or args.start < 0:
        p.error("--count must be >= 1 and --start >= 0")
    return args


def draw_grid(images, predicted, actual, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(8, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, p, t in zip(axes.flat, images, predicted, actual, strict=False):
        ax.imshow((image.squeeze(0) * MNIST_STD + MNIST_MEAN).numpy(), cmap="gray_r", vmin=0, vmax=1)
        wrong = p != t
        ax.set_title(f"{p} / {t}" + (" ✗" if wrong else ""), color="red" if wrong else "black", fontsize=9)
    fig.suptitle("LeNet-5 + gelu_ext: predicted / true")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    try:
        model = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
    except CheckpointError as error:
        raise SystemExit(f"cannot load the model: {error}") from None
    images, labels = mnist_tensors(args.data_dir, False, "cpu")
    end = min(args.start + args.count, len(labels))
    if args.start >= end:
        raise SystemExit(f"--start {args.start} is past the {len(labels)} test images")
    images, labels = images[args.start : end], labels[args.start : end]
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(1)
    for i, (p, t) in enumerate(zip(predicted.tolist(), labels.tolist(), strict=True)):
        print(f"test image {args.start + i:5d}: predicted {p}  actual {t}{'   <- wrong' if p != t else ''}")
    correct = int((predicted == labels).sum())
    print(f"{correct}/{len(labels)} correct")
    draw_grid(images, predicted.tolist(), labels.tolist(), args.output)
    print(f"wrote {args.output}")
    return predicted


if __name__ == "__main__":
    main()
