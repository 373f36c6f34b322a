"""Memory of a loader worker against the size of the split: 1,000 ids against 100,000.

    python bench/loader_memory.py [--workers 2] [--batches 50]

Builds an SBD-layout tree whose 100,000 ids are hard links to one small image and label, loads
``sbd_train`` with real DataLoader workers (shuffled over the whole split), and prints each
worker's private memory (USS, from /proc/<pid>/smaps_rollup). For contrast it does the same with
the split held as a Python list of path tuples, the usual way, which every worker's reference
counting slowly copies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcn.data.pascal import SBD_DIR, PascalDataset  # noqa: E402


class ListOfPaths(PascalDataset):
    """The same dataset, holding its split as a list of (image, label) Path tuples."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.paths = [PascalDataset._paths(self, i) for i in range(len(self))]

    def _paths(self, index: int):
        return self.paths[index]


def build_tree(root: Path, n: int) -> None:
    sbd = root / SBD_DIR
    (sbd / "img").mkdir(parents=True, exist_ok=True)
    (sbd / "cls").mkdir(parents=True, exist_ok=True)
    ids = [f"2099_{i:07d}" for i in range(n)]
    for i, id_ in enumerate(ids):
        if i % 50_000 == 0:  # a file takes at most 65,000 hard links
            image, label = sbd / f"{i}.jpg", sbd / f"{i}.mat"
            Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(image)
            savemat(label, {"GTcls": {"Segmentation": np.zeros((48, 64), np.uint8)}})
        os.link(image, sbd / "img" / f"{id_}.jpg")
        os.link(label, sbd / "cls" / f"{id_}.mat")
    (sbd / "train.txt").write_text("\n".join(ids) + "\n")


def worker_uss_mb() -> list[float]:
    sizes = []
    for child in multiprocessing.active_children():
        fields = Path(f"/proc/{child.pid}/smaps_rollup").read_text().splitlines()
        private = sum(int(line.split()[1]) for line in fields if line.startswith("Private_"))
        sizes.append(private / 1024)
    return sizes


def measure(dataset, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=workers,
                        persistent_workers=True, collate_fn=lambda b: len(b))  # fmt: skip
    seen = 0
    while seen < batches:  # as many epochs as it takes
        for _ in loader:
            seen += 1
            if seen == batches:
                break
    sizes = worker_uss_mb()
    del loader
    return statistics.median(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'ids':>8}  {'storage':<16}{'worker USS (MB)':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for n in (1_000, 100_000):
            root = Path(tmp) / str(n)
            build_tree(root, n)
            for name, cls in (("numpy arrays", PascalDataset), ("list of paths", ListOfPaths)):
                uss = measure(cls(root, "sbd_train"), args.workers, args.batches)
                results[(n, name)] = uss
                print(f"{n:>8}  {name:<16}{uss:>16.1f}")
        for name in ("numpy arrays", "list of paths"):
            extra = results[(100_000, name)] - results[(1_000, name)]
            print(f"{name}: 100,000 ids cost each worker {extra:+.1f} MB over 1,000")


if __name__ == "__main__":
    main()
