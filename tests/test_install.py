"""The installed package (a wheel, not the source tree) runs its commands from any folder, with
its own configs and experiments inside it, and with a user's configs from a folder of theirs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_wheel_runs_the_quickstart_from_any_folder_and_user_configs(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside it
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "fcn", "conf", "experiments"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")}
        copy(REPO / name, source / name, **(kwargs if copy is shutil.copytree else {}))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next(dist.glob("fcn-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = [p.relative_to(REPO).as_posix() for p in (REPO / "fcn").rglob("*.py")]
    assert set(modules) <= names, set(modules) - names  # every module of the source tree
    for packaged in ("fcn/conf/train.yaml", "fcn/conf/debug/fast_dev_run.yaml",
                     "fcn/conf/hydra/launcher/slurm.yaml", "fcn/conf/experiment/quickstart.yaml",
                     "fcn/data/splits/paper/seg11valid.txt"):  # fmt: skip
        assert packaged in names, packaged

    # A fresh environment holding only the wheel; the heavy dependencies (torch, Lightning, ...)
    # are this environment's, seen through a .pth file (never the source tree: no editable
    # finder runs from a .pth-added folder).
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PYTHON"))}
    clean.update(HOME=str(tmp_path))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [python, "-m", "fcn.train", *args], cwd=elsewhere, env=clean,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    where = subprocess.check_output(
        [python, "-c", "import fcn; print(fcn.__file__)"], cwd=elsewhere, env=clean, text=True
    )
    assert where.startswith(str(site)), where  # the installed package, not the source tree

    proc = run("experiment=quickstart", "debug=fast_dev_run", "logger=none", "hydra.run.dir=q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((elsewhere / "q" / "metrics.json").read_text())["status"] == "finished"

    # A user's own experiment, in a folder of theirs, through Hydra's --config-dir.
    mine = tmp_path / "my_configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - /experiment/quickstart\n  - _self_\n"
        "tags: [mine]\nmodel:\n  dropout: 0.3\n"
    )
    proc = run(f"--config-dir={mine.parent}", "experiment=mine", "debug=fast_dev_run",
               "logger=none", "hydra.run.dir=m")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (elsewhere / "m" / "config.yaml").read_text()
    assert "dropout: 0.3" in config and "- mine" in config and "alignment: same" in config
