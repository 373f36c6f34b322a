"""``python -m fcn.compare`` on a sweep repeated over seeds: groups, their statistics and curves,
the pairwise statements, failed jobs, provenance warnings and the wandb report.

The statistics are checked on job folders made from a real TINY multirun's job (its ``.hydra/``
files, ``config.yaml`` and ``metrics.json``, with the swept overrides and the numbers changed),
so that the numbers are known; the whole path is checked on the real multirun itself."""

from __future__ import annotations

import json
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from fcn.compare import Job, band, compare, main
from fcn.compare_groups import group_stat
from fcn.compare_jobs import SUMMARY
from fcn.errors import FCNError
from tests.conftest import TINY, run_train

#: the tests share a module-scoped fixture: one pytest-xdist worker runs them all (loadgroup)
pytestmark = pytest.mark.xdist_group("compare_seeds")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished real sweep: ``model=fcn32,fcn8 seed=0,1``, 4 TINY jobs with CSV logs."""
    workdir = tmp_path_factory.mktemp("seeded")
    folder = workdir / "seeds"
    args = ["-m", *TINY, "model=fcn32,fcn8", "seed=0,1", "logger=csv", f"hydra.sweep.dir={folder}"]
    start = time.monotonic()
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - start < 60  # seconds per job
    return folder


def _swap(overrides: list[str], model: str, seed: str) -> list[str]:
    """The overrides with ``model=`` and ``seed=`` set to the given values."""
    values = {"model": model, "seed": seed}
    return [f"{o.split('=')[0]}={values[o.split('=')[0]]}" if o.split("=")[0] in values else o
            for o in overrides]  # fmt: skip


def _metrics(template: dict, best_miou: float, epochs: int, status: str) -> dict:
    """A metrics.json as MetricsFile writes it: ``epochs`` epochs whose val/mIoU peaks at
    ``best_miou`` in the second (0.2 less in the first, 0.05 less after); every other number
    is a distinct multiple of that epoch's mIoU."""
    keys = [k for k in template["history"][0] if k not in ("epoch", "step")]
    history = []
    for epoch in range(epochs):
        v = best_miou - (0.2 if epoch == 0 else 0.0 if epoch == 1 else 0.05)
        entry = {k: v * (i + 2) / 10 for i, k in enumerate(keys)}
        history.append({**entry, "epoch": epoch, "step": 2 * (epoch + 1), "val/mIoU": v})
    best = max(history, key=lambda h: h["val/mIoU"])
    return {**template, "status": status, "epochs_completed": epochs, "history": history,
            "best": best, "final": history[-1]}  # fmt: skip


def make_sweep(seeded: Path, dest: Path, jobs: list[dict]) -> Path:
    """A sweep folder of made jobs, each from a real job's files: ``model``, ``seed``,
    ``best`` (its best val/mIoU; None: no metrics.json), ``epochs`` (3), ``status``
    (``finished``) and ``failure`` (a failure.json to write, or None)."""
    template = seeded / "0"
    doc = json.loads((template / "metrics.json").read_text())
    multirun = OmegaConf.load(seeded / "multirun.yaml")
    models = ",".join(dict.fromkeys(j["model"] for j in jobs))
    seeds = ",".join(dict.fromkeys(str(j["seed"]) for j in jobs))
    multirun.hydra.overrides.task = _swap(list(multirun.hydra.overrides.task), models, seeds)
    dest.mkdir()
    OmegaConf.save(multirun, dest / "multirun.yaml")
    for num, job in enumerate(jobs):
        folder = dest / str(num)
        shutil.copytree(template / ".hydra", folder / ".hydra")
        hydra = OmegaConf.load(folder / ".hydra" / "hydra.yaml")
        task = _swap(list(hydra.hydra.overrides.task), job["model"], str(job["seed"]))
        hydra.hydra.overrides.task = task
        hydra.hydra.runtime.choices.model = job["model"]
        OmegaConf.save(hydra, folder / ".hydra" / "hydra.yaml")
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(task))
        config = OmegaConf.load(template / "config.yaml")
        config.trainer.max_epochs, config.seed = 3, job["seed"]
        OmegaConf.save(config, folder / "config.yaml")
        (folder / "train.log").write_text("[made for a test]\n")
        if job.get("best") is not None:
            made = _metrics(doc, job["best"], job.get("epochs", 3), job.get("status", "finished"))
            (folder / "metrics.json").write_text(json.dumps(made, indent=2))
        if job.get("failure"):
            (folder / "failure.json").write_text(json.dumps(job["failure"]))
    return dest


BEST = {"fcn32": [0.50, 0.52, 0.51], "fcn16": [0.45, 0.65, 0.55], "fcn8": [0.70, 0.72, 0.71]}


