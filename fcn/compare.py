"""Compare the jobs of a sweep from their own files: ``python -m fcn.compare <sweep folder>``.

Reads every job folder's ``metrics.json``, ``failure.json`` and Hydra files (no wandb server
needed) and writes, into the sweep folder, ``comparison.md`` (final and best validation metrics
per job, per-class IoU at each job's best epoch, and the jobs that failed or did not finish, with
their reason) and ``loss.png`` / ``miou.png`` (the curves on common axes: the Keras seed's two
figures, docs/seed.md#figures). A sweep repeated over seeds (``seed=0,1,2``) is compared group by
group: jobs that differ only in their seed, their mean, sample standard deviation and count, and
curves with a min-max band; see :mod:`fcn.compare_groups`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fcn.compare_groups import Group, fmt, group_jobs, group_markdown
from fcn.compare_jobs import SUMMARY, BadMetrics, Job, read_job, read_metrics, read_sweep
from fcn.compare_plots import band, plot_curves
from fcn.errors import FCNError
from fcn.files import write_text
from fcn.training.tracking import swept_keys

__all__ = [
    "SUMMARY", "BadMetrics", "Comparison", "Job", "band", "compare", "main", "markdown",
    "plot_curves", "read_job", "read_metrics", "read_sweep",
]  # fmt: skip


def _job_tables(jobs: Sequence[Job]) -> list[str]:
    """The per-job table, the per-class IoU and the jobs that did not finish."""
    head = "| run | status | epochs | best val/mIoU (at epoch) | final " + " | final ".join(SUMMARY)
    lines = [head + " |", "|" + "---|" * (4 + len(SUMMARY))]
    for job in jobs:
        best, final = job.metrics.get("best") or {}, job.metrics.get("final") or {}
        epoch = best.get("epoch")
        at = f" ({epoch + 1})" if isinstance(epoch, int) else ""
        best_cell = f"**{fmt(best.get('val/mIoU'))}**{at}" if best else "-"
        done = f"{job.epochs}/{job.max_epochs}" if job.max_epochs else str(job.epochs)
        done = "?" if job.error else done  # its metrics.json cannot tell
        cells = [job.name, job.status, done, best_cell, *(fmt(final.get(k)) for k in SUMMARY)]
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
            lines.append(f"| {job.name} | " + " | ".join(fmt(best.get(k)) for k in classes) + " |")
    problems = [(job, job.problem) for job in jobs if job.problem]
    if problems:
        lines += ["", "Jobs that did not finish:", ""]
        lines += [f"- {job.name} ({job.folder.name}/): {why}" for job, why in problems]
    return lines


def markdown(
    jobs: Sequence[Job],
    sweep: Path,
    command: str | None,
    groups: Sequence[Group] | None = None,
    provenance: Sequence[str] = (),
) -> str:
    """The comparison as markdown: with ``groups``, the group tables and pairwise statements
    first; the per-job table, per-class IoU and unfinished jobs; the provenance warnings."""
    lines = [f"# Comparison of {sweep.name}", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    if groups is not None:
        lines += [*group_markdown(groups), "", "## Jobs", ""]
    lines += _job_tables(jobs)
    if provenance:
        lines += ["", "## Provenance", ""]
        lines += [f"- {line}" for line in provenance]
    curves = "Curves: loss.png (train solid, val dashed), miou.png"
    if groups is not None:
        curves += (
            ": per group the mean over its finished jobs, per epoch over those that reached it, "
            "in a band from their min to their max"
        )
    lines += ["", f"Epochs count from 1. {curves}.", ""]
    return "\n".join(lines)


def _sweep_command(sweep: Path) -> str | None:
    try:
        overrides = OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task
    except Exception:
        return None
    return "python -m fcn.train -m " + " ".join(overrides)


def provenance(jobs: Sequence[Job]) -> list[str]:
    """What differs between the finished jobs' code, versions, devices and id lists (one line
    each, from :func:`fcn.provenance.provenance_warnings`); [] when nothing does."""
    try:
        from fcn.provenance import provenance_warnings
    except ImportError as err:  # a version of fcn without it: nothing to check with
        if err.name != "fcn.provenance":
            raise
        return []
    finished = [job for job in jobs if job.status == "finished"]
    names = [job.name for job in finished]
    runs = {
        f"{job.name} ({job.folder.name}/)" if names.count(job.name) > 1 else job.name: job.metrics
        for job in finished
    }
    return (
        [str(line).removeprefix("warning: ") for line in provenance_warnings(runs)] if runs else []
    )


@dataclass
class Comparison:
    """What :func:`compare` read and wrote."""

    jobs: list[Job]
    groups: list[Group] | None  # None: no seeds swept, the jobs are compared one by one
    warnings: list[str]  # provenance differences between the finished jobs
    path: Path  # comparison.md
    figures: list[Path]


def compare(sweep: Path) -> Comparison:
    """Write ``comparison.md``, ``loss.png`` and ``miou.png`` into ``sweep``."""
    jobs = read_sweep(sweep)
    groups = group_jobs(jobs, swept_keys(str(sweep)))
    warnings = provenance(jobs)
    text = markdown(jobs, sweep, _sweep_command(sweep), groups, warnings)
    out = write_text(sweep / "comparison.md", text)
    return Comparison(jobs, groups, warnings, out, plot_curves(jobs, sweep, groups))


def _wandb_report(sweep: Path, jobs: list[Job]) -> int:
    """Save the sweep's wandb report; print where, or ``error: ...`` (status 1)."""
    try:
        from fcn.wandb_report import save_sweep_report
    except ImportError as err:
        if err.name != "fcn.wandb_report":
            raise
        print("error: --wandb-report needs fcn.wandb_report, absent here", file=sys.stderr)
        return 1
    try:
        print(save_sweep_report(sweep, jobs))
    except FCNError as err:  # no login, no server
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fcn.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "sweep", type=Path, help="a multirun folder, e.g. outputs/train/multiruns/<time>"
    )
    parser.add_argument(
        "--wandb-report",
        action="store_true",
        help="also save the comparison as a wandb report (needs a wandb login); the local "
        "comparison is written first either way",
    )
    args = parser.parse_args(argv)
    try:
        result = compare(args.sweep)
    except (FileNotFoundError, FCNError) as err:  # no sweep there; the disk is full
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.path.read_text())
    for job in result.jobs:
        if job.problem:
            print(f"warning: {job.name} ({job.folder}): {job.problem}", file=sys.stderr)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print("written: " + ", ".join(str(p) for p in [result.path, *result.figures]))
    if args.wandb_report and _wandb_report(args.sweep, result.jobs):
        return 1
    return 0 if any(job.status == "finished" for job in result.jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
