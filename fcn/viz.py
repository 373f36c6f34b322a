"""Pictures of segmentations: VOC-palette masks, overlays, and the Keras seed's side-by-side
figure (docs/seed.md#figures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fcn.data.labels import IGNORE_INDEX as VOID
from fcn.data.readers import voc_palette
from fcn.files import atomic_write

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def mask_image(mask: np.ndarray) -> Image.Image:
    """An HxW class-index array as a VOC palette ("P") PNG image: indices kept, VOC colours."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    return img


def colorize(mask: np.ndarray) -> np.ndarray:
    """An HxW class-index array as HxWx3 uint8 VOC colours (void, 255, in VOC's light beige)."""
    return _PALETTE[mask.astype(np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with every non-background pixel (class > 0) tinted by its class colour."""
    out = image.astype(np.float32)
    tinted = mask > 0
    out[tinted] = (1 - alpha) * out[tinted] + alpha * colorize(mask)[tinted]
    return out.round().astype(np.uint8)


def save_png(array_or_image: np.ndarray | Image.Image, path: Path) -> None:
    """Write a PNG, making its folder; written to a temporary name first, so a file under the
    final name is always whole."""
    img = array_or_image
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    atomic_write(path, lambda partial: img.save(partial, format="PNG"))


@dataclass
class FigureRow:
    """One image of the figure: the image, its label and each model's prediction and scores."""

    title: str
    image: np.ndarray
    label: np.ndarray
    predictions: list[np.ndarray]
    scores: list[tuple[float, float]]  # (pixel accuracy, mean IoU) per prediction


def draw_comparison(
    rows: Sequence[FigureRow],
    model_names: Sequence[str],
    class_names: Sequence[str],
    path: Path,
    replace: bool = True,
) -> None:
    """The Keras seed's figure: per row the image, its true label and each model's prediction titled
    with that image's pixel accuracy and mean IoU; a legend of the classes shown. ``replace``
    False refuses an existing ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = 2 + len(model_names)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(2.6 * cols, 2.6 * len(rows) + 0.8), squeeze=False
    )
    shown: set[int] = set()
    for r, row in enumerate(rows):
        panels = [(row.image, row.title), (colorize(row.label), "true label")]
        for name, pred, (acc, miou) in zip(model_names, row.predictions, row.scores, strict=True):
            panels.append((colorize(pred), f"{name}\npixel acc {acc:.3f}, mIoU {miou:.3f}"))
            shown.update(np.unique(pred).tolist())
        shown.update(v for v in np.unique(row.label).tolist() if v < len(class_names))
        for ax, (picture, title) in zip(axes[r], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    handles = [
        Patch(color=_PALETTE[c] / 255.0, label=class_names[c])
        for c in sorted(shown)
        if c < len(class_names)
    ]
    if any((row.label == VOID).any() for row in rows):
        handles.append(Patch(color=_PALETTE[VOID] / 255.0, label="void (not scored)"))
    fig.legend(handles=handles, loc="lower center", ncol=max(1, min(len(handles), 8)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    try:
        atomic_write(path, lambda partial: fig.savefig(partial, format="png", dpi=120), replace)
    finally:
        plt.close(fig)
