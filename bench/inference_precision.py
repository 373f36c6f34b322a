"""A trained checkpoint scored in fp32 and in bf16 on its own validation split: how many pixels
change class, how the metrics move, and how much faster bf16 is, measured side by side.

    python bench/inference_precision.py <checkpoint> [--repeats 3]

The network, data and normalisation come from the checkpoint (as ``fcn.evaluate`` takes them);
each validation image is scored whole, one at a time, by :class:`fcn.models.tiling.TiledScorer`
in ``fp32`` and in ``bf16`` (weights cast once, channels-last), alternating. Printed: the share
of pixels whose predicted class agrees (``fcn.predict``'s ``precision=auto`` picks bf16 only on
hardware with bfloat16 units; the bar for that default is 99.5%), mIoU and pixel accuracy of
each, and the median seconds per pass over the split.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conf  # noqa: E402, F401  (registers the configs' resolvers)
from fcn.inference import load_model  # noqa: E402
from fcn.models.precision import native_bf16  # noqa: E402
from fcn.models.tiling import TiledScorer  # noqa: E402
from fcn.scores import predicted_classes, scores_from_confusion  # noqa: E402
from fcn.training.metrics import confusion_counts  # noqa: E402


def validation_images(cfg) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (image, label) of the config's validation split, at its own size."""
    with open_dict(cfg):
        cfg.data.train_set = None
        cfg.data.train_transform = None
        cfg.data.val_transform = None
        cfg.data.batch_size = 1
        cfg.data.num_workers = 0
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    items = (datamodule.val_set[i] for i in range(len(datamodule.val_set)))
    return [(image[None], label[None]) for image, label in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = OmegaConf.create({"model": None, "data": None})
    loaded = load_model(cfg, args.checkpoint)
    images = validation_images(loaded.config)
    scorers = {
        "fp32": TiledScorer(copy.deepcopy(loaded.net)),
        "bf16": TiledScorer(copy.deepcopy(loaded.net), precision="bf16"),
    }
    classes = loaded.net.num_classes
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in scorers}
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):  # the first pass warms up and keeps the classes
            order = list(scorers) if repeat % 2 == 0 else list(scorers)[::-1]
            for name in order:
                start = time.perf_counter()
                out = [predicted_classes(scorers[name](image), 1) for image, _ in images]
                if repeat == 0:
                    preds[name] = out
                else:
                    seconds[name].append(time.perf_counter() - start)
    pixels = sum(p.numel() for p in preds["fp32"])
    same = sum(int((a == b).sum()) for a, b in zip(preds["fp32"], preds["bf16"], strict=True))
    print(f"{args.checkpoint}: {loaded.net.variant}, {len(images)} validation images, "
          f"{pixels} pixels; bf16 native here: {native_bf16('cpu')}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"pixels whose class agrees: {same / pixels:.4%} ({pixels - same} differ)")
    base = statistics.median(seconds["fp32"])
    for name in scorers:
        hist = sum(
            confusion_counts(p, label, classes)
            for p, (_, label) in zip(preds[name], images, strict=True)
        )
        scores = scores_from_confusion(hist)
        took = statistics.median(seconds[name])
        print(f"{name}: mIoU {float(scores['mIoU']):.4f}, pixel_acc "
              f"{float(scores['pixel_acc']):.4f}, {took:.2f} s per pass "
              f"(x{base / took:.2f} of fp32)")  # fmt: skip


if __name__ == "__main__":
    main()
