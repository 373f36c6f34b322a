"""The normalised confusion matrix of a validation: its numbers as JSON and its figure as PNG.

``counts[i, j]`` is the number of pixels of true class ``i`` predicted as class ``j`` over a
whole split (void pixels, 255, are not counted): the matrix the validation metrics accumulate
(:class:`fcn.training.metrics.SegmentationMetrics`), summed over processes under DDP. It is
normalised by rows: each row is divided by its sum, the number of pixels of that true class, so
a row sums to 1, its diagonal cell is that class's recall (its pixel accuracy) and the other
cells say where its missed pixels went. A class with no pixel in the labels has no row to
normalise: null in the JSON, grey in the figure.

Plain numpy and matplotlib: used by the training callback
(:class:`fcn.training.confusion_callback.BestConfusionMatrix`) and by ``fcn.evaluate``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fcn.files import atomic_write, write_text

#: What the normalised matrix is, as written in the JSON and on the figure.
NORMALISATION = "rows: each true class's pixels sum to 1 (the diagonal is per-class recall)"
#: Up to this many classes each cell of the figure is annotated with its percentage.
ANNOTATE_MAX_CLASSES = 30
#: Class names longer than this are shortened on the figure's axes (the JSON keeps them whole).
LABEL_MAX_CHARS = 24


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """``counts`` divided by its row sums (float64); a row of a class with no pixel is NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


