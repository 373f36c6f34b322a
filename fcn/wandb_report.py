"""A wandb report of a sweep, for ``python -m fcn.compare <sweep> --wandb-report``.

The report covers the sweep's wandb runs (the runs found in its job folders, all of the sweep's
wandb group): a table of the jobs, then one run set per variant (the jobs' run names without
their seed; a run set's seeds, and the parts of a resumed job, drawn as one line: the mean and
the min-max band) with the ``val/mIoU`` and loss curves, the per-class IoU (a bar plot of the
``val/IoU/<class>`` keys, and the runs table's columns) and the validation masks (a media
browser of ``val/masks``). Building it (:func:`build_sweep_report`) reads only the job folders;
saving it (:func:`save_sweep_report`) needs a wandb login and the sweep's offline runs synced.
Needs the ``report`` extra: ``pip install "fcn[report]"`` (wandb-workspaces).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fcn.errors import FCNError
from fcn.training.tracking import has_wandb_credentials
from fcn.training.wandb_runs import folder_run_id, run_folders, sync_commands

if TYPE_CHECKING:
    from wandb_workspaces.reports.v2 import Report

#: The override that repeats a variant; run names without it name the variant.
SEED_PART = re.compile(r"^seed=")
#: The x axes: the epoch for per-epoch metrics, Lightning's step for the per-step loss.
EPOCH, STEP = "epoch", "trainer/global_step"
MASKS = "val/masks"


@dataclass
class SweepRuns:
    """What the report shows of a sweep, read from its job folders."""

    group: str
    project: str
    entity: str
    variants: dict[str, list[str]] = field(default_factory=dict)  # variant -> wandb run ids
    class_names: list[str] = field(default_factory=list)
    wandb_dirs: list[Path] = field(default_factory=list)


def variant_name(run_name: str) -> str:
    """A job's run name without its ``seed=...`` part (``fcn8,seed=1`` -> ``fcn8``)."""
    kept = [part for part in run_name.split(",") if not SEED_PART.match(part)]
    return ",".join(kept) or "all seeds"


def _config(folder: Path) -> dict:
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def sweep_runs(sweep: Path, jobs: Sequence[Any]) -> SweepRuns:
    """The wandb runs of the sweep's jobs (``jobs``: :class:`fcn.compare.Job`-like objects with
    ``folder`` and ``name``), grouped by variant; project and entity from the jobs' configs
    (``logger.wandb.project`` / ``entity``), the group from the sweep folder's name, the class
    names from ``data.class_names``."""
    runs = SweepRuns(group=Path(sweep).resolve().name, project="", entity="")
    for job in jobs:
        folder = Path(job.folder)
        ids = [folder_run_id(f) for f in run_folders(folder / "wandb")]
        if not ids:
            continue
        runs.wandb_dirs.append(folder / "wandb")
        runs.variants.setdefault(variant_name(job.name), []).extend(ids)
        config = _config(folder)
        wandb = (config.get("logger") or {}).get("wandb") or {}
        runs.project = runs.project or str(wandb.get("project") or "")
        runs.entity = runs.entity or str(wandb.get("entity") or "")
        names = (config.get("data") or {}).get("class_names") or []
        runs.class_names = runs.class_names or [str(n) for n in names]
    runs.project = runs.project or "fcn"
    return runs


def _workspaces() -> Any:
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise FCNError(
            'a wandb report needs the wandb-workspaces package: pip install "fcn[report]"'
        ) from None
    return wr


def build_sweep_report(sweep: Path, jobs: Sequence[Any], entity: str | None = None) -> Report:
    """The report of ``sweep`` (not saved; nothing is asked of the wandb server). ``entity``:
    the entity whose project holds the runs (default: the jobs' ``logger.wandb.entity``, else
    none, which :func:`save_sweep_report` fills in from the login)."""
    from wandb_workspaces import expr

    wr = _workspaces()
    runs = sweep_runs(sweep, jobs)
    entity = entity if entity is not None else runs.entity
    iou = [f"val/IoU/{name}" for name in runs.class_names]
    columns = [f"summary:{key}" for key in ("val/mIoU", *iou)]
    runsets = [
        wr.Runset(
            entity=entity,
            project=runs.project,
            name=variant,
            filters=expr.And(expr.Metric("ID").isin(ids)),
            groupby=["group"],  # the variant's seeds (and resumed parts): one line
            visible_columns=columns,
        )
        for variant, ids in runs.variants.items()
    ]
    band = {"groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}
    panels = [
        wr.LinePlot(title="val/mIoU", x=EPOCH, y=["val/mIoU"], **band),
        wr.LinePlot(title="loss per epoch", x=EPOCH, y=["train/loss", "val/loss"], **band),
        wr.LinePlot(title="training loss per step", x=STEP, y=["train/loss_step"], **band),
    ]
    if iou:
        panels.append(
            wr.BarPlot(title="IoU per class (last epoch)", metrics=iou, orientation="v", **band)
        )
    panels.append(wr.MediaBrowser(title="validation masks", media_keys=[MASKS], num_columns=2))
    blocks = [
        wr.H2(text=f"Sweep {runs.group}"),
        wr.MarkdownBlock(text=_jobs_table(sweep, jobs)),
        wr.PanelGrid(runsets=runsets, panels=panels),
    ]
    return wr.Report(
        project=runs.project,
        entity=entity,
        title=f"FCN sweep {runs.group}"[:128],
        description=f"{len(jobs)} jobs of {Path(sweep).resolve()}, wandb group {runs.group}",
        blocks=blocks,
        width="fluid",
    )


def _jobs_table(sweep: Path, jobs: Sequence[Any]) -> str:
    lines = ["| job | variant | status | best val/mIoU | at epoch |", "|---|---|---|---|---|"]
    for job in jobs:
        best = (getattr(job, "metrics", None) or {}).get("best") or {}
        score = best.get("val/mIoU")
        lines.append(
            f"| {job.name} | {variant_name(job.name)} | {job.status} | "
            f"{'' if score is None else f'{score:.4f}'} | {best.get('epoch', '')} |"
        )
    return f"Jobs of `{Path(sweep).resolve()}`:\n\n" + "\n".join(lines)


def save_sweep_report(sweep: Path, jobs: Sequence[Any]) -> str:
    """Save the report of ``sweep`` to wandb and return its address. Without a wandb login, or
    while offline runs of the sweep are not synced, an FCNError says what to run (``wandb
    login``; the ``wandb sync`` command of the sweep's offline runs) and nothing is written."""
    _workspaces()
    runs = sweep_runs(sweep, jobs)
    if not runs.variants:
        raise FCNError(
            f"no wandb runs in the jobs of {sweep} (their wandb/ folders are empty: were they "
            "run with logger=wandb?)"
        )
    commands = sync_commands(runs.wandb_dirs)
    problems = []
    if not has_wandb_credentials():
        problems.append("a wandb report needs a wandb login: run `wandb login`")
    if commands:
        problems.append(
            "the sweep's offline runs must be synced first (the report shows only runs on the "
            "server); upload them with:\n" + "\n".join(f"  {c}" for c in commands)
        )
    if problems:
        raise FCNError("\n".join(problems))
    import wandb

    entity = runs.entity or wandb.Api().default_entity
    report = build_sweep_report(sweep, jobs, entity=entity)
    report.save()
    return report.url
