"""What a finished training run says at its end: its best and final metrics, where its files
are, and the commands that go on from it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

#: Metrics shown beside val/mIoU, in this order, when the run logged them.
SHOWN = ("val/pixel_acc", "val/mean_acc", "val/fwIoU", "val/loss", "train/loss")
#: Lightning's advertisement on every run ("💡 Tip: ... litlogger ..."), not printed.
LIGHTNING_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def silence_lightning_tips() -> None:
    """Drop Lightning's promotional tips from its log (its other messages stay)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def _metrics(entry: dict[str, Any]) -> str:
    return ", ".join(
        f"{key if key.endswith('loss') else key.removeprefix('val/')} {entry[key]:.4f}"
        for key in SHOWN
        if entry.get(key) is not None
    )


def run_summary(metrics_file: Path, run_dir: Path, sweep_dir: Path | None = None) -> str:
    """The end-of-run report from the run's ``metrics.json`` (epochs counted from 1)."""
    doc = json.loads(metrics_file.read_text(encoding="utf-8"))
    lines = [f"run {doc.get('status', '?')}: {doc.get('epochs_completed', 0)} epoch(s)"]
    monitor = doc.get("monitor", "val/mIoU")
    for label, entry in (("best", doc.get("best")), ("final", doc.get("final"))):
        if entry and entry.get(monitor) is not None:
            at = f"at epoch {entry['epoch'] + 1}"
            lines.append(f"{label} {monitor} {entry[monitor]:.4f} {at} ({_metrics(entry)})")
    best = doc.get("best")
    if not best:
        lines.append("no validation metrics (the run never validated)")
    lines.append(f"run folder:      {run_dir}")
    chosen = doc.get("best_checkpoint") or doc.get("last_checkpoint")
    for label, key in (
        ("best checkpoint", "best_checkpoint"),
        ("last checkpoint", "last_checkpoint"),
    ):
        if doc.get(key):
            lines.append(f"{label}: {doc[key]}")
    if chosen:
        lines += [
            "next:",
            f"  python -m fcn.evaluate ckpt_path={chosen}",
            f"  python -m fcn.predict ckpt_path={chosen} input=<image or folder>",
            f"  python -m fcn.resume {run_dir} trainer.max_epochs=<more epochs>",
        ]
    if sweep_dir is not None:
        lines.append(f"  python -m fcn.compare {sweep_dir}   (once every job of the sweep is done)")
    return "\n".join(lines)
