"""The curves of ``python -m fcn.compare``: ``loss.png`` and ``miou.png``, one line per job, or
per group of seeds a mean line with a min-max band."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fcn.compare_groups import Group
from fcn.compare_jobs import Job
from fcn.files import atomic_write

#: (file, title, ((metric, line style), ...)): the Keras seed's two figures, docs/seed.md#figures.
FIGURES = (
    ("loss.png", "cross-entropy per valid pixel", (("train/loss", "-"), ("val/loss", "--"))),
    ("miou.png", "validation mean IoU", (("val/mIoU", "-"),)),
)


@dataclass(frozen=True)
class BandPoint:
    """One epoch of a group's curve: the min, mean and max over the ``n`` jobs that reached it."""

    epoch: int  # counted from 1
    lo: float
    mean: float
    hi: float
    n: int


def _points(job: Job, key: str) -> dict[int, float]:
    """Epoch (from 1) -> finite value of ``key`` in the job's history (the last entry of an
    epoch logged twice)."""
    return {
        h["epoch"] + 1: float(h[key])
        for h in job.history
        if isinstance(h.get(key), int | float) and math.isfinite(h[key])
    }


def band(jobs: Sequence[Job], key: str) -> list[BandPoint]:
    """Per epoch, the min, mean and max of ``key`` over the jobs whose history has that epoch."""
    per_epoch: dict[int, list[float]] = {}
    for job in jobs:
        for epoch, value in _points(job, key).items():
            per_epoch.setdefault(epoch, []).append(value)
    return [
        BandPoint(epoch, min(v), math.fsum(v) / len(v), max(v), len(v))
        for epoch, v in sorted(per_epoch.items())
    ]


def plot_curves(
    jobs: Sequence[Job], sweep: Path, groups: Sequence[Group] | None = None
) -> list[Path]:
    """``loss.png`` (train and val loss) and ``miou.png`` (val mIoU) per epoch on common axes:
    every job's line, or with ``groups`` each group's mean over its finished jobs with a band
    from their min to their max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    for filename, title, curves in FIGURES:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if groups is None:
            for i, job in enumerate(jobs):
                for key, style in curves:
                    points = sorted(_points(job, key).items())
                    if points:
                        label = job.name if len(curves) == 1 else f"{job.name} {key.split('/')[0]}"
                        ax.plot(*zip(*points, strict=True), style, color=f"C{i % 10}", label=label)
        else:
            title += "\nmean over seeds, band: min to max"
            for i, group in enumerate(groups):
                for key, style in curves:
                    points = band(group.finished, key)
                    if not points:
                        continue
                    epochs = [p.epoch for p in points]
                    label = group.name if len(curves) == 1 else f"{group.name} {key.split('/')[0]}"
                    color = f"C{i % 10}"
                    marker = "o" if len(points) == 1 else None  # one epoch: a line of no length
                    means = [p.mean for p in points]
                    ax.plot(epochs, means, style, color=color, marker=marker, label=label)
                    lo, hi = [p.lo for p in points], [p.hi for p in points]
                    ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        fig.tight_layout()
        try:
            save = functools.partial(fig.savefig, format="png", dpi=110)
            path = atomic_write(sweep / filename, save)
        finally:
            plt.close(fig)
        written.append(path)
    return written
