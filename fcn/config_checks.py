"""Config values that compose but cannot work, refused before anything is built.

Each component owns its rules (``check_*_args`` beside the class); this module applies them to
the composed config and names the full key in the error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fcn.data.datamodule import check_data_args
from fcn.errors import ConfigError
from fcn.models.downloads import RELEASED
from fcn.models.fcn import check_fcn_args
from fcn.models.weights import WEIGHT_SOURCES
from fcn.training.module import check_class_weights, check_loss_reduction
from fcn.training.optim import check_optimizer_args


def _apply(group: str, check: Callable[..., None], **values: Any) -> None:
    """Run a component's check; its message starts with the argument, so prefix the group."""
    try:
        check(**values)
    except ValueError as err:
        raise ConfigError(f"{group}.{err}") from None


def check_data_config(data: DictConfig) -> None:
    """Raise :class:`ConfigError` for a ``data`` config value that cannot work."""
    if OmegaConf.is_missing(data, "num_classes"):
        raise ConfigError(
            "data.num_classes is not set: give the number of classes of your data, e.g. "
            "data.num_classes=5 (void, 255, is not a class)"
        )
    _apply(
        "data", check_data_args, num_classes=data.get("num_classes"),
        class_names=data.get("class_names"), batch_size=data.get("batch_size"),
        on_bad_file=data.get("on_bad_file", "error"), num_workers=data.get("num_workers", 0),
    )  # fmt: skip


def check_model_config(model: DictConfig) -> None:
    """Raise :class:`ConfigError` for a ``model`` config value that cannot work."""
    _apply(
        "model", check_fcn_args, num_classes=model.get("num_classes"),
        skips=model.get("skips") or (), alignment=model.get("alignment"),
        trunk_width=model.get("trunk_width"), fc_width=model.get("fc_width"),
        dropout=model.get("dropout"),
    )  # fmt: skip


#: ``trainer.precision`` values that run end to end (tests train with each on CPU).
PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true")
#: Values Lightning accepts that are refused, with the reason.
REFUSED_PRECISIONS = {
    "16-true": "fp16 weights without fp32 master copies: Adam's updates underflow and the loss "
    "turns NaN within the first steps",
    "transformer-engine": "NVIDIA Transformer Engine is for transformer layers, not convolutions",
    "transformer-engine-float16": "NVIDIA Transformer Engine is for transformer layers, not "
    "convolutions",
}


def check_precision(precision: object) -> None:
    """Raise :class:`ConfigError` for a ``trainer.precision`` that does not run end to end,
    listing the supported values."""
    value = str(precision)
    if value in PRECISIONS:
        return
    why = REFUSED_PRECISIONS.get(value, "not a precision this project runs")
    raise ConfigError(
        f"trainer.precision={value} is not supported ({why}): use one of "
        "32-true (default), 64-true, bf16-mixed, 16-mixed (GPUs; bf16 on CPU), bf16-true"
    )


#: ``trainer.precision`` values that train in float16 under a grad scaler.
FLOAT16_MIXED = ("16-mixed", "16")


def check_precision_with_loss(precision: object, loss_reduction: object) -> None:
    """Raise :class:`ConfigError` for float16 mixed precision with the summed loss.

    A summed loss's gradients are the mean loss's times the valid pixels of the batch (up to
    250,000 for one 500x500 image): they overflow float16 (largest value 65504) and the grad
    scaler skips every step they overflow in, without a word (the callback
    :class:`fcn.training.skipped_steps.SkippedSteps` now logs each). bfloat16 has float32's
    range and needs no scaler.
    """
    value = str(precision)
    if value in FLOAT16_MIXED and loss_reduction == "sum":
        raise ConfigError(
            f"trainer.precision={value} cannot train with module.loss_reduction=sum: the summed "
            "loss's gradients overflow float16 and the grad scaler skips optimiser steps; use "
            "trainer.precision=bf16-mixed (float32's range, no skipped steps) or 32-true, or "
            "module.loss_reduction=mean"
        )


def check_config(cfg: DictConfig, training: bool = True) -> None:
    """Raise :class:`ConfigError` for the first value that cannot work, naming its key.

    ``training=False`` (evaluation) checks the data, transforms and model only.
    """
    data, model = cfg.data, cfg.model
    check_data_config(data)
    for key in ("size", "crop"):
        value = (cfg.get("transforms") or {}).get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"transforms.{key} must be a positive integer, got {value!r}")
    check_model_config(model)
    check_precision((cfg.get("trainer") or {}).get("precision", "32-true"))
    if not training:
        return
    optimizer = cfg.optimizer
    _apply(
        "optimizer", check_optimizer_args, lr=optimizer.get("lr"),
        weight_decay=optimizer.get("weight_decay", 0.0),
    )  # fmt: skip
    source = (cfg.get("weights") or {}).get("source", "none")
    if source not in WEIGHT_SOURCES:
        raise ConfigError(f"weights.source must be one of {list(WEIGHT_SOURCES)}, got {source!r}")
    if "weights" in cfg and OmegaConf.is_missing(cfg.weights, "path"):
        raise ConfigError(f"weights.path must name the weights file to start from ({source})")
    if "weights" in cfg and OmegaConf.is_missing(cfg.weights, "name"):
        raise ConfigError(
            f"weights.name must name the released model to start from: one of {list(RELEASED)}"
        )
    _apply("module", check_loss_reduction, loss_reduction=cfg.module.get("loss_reduction"))
    check_precision_with_loss(
        (cfg.get("trainer") or {}).get("precision", "32-true"), cfg.module.get("loss_reduction")
    )
    _apply(
        "module", check_class_weights, class_weights=cfg.module.get("class_weights"),
        num_classes=data.num_classes,
    )  # fmt: skip
    max_epochs = cfg.trainer.get("max_epochs")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be a positive integer, got {max_epochs!r}")
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed must be a non-negative integer or null, got {seed!r}")
