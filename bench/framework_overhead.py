"""What the framework costs: ``python -m fcn.train experiment=quickstart`` against a
hand-written PyTorch loop doing the same training steps with the same model and data.

    python bench/framework_overhead.py [--repeats 3]

Both train the quickstart FCN-8s (trunk 16, fc 128, `same` alignment) with Adam on the built-in
shapes data (800 images an epoch, resize-and-pad 96, batch 16, shuffled; the quickstart's own
400 scenes and channels-last are set back to 800 and the default memory format, the workload the
README's figures were measured on), mean cross-entropy over non-void pixels, no validation. Both
are timed over epochs 2 and 3: the hand loop in-process, ``fcn.train`` by the epoch wall times
its own ``metrics.json`` records (everything the framework does per step and per epoch:
Lightning's loop, logging, progress bar, loss metric, divergence check, checkpoints,
metrics.json). Runs alternate; medians. Target: fcn.train at least 0.95 of the hand loop's
throughput."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fcn.data.datamodule import TransformedDataset  # noqa: E402
from fcn.data.shapes import ShapesDataset  # noqa: E402
from fcn.data.transforms import ToTensor, pad_collate, resize_and_pad  # noqa: E402
from fcn.models.fcn import FCN  # noqa: E402

IMAGES = 800
BATCH = 16


def hand_loop() -> float:
    """Seconds for epochs 2 and 3 of a plain PyTorch training loop."""
    torch.manual_seed(0)
    data = TransformedDataset(ShapesDataset(IMAGES, seed=0), resize_and_pad(96), ToTensor())
    loader = DataLoader(
        data, BATCH, shuffle=True, collate_fn=pad_collate,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    net = FCN(num_classes=6, alignment="same", trunk_width=16, fc_width=128, dropout=0.1)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=2e-3)
    net.train()
    start = 0.0
    for epoch in range(3):
        if epoch == 1:
            start = time.perf_counter()
        for images, labels, _ in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(images), labels, ignore_index=255)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def framework(workdir: Path) -> float:
    """Seconds of epochs 2 and 3 of a real ``python -m fcn.train`` run (from its metrics.json)."""
    run = workdir / str(time.monotonic_ns())
    args = [
        sys.executable, "-m", "fcn.train", "experiment=quickstart", "logger=none",
        "trainer.max_epochs=3", "trainer.accelerator=cpu", "scheduler=none",
        f"data.train_set.num_images={IMAGES}", "module.channels_last=false",
        "+trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", f"hydra.run.dir={run}",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    subprocess.run(args, cwd=REPO, env=env, check=True, capture_output=True)
    history = json.loads((run / "metrics.json").read_text())["history"]
    return sum(entry["seconds"] for entry in history[1:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    hand, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            hand.append(hand_loop())
            ours.append(framework(Path(tmp)))
    rate_hand = 2 * IMAGES / statistics.median(hand)
    rate_ours = 2 * IMAGES / statistics.median(ours)
    print(f"2 epochs x {IMAGES} images, batch {BATCH}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")  # fmt: skip
    print(f"{'':<22}{'s / 2 epochs':>13}{'images/s':>10}{'ratio':>8}")
    print(f"{'hand-written loop':<22}{statistics.median(hand):>13.2f}{rate_hand:>10.1f}{1:>8.2f}")
    print(f"{'python -m fcn.train':<22}{statistics.median(ours):>13.2f}{rate_ours:>10.1f}"
          f"{rate_ours / rate_hand:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
