"""Pictures of segmentations: palette masks (the classes' colours, VOC's by default), overlays,
and the Keras seed's side-by-side figure (docs/seed.md#figures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fcn.data.labels import IGNORE_INDEX as VOID
from fcn.data.labels import palette_of
from fcn.files import atomic_write

Colors = Sequence[Sequence[int]] | None  # one [r, g, b] per class; None: the VOC colour map


def mask_image(mask: np.ndarray, class_colors: Colors = None) -> Image.Image:
    """An HxW class-index array as a palette ("P") PNG image: the pixel values are the class
    indices, the palette the classes' colours (VOC's by default)."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(palette_of(class_colors))
    return img


def colorize(mask: np.ndarray, class_colors: Colors = None) -> np.ndarray:
    """An HxW class-index array as HxWx3 uint8 class colours (void, 255, in VOC's cream)."""
    table = np.array(palette_of(class_colors), dtype=np.uint8).reshape(256, 3)
    return table[mask.astype(np.uint8)]


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.5,
    class_colors: Colors = None,
    untinted: int | None = 0,
) -> np.ndarray:
    """The image with every pixel tinted by its class colour, except class ``untinted`` (the
    background, 0, by default; None tints every class)."""
    out = image.astype(np.float32)
    tinted = mask != untinted if untinted is not None else np.ones(mask.shape, dtype=bool)
    out[tinted] = (1 - alpha) * out[tinted] + alpha * colorize(mask, class_colors)[tinted]
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
    class_colors: Colors = None,
) -> None:
    """The Keras seed's figure: per row the image, its true label and each model's prediction titled
    with that image's pixel accuracy and mean IoU; a legend of the classes shown. ``replace``
    False refuses an existing ``path``; ``class_colors`` as for :func:`colorize`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = 2 + len(model_names)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(2.6 * cols, 2.6 * len(rows) + 0.8), squeeze=False
    )
    table = np.array(palette_of(class_colors), dtype=np.uint8).reshape(256, 3) / 255.0
    shown: set[int] = set()
    for r, row in enumerate(rows):
        panels = [(row.image, row.title), (colorize(row.label, class_colors), "true label")]
        for name, pred, (acc, miou) in zip(model_names, row.predictions, row.scores, strict=True):
            title = f"{name}\npixel acc {acc:.3f}, mIoU {miou:.3f}"
            panels.append((colorize(pred, class_colors), title))
            shown.update(np.unique(pred).tolist())
        shown.update(v for v in np.unique(row.label).tolist() if v < len(class_names))
        for ax, (picture, title) in zip(axes[r], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    handles = [
        Patch(color=table[c], label=class_names[c]) for c in sorted(shown) if c < len(class_names)
    ]
    if any((row.label == VOID).any() for row in rows):
        handles.append(Patch(color=table[VOID], label="void (not scored)"))
    fig.legend(handles=handles, loc="lower center", ncol=max(1, min(len(handles), 8)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    try:
        atomic_write(path, lambda partial: fig.savefig(partial, format="png", dpi=120), replace)
    finally:
        plt.close(fig)
