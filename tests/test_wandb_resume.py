"""An offline run continued with ``python -m fcn.resume`` keeps every logged point: it goes on as a
new wandb run of the same group (wandb ignores ``resume`` offline, and ``wandb sync`` of a second
folder of one run id does not append to the first), and the printed ``wandb sync`` command is
one wandb 0.31 accepts. With ``logger.wandb.log_model=true`` each part uploads two checkpoints
once: the best and the last."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fcn.training.wandb_runs import folder_run_id, run_folders, sync_commands
from tests.conftest import TINY, run_train
from tests.wandb_records import artifacts, history, run_record

#: the tests share a module-scoped fixture: one pytest-xdist worker runs them all (loadgroup)
pytestmark = pytest.mark.xdist_group("wandb_resume")

#: The first part: one epoch of 2 steps, every step logged, its best and last checkpoint uploaded.
ARGS = [*TINY, "trainer.max_epochs=1", "logger=[wandb]", "trainer.log_every_n_steps=1",
        "logger.wandb.group=resumes", "logger.wandb.log_model=true"]  # fmt: skip


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run folder trained offline for one epoch, then resumed with ``python -m fcn.resume`` to
    three; and what the resume printed."""
    workdir = tmp_path_factory.mktemp("wandb_resume")
    run = workdir / "run"
    proc = run_train([*ARGS, f"hydra.run.dir={run}"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_train([str(run), "trainer.max_epochs=3"], workdir, entry="resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc.stdout + proc.stderr


def _files(run: Path) -> list[Path]:
    folders = run_folders(run / "wandb")
    assert [f.name.startswith("offline-run-") for f in folders] == [True, True]
    return [next(f.glob("run-*.wandb")) for f in folders]


@pytest.mark.slow
def test_an_offline_run_resumed_goes_on_as_a_new_run_of_its_group(
    resumed: tuple[Path, str],
) -> None:
    run, _ = resumed
    first, second = (run_record(f) for f in _files(run))
    assert first.run_id != second.run_id
    assert second.display_name == f"{first.display_name} (resumed at epoch 1)"
    assert first.run_group == second.run_group == "resumes"
    assert set(second.tags) == {*first.tags, "resumed"}
    assert first.run_id in second.notes


@pytest.mark.slow
def test_the_two_runs_hold_every_logged_point_once(resumed: tuple[Path, str]) -> None:
    run, _ = resumed
    parts = [history(f) for f in _files(run)]
    for rows in parts:  # each run id's history: wandb's steps 0, 1, 2 ... without a gap
        assert [row["_step"] for row in rows] == list(range(len(rows)))
    steps = [[r["trainer/global_step"] for r in rows if "train/loss_step" in r] for rows in parts]
    assert steps == [[0, 1], [2, 3, 4, 5]]  # 2 steps an epoch: none lost, none twice
    epochs = [[r["epoch"] for r in rows if "val/mIoU" in r] for rows in parts]
    assert epochs == [[0], [1, 2]]
    logged = [r["val/mIoU"] for rows in parts for r in rows if "val/mIoU" in r]
    metrics = json.loads((run / "metrics.json").read_text())
    assert logged == pytest.approx([e["val/mIoU"] for e in metrics["history"]])


@pytest.mark.slow
def test_the_printed_sync_command_uploads_both_runs(resumed: tuple[Path, str]) -> None:
    run, printed = resumed
    folders = run_folders(run / "wandb")
    [command] = [line.strip() for line in printed.splitlines() if "wandb sync" in line]
    assert shlex.split(command) == ["wandb", "sync", *map(str, folders)]
    assert sync_commands([run / "wandb"]) == [command]
    assert len({folder_run_id(f) for f in folders}) == 2  # synced as two runs, none overwritten
    # The wandb 0.31 command line takes it as it is (a dry run reaches no server).
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", *shlex.split(command)[1:], "--dry-run"],
        capture_output=True, text=True, timeout=120, env={**env, "HOME": str(run)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Would sync 2 run(s)" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_each_part_uploads_its_best_and_last_checkpoint_once(resumed: tuple[Path, str]) -> None:
    run, _ = resumed
    best = json.loads((run / "metrics.json").read_text())["best"]
    for file, last_epoch in zip(_files(run), (0, 2), strict=True):
        logged = artifacts(file)
        # wandb itself adds "latest" to each artifact it logs
        assert [set(a["aliases"]) - {"latest"} for a in logged] == [{"best"}, {"last"}]
        assert {a["name"] for a in logged} == {f"model-{run_record(file).run_id}"}
        assert all(a["files"] == ["model.ckpt"] for a in logged)
        top, last = (a["metadata"] for a in logged)
        assert top["original_filename"].startswith(f"epoch{best['epoch']:03d}-")
        assert (top["epoch"], top["monitor"]) == (best["epoch"], "val/mIoU")
        assert top["score"] == pytest.approx(best["val/mIoU"])
        assert (last["original_filename"], last["epoch"]) == ("last.ckpt", last_epoch)


def test_sync_commands_give_an_older_second_folder_of_one_run_its_own_id(tmp_path: Path) -> None:
    """Folders from before continuations got a new id share it: syncing both as they are would
    overwrite the first, so the later one becomes a run of its own; synced and online folders
    are left out."""
    wandb = tmp_path / "wandb"
    for name in ("offline-run-20260101_000000-abc", "offline-run-20260101_000100-abc",
                 "run-20260101_000200-xyz", "offline-run-20260101_000300-def"):  # fmt: skip
        (wandb / name).mkdir(parents=True)
        (wandb / name / f"run-{name.rsplit('-', 1)[1]}.wandb").touch()
    (wandb / "offline-run-20260101_000300-def" / "run-def.wandb.synced").touch()
    first, second = (wandb / f"offline-run-20260101_000{t}00-abc" for t in (0, 1))
    assert sync_commands([wandb]) == [f"wandb sync {first}", f"wandb sync --id abc-2 {second}"]
