"""Score a trained FCN: ``python -m fcn.evaluate ckpt_path=<file> [model=...] [data=...]``.

Pixel accuracy, mean accuracy, mean IU, frequency-weighted IU and per-class IoU from one
confusion matrix over the data config's whole validation split (summed across processes under
DDP), printed as a table and written to ``output_file`` as JSON; that confusion matrix,
normalised by true class, beside it as ``<output_file stem>.confusion.json`` and ``.png``
(:mod:`fcn.confusion`). The network and the data are
the checkpoint's own unless ``model=`` / ``data=`` (or ``experiment=``) choose others. Images are
scored whole, or in windows (``window``, ``stride``) and with flips (``flip``) as
:class:`fcn.models.tiling.TiledScorer` does; the JSON records how.

Images kept at their own sizes (``transforms=original``) are batched with others of the same
size only (:class:`fcn.data.datamodule.SizeGroupedBatchSampler`): no batch is padded, so
``batch_size`` changes the speed, not the confusion matrix. Loader workers (``num_workers``;
by default on the cores the network leaves free) decode the next images while it scores.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from fcn.config_checks import check_config
from fcn.confusion import confusion_paths, write_confusion
from fcn.errors import ConfigError, exit_on_user_error
from fcn.files import refuse_existing, write_text
from fcn.inference import (
    RELEASED_PREFIX,
    load_model,
    require_data,
    scoring_precision,
    tiling_options,
)
from fcn.models.precision import accelerator_device
from fcn.models.tiling import TiledScorer
from fcn.scores import METRIC_NAMES
from fcn.training.autotuning import fixed_sizes
from fcn.training.module import FCNModule
from fcn.training.optim import build_optimizer
from fcn.training.summary import silence_lightning_tips

log = logging.getLogger("fcn.evaluate")

#: ``num_workers``'s default: :func:`loader_workers` picks from the usable cores ...
AUTO_WORKERS = "auto"
#: ... at most this many.
MAX_AUTO_WORKERS = 4


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate ``cfg.ckpt_path`` on ``cfg.data``'s validation split; return the metrics."""
    silence_lightning_tips()
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path must name the checkpoint or weights file to evaluate")
    tiling = tiling_options(cfg)
    device = accelerator_device(cfg.trainer.get("accelerator", "auto"))
    precision = scoring_precision(cfg, device)
    workers = loader_workers(cfg.get("num_workers", AUTO_WORKERS), _processes(cfg), device)
    refuse_existing(cfg.output_file, cfg.overwrite)  # before anything is read or downloaded
    for path in confusion_paths(confusion_stem(cfg.output_file)).values():
        refuse_existing(path, cfg.overwrite, key="output_file's confusion matrix")
    if str(cfg.ckpt_path).startswith(RELEASED_PREFIX):  # a download stores no data config
        require_data(cfg, cfg.ckpt_path)
    loaded = load_model(cfg, cfg.ckpt_path)
    net, cfg = loaded.net, loaded.config  # model and data completed from the file
    require_data(cfg, cfg.ckpt_path)
    with open_dict(cfg):
        cfg.data.batch_size = cfg.batch_size
        if workers is not None:  # else the data config's own
            cfg.data.num_workers = workers
        cfg.data.persistent_workers = False  # one pass
        cfg.data.pin_memory = device == "cuda"
        # images at their own sizes: batches of one size each, nothing padded
        cfg.data.group_val_by_size = not fixed_sizes(cfg.transforms)[1]
        # only validation data is read: resolve its set first (its root may name train_set's)
        cfg.data.val_set = OmegaConf.to_container(cfg.data.val_set, resolve=True)
        cfg.data.train_set = None
        cfg.data.train_transform = None
        cfg.data.val_transform = cfg.transforms.val
    check_config(cfg, training=False)
    datamodule = instantiate(cfg.data)
    scorer = TiledScorer(net, **tiling, precision=precision)
    log.info("evaluating %s from %s: %s", net.variant, cfg.ckpt_path, scorer.describe())
    module = FCNModule(scorer, optimizer=build_optimizer, class_names=datamodule.class_names)
    timer = LoopTimer()
    trainer: pl.Trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[timer], enable_checkpointing=False
    )
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    counts = module.last_val_confusion  # the metrics' own matrix, summed over processes
    timing = timer.summary(len(datamodule.val_set), datamodule.loader_kwargs["num_workers"])
    log.info(
        "scored %d images in %.1f s: %.2f images/s (%d loader workers, batches of up to %d)",
        timing["images"], timing["seconds"], timing["images_per_second"], timing["workers"],
        cfg.batch_size,
    )  # fmt: skip
    _report(metrics, cfg, scorer, counts.numpy(), datamodule.class_names, timing)
    return metrics


