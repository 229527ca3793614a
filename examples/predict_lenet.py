"""Predict MNIST test digits with the best checkpoint of a train_lenet.py run, and draw them.

    python examples/predict_lenet.py --count 16              # the latest run's best.pt
    python examples/predict_lenet.py --run NAME              # another run (a directory under examples/runs)

Prints predicted vs actual labels and writes a PNG grid of the digits titled "pred / true" (wrong ones in red), into
the run's directory; the title names the model as the checkpoint's own settings describe it.
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
    MNIST_MEAN,
    MNIST_STD,
    RUNS_DIR,
    CheckpointError,
    HelpFormatter,
    describe,
    latest_run,
    load_checkpoint,
    mnist_tensors,
    model_from_checkpoint,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where train_lenet.py's run directories are")
    p.add_argument("--run", help="run name (default: the run whose best.pt is newest)")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint file instead of a run's best.pt")
    p.add_argument("--count", type=int, default=16, help="how many test images")
    p.add_argument("--start", type=int, default=0, help="index of the first test image")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="MNIST (torchvision layout)")
    p.add_argument("--output", type=Path, help="PNG grid (default: predictions.png next to the checkpoint)")
    args = p.parse_args(argv)
    if args.count < 1 or args.start < 0:
        p.error("--count must be >= 1 and --start >= 0")
    return args


def draw_grid(images, predicted, actual, path: Path, title: str) -> None:
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
    fig.suptitle(f"{title}: predicted / true")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.checkpoint is None:
            run_dir = args.runs_dir / args.run if args.run else latest_run(args.runs_dir, "best.pt")
            args.checkpoint = run_dir / "best.pt"
        checkpoint = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(checkpoint, args.checkpoint)
    except CheckpointError as error:
        raise SystemExit(f"cannot load the model: {error}") from None
    title = describe(checkpoint.get("config", {}))
    print(f"{args.checkpoint}: {title}")
    args.output = args.output or args.checkpoint.parent / "predictions.png"
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
    draw_grid(images, predicted.tolist(), labels.tolist(), args.output, title)
    print(f"wrote {args.output}")
    return predicted


if __name__ == "__main__":
    main()