def _check(counts: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {counts.shape}")
    if len(class_names) != counts.shape[0]:
        raise ValueError(
            f"{len(class_names)} class names for a confusion matrix of {counts.shape[0]} classes"
        )
    return counts


def confusion_document(
    counts: np.ndarray, class_names: Sequence[str], **context: Any
) -> dict[str, Any]:
    """The JSON document of a confusion matrix: ``context`` (e.g. ``epoch``, ``step``,
    ``monitor``, ``score``, ``checkpoint``) first, then ``class_names``, ``rows``, ``columns``,
    ``normalisation``, ``pixels`` (per true class), ``counts`` (integers) and ``normalised``
    (rows summing to 1; null rows for classes with no pixel)."""
    counts = _check(counts, class_names)
    normalised = normalise_rows(counts)
    return {
        **{k: _json_value(v) for k, v in context.items()},
        "class_names": [str(n) for n in class_names],
        "rows": "true class",
        "columns": "predicted class",
        "normalisation": NORMALISATION,
        "pixels": [int(v) for v in counts.sum(axis=1)],
        "counts": [[int(v) for v in row] for row in counts],
        "normalised": [
            None if np.isnan(row).all() else [float(v) for v in row] for row in normalised
        ],
    }


def _json_value(value: Any) -> Any:
    """Numbers as plain Python numbers (NaN and infinities as null), paths as strings."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def write_confusion_json(
    path: Path | str,
    counts: np.ndarray,
    class_names: Sequence[str],
    replace: bool = True,
    **context: Any,
) -> Path:
    """Write :func:`confusion_document` to ``path`` (atomically; ``replace`` False refuses an
    existing file)."""
    doc = confusion_document(counts, class_names, **context)
    return write_text(path, json.dumps(doc, indent=1) + "\n", replace=replace)


def read_confusion(path: Path | str) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """``(counts, class_names, document)`` of a file written by :func:`write_confusion_json`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return np.array(doc["counts"], dtype=np.int64), list(doc["class_names"]), doc


def _short(name: str) -> str:
    """A class name as an axis label: at most :data:`LABEL_MAX_CHARS` characters, and a ``$``
    shown as itself (not as the start of matplotlib's mathematical text)."""
    name = name if len(name) <= LABEL_MAX_CHARS else name[: LABEL_MAX_CHARS - 1] + "…"
    return name.replace("$", r"\$")


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], title: str = ""):
    """A matplotlib ``Figure`` of the row-normalised matrix: true classes down, predicted
    classes across, a colour bar in percent, classes with no pixel in grey (and marked
    ``(no pixels)``). Up to :data:`ANNOTATE_MAX_CLASSES` classes each non-empty cell shows its
    percentage; the figure's size and fonts grow and shrink with the number of classes."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    counts = _check(counts, class_names)
    n = counts.shape[0]
    normalised = normalise_rows(counts)
    empty = np.isnan(normalised).all(axis=1)

    side = float(np.clip(3.5 + 0.42 * n, 7.0, 32.0))  # inches: 12.3 for 21 classes, 32 for 150
    cell_points = 72 * side * 0.7 / n  # the plot takes about 70% of the figure
    tick_size = float(np.clip(0.65 * cell_points, 4.0, 10.0))
    label_size = float(np.clip(0.6 * side, 11.0, 20.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(
        np.ma.masked_invalid(normalised),
        cmap=_colour_map(),
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    colour_bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, format=PercentFormatter(1.0))
    colour_bar.set_label("share of the true class's pixels", fontsize=label_size * 0.9)
    colour_bar.ax.tick_params(labelsize=label_size * 0.8)

    labels = [_short(str(name)) for name in class_names]
    if n > 12:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=tick_size)
    else:
        ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor",
                      fontsize=tick_size)  # fmt: skip
    ylabels = [
        f"{label} (no pixels)" if e else label for label, e in zip(labels, empty, strict=True)
    ]
    ax.set_yticks(range(n), ylabels, fontsize=tick_size)
    ax.set_xlabel("predicted class", fontsize=label_size)
    ax.set_ylabel("true class", fontsize=label_size)
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.5 if n <= 60 else 0.2)
    ax.tick_params(which="minor", length=0)
    lines = [title] if title else []
    lines.append("rows = true class, normalised to 100% (diagonal = recall)")
    if empty.any():
        lines.append("grey: no pixels of that class")
    ax.set_title("\n".join(lines), fontsize=label_size)

    if n <= ANNOTATE_MAX_CLASSES:
        text_size = float(np.clip(0.3 * cell_points, 5.0, 12.0))
        for i in range(n):
            for j in range(n):
                value = normalised[i, j]
                if empty[i] or counts[i, j] == 0:
                    continue
                text = f"{100 * value:.0f}" if value >= 0.005 else "<1"
                ax.text(j, i, text, ha="center", va="center", fontsize=text_size,
                        color="white" if value > 0.55 else "black")  # fmt: skip
    return fig


def _colour_map():
    """Blues, with grey for masked cells (the rows of classes with no pixel)."""
    import matplotlib

    return matplotlib.colormaps["Blues"].with_extremes(bad="0.82")


def write_confusion_figure(
    path: Path | str,
    counts: np.ndarray,
    class_names: Sequence[str],
    title: str = "",
    replace: bool = True,
) -> Path:
    """Draw :func:`confusion_figure` into the PNG ``path`` (atomically; ``replace`` False refuses
    an existing file). 100 dpi: about 1300 px square for 21 classes, 3300 px for 150."""
    fig = confusion_figure(counts, class_names, title)
    return atomic_write(path, lambda partial: fig.savefig(partial, format="png", dpi=100), replace)


def confusion_paths(stem: Path | str) -> dict[str, Path]:
    """``{"json": <stem>.json, "figure": <stem>.png}``: the files of one confusion matrix."""
    stem = Path(stem)
    return {
        "json": stem.with_name(stem.name + ".json"),
        "figure": stem.with_name(stem.name + ".png"),
    }


def write_confusion(
    stem: Path | str,
    counts: np.ndarray,
    class_names: Sequence[str],
    title: str = "",
    replace: bool = True,
    **context: Any,
) -> dict[str, Path]:
    """Write ``<stem>.json`` (:func:`write_confusion_json`) and ``<stem>.png``
    (:func:`write_confusion_figure`); return their paths (:func:`confusion_paths`)."""
    paths = confusion_paths(stem)
    write_confusion_figure(paths["figure"], counts, class_names, title, replace)
    write_confusion_json(paths["json"], counts, class_names, replace, **context)
    return paths
