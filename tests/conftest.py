"""Shared test helpers: composing the real configs and running the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import fcn.run_folder  # noqa: F401  (the configs' fcn_run_name resolver, as fcn.conf registers it)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

#: A run of the built-in job that takes seconds: ``debug=tiny`` (tiny network, 48-pixel inputs,
#: batches of 4, one epoch, no progress bar) on 8 training and 4 validation scenes; the scene
#: counts, not batch limits, size the run, so tests may ask for more scenes or epochs.
TINY = [
    "experiment=quickstart",
    "debug=tiny",
    "data.train_set.num_images=8",
    "data.val_set.num_images=4",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
]


def compose_train(overrides: list[str], hydra_dir: Path | None = None) -> DictConfig:
    """The composed ``train`` config, with Hydra's own config so ``${hydra:...}`` resolves."""
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        if hydra_dir is not None:
            cfg.hydra.runtime.output_dir = str(hydra_dir)
        HydraConfig.instance().set_config(cfg)
        return cfg


def run_train(
    args: list[str],
    cwd: Path,
    timeout: int = 600,
    env: dict | None = None,
    entry: str = "train",
    in_process: bool | None = None,
) -> subprocess.CompletedProcess:
    """``python -m fcn.ENTRY ARGS`` launched from ``cwd`` with no wandb credentials and no
    network; returns its exit status and what it printed.

    By default the entry point's own ``main`` runs in this process, with ``sys.argv``, the
    working folder and the environment set as the command line would (Hydra parses the
    arguments, runs its callbacks and writes its files as it does for a command): the same code
    path without paying for a new interpreter's imports. ``fcn.resume`` replaces its process
    with ``python -m fcn.train ...``: in this process, that command's ``main`` runs here
    instead, with the environment ``fcn.resume`` gave it. DDP runs (Lightning starts more
    processes from the command line) always run as a real subprocess, as does
    ``in_process=False``.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    full_env.update({"HOME": str(cwd), "PYTHONUNBUFFERED": "1", "WANDB_DISABLE_CODE": "true"})
    full_env.update(env or {})
    if in_process is None:
        in_process = not _starts_processes(args)
    if in_process:
        return _run_in_process(entry, args, Path(cwd), full_env)
    return subprocess.run(
        [sys.executable, "-m", f"fcn.{entry}", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _starts_processes(args: list[str]) -> bool:
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "trainer.devices" and value.strip() not in ("1", "[0]", "auto"):
            return True
        if key == "trainer.strategy" and "ddp" in value:
            return True
    return False


class _Exec(Exception):
    """``os.execve`` called by an entry point run in this process: the command it would run."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(argv)
        self.argv, self.env = list(argv), dict(env)


def _raise_exec(path: str, argv: list[str], env: dict[str, str]) -> None:
    raise _Exec(argv, env)


def _run_in_process(
    entry: str, args: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = _call_main(entry, args, env)
            except _Exec as exec_:  # fcn.resume: run the command it replaces itself with
                assert exec_.argv[1:3] == ["-m", "fcn.train"], exec_.argv
                code = _call_main("train", exec_.argv[3:], exec_.env)
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def _call_main(entry: str, args: list[str], env: dict[str, str]) -> int:
    """Run ``fcn.ENTRY``'s ``main`` with ``args`` as its command line and ``env`` as its
    environment; its exit status."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    module = importlib.import_module(f"fcn.{entry}")
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [f"{module.__name__.replace('.', '/')}.py", *args]
    saved_execve, os.execve = os.execve, _raise_exec
    try:
        hydra_main = hasattr(module.main, "__wrapped__")  # argparse mains take argv
        result = module.main() if hydra_main else module.main(list(args))
        return result if isinstance(result, int) else 0  # argparse mains return their status
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.execve = saved_execve
        GlobalHydra.instance().clear()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty launch folder (relative data and output paths land here)."""
    return tmp_path


#: TINY's model and data for fcn.evaluate (whose config has no debug group).
EVAL = [
    "experiment=quickstart", "model.trunk_width=4", "model.fc_width=8",
    "data.train_set.num_images=8", "data.val_set.num_images=4", "data.batch_size=4",
    "transforms.size=48", "trainer.accelerator=cpu",
]  # fmt: skip


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of one finished TINY run (2 epochs, FCN-8s, no logger), shared by the tests
    of the entry points that read checkpoints."""
    workdir = tmp_path_factory.mktemp("trained")
    run = workdir / "run"
    proc = run_train(
        [*TINY, "trainer.max_epochs=2", "logger=none", f"hydra.run.dir={run}"], workdir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


#: ``torch.compile``'s default backend in the tests that compile: ``aot_eager`` captures,
#: guards, recompiles and traces the backward as ``inductor`` does, without generating and
#: building C++ kernels (seconds instead of a minute a run on a 2-core CPU; "inductor" passes
#: too). What the project controls is what reaches ``torch.compile``, not the code generator.
COMPILE_BACKEND = "aot_eager"


@pytest.fixture
def compile_without_codegen() -> Iterator[str]:
    """``torch.compile`` defaults to :data:`COMPILE_BACKEND` during the test."""
    import torch

    saved = torch.compiler.get_default_backend()
    torch.compiler.set_default_backend(COMPILE_BACKEND)
    torch._dynamo.reset()  # nothing compiled by an earlier test in this process is reused
    yield COMPILE_BACKEND
    torch._dynamo.reset()
    torch.compiler.set_default_backend(saved)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the default, in pyproject.toml): one worker per core, at most four (each
    worker holds torch, Lightning and Hydra, and some tests start DDP processes of their own)."""
    from fcn.evaluate import usable_cores

    return max(1, min(4, usable_cores()))


def pytest_configure(config: pytest.Config) -> None:
    """Each of N pytest-xdist workers computes with its share of the cores (torch's threads, and
    through ``OMP_NUM_THREADS`` the processes the tests start): N workers with a thread per core
    each would wait on each other, which is slower than one worker alone."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        import torch

        from fcn.evaluate import usable_cores

        threads = max(1, usable_cores() // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the long end-to-end tests first, so that the longest one is not left for last
    while the other workers idle (pytest-xdist's loadgroup hands them out in this order)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
