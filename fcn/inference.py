"""A trained FCN rebuilt for inference, and run on single images of any size.

Our checkpoints carry their run's resolved config (:data:`fcn.models.weights.CONFIG_KEY`), so
``fcn.evaluate``, ``fcn.predict``, ``fcn.export`` and ``fcn.figure`` rebuild the network, its
input normalisation, class names and validation data from the file alone. Files without one
(bare state dicts, the reference port's ``*_from_caffe.pth``) need ``model=...`` and, for the
reference port, ``data.normalization=caffe``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import nn

from fcn.checkpoint import read_checkpoint
from fcn.config_checks import check_model_config
from fcn.data.datamodule import check_class_colors
from fcn.data.readers import VOC_CLASSES
from fcn.data.transforms import ToTensor
from fcn.errors import ConfigError
from fcn.models.downloads import RELEASED, WeightFile, check_fits, fetch
from fcn.models.fcn import FCN
from fcn.models.precision import resolve_precision
from fcn.models.tiling import WINDOW_BATCH, TiledScorer, check_tiling_args
from fcn.models.weights import load_fcn_state
from fcn.scores import predicted_classes
from fcn.stored_config import check_stored_config

log = logging.getLogger(__name__)

#: The scoring options of ``fcn.evaluate`` and ``fcn.predict`` (:class:`TiledScorer`'s
#: arguments) and their values where a config lacks them: whole images, no flip.
TILING_DEFAULTS = {"window": None, "stride": None, "flip": False, "window_batch": WINDOW_BATCH}
#: What ``data.<key>: null`` becomes for a file that stores no config.
DATA_DEFAULTS = {
    "num_classes": 21, "normalization": "torchvision", "class_names": None, "class_colors": None,
}  # fmt: skip


@dataclass
class LoadedModel:
    """A network in eval mode with what is needed to feed it and to name its classes."""

    net: FCN
    normalization: str
    class_names: list[str]
    class_colors: list[list[int]]  # [r, g, b] per class, for masks and overlays
    path: Path
    run_config: dict | None  # the run config stored in the file (None for bare weights)
    config: DictConfig  # the config given to load_model, model and data completed from the file

    @cached_property
    def to_tensor(self) -> ToTensor:
        """The input conversion with the normalisation the model was trained with."""
        return ToTensor(self.normalization)


def _complete(given: DictConfig | None, stored: dict | None) -> DictConfig:
    """``given`` if it is a whole config (it has a ``_target_``); otherwise the stored config
    with ``given``'s non-null keys set over it."""
    if given is not None and "_target_" in given:
        return given
    overrides = {k: v for k, v in (given or {}).items() if v is not None}
    return OmegaConf.merge(OmegaConf.create(stored or {}), overrides)


def completed_config(cfg: DictConfig, stored: dict | None, ckpt_path: str) -> DictConfig:
    """A copy of ``cfg`` whose ``model`` and ``data`` are completed from a checkpoint's stored
    run config (``cfg`` itself is left as it is).

    A ``model`` / ``data`` chosen whole (``model=fcn8``, ``data=seg11valid``: configs with a
    ``_target_``) is kept. Otherwise the checkpoint's is used, with any keys given set over it
    (``+data.num_workers=8``; null keys keep the stored value). ``data.num_classes`` /
    ``normalization`` / ``class_names`` still missing become 21, torchvision and (for 21
    classes) the VOC names. The stored config is checked first (:mod:`fcn.stored_config`).
    """
    stored = check_stored_config(stored, ckpt_path) or {}
    trained_with = (stored.get("data") or {}).get("normalization")
    cfg = copy.deepcopy(cfg)  # a copy of the whole tree: interpolations keep their root
    with open_dict(cfg):
        cfg.data = _complete(cfg.get("data"), stored.get("data"))
        for key, default in DATA_DEFAULTS.items():
            if cfg.data.get(key) is None:
                cfg.data[key] = default
        if cfg.data.class_names is None and cfg.data.num_classes == len(VOC_CLASSES):
            cfg.data.class_names = list(VOC_CLASSES)
        if trained_with and cfg.data.normalization != trained_with:
            log.warning(
                "data.normalization=%s but %s was trained with %s: scores will suffer unless "
                "that is meant", cfg.data.normalization, ckpt_path, trained_with,
            )  # fmt: skip
        cfg.model = _complete(cfg.get("model"), stored.get("model"))
    if "_target_" not in cfg.model:
        raise ConfigError(
            f"{ckpt_path} stores no model config (a bare state dict or the reference port's "
            "file): choose the network, e.g. model=fcn8 (with data.normalization=caffe for the "
            "reference port's *_from_caffe.pth)"
        )
    return cfg


def require_data(cfg: DictConfig, ckpt_path: str) -> None:
    """Refuse a ``cfg.data`` that names no datasets (the checkpoint stored none)."""
    data = cfg.get("data") or {}
    if "_target_" not in data or "val_set" not in data:
        raise ConfigError(
            f"{ckpt_path} stores no data config (not one of our checkpoints): choose the data, "
            "e.g. data=seg11valid"
        )


#: ``ckpt_path=released:<name>``: one of the paper's released models, fetched on first use.
RELEASED_PREFIX = "released:"


def released_file(ckpt_path: str) -> tuple[Path, WeightFile] | None:
    """For ``released:<name>``, the checked local file (fetched on first use) and its entry;
    None for any other path."""
    if not str(ckpt_path).startswith(RELEASED_PREFIX):
        return None
    name = str(ckpt_path).removeprefix(RELEASED_PREFIX)
    if name not in RELEASED:
        raise ConfigError(
            f"ckpt_path={ckpt_path}: the released models are "
            + ", ".join(RELEASED_PREFIX + n for n, e in RELEASED.items() if e.model)
        )
    entry = RELEASED[name]
    if entry.model is None:
        raise ConfigError(f"ckpt_path={ckpt_path} is a VGG16 trunk, not an FCN")
    return fetch(entry), entry


