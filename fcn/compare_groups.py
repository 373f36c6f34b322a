"""Repeats over seeds, for ``python -m fcn.compare``: the jobs of a sweep that differ only in
``seed`` form a group; per group the mean, sample standard deviation and count of its finished
jobs' metrics, and for each pair of groups whether the difference of means exceeds the spread."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fcn.compare_jobs import SEED_KEY, SUMMARY, Job, _split
from fcn.training.tracking import run_name

#: The rule the pairwise statements apply, written into comparison.md as it is.
RULE = (
    "the difference of two groups' means exceeds the spread when |mean_a − mean_b| > sd_a + sd_b "
    "(sd: the sample standard deviation over the group's finished seeds, n−1 in the "
    "denominator); a rough rule for a few seeds, not a significance test. With one seed in a "
    "group no spread is known and nothing is claimed."
)


@dataclass
class Group:
    """The jobs of a sweep that differ only in their seed."""

    name: str
    jobs: list[Job]

    @property
    def finished(self) -> list[Job]:
        """The jobs whose metrics enter the group's statistics."""
        return [job for job in self.jobs if job.status == "finished"]

    @property
    def seeds(self) -> list[str]:
        """The seeds of the finished jobs."""
        return [job.seed or "?" for job in self.finished]


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (None for one value), count, min and max of values."""

    mean: float
    sd: float | None
    n: int
    lo: float
    hi: float


def summarize(values: Iterable[float | None]) -> Stat | None:
    """The :class:`Stat` of the finite numbers among ``values``; None when there are none."""
    kept = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not kept:
        return None
    sd = statistics.stdev(kept) if len(kept) > 1 else None
    return Stat(statistics.fmean(kept), sd, len(kept), min(kept), max(kept))


def group_stat(group: Group, source: str, key: str) -> Stat | None:
    """``key`` of ``source`` (``best`` or ``final`` in metrics.json) over the finished jobs."""
    return summarize((job.metrics.get(source) or {}).get(key) for job in group.finished)


def is_seeded(jobs: Sequence[Job], keep: set[str] | None) -> bool:
    """True when the sweep repeats its jobs over seeds: ``seed`` is swept, or its jobs' seed
    overrides take more than one value."""
    return SEED_KEY in (keep or set()) or len({j.seed for j in jobs if j.seed is not None}) > 1


def _without_seed(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if _split(o)[0] != SEED_KEY]


def group_jobs(jobs: Sequence[Job], keep: set[str] | None) -> list[Group] | None:
    """The jobs grouped by everything but their seed, in order of first job; None when the
    sweep does not repeat over seeds (its jobs are compared one by one). ``keep``: the sweep's
    swept keys, which name the groups (``fcn8``), as they name the runs."""
    if not is_seeded(jobs, keep):
        return None
    rest = None if keep is None else keep - {SEED_KEY}
    groups: dict[tuple, Group] = {}
    for job in jobs:
        if job.overrides is None:  # unreadable Hydra files: a group of its own
            groups[("folder", job.folder.name)] = Group(job.name, [job])
            continue
        overrides = _without_seed(job.overrides)
        group = groups.setdefault(tuple(sorted(overrides)), Group("", []))
        if not group.name and job.choices:  # named as its runs are, from a job that can tell
            group.name = run_name(overrides, job.choices, rest) or "all"
        group.jobs.append(job)
    for group in groups.values():  # no job could tell the config groups: key=value names
        overrides = _without_seed(group.jobs[0].overrides or [])
        group.name = group.name or run_name(overrides, [], rest) or "all"
    return list(groups.values())


def fmt(value: float | None) -> str:
    """A metric as shown in comparison.md: 4 decimals, '-' for none or not finite."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def fmt_stat(stat: Stat | None, finished: int) -> str:
    """``mean ± sd``, with ``(n=…)`` when fewer than the group's ``finished`` jobs gave a value;
    one value has no sd."""
    if stat is None:
        return "-"
    if stat.sd is None:
        return f"{fmt(stat.mean)} (n=1)"
    count = f" (n={stat.n})" if stat.n != finished else ""
    return f"{fmt(stat.mean)} ± {fmt(stat.sd)}{count}"


