"""Score a trained FCN: ``python -m fcn.evaluate ckpt_path=<file> [model=...] [data=...]``.

Pixel accuracy, mean accuracy, mean IU, frequency-weighted IU and per-class IoU from one
confusion matrix over the data config's whole validation split (summed across processes under
DDP), printed as a table and written to ``output_file`` as JSON; that confusion matrix,
normalised by true class, beside it as ``<output_file stem>.confusion.json`` and ``.png``
(:mod:`fcn.confusion`). The network and the data are
the checkpoint's own unless ``model=`` / ``data=`` (or ``experiment=``) choose others. Images are
scored whole, or in windows (``window``, ``stride``) and with flips (``flip``) as
:class:`fcn.models.tiling.TiledScorer` does; the JSON records how.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

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
from fcn.models.tiling import TiledScorer
from fcn.scores import METRIC_NAMES
from fcn.training.module import FCNModule
from fcn.training.optim import build_optimizer
from fcn.training.summary import silence_lightning_tips

log = logging.getLogger("fcn.evaluate")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate ``cfg.ckpt_path`` on ``cfg.data``'s validation split; return the metrics."""
    silence_lightning_tips()
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path must name the checkpoint or weights file to evaluate")
    tiling = tiling_options(cfg)
    precision = scoring_precision(cfg, _device(cfg))
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
    trainer: pl.Trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False
    )
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    counts = module.last_val_confusion  # the metrics' own matrix, summed over processes
    _report(metrics, cfg, scorer, counts.numpy(), datamodule.class_names)
    return metrics


def _device(cfg: DictConfig) -> str:
    """The device type ``cfg.trainer`` will run on (for ``precision=auto``)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "cuda" if gpu else "cpu"


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