def test_group_statistics_are_numpy_mean_and_sample_sd(seeded: Path, tmp_path: Path) -> None:
    jobs = [{"model": m, "seed": s, "best": b} for m, bs in BEST.items() for s, b in enumerate(bs)]
    folder = make_sweep(seeded, tmp_path / "made", jobs)
    result = compare(folder)
    assert [(g.name, len(g.finished)) for g in result.groups] == [
        ("fcn32", 3), ("fcn16", 3), ("fcn8", 3)
    ]  # fmt: skip
    table = result.path.read_text()
    for group in result.groups:
        docs = [json.loads((j.folder / "metrics.json").read_text()) for j in group.jobs]
        classes = [k for k in docs[0]["best"] if k.startswith("val/IoU/")]
        for source, keys in (("best", [*SUMMARY, *classes]), ("final", SUMMARY)):
            for key in keys:
                values = np.array([d[source][key] for d in docs])
                stat = group_stat(group, source, key)
                assert stat.n == 3
                assert stat.mean == pytest.approx(np.mean(values), abs=1e-12)
                assert stat.sd == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        row = next(line for line in table.splitlines() if line.startswith(f"| {group.name} | 3 of"))
        values = np.array(BEST[group.name])
        assert f"| {np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} |" in row
    assert "sample standard deviation (n−1)" in table
    assert "| fcn32,seed=0 | finished | 3/3 | **0.5000** (2) |" in table.split("## Jobs")[1]


def test_pairs_say_whether_the_difference_exceeds_the_spread(seeded: Path, tmp_path: Path) -> None:
    jobs = [{"model": m, "seed": s, "best": b} for m, bs in BEST.items() for s, b in enumerate(bs)]
    table = compare(make_sweep(seeded, tmp_path / "made", jobs)).path.read_text()
    assert "|mean_a − mean_b| > sd_a + sd_b" in table
    pairs = {line.split(":")[0]: line for line in table.splitlines() if " vs " in line}
    assert set(pairs) == {"- fcn16 vs fcn32", "- fcn8 vs fcn32", "- fcn8 vs fcn16"}
    assert pairs["- fcn8 vs fcn32"].endswith(
        "best val/mIoU 0.7100 ± 0.0100 vs 0.5100 ± 0.0100 (3 seeds each): "
        "the difference of means (0.2000) exceeds the spread (0.0200)"
    )
    assert "(0.1600) exceeds the spread (0.1100)" in pairs["- fcn8 vs fcn16"]
    assert "(0.0400) does not exceed the spread (0.1100)" in pairs["- fcn16 vs fcn32"]


FAILURES = [
    {"status": "failed", "kind": "diverged", "exception": "FloatingPointError",
     "reason": "train/loss is nan at step 5", "log": "LOG"},
    {"status": "failed", "kind": "crash", "exception": "RuntimeError",
     "reason": "CUDA error: out of memory", "log": None},
]  # fmt: skip


