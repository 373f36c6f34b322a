"""``python -m fcn.compare`` on a sweep with a broken job file: the file is named with what is
wrong, the job is listed among those that did not finish, and the other jobs are compared."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fcn.compare import main
from tests.conftest import TINY, run_train

#: the tests share a module-scoped fixture: one pytest-xdist worker runs them all (loadgroup)
pytestmark = pytest.mark.xdist_group("compare_robust")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-job sweep of real TINY runs: job 0 is fcn32, job 1 is fcn8."""
    workdir = tmp_path_factory.mktemp("sweep")
    folder = workdir / "variants"
    args = ["-m", *TINY, "model=fcn32,fcn8", "logger=none", f"hydra.sweep.dir={folder}"]
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def _copy(sweep: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "variants"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoints"))
    return copy


def _edit(change: Callable[[dict], object]) -> Callable[[str], str]:
    """A breakage: the real metrics.json, changed by ``change`` and written back as JSON."""
    return lambda text: json.dumps(change(json.loads(text)))


BREAKAGES = {
    "truncated": (lambda text: text[: len(text) // 2], "is not valid JSON (line "),
    "empty": (lambda text: "", "is empty"),
    "array": (lambda text: "[1, 2]", "an array where an object was expected"),
    "history": (_edit(lambda d: {**d, "history": "none"}), "history is a string, not an array"),
    "value": (
        _edit(lambda d: {**d, "best": {**d["best"], "val/mIoU": "high"}}),
        'best["val/mIoU"] is a string, not a number',
    ),
    "no epoch": (
        _edit(lambda d: {**d, "history": [{"val/mIoU": 0.5}]}),
        "history[0] has no whole epoch number",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_metrics_file_is_named_and_the_other_jobs_compared(
    breakage: str, sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(sweep, tmp_path)
    good = json.loads((folder / "0" / "metrics.json").read_text())
    broken = folder / "1" / "metrics.json"
    change, reason = BREAKAGES[breakage]
    broken.write_text(change(broken.read_text()))

    assert main([str(folder)]) == 0  # one job finished
    err = capsys.readouterr().err
    assert f"warning: fcn8 ({folder / '1'}): {broken} " in err and reason in err
    table = (folder / "comparison.md").read_text()
    [row] = [line for line in table.splitlines() if line.startswith("| fcn32 | finished |")]
    assert f"**{good['best']['val/mIoU']:.4f}**" in row
    assert "| fcn8 | unreadable metrics | ? |" in table
    unfinished = table.split("Jobs that did not finish:", 1)[1]
    assert f"- fcn8 (1/): {broken} " in unfinished and reason in unfinished
    for png in ("loss.png", "miou.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob("*.part"))


def test_compare_prints_no_traceback_for_a_file_that_is_not_text(
    sweep: Path, tmp_path: Path
) -> None:
    folder = _copy(sweep, tmp_path)
    (folder / "1" / "metrics.json").write_bytes(b"\xff\xfe\x00{garbage")
    proc = run_train([str(folder)], tmp_path, entry="compare")  # its main, as the command runs it
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{folder / '1' / 'metrics.json'} is not UTF-8 text (byte 0)" in proc.stderr
    assert "| fcn32 | finished |" in proc.stdout


def test_broken_hydra_files_leave_the_job_its_folder_name(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(sweep, tmp_path)
    (folder / "1" / ".hydra" / "hydra.yaml").write_text("hydra: [unclosed\n")
    (folder / "1" / "config.yaml").write_text("- not\n- a mapping\n")
    assert main([str(folder)]) == 0
    table = (folder / "comparison.md").read_text()
    assert "| fcn32 | finished | 1/1 |" in table
    assert "| 1 | finished | 1 |" in table  # no name, no epoch total: still compared


def test_a_sweep_of_only_broken_jobs_fails(sweep: Path, tmp_path: Path) -> None:
    folder = _copy(sweep, tmp_path)
    for job in ("0", "1"):
        (folder / job / "metrics.json").write_text("{")
    assert main([str(folder)]) == 1
    assert "Jobs that did not finish:" in (folder / "comparison.md").read_text()


def test_an_unseeded_sweep_names_a_failed_job_with_its_recorded_reason(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(sweep, tmp_path)
    metrics = folder / "1" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "status": "failed"}))
    failure = {"status": "interrupted", "kind": "interrupted", "exception": "KeyboardInterrupt",
               "reason": "stopped by Ctrl+C", "log": str(folder / "1" / "train.log")}  # fmt: skip
    (folder / "1" / "failure.json").write_text(json.dumps(failure))
    assert main([str(folder)]) == 0
    table = (folder / "comparison.md").read_text()
    assert "## Groups" not in table and "## Jobs" not in table  # one row per job, as before
    assert "| fcn8 | interrupted | 1/1 |" in table
    assert (
        "- fcn8 (1/): interrupted after 1/1 epochs: KeyboardInterrupt: stopped by Ctrl+C "
        f"(see {folder / '1' / 'train.log'})"
    ) in table
    (folder / "1" / "failure.json").write_text("{not json")  # unreadable: what metrics.json says
    assert main([str(folder)]) == 0
    assert (
        f"- fcn8 (1/): failed after 1/1 epochs (see {folder / '1' / 'train.log'})"
        in (folder / "comparison.md").read_text()
    )
    assert "warning: fcn8" in capsys.readouterr().err
