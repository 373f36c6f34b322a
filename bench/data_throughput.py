"""Images per second of one loader worker: our training pipeline against a plain PIL/torchvision
one doing the same work, on VOC-sized files (500x375 JPEG + palette PNG), measured side by side.

    python bench/data_throughput.py [--images 64] [--repeats 5]

Both pipelines decode the JPEG and the PNG, apply the transform and normalise to tensors, in the
main process (one worker's work). Runs alternate between the pipelines; the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from voc_like import save_scene, voc_like_scene  # noqa: E402

from fcn.data.datamodule import TransformedDataset  # noqa: E402
from fcn.data.pascal import VOC_DIR, PascalDataset  # noqa: E402
from fcn.data.transforms import NORMALIZATIONS, ToTensor, augment, resize_and_pad  # noqa: E402


def build_tree(root: Path, n: int) -> None:
    """n VOC-like 500x375 images: smooth colour fields with a few labelled ellipses."""
    voc = root / VOC_DIR
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"2099_{i:06d}" for i in range(n)]
    for id_ in ids:
        image, label = voc_like_scene(rng, 375, 500)
        save_scene(image, label, voc / "JPEGImages" / f"{id_}.jpg",
                   voc / "SegmentationClass" / f"{id_}.png")  # fmt: skip
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")


class PlainResizePad:
    """The Keras seed's resize-and-pad with PIL and torchvision's functional transforms."""

    def __init__(self, root: Path, ids: list[str], size: int) -> None:
        self.voc, self.ids, self.size = root / VOC_DIR, ids, size
        _, mean, std = NORMALIZATIONS["torchvision"]
        self.mean = [m / 255 for m in mean]
        self.std = [s / 255 for s in std]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image = Image.open(self.voc / "JPEGImages" / f"{self.ids[i]}.jpg").convert("RGB")
        label = Image.open(self.voc / "SegmentationClass" / f"{self.ids[i]}.png")
        w, h = image.size
        scale = self.size / max(w, h)
        new = [round(h * scale), round(w * scale)]
        x = TF.resize(TF.pil_to_tensor(image), new, antialias=False)
        y = TF.resize(TF.pil_to_tensor(label), new, interpolation=TF.InterpolationMode.NEAREST)
        top, left = (self.size - new[0]) // 2, (self.size - new[1]) // 2
        pad = [left, top, self.size - new[1] - left, self.size - new[0] - top]
        x = TF.pad(x, pad, fill=0)
        y = TF.pad(y, pad, fill=255)
        x = TF.normalize(x.float() / 255, self.mean, self.std)
        return x, y[0].long()


def images_per_second(dataset, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one loader worker's share
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tree(root, args.images)
        pascal = PascalDataset(root, "voc2012_train")
        pipelines = {
            "fcn resize_pad 512": TransformedDataset(pascal, resize_and_pad(512), ToTensor()),
            "plain PIL/torchvision resize_pad 512": PlainResizePad(root, pascal.ids, 512),
            "fcn augment crop 320": TransformedDataset(pascal, augment(320), ToTensor()),
        }
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        for dataset in pipelines.values():  # warm-up
            images_per_second(dataset, 4)
        for _ in range(args.repeats):
            for name, dataset in pipelines.items():
                rates[name].append(images_per_second(dataset, args.images))
    plain = statistics.median(rates["plain PIL/torchvision resize_pad 512"])
    print(f"{'pipeline (one worker, 500x375 JPEG + PNG)':<44}{'images/s':>10}{'vs plain':>10}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<44}{rate:>10.1f}{rate / plain:>10.2f}")


if __name__ == "__main__":
    main()