def _seeds(a: Stat, b: Stat) -> str:
    if a.n == b.n:
        return f"{a.n} seed{'s' if a.n > 1 else ''} each"
    return f"{a.n} and {b.n} seeds"


def pair_statement(name_a: str, a: Stat | None, name_b: str, b: Stat | None, label: str) -> str:
    """One line comparing two groups' ``label`` (e.g. ``best val/mIoU``) by :data:`RULE`, the
    group with the higher mean first."""
    if a is None or b is None:
        missing = " and ".join(n for n, s in ((name_a, a), (name_b, b)) if s is None)
        return f"{name_a} vs {name_b}: no finished job with a {label} in {missing}: no comparison"
    if b.mean > a.mean:
        (name_a, a), (name_b, b) = (name_b, b), (name_a, a)
    head = f"{name_a} vs {name_b}: {label} "
    single = [n for n, s in ((name_a, a), (name_b, b)) if s.sd is None]
    if single:
        values = f"{fmt_stat(a, a.n)} vs {fmt_stat(b, b.n)} ({_seeds(a, b)})"
        who = " and ".join(single)
        return f"{head}{values}: one seed: no spread is known for {who}, so no claim is made"
    assert a.sd is not None and b.sd is not None
    diff, spread = a.mean - b.mean, a.sd + b.sd
    verdict = "exceeds" if diff > spread else "does not exceed"
    values = f"{fmt(a.mean)} ± {fmt(a.sd)} vs {fmt(b.mean)} ± {fmt(b.sd)} ({_seeds(a, b)})"
    verdict = f"the difference of means ({fmt(diff)}) {verdict} the spread ({fmt(spread)})"
    return f"{head}{values}: {verdict}"


def _monitor(groups: Sequence[Group]) -> str:
    monitors = [job.metrics.get("monitor") for g in groups for job in g.finished]
    return next((m for m in monitors if isinstance(m, str)), "val/mIoU")


def _table(groups: Sequence[Group], source: str, keys: Sequence[str], first: str) -> list[str]:
    names = [k.removeprefix("val/IoU/") for k in keys]
    lines = [f"| group | {first} | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(keys))]
    for g in groups:
        head = f"{len(g.finished)} of {len(g.jobs)}" if first == "finished" else ", ".join(g.seeds)
        cells = [fmt_stat(group_stat(g, source, k), len(g.finished)) for k in keys]
        lines.append(f"| {g.name} | {head or '-'} | " + " | ".join(cells) + " |")
    return lines


def group_markdown(groups: Sequence[Group]) -> list[str]:
    """The markdown lines of the group tables and the pairwise statements."""
    monitor = _monitor(groups)
    lines = [
        "## Groups over seeds",
        "",
        "Jobs that differ only in `seed` form a group. Only finished jobs enter a group's "
        "statistics. Each cell: mean ± sd over the group's finished jobs, sd the sample standard "
        "deviation (n−1); (n=…) when fewer of them gave the value, and (n=1) has no sd.",
        "",
        f"At each job's best epoch (its highest {monitor}):",
        "",
        *_table(groups, "best", SUMMARY, "finished"),
        "",
        "At each job's final epoch:",
        "",
        *_table(groups, "final", SUMMARY, "seeds"),
    ]
    classes = list(
        dict.fromkeys(
            k
            for g in groups
            for job in g.finished
            for k in job.metrics.get("best") or {}
            if k.startswith("val/IoU/")
        )
    )
    if classes:
        lines += ["", "Per-class IoU at each job's best epoch:", ""]
        lines += _table(groups, "best", classes, "finished")
    label = f"best {monitor}"
    lines += ["", f"{label[0].upper()}{label[1:]}, group against group. Rule: {RULE}", ""]
    pairs = list(itertools.combinations(groups, 2))
    for a, b in pairs:
        lines.append(
            "- " + pair_statement(a.name, group_stat(a, "best", monitor), b.name,
                                  group_stat(b, "best", monitor), label)
        )  # fmt: skip
    if not pairs:
        lines.append("- one group: nothing to compare it with")
    return lines