def loader_workers(value: Any, processes: int = 1, device: str = "cpu") -> int | None:
    """Loader workers per process for ``num_workers``: an integer >= 0 is that many, null the
    data config's own (None). ``auto``: one per core of the process's share that the network
    leaves free, at most :data:`MAX_AUTO_WORKERS`. On a GPU the network needs one core; on a
    CPU its intra-op threads (``torch.get_num_threads()``) take theirs, and a worker on one of
    those cores stalls each parallel region it interrupts: on a 2-core CPU a worker cost more
    than decoding in the main process (bench/evaluation_throughput.py), so there are none."""
    if value is None:
        return None
    if value == AUTO_WORKERS:
        share = usable_cores() // max(processes, 1)
        network = 1 if device == "cuda" else torch.get_num_threads()
        return max(0, min(MAX_AUTO_WORKERS, share - network))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"num_workers must be auto, null (the data config's) or an integer >= 0, got {value!r}"
        )
    return value


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class LoopTimer(pl.Callback):
    """Wall time of the validation loop (workers' start, decoding, scoring, metrics): what
    ``evaluate`` reports as its images per second, set-up and checkpoint reading excluded."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.seconds = math.nan

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started is not None:
            self.seconds = time.perf_counter() - self.started

    def summary(self, images: int, workers: int) -> dict[str, float]:
        """``images`` (the split's, over every process), ``seconds``, ``images_per_second``
        and ``workers`` (per process)."""
        rate = images / self.seconds if self.seconds > 0 else math.nan
        return {"images": images, "seconds": self.seconds, "images_per_second": rate,
                "workers": workers}  # fmt: skip


def _processes(cfg: DictConfig) -> int:
    """Processes on this machine: ``trainer.devices`` when it is a count (DDP), else one."""
    devices = cfg.trainer.get("devices", 1)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) else 1


def confusion_stem(output_file: str | Path) -> Path:
    """``<folder>/<stem>.confusion`` of ``output_file``: its confusion matrix's files are that
    with ``.json`` and ``.png`` (``evaluation.json``: ``evaluation.confusion.json``)."""
    output_file = Path(output_file)
    return output_file.with_name(f"{output_file.stem}.confusion")


@rank_zero_only
def _report(
    metrics: dict[str, float],
    cfg: DictConfig,
    scorer: TiledScorer,
    counts: np.ndarray,
    class_names: list[str],
    timing: dict[str, float],
) -> None:
    print(format_table(metrics))
    out = Path(cfg.output_file)
    data = cfg.data.val_set.get("split") or cfg.data.val_set._target_
    checkpoint = str(cfg.ckpt_path)
    title = f"{Path(checkpoint).name} on {data}: mIoU {metrics['val/mIoU']:.4f}"
    confusion = write_confusion(
        confusion_stem(out), counts, class_names, title=title, replace=cfg.overwrite,
        checkpoint=checkpoint, data=data, mIoU=metrics["val/mIoU"],
    )  # fmt: skip
    doc = {
        "checkpoint": checkpoint,
        "data": data,
        "scoring": scorer.settings(),
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in metrics.items()},
        "confusion": {k: str(v) for k, v in confusion.items()},
        "timing": {k: (v if math.isfinite(v) else None) for k, v in timing.items()},
    }
    write_text(out, json.dumps(doc, indent=2) + "\n", replace=cfg.overwrite)
    print(f"written to {out}")
    print(
        f"confusion matrix (normalised by true class): {confusion['figure']}, {confusion['json']}"
    )


def format_table(metrics: dict[str, float]) -> str:
    """The summary metrics, then one row per class (absent classes shown as '-')."""
    lines = [f"{'metric':<24}{'value':>8}"]
    lines += [f"{name:<24}{metrics[f'val/{name}']:>8.4f}" for name in METRIC_NAMES]
    lines.append(f"{'class':<24}{'IoU':>8}")
    for key, value in metrics.items():
        if key.startswith("val/IoU/"):
            shown = f"{value:>8.4f}" if math.isfinite(value) else f"{'-':>8}"
            lines.append(f"{key.removeprefix('val/IoU/'):<24}{shown}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://fcn.conf", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a user error ends with its message alone and exit status 1."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
