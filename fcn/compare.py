"""Compare the jobs of a sweep from their own files: ``python -m fcn.compare <sweep folder>``.

Reads every job folder's ``metrics.json`` and Hydra files (no wandb server needed) and writes,
into the sweep folder, ``comparison.md`` (final and best validation metrics per job, per-class IoU
at each job's best epoch, and the jobs that failed or did not finish) and ``loss.png`` /
``miou.png`` (the curves of every job on common axes: the Keras seed's two figures,
docs/seed.md#figures).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from fcn.errors import FCNError
from fcn.files import atomic_write, write_text
from fcn.training.tracking import run_name, swept_keys

SUMMARY = ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU", "val/loss", "train/loss")


@dataclass
class Job:
    """One job folder of a sweep and what its files say."""

    folder: Path
    name: str
    status: str  # finished | failed | interrupted | incomplete | no metrics | unreadable metrics
    max_epochs: int | None = None
    metrics: dict = field(default_factory=dict)  # metrics.json, or {} when there is none
    error: str | None = None  # what is wrong with an unreadable metrics.json

    @property
    def history(self) -> list[dict]:
        return self.metrics.get("history", [])

    @property
    def epochs(self) -> int:
        return int(self.metrics.get("epochs_completed", len(self.history)))

    @property
    def problem(self) -> str | None:
        """Why this job is not a finished run, or None."""
        if self.status == "finished":
            return None
        log = self.folder / "train.log"
        where = f"see {log}" if log.is_file() else "no log either"
        if self.status == "no metrics":
            return f"no metrics.json: it failed before its first epoch ({where})"
        if self.status == "unreadable metrics":
            return f"{self.error} ({where})"
        if self.status == "incomplete":
            where = f"still running, or killed; {where}"
        done = f"{self.epochs}/{self.max_epochs}" if self.max_epochs else str(self.epochs)
        return f"{self.status} after {done} epochs ({where})"


def _job_folders(sweep: Path) -> list[Path]:
    folders = [p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(
        folders,
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )


class BadMetrics(ValueError):
    """A ``metrics.json`` that cannot be read, or is not what MetricsFile writes."""


def _kind(value: object) -> str:
    """The JSON name of a value's type."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "?")


def _is_number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _shape_error(doc: object) -> str | None:
    """What in a parsed ``metrics.json`` is not what MetricsFile writes, or None."""
    if not isinstance(doc, dict):
        return f"{_kind(doc)} where an object was expected"
    if not isinstance(doc.get("status", ""), str):
        return f"status is {_kind(doc['status'])}, not a string"
    epochs = doc.get("epochs_completed", 0)
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return f"epochs_completed is {_kind(epochs)}, not a whole number"
    if not isinstance(doc.get("history", []), list):
        return f"history is {_kind(doc['history'])}, not an array"
    entries = [(k, doc.get(k)) for k in ("best", "final")]
    entries += [(f"history[{i}]", e) for i, e in enumerate(doc.get("history", []))]
    for where, entry in entries:
        if entry is None and not where.startswith("history"):
            continue
        if not isinstance(entry, dict):
            return f"{where} is {_kind(entry)}, not an object"
        if where.startswith("history") and not isinstance(entry.get("epoch"), int):
            return f"{where} has no whole epoch number"
        bad = next((k for k, v in entry.items() if not _is_number(v)), None)
        if bad is not None:
            return f'{where}["{bad}"] is {_kind(entry[bad])}, not a number'
    return None