def load_model(cfg: DictConfig, ckpt_path: str) -> LoadedModel:
    """The network of ``ckpt_path``, every layer taken from the file, in eval mode on the CPU,
    with ``cfg`` completed from the file (:func:`completed_config`; ``cfg`` is not changed).

    ``released:<name>`` (``released:fcn8s``, ...) is the paper's released model of that name,
    fetched and checked on first use, scored with the Caffe normalisation it needs; its
    network must be chosen to match (``model=fcn8``)."""
    released = released_file(ckpt_path)
    if released is not None:
        cfg = _for_released(cfg, ckpt_path, released[1])
        ckpt_path = str(released[0])
    state, stored = read_checkpoint(ckpt_path)
    completed = completed_config(cfg, stored, ckpt_path)  # refuses a stored config first
    check_model_config(completed.model)
    net: FCN = instantiate(completed.model)
    load_fcn_state(net, state, ckpt_path, strict=True)
    data = completed.data
    names = data.class_names or [f"class_{i}" for i in range(net.num_classes)]
    try:
        colors = check_class_colors(data.class_colors, net.num_classes)
    except ValueError as err:
        raise ConfigError(f"data.{err}") from None
    return LoadedModel(
        net.eval(), data.normalization, list(names), colors, Path(ckpt_path), stored, completed
    )


def _for_released(cfg: DictConfig, name: str, entry: WeightFile) -> DictConfig:
    """A copy of ``cfg`` set for a released model: its normalisation, and a check that the
    network chosen is the model's variant."""
    cfg = copy.deepcopy(cfg)
    model = cfg.get("model") or {}
    try:
        check_fits(entry, name, model.get("skips") or [], model.get("skip_scaling") or False)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    with open_dict(cfg):
        if cfg.get("data") is None:
            cfg.data = {}
        cfg.data.normalization = entry.normalization
    log.info("%s: %s (data.normalization=%s)", name, entry.filename, entry.normalization)
    return cfg


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first GPU if there is one, else the CPU; or any torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:<n>, got {name!r}") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name} but this machine has no usable GPU: use device=cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name} but this machine has {count} GPU(s): cuda:0..")
    elif device.type != "cpu":
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:<n>, got {name!r}")
    return device


def tiling_options(cfg: DictConfig) -> dict[str, Any]:
    """``cfg``'s ``window``, ``stride``, ``flip`` and ``window_batch`` (:data:`TILING_DEFAULTS`
    where absent) as :class:`TiledScorer`'s arguments; a value that cannot work is a
    ConfigError naming its key."""
    options = {}
    for key, default in TILING_DEFAULTS.items():
        value = cfg.get(key, default)
        options[key] = OmegaConf.to_object(value) if isinstance(value, ListConfig) else value
    try:
        check_tiling_args(**options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return options


def scoring_precision(cfg: DictConfig, device: torch.device | str) -> str:
    """``cfg.precision`` (``fp32``, ``bf16`` or ``auto``; absent: ``fp32``) resolved for
    ``device``: ``auto`` is ``bf16`` where the device has bfloat16 units. A ConfigError names
    the key for anything else; ``bf16`` on a device without those units is kept, with a
    warning that it is emulated."""
    name = cfg.get("precision", "fp32")
    try:
        precision = resolve_precision(name, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if name == "bf16" and resolve_precision("auto", device) != "bf16":
        log.warning(
            "precision=bf16: this %s has no bfloat16 units; bf16 is emulated and may be slower "
            "than fp32 (precision=auto chooses for the device)",
            torch.device(device).type,
        )
    return precision


@torch.inference_mode()
def predict_scores(
    model: LoadedModel,
    image: np.ndarray,
    device: torch.device,
    max_size: int | None = None,
    scorer: nn.Module | None = None,
) -> torch.Tensor:
    """Class scores ``(C, H, W)`` for one HxWx3 uint8 RGB image of any size.

    ``max_size``: images whose longer side is larger are scored at that size (bilinear) and the
    scores brought back to the image's own size; None scores every image at its own size.
    ``scorer``: what scores the (resized) image: ``model.net`` (None), or a :class:`TiledScorer`
    around it (on ``device``) for windows and flips. The scores are on ``device``; in windows
    they are on the CPU, where the image and the sums of the windows' scores stay (only the
    windows go to ``device``), so that an image too large for the device's memory is scored.
    """
    scorer = model.net if scorer is None else scorer
    x = model.to_tensor.image(image).unsqueeze(0)
    if not (isinstance(scorer, TiledScorer) and scorer.window is not None):
        x = x.to(device)
    height, width = x.shape[-2:]
    scale = max_size / max(height, width) if max_size and max(height, width) > max_size else 1.0
    if scale < 1.0:
        small = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False)
    scores = scorer(x)
    if scale < 1.0:
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    return scores[0]


def predict_mask(
    model: LoadedModel,
    image: np.ndarray,
    device: torch.device,
    max_size: int | None = None,
    scorer: nn.Module | None = None,
) -> np.ndarray:
    """The predicted class of every pixel, an HxW uint8 array (see :func:`predict_scores`)."""
    scores = predict_scores(model, image, device, max_size, scorer)
    return predicted_classes(scores, 0).to(torch.uint8).cpu().numpy()