def test_failed_jobs_are_listed_with_their_reason_and_left_out(
    seeded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = [{"model": "fcn32", "seed": s, "best": b} for s, b in enumerate(BEST["fcn32"])]
    jobs += [
        {"model": "fcn8", "seed": 0, "best": 0.9},
        {"model": "fcn8", "seed": 1, "best": 0.1, "epochs": 2, "status": "failed",
         "failure": FAILURES[0]},
        {"model": "fcn8", "seed": 2, "best": None, "failure": FAILURES[1]},
    ]  # fmt: skip
    folder = make_sweep(seeded, tmp_path / "made", jobs)
    log = folder / "4" / "train.log"
    (folder / "4" / "failure.json").write_text(json.dumps({**FAILURES[0], "log": str(log)}))
    assert main([str(folder)]) == 0
    out, err = capsys.readouterr()
    table = (folder / "comparison.md").read_text()
    assert out.startswith(table)
    assert "| fcn8 | 1 of 3 | 0.9000 (n=1) |" in table
    [pair] = [line for line in table.splitlines() if " vs " in line]
    assert pair.startswith("- fcn8 vs fcn32: best val/mIoU 0.9000 (n=1) vs 0.5100 ± 0.0100")
    assert pair.endswith(
        "(1 and 3 seeds): one seed: no spread is known for fcn8, so no claim is made"
    )
    failed = table.split("Jobs that did not finish:", 1)[1]
    assert (
        "- fcn8,seed=1 (4/): failed (diverged) after 2/3 epochs: FloatingPointError: "
        f"train/loss is nan at step 5 (see {log})"
    ) in failed
    assert (
        "- fcn8,seed=2 (5/): failed (crash) before its first epoch: RuntimeError: "
        f"CUDA error: out of memory (see {folder / '5' / 'train.log'})"
    ) in failed
    assert f"warning: fcn8,seed=1 ({folder / '4'}): failed (diverged)" in err
    assert "| fcn8,seed=1 | failed | 2/3 |" in table


def test_band_is_min_mean_max_over_the_jobs_that_reached_each_epoch() -> None:
    def job(values: list[float]) -> Job:
        history = [{"epoch": e, "val/mIoU": v} for e, v in enumerate(values)]
        return Job(Path("j"), "j", "finished", metrics={"history": history})

    points = band(
        [job([0.1, 0.4, 0.5]), job([0.3, 0.2]), job([0.2, float("nan"), 0.9])], "val/mIoU"
    )
    assert [(p.epoch, p.n) for p in points] == [(1, 3), (2, 2), (3, 2)]
    assert [p.lo for p in points] == pytest.approx([0.1, 0.2, 0.5])
    assert [p.mean for p in points] == pytest.approx([0.2, 0.3, 0.7])
    assert [p.hi for p in points] == pytest.approx([0.3, 0.4, 0.9])


def test_a_real_seeded_sweep_compares_two_groups_of_two_with_bands(
    seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.axes import Axes

    folder = tmp_path / "seeds"
    shutil.copytree(seeded, folder, ignore=shutil.ignore_patterns("checkpoints"))
    bands = []
    fill = Axes.fill_between
    monkeypatch.setattr(
        Axes, "fill_between", lambda ax, *a, **k: bands.append(a) or fill(ax, *a, **k)
    )
    assert main([str(folder)]) == 0
    table = (folder / "comparison.md").read_text()
    assert "seed=0,1" in table.split("## Groups", 1)[0]  # the command
    assert "| fcn32 | 2 of 2 |" in table and "| fcn8 | 2 of 2 |" in table
    assert "| fcn32 | 0, 1 |" in table  # the seeds, in the final-epoch table
    [pair] = [line for line in table.splitlines() if " vs " in line]
    assert "(2 seeds each): the difference of means" in pair
    jobs = table.split("## Jobs", 1)[1]
    runs = [line.split(" | ")[0] for line in jobs.splitlines() if line.startswith("| fcn")]
    assert runs[:4] == ["| fcn32,seed=0", "| fcn32,seed=1", "| fcn8,seed=0", "| fcn8,seed=1"]
    assert len(bands) == 6  # train and val loss, val mIoU: one band each per group
    for png in ("loss.png", "miou.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob("*.part"))


def test_provenance_differences_are_warnings_and_a_section(
    seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import fcn.provenance

    jobs = [{"model": "fcn8", "seed": s, "best": 0.5} for s in (0, 1)]
    jobs.append({"model": "fcn8", "seed": 2, "best": None, "failure": FAILURES[1]})
    folder = make_sweep(seeded, tmp_path / "made", jobs)
    seen = []
    lines = ["code: commit abc in seed=0; commit def in seed=1"]
    monkeypatch.setattr(
        fcn.provenance, "provenance_warnings", lambda runs: seen.append(runs) or lines
    )
    assert main([str(folder)]) == 0
    assert list(seen[0]) == ["seed=0", "seed=1"]  # the finished jobs, named by what is swept
    assert seen[0]["seed=0"]["best"]["val/mIoU"] == 0.5
    assert f"warning: {lines[0]}\n" in capsys.readouterr().err
    assert f"## Provenance\n\n- {lines[0]}\n" in (folder / "comparison.md").read_text()
    monkeypatch.setattr(fcn.provenance, "provenance_warnings", lambda runs: [])
    assert main([str(folder)]) == 0
    assert "warning: code" not in capsys.readouterr().err
    assert "Provenance" not in (folder / "comparison.md").read_text()


def test_the_wandb_report_is_asked_for_after_the_local_comparison(
    seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    jobs = [{"model": "fcn8", "seed": s, "best": 0.5} for s in (0, 1)]
    folder = make_sweep(seeded, tmp_path / "made", jobs)
    calls = []

    def save_sweep_report(sweep: Path, jobs: list[Job]) -> str:
        calls.append((sweep, [j.name for j in jobs], (sweep / "comparison.md").is_file()))
        if len(calls) > 1:
            raise FCNError("not logged in to wandb: run wandb login")
        return "https://wandb.example/report"

    report = types.ModuleType("fcn.wandb_report")
    report.save_sweep_report = save_sweep_report
    monkeypatch.setitem(sys.modules, "fcn.wandb_report", report)
    assert main([str(folder)]) == 0 and not calls  # only when asked
    assert main([str(folder), "--wandb-report"]) == 0
    assert calls[0] == (folder, ["seed=0", "seed=1"], True)
    assert "https://wandb.example/report" in capsys.readouterr().out
    (folder / "comparison.md").unlink()
    assert main([str(folder), "--wandb-report"]) == 1
    assert "error: not logged in to wandb: run wandb login" in capsys.readouterr().err
    assert (folder / "comparison.md").is_file()
