"""Checks of config values that would compose but cannot work; each error names its key."""

from __future__ import annotations

from omegaconf import DictConfig

from fcn.errors import ConfigError
from fcn.models.fcn import ALIGNMENTS, SKIP_ORDER
from fcn.module import LOSS_REDUCTIONS


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise ConfigError(f"{key} is missing from the config")
        node = node[part]
    return node


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> None:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _positive_number(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value that cannot work, before anything runs."""
    _positive_int(cfg, "data.num_classes", minimum=2)
    names = cfg.data.get("class_names")
    if names is not None and len(names) != cfg.data.num_classes:
        raise ConfigError(
            f"data.class_names has {len(names)} names but data.num_classes is "
            f"{cfg.data.num_classes}"
        )
    _positive_int(cfg, "model.num_classes", minimum=2)
    _positive_int(cfg, "model.trunk_width")
    _positive_int(cfg, "model.fc_width")
    alignment = _get(cfg, "model.alignment")
    if alignment not in ALIGNMENTS:
        raise ConfigError(f"model.alignment must be one of {list(ALIGNMENTS)}, got {alignment!r}")
    skips = tuple(_get(cfg, "model.skips"))
    if skips != SKIP_ORDER[: len(skips)]:
        raise ConfigError(
            f"model.skips must be [], [pool4] or [pool4, pool3] (FCN-32s/16s/8s), got {list(skips)}"
        )
    dropout = _get(cfg, "model.dropout")
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {dropout!r}")
    _positive_number(cfg, "optimizer.lr")
    wd = cfg.optimizer.get("weight_decay", 0.0)
    if not isinstance(wd, int | float) or wd < 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0, got {wd!r}")
    reduction = _get(cfg, "module.loss_reduction")
    if reduction not in LOSS_REDUCTIONS:
        raise ConfigError(
            f"module.loss_reduction must be one of {list(LOSS_REDUCTIONS)}, got {reduction!r}"
        )
    _positive_int(cfg, "data.batch_size")
    if cfg.data.get("image_size") is not None:
        _positive_int(cfg, "data.image_size")
    _positive_int(cfg, "trainer.max_epochs")
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed must be a non-negative integer or null, got {seed!r}")