def read_metrics(path: Path) -> dict:
    """The content of a ``metrics.json``; :class:`BadMetrics` names the file and what is wrong
    with it (unreadable, empty, not JSON, or not the shape MetricsFile writes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadMetrics(f"{path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise BadMetrics(f"{path} cannot be read: {err.strerror or err}") from None
    if not text.strip():
        raise BadMetrics(f"{path} is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadMetrics(
            f"{path} is not valid JSON (line {err.lineno} column {err.colno}: {err.msg})"
        ) from None
    if why := _shape_error(doc):
        raise BadMetrics(f"{path} is not a metrics file of fcn.train: {why}")
    return doc


def _name(folder: Path, keep: set[str] | None) -> str:
    """The job's run name from its ``.hydra/hydra.yaml``, else its folder's name."""
    try:
        hc = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra
        groups = [k for k, v in hc.runtime.choices.items() if v is not None]
        return run_name(list(hc.overrides.task), groups, keep) or folder.name
    except Exception:  # missing or foreign: the folder's name will do
        return folder.name


def _max_epochs(folder: Path) -> int | None:
    for config in (folder / "config.yaml", folder / ".hydra" / "config.yaml"):
        if config.is_file():
            try:
                value = OmegaConf.load(config).trainer.max_epochs
            except Exception:  # unreadable or foreign: the epochs are shown without a total
                return None
            return value if isinstance(value, int) else None
    return None


def read_job(folder: Path, keep: set[str] | None) -> Job:
    """A job from its ``metrics.json``, ``config.yaml`` and ``.hydra/`` files; a broken
    ``metrics.json`` makes an ``unreadable metrics`` job that says what is wrong."""
    name, max_epochs = _name(folder, keep), _max_epochs(folder)
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        return Job(folder, name, "no metrics", max_epochs)
    try:
        metrics = read_metrics(metrics_file)
    except BadMetrics as err:
        return Job(folder, name, "unreadable metrics", max_epochs, error=str(err))
    status = metrics.get("status", "incomplete")
    if status == "running":  # nobody is writing it any more, or the job is still going
        status = "incomplete"
    return Job(folder, name, status, max_epochs, metrics)


def read_sweep(sweep: Path) -> list[Job]:
    """Every job of ``sweep`` (a Hydra multirun folder), in job order."""
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep}")
    folders = _job_folders(sweep)
    if not folders:
        raise FileNotFoundError(f"no job folders (with a .hydra/ folder) in {sweep}")
    keep = swept_keys(str(sweep))
    return [read_job(folder, keep) for folder in folders]


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def markdown(jobs: list[Job], sweep: Path, command: str | None) -> str:
    """The comparison as markdown: summary table, per-class IoU, unfinished jobs."""
    lines = [f"# Comparison of {sweep.name}", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    head = "| run | status | epochs | best val/mIoU (at epoch) | final " + " | final ".join(SUMMARY)
    lines += [head + " |", "|" + "---|" * (4 + len(SUMMARY))]
    for job in jobs:
        best, final = job.metrics.get("best") or {}, job.metrics.get("final") or {}
        epoch = best.get("epoch")
        at = f" ({epoch + 1})" if isinstance(epoch, int) else ""
        best_cell = f"**{_fmt(best.get('val/mIoU'))}**{at}" if best else "-"
        done = f"{job.epochs}/{job.max_epochs}" if job.max_epochs else str(job.epochs)
        done = "?" if job.error else done  # its metrics.json cannot tell
        cells = [job.name, job.status, done, best_cell, *(_fmt(final.get(k)) for k in SUMMARY)]
        lines.append("| " + " | ".join(cells) + " |")
    classes = list(
        dict.fromkeys(
            k for job in jobs for k in job.metrics.get("best") or {} if k.startswith("val/IoU/")
        )
    )
    if classes:
        lines += ["", "Per-class IoU at each run's best epoch:", ""]
        lines.append("| run | " + " | ".join(k.removeprefix("val/IoU/") for k in classes) + " |")
        lines.append("|" + "---|" * (1 + len(classes)))
        for job in jobs:
            best = job.metrics.get("best") or {}
            lines.append(f"| {job.name} | " + " | ".join(_fmt(best.get(k)) for k in classes) + " |")
    problems = [(job, job.problem) for job in jobs if job.problem]
    if problems:
        lines += ["", "Jobs that did not finish:", ""]
        lines += [f"- {job.name} ({job.folder.name}/): {why}" for job, why in problems]
    lines += ["", "Epochs count from 1. Curves: loss.png (train solid, val dashed), miou.png.", ""]
    return "\n".join(lines)


def plot_curves(jobs: list[Job], sweep: Path) -> list[Path]:
    """``loss.png`` (train and val loss) and ``miou.png`` (val mIoU) per epoch, every job on
    common axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    for filename, title, curves in (
        ("loss.png", "cross-entropy per valid pixel", (("train/loss", "-"), ("val/loss", "--"))),
        ("miou.png", "validation mean IoU", (("val/mIoU", "-"),)),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, job in enumerate(jobs):
            color = f"C{i % 10}"
            for key, style in curves:
                points = [(h["epoch"] + 1, h[key]) for h in job.history if key in h]
                if points:
                    label = job.name if len(curves) == 1 else f"{job.name} {key.split('/')[0]}"
                    ax.plot(*zip(*points, strict=True), style, color=color, label=label)
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


def _sweep_command(sweep: Path) -> str | None:
    try:
        overrides = OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task
    except Exception:
        return None
    return "python -m fcn.train -m " + " ".join(overrides)


def compare(sweep: Path) -> tuple[list[Job], Path]:
    """Write ``comparison.md``, ``loss.png`` and ``miou.png`` into ``sweep``."""
    jobs = read_sweep(sweep)
    out = write_text(sweep / "comparison.md", markdown(jobs, sweep, _sweep_command(sweep)))
    plot_curves(jobs, sweep)
    return jobs, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fcn.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "sweep", type=Path, help="a multirun folder, e.g. outputs/train/multiruns/<time>"
    )
    args = parser.parse_args(argv)
    try:
        jobs, out = compare(args.sweep)
    except (FileNotFoundError, FCNError) as err:  # no sweep there; the disk is full
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(out.read_text())
    for job in jobs:
        if job.problem:
            print(f"warning: {job.name} ({job.folder}): {job.problem}", file=sys.stderr)
    print(f"written: {out}, {args.sweep / 'loss.png'}, {args.sweep / 'miou.png'}")
    return 0 if any(job.status == "finished" for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
