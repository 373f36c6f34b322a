"""What a config read from a file may build.

A checkpoint stores its run's resolved config so that ``fcn.evaluate``, ``fcn.predict``,
``fcn.export`` and ``fcn.figure`` can rebuild the network and the data from the file alone. A
file must never choose what code runs: only the project's own components (and the library
classes its configs name) may be built from a stored config, each section its own, and a stored
config holds no interpolations (it was resolved when saved). Anything else is refused before
anything is called, naming the file and the key. ``fcn.resume`` holds the overrides it reads
from a run folder to the same rule (:func:`check_run_targets`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fcn.errors import ConfigError, DataError

MODEL_TARGETS = frozenset({"fcn.models.FCN", "fcn.models.fcn.FCN"})
DATA_TARGETS = frozenset(
    {
        "fcn.data.datamodule.SegmentationDataModule",
        "fcn.data.shapes.ShapesDataset",
        "fcn.data.pascal.PascalDataset",
        "fcn.data.voc_seed.SeedVOC",
        "fcn.data.folder.FolderDataset",
        "fcn.data.transforms.resize_and_pad",
        "fcn.data.transforms.augment",
    }
)
#: What the rest of a training config builds (conf/ and experiments/; a test keeps them equal).
RUN_TARGETS = frozenset(
    {
        "fcn.training.module.FCNModule",
        "fcn.training.optim.build_optimizer",
        "fcn.training.callbacks.MetricsFile",
        "fcn.training.callbacks.SkippedFilesReport",
        "fcn.training.callbacks.ValidationMasks",
        "fcn.training.confusion_callback.BestConfusionMatrix",
        "fcn.training.skipped_steps.SkippedSteps",
        "fcn.training.tracking.wandb_logger",
        "pytorch_lightning.Trainer",
        "pytorch_lightning.callbacks.LearningRateMonitor",
        "pytorch_lightning.callbacks.ModelCheckpoint",
        "pytorch_lightning.callbacks.TQDMProgressBar",
        "pytorch_lightning.loggers.CSVLogger",
        "pytorch_lightning.loggers.TensorBoardLogger",
        "pytorch_lightning.profilers.SimpleProfiler",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.optim.lr_scheduler.PolynomialLR",
        "torch.optim.lr_scheduler.StepLR",
    }
)
ALL_TARGETS = MODEL_TARGETS | DATA_TARGETS | RUN_TARGETS
#: The sections of a stored config that the inference commands build, and what each may build.
STORED_SECTIONS = {"model": MODEL_TARGETS, "data": DATA_TARGETS}


def check_targets(node: Any, allowed: frozenset[str], source: str, where: str) -> None:
    """Refuse any ``_target_`` under ``node`` (any depth, ``_args_`` and lists included) that
    is not in ``allowed``; the message names ``source`` and the key."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            target = node["_target_"]
            if not isinstance(target, str) or target not in allowed:
                raise ConfigError(
                    f"{source}: {where}._target_ is {target!r}, which is not one of the "
                    "components fcn builds from a file: refused before anything was built "
                    "(a file's config never chooses what code runs)"
                )
        for key, value in node.items():
            check_targets(value, allowed, source, f"{where}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            check_targets(value, allowed, source, f"{where}[{i}]")


def _check_literal(node: Any, source: str, where: str) -> None:
    """Refuse interpolations (``${...}``) anywhere under ``node``: a stored config is resolved
    when it is saved, so one found in a file was put there by hand."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            _check_literal(value, source, f"{where}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _check_literal(value, source, f"{where}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise ConfigError(
            f"{source}: {where} holds an interpolation ({node[:60]!r}); stored configs are "
            "resolved when saved, so this one was edited: refused"
        )


def check_stored_config(stored: Any, source: str) -> dict | None:
    """The config stored in the file ``source``, refused unless its ``model`` and ``data``
    sections build only fcn's own network and data components and hold no interpolation."""
    if stored is None:
        return None
    if not isinstance(stored, Mapping):
        raise DataError(f"{source}: its stored config is a {type(stored).__name__}, not a mapping")
    for section, allowed in STORED_SECTIONS.items():
        node = stored.get(section)
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise DataError(f"{source}: its stored config's {section} is not a mapping")
        _check_literal(node, source, section)
        check_targets(node, allowed, source, section)
    return dict(stored)


def check_run_targets(cfg: DictConfig, source: str) -> None:
    """Refuse a composed training config that builds anything but fcn's own components and the
    library classes its configs name (used for runs whose options come from a file)."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: the config does not resolve: {err}") from None
    for key, node in resolved.items():
        if key != "hydra":
            check_targets(node, ALL_TARGETS, source, str(key))
