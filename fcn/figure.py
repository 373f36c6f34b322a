"""The Keras seed's comparison figure (docs/seed.md#figures):
``python -m fcn.figure 'checkpoints=[a,b,c]' 'images=[0,5]'``.

For each chosen validation image: the image, its true label, and every checkpoint's prediction
at the image's own size, titled with the model's name and that image's pixel accuracy and mean
IoU (the paper's formulas on the image's own confusion matrix, void pixels left out).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from fcn.errors import ConfigError, exit_on_user_error
from fcn.files import refuse_existing
from fcn.inference import (
    LoadedModel,
    completed_config,
    load_model,
    pick_device,
    predict_mask,
    require_data,
)
from fcn.scores import scores_from_confusion
from fcn.viz import FigureRow, draw_comparison

log = logging.getLogger("fcn.figure")


def image_scores(label: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Pixel accuracy and mean IoU of one image (labels outside the classes, e.g. 255, ignored)."""
    valid = label < num_classes
    index = label[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    hist = torch.from_numpy(np.bincount(index, minlength=num_classes**2))
    scores = scores_from_confusion(hist.view(num_classes, num_classes))
    return float(scores["pixel_acc"]), float(scores["mIoU"])


def pick_images(dataset: Dataset, wanted: Sequence[int | str]) -> list[tuple[int, str]]:
    """``(index, title)`` of each wanted image: an index into ``dataset`` or one of its ids."""
    ids = list(getattr(dataset, "ids", None) or [])
    picked = []
    for item in wanted:
        if isinstance(item, int):
            if not 0 <= item < len(dataset):
                raise ConfigError(
                    f"images: index {item} is outside the validation split's {len(dataset)} "
                    "images (VOC ids must be quoted: 'images=[\"2007_000033\"]')"
                )
            picked.append((item, ids[item] if ids else f"image {item}"))
        elif str(item) in ids:
            picked.append((ids.index(str(item)), str(item)))
        else:
            raise ConfigError(f"images: {item!r} is not an id of the validation split")
    if not picked:
        raise ConfigError("images must name at least one validation image")
    return picked


def _column_names(models: Sequence[LoadedModel]) -> list[str]:
    names = [m.net.variant for m in models]
    if len(set(names)) == len(names):
        return names
    return [f"{name} ({m.path.parent.parent.name})" for name, m in zip(names, models, strict=True)]


def make_figure(cfg: DictConfig) -> Path:
    """Draw the figure for ``cfg.images`` with one column per ``cfg.checkpoints``."""
    paths = list(cfg.checkpoints)
    if not paths:
        raise ConfigError("checkpoints must list at least one checkpoint")
    out_file = Path(cfg.output_file)
    refuse_existing(out_file, cfg.overwrite)
    models = []
    for path in paths:  # each checkpoint's own network and normalisation
        model_cfg = OmegaConf.create(
            {"model": None, "data": {"num_classes": None, "normalization": None}}
        )
        models.append(load_model(model_cfg, path))
    cfg = completed_config(cfg, models[0].run_config, paths[0])  # the data: the first one's
    require_data(cfg, paths[0])
    device = pick_device(cfg.device)
    num_classes = int(cfg.data.num_classes)
    for model in models:
        model.net.to(device)
        if model.net.num_classes != num_classes:
            raise ConfigError(
                f"{model.path} predicts {model.net.num_classes} classes, the data has {num_classes}"
            )
    dataset = instantiate(cfg.data.val_set)
    transform = instantiate(cfg.transforms.val) if cfg.transforms.get("val") else None
    rows = []
    for index, title in pick_images(dataset, list(cfg.images)):
        image, label = dataset[index]
        if transform is not None:
            out = transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        preds = [predict_mask(m, image, device) for m in models]
        scores = [image_scores(label, p, num_classes) for p in preds]
        rows.append(FigureRow(title, image, label, preds, scores))
        log.info("%s: %s", title, ", ".join(f"acc {a:.3f} mIoU {m:.3f}" for a, m in scores))
    names = (
        cfg.data.class_names
        or getattr(dataset, "class_names", None)
        or [f"class_{i}" for i in range(num_classes)]
    )
    draw_comparison(
        rows, _column_names(models), list(names), out_file, cfg.overwrite,
        class_colors=models[0].class_colors,
    )  # fmt: skip
    print(f"written to {out_file}")
    return out_file


@hydra.main(version_base="1.3", config_path="pkg://fcn.conf", config_name="figure")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a user error ends with its message alone and exit status 1."""
    make_figure(cfg)


if __name__ == "__main__":
    main()
