"""cuDNN autotuning where input shapes repeat: on for fixed-size inputs (``resize_pad``,
``augment``'s crops), off for the images' own sizes (``original``; validation of ``augment``),
decided from the run's transforms unless ``trainer.benchmark`` says; and the one reading of
"which splits have one size" that ``torch.compile``'s dynamic shapes also follow."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from fcn.errors import ConfigError

log = logging.getLogger("fcn.train")


#: Transforms whose every output has one size (``transforms.size`` or ``transforms.crop``).
FIXED_SIZE_TRANSFORMS = ("fcn.data.transforms.resize_and_pad", "fcn.data.transforms.augment")


def cudnn_benchmark(cfg: DictConfig) -> tuple[bool, bool, str]:
    """Whether this run should autotune cuDNN's convolutions in training and in validation
    (``Trainer(benchmark=...)``), and why.

    Autotuning times every algorithm of each convolution the first time it meets an input
    shape and keeps the fastest: it pays where shapes repeat, and costs where each new batch
    brings a new one. ``trainer.benchmark`` true or false decides for both; null (auto)
    follows ``transforms.fixed_size``: true or false for both, or ``{train: ..., val: ...}``,
    whether every batch of that split has one size (each preset says). A config without that
    key (an older run's) is read from its transforms: sized ones of
    :data:`FIXED_SIZE_TRANSFORMS` give one size, null the images' own. A deterministic run
    (``trainer.deterministic``) is not autotuned by default: autotuning picks its algorithms
    by timing them.
    """
    trainer, transforms = cfg.trainer, cfg.get("transforms") or {}
    chosen = trainer.get("benchmark")
    if chosen is not None:
        if not isinstance(chosen, bool):
            raise ConfigError(f"trainer.benchmark must be true, false or null, got {chosen!r}")
        return chosen, chosen, f"trainer.benchmark={str(chosen).lower()}"
    if trainer.get("deterministic"):
        return False, False, f"trainer.deterministic={trainer.deterministic}"
    train, val = fixed_sizes(transforms)
    how = "from the transforms" if transforms.get("fixed_size") is None else "transforms.fixed_size"
    return train, val, how


def fixed_sizes(transforms: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether every training batch, and every validation batch, has one size, from a run's
    ``transforms`` config: its ``fixed_size`` (true, false or ``{train: .., val: ..}``, which
    each preset states), or for a config without that key (an older run's) whether each split's
    transform is one of :data:`FIXED_SIZE_TRANSFORMS` (null keeps the images' own sizes). A
    value of another shape is a :class:`ConfigError` naming the key."""
    fixed = transforms.get("fixed_size")
    if fixed is None:
        return _fixed_size_transform(transforms.get("train")), _fixed_size_transform(
            transforms.get("val")
        )
    if isinstance(fixed, bool):
        return fixed, fixed
    splits = isinstance(fixed, Mapping) and set(fixed) == {"train", "val"}
    if splits and all(isinstance(v, bool) for v in fixed.values()):
        return fixed["train"], fixed["val"]
    shown = OmegaConf.to_container(fixed) if isinstance(fixed, DictConfig) else fixed
    raise ConfigError(
        "transforms.fixed_size must be true, false or {train: true|false, val: true|false}, "
        f"got {shown!r}"
    )


def _fixed_size_transform(transform: Any) -> bool:
    target = transform.get("_target_") if isinstance(transform, Mapping) else None
    return target in FIXED_SIZE_TRANSFORMS


class ValidationAutotuning(pl.Callback):
    """Sets cuDNN autotuning to ``benchmark`` while validating (sanity check included) and back
    to the training's value after: off where validation images keep their own sizes, each of
    which would be tuned for the few images that have it."""

    def __init__(self, benchmark: bool) -> None:
        self.benchmark = benchmark
        self._training: bool | None = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.benchmark

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._training is not None:
            torch.backends.cudnn.benchmark, self._training = self._training, None


def decide_cudnn_benchmark(cfg: DictConfig) -> list[pl.Callback]:
    """Put the training's decision of :func:`cudnn_benchmark` in ``cfg.trainer.benchmark`` (the
    Trainer's argument, recorded with the run's config); return the callback that switches it
    for validation where that differs."""
    train, val, why = cudnn_benchmark(cfg)
    with open_dict(cfg):
        cfg.trainer.benchmark = train
    log.log(
        logging.INFO if torch.cuda.is_available() else logging.DEBUG,
        "cuDNN autotuning %s in training, %s in validation (%s)",
        "on" if train else "off", "on" if val else "off", why,
    )  # fmt: skip
    return [ValidationAutotuning(val)] if val != train else []
