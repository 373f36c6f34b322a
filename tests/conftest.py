"""Shared test helpers: composing the real configs and running the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

#: A run of the built-in job that takes seconds: tiny network, few tiny images, one epoch.
TINY = [
    "experiment=quickstart",
    "model.trunk_width=4",
    "model.fc_width=8",
    "data.train_set.num_images=8",
    "data.val_set.num_images=4",
    "data.batch_size=4",
    "transforms.size=48",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
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
    args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None, entry: str = "train"
) -> subprocess.CompletedProcess:
    """``python -m fcn.ENTRY ARGS`` in a subprocess with no wandb credentials and no network."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    full_env.update({"HOME": str(cwd), "PYTHONUNBUFFERED": "1", "WANDB_DISABLE_CODE": "true"})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", f"fcn.{entry}", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty launch folder (relative data and output paths land here)."""
    return tmp_path


#: TINY's model and data, without its training-only settings (for fcn.evaluate).
EVAL = [a for a in TINY if not a.startswith(("trainer.max_epochs", "callbacks."))]


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
