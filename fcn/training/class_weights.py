"""``module.class_weights=median_frequency``: the weights counted from the training split (or
taken from the checkpoint a run resumes from), recorded in the run's config."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from omegaconf import DictConfig

from fcn.checkpoint import stored_section
from fcn.data.datamodule import SegmentationDataModule
from fcn.data.stats import median_frequency_weights, split_stats
from fcn.run_folder import is_secondary_process
from fcn.training.module import MEDIAN_FREQUENCY, check_class_weights

log = logging.getLogger("fcn.train")


def median_frequency_class_weights(
    cfg: DictConfig, datamodule: SegmentationDataModule
) -> list[float]:
    """``module.class_weights=median_frequency``: the weights the checkpoint's run used when
    resuming (so a resumed run trains with the numbers it started with), else median frequency
    balancing of the training split's pixel counts (:func:`fcn.data.stats.median_frequency_weights`:
    classes absent from the split get 0)."""
    num_classes = cfg.data.num_classes
    names = datamodule.class_names or [f"class_{i}" for i in range(num_classes)]
    if cfg.ckpt_path is not None:
        stored = _stored_class_weights(cfg.ckpt_path, num_classes)
        if stored is not None:
            log.info(
                "module.class_weights=%s: the weights recorded in %s (not counted again): %s",
                MEDIAN_FREQUENCY, cfg.ckpt_path, _named(stored, names),
            )  # fmt: skip
            return stored
    dataset = datamodule.train_set.dataset  # the training items before any transform
    log.info(
        "module.class_weights=%s: counting the pixels of the %d training images",
        MEDIAN_FREQUENCY, len(dataset),
    )  # fmt: skip
    skip = cfg.data.get("on_bad_file", "error") == "skip"
    stats = split_stats(
        dataset, num_classes, "class weights", num_workers=cfg.data.get("num_workers") or 0,
        on_error="collect" if skip else "raise", progress=not is_secondary_process(),
    )  # fmt: skip
    if stats.unreadable:
        log.warning(
            "%d training file(s) left out of the class weights (data.on_bad_file=skip): %s",
            len(stats.unreadable), stats.unreadable[0],
        )  # fmt: skip
    weights = median_frequency_weights(stats.class_pixels)
    log.info(
        "module.class_weights=%s from the pixels of %d training images: %s",
        MEDIAN_FREQUENCY, stats.read, _named(weights, names),
    )  # fmt: skip
    if stats.absent:
        log.warning(
            "class(es) absent from the training split get weight 0 (no training pixel is "
            "theirs, so the loss does not depend on it; they cannot be learned): %s",
            ", ".join(names[c] for c in stats.absent),
        )  # fmt: skip
    return weights


def _stored_class_weights(ckpt_path: str, num_classes: int) -> list[float] | None:
    """The list ``module.class_weights`` of the config stored in a checkpoint, or None."""
    module = stored_section(ckpt_path, "module")
    weights = module.get("class_weights") if module is not None else None
    if not isinstance(weights, Sequence) or isinstance(weights, str):
        return None
    try:
        check_class_weights(weights, num_classes)
    except ValueError:
        return None
    return [float(w) for w in weights]


def _named(weights: Sequence[float], names: Sequence[str]) -> str:
    return ", ".join(f"{n}={w:.4g}" for n, w in zip(names, weights, strict=True))
