"""Does ``python -m fcn.evaluate`` keep the network busy? Images per second of the network's
forward pass alone, over images already decoded in memory, against a whole evaluation through
the real code path (``fcn.evaluate.evaluate``: files decoded in loader workers, batched by size,
scored, loss and confusion matrix) on the same VOC-sized files.

    python bench/evaluation_throughput.py [--images 32] [--repeats 3] [--batch-size 1]
        [--workers auto] [--paper-size | --width-scale 0.25] [--precision fp32|bf16]
        [--device auto|cpu|cuda]

The files: ``--images`` JPEGs of 500x375, every third one 375x500 (as VOC mixes them), with
palette PNG labels of 21 classes and void, in a temporary folder dataset (``data=folder``). The
network: FCN-8s, ``same`` alignment, random weights (the paper's VGG16 sizes by default). The two
measurements alternate ``--repeats`` times after a warm-up; the medians are reported, and their
ratio: evaluation's validation loop (what ``evaluate`` logs as images/s) over the forward pass.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from model_speed import cpu_name  # noqa: E402
from voc_like import save_scene, voc_like_scene  # noqa: E402

import fcn.run_folder  # noqa: E402, F401  (the configs' fcn_run_name resolver)
from fcn.data.datamodule import (  # noqa: E402
    SizeGroupedBatchSampler,
    TransformedDataset,
    image_sizes,
)
from fcn.data.folder import FolderDataset  # noqa: E402
from fcn.data.transforms import ToTensor  # noqa: E402
from fcn.evaluate import evaluate, usable_cores  # noqa: E402
from fcn.inference import load_model  # noqa: E402
from fcn.models import FCN  # noqa: E402
from fcn.models.tiling import TiledScorer  # noqa: E402

LANDSCAPE, PORTRAIT = (375, 500), (500, 375)  # (height, width)


def write_split(root: Path, n: int) -> None:
    """``images/val/<id>.jpg`` and ``masks/val/<id>.png``: smooth colour fields with a few
    labelled ellipses ringed by void, 500x375 and (every third) 375x500."""
    rng = np.random.default_rng(0)
    for d in ("images/val", "masks/val"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = PORTRAIT if i % 3 == 2 else LANDSCAPE
        image, label = voc_like_scene(rng, h, w, void_rings=True)
        save_scene(image, label, root / "images" / "val" / f"{i:04d}.jpg",
                   root / "masks" / "val" / f"{i:04d}.png")  # fmt: skip


def write_weights(path: Path, trunk_width: int, fc_width: int) -> None:
    """A bare state dict of FCN-8s with its own initialisation, the (zero) score layers drawn
    at random so that the predictions vary."""
    torch.manual_seed(0)
    net = FCN(21, skips=("pool4", "pool3"), alignment="same", trunk_width=trunk_width,
              fc_width=fc_width)  # fmt: skip
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith("score") and name.endswith("weight"):
                param.normal_(0, 0.01)
    torch.save(net.state_dict(), path)


def compose_config(overrides: list[str], run_dir: Path):
    """The composed ``evaluate`` config, with Hydra's own so that ``${hydra:...}`` resolves."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def decoded_batches(root: Path, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """The split's images decoded and normalised, in the batches evaluate makes, on ``device``."""
    dataset = TransformedDataset(FolderDataset(root, "val", num_classes=21), None, ToTensor())
    indices = list(range(len(dataset)))
    batches = SizeGroupedBatchSampler(indices, image_sizes(dataset, indices), batch_size)
    return [torch.stack([dataset[i][0] for i in b]).to(device) for b in batches]


def forward_rate(scorer: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    """Images per second of ``scorer`` over ``batches`` (inference mode, as evaluation)."""
    with torch.inference_mode():
        start = time.perf_counter()
        for x in batches:
            scorer(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return sum(len(x) for x in batches) / (time.perf_counter() - start)


def evaluation_rates(cfg) -> tuple[float, float, int]:
    """(images/s of evaluate's validation loop, images/s of the whole ``evaluate`` call, the
    loader workers it used)."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate(copy.deepcopy(cfg))
    whole = time.perf_counter() - start
    timing = json.loads(Path(cfg.output_file).read_text())["timing"]
    return timing["images_per_second"], timing["images"] / whole, timing["workers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", default="auto", help="evaluate's num_workers: auto | N")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--paper-size", action="store_true", help="VGG16's widths (the default)")
    size.add_argument("--width-scale", type=float, default=1.0, help="trunk and fc widths x this")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU when torch sees one")  # fmt: skip
    args = parser.parse_args()
    trunk, fc = max(1, round(64 * args.width_scale)), max(1, round(4096 * args.width_scale))
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's, about torch's API
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    gpu_wanted = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if gpu_wanted else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    cores = usable_cores()
    print(f"CPU {cpu_name()}, {cores} usable cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} intra-op threads; GPU {gpu}")  # fmt: skip
    print(f"FCN-8s (same alignment) trunk_width={trunk} fc_width={fc}, {args.precision}; "
          f"{args.images} images (500x375 and 375x500 JPEG + PNG), batch_size={args.batch_size}, "
          f"num_workers={args.workers}")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_split(root / "data", args.images)
        write_weights(root / "weights.pt", trunk, fc)
        workers = args.workers if args.workers == "auto" else int(args.workers)
        cfg = compose_config([
            "model=fcn8", "model.alignment=same", f"model.trunk_width={trunk}",
            f"model.fc_width={fc}", "data=folder", "data.num_classes=21",
            f"data.train_set.root={root / 'data'}", f"ckpt_path={root / 'weights.pt'}",
            f"output_file={root / 'eval' / 'evaluation.json'}", "overwrite=true",
            f"batch_size={args.batch_size}", f"num_workers={workers}",
            f"precision={args.precision}", "+trainer.enable_progress_bar=false",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            "trainer.enable_model_summary=false",
        ], root / "eval")  # fmt: skip

        net = load_model(cfg, cfg.ckpt_path).net.to(device)
        scorer = TiledScorer(net, precision=args.precision)
        batches = decoded_batches(root / "data", args.batch_size, device)
        shapes = {tuple(x.shape): x for x in batches}
        forward_rate(scorer, list(shapes.values()))  # warm-up: one batch of each shape
        forward, loop, whole = [], [], []
        for _ in range(args.repeats):  # alternate, so that drifts hit both alike
            forward.append(forward_rate(scorer, batches))
            rate, whole_rate, used = evaluation_rates(cfg)
            loop.append(rate)
            whole.append(whole_rate)

    med = {name: statistics.median(v) for name, v in
           (("forward", forward), ("loop", loop), ("whole", whole))}  # fmt: skip
    print(f"{'measured (median of ' + str(args.repeats) + ')':<52}{'images/s':>10}{'ratio':>8}")
    print(f"{'forward pass alone (decoded images in memory)':<52}{med['forward']:>10.3f}"
          f"{1:>8.2f}")  # fmt: skip
    print(f"{'fcn.evaluate, validation loop (files, workers)':<52}{med['loop']:>10.3f}"
          f"{med['loop'] / med['forward']:>8.2f}")  # fmt: skip
    print(f"{'fcn.evaluate, whole call (set-up, weights read)':<52}{med['whole']:>10.3f}"
          f"{med['whole'] / med['forward']:>8.2f}")  # fmt: skip
    runs = zip(forward, loop, whole, strict=True)
    print(f"loader workers: {used} (num_workers={args.workers})")
    print(
        "runs (forward / loop / whole): "
        + "; ".join(f"{a:.3f} / {b:.3f} / {c:.3f}" for a, b, c in runs)
    )


if __name__ == "__main__":
    main()
