"""What a GPU run depends on, tested on the CPU through the same code: cuDNN autotuning chosen
from the transforms preset, validation masks that never recompile a compiled network, loader
workers without OpenCV threads of their own, and one online wandb run per multi-node job."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.rank_zero import _get_rank
from omegaconf import open_dict
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import Dataset

from fcn.data.datamodule import WORKER_CV2_THREADS
from fcn.errors import ConfigError
from fcn.run_folder import RANK_VARIABLES
from fcn.training import tracking
from fcn.training.autotuning import cudnn_benchmark
from fcn.training.callbacks import ValidationMasks
from fcn.training.module import FCNModule
from fcn.training.tracking import finish_wandb, start_loggers, wandb_logger
from tests.conftest import TINY, compiled_graphs, compose_train, run_train

# --- cuDNN autotuning ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "train", "val"),
    [
        ([], True, True),  # resize_pad: every batch size x size
        (["transforms=augment"], True, False),  # crops; validation at the images' own sizes
        (["data=cityscapes"], True, True),  # crops; every image 2048x1024
        (["data=ade20k"], True, False),
        (["transforms=original"], False, False),  # images of their own sizes
        (["experiment=paper_atonce"], False, False),  # the paper's: original
        (["transforms=original", "transforms.fixed_size=true"], True, True),  # all one size
        (["transforms=augment", "transforms.fixed_size.val=true"], True, True),
        (["trainer.benchmark=false"], False, False),  # the user's choice wins
        (["transforms=original", "trainer.benchmark=true"], True, True),
        (["trainer.deterministic=true"], False, False),  # autotuning picks kernels by timing
    ],
)
def test_autotuning_follows_the_composed_transforms(
    overrides: list[str], train: bool, val: bool
) -> None:
    assert cudnn_benchmark(compose_train(overrides))[:2] == (train, val)


def test_a_config_without_fixed_size_reads_the_transforms() -> None:
    # e.g. a run folder's config written before presets had the key
    for preset, expected in (
        ("resize_pad", (True, True)), ("augment", (True, False)), ("original", (False, False)),
    ):  # fmt: skip
        cfg = compose_train([f"transforms={preset}"])
        with open_dict(cfg):
            del cfg.transforms["fixed_size"]
        assert cudnn_benchmark(cfg)[:2] == expected, preset


@pytest.mark.parametrize(
    "override",
    ["transforms.fixed_size=maybe", "transforms.fixed_size={train: 1, val: 0}",
     "~transforms.fixed_size.val"],
)  # fmt: skip
def test_a_fixed_size_that_cannot_work_names_its_key(override: str) -> None:
    with pytest.raises(ConfigError, match="transforms.fixed_size must be"):
        cudnn_benchmark(compose_train([override]))


@pytest.fixture
def cudnn_flag() -> Iterator[None]:
    """Restore torch's global autotuning flag, which the Trainer sets."""
    saved = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize(
    ("overrides", "train", "val"),
    [([], True, True), (["transforms=augment"], True, False),
     (["transforms=original"], False, False)],
)  # fmt: skip
def test_a_run_autotunes_its_training_and_validation_as_its_preset_says(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, cudnn_flag: None,
    overrides: list[str], train: bool, val: bool,
) -> None:  # fmt: skip
    # The flag torch reads, seen from inside the real fcn.train's steps (the sanity check's too).
    seen: dict[str, set[bool]] = {"argument": set(), "training": set(), "validation": set()}
    real_init = pl.Trainer.__init__
    real_training_step, real_validation_step = FCNModule.training_step, FCNModule.validation_step

    def spy_init(self: pl.Trainer, *args, **kwargs) -> None:
        seen["argument"].add(kwargs.get("benchmark"))
        real_init(self, *args, **kwargs)

    def spy_training_step(self: FCNModule, *args, **kwargs):
        seen["training"].add(torch.backends.cudnn.benchmark)
        return real_training_step(self, *args, **kwargs)

    def spy_validation_step(self: FCNModule, *args, **kwargs):
        seen["validation"].add(torch.backends.cudnn.benchmark)
        return real_validation_step(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", spy_init)
    monkeypatch.setattr(FCNModule, "training_step", spy_training_step)
    monkeypatch.setattr(FCNModule, "validation_step", spy_validation_step)
    torch.backends.cudnn.benchmark = not train
    args = [*TINY, "logger=none", "trainer.num_sanity_val_steps=1", "hydra.run.dir=run"]
    proc = run_train([*args, *overrides], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seen == {"argument": {train}, "training": {train}, "validation": {val}}
    assert torch.backends.cudnn.benchmark is train  # set back after each validation
    assert f"benchmark: {str(train).lower()}" in (workdir / "run" / "config.yaml").read_text()


# --- validation masks under torch.compile ----------------------------------------------------


def test_validation_masks_never_recompile_a_compiled_network(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, compile_without_codegen: str
) -> None:
    seen: dict = {}
    real_hook = ValidationMasks.on_validation_epoch_end

    def spy_hook(self: ValidationMasks, trainer: pl.Trainer, pl_module: pl.LightningModule):
        before = compiled_graphs()
        real_hook(self, trainer, pl_module)
        seen["added_by_masks"] = compiled_graphs() - before
        seen["compiled"] = pl_module.net._compiled_call_impl is not None
        # The control: the first image through the compiled forward as the masks were scored
        # before (batch of one, inference mode) is a new graph, which the count would show.
        x = trainer.datamodule.val_set[0][0][None]
        before = compiled_graphs()
        with torch.inference_mode():
            pl_module(x)
        seen["added_by_compiled_call"] = compiled_graphs() - before

    monkeypatch.setattr(ValidationMasks, "on_validation_epoch_end", spy_hook)
    args = [*TINY, "module.compile=true", "logger=wandb", "callbacks.validation_masks.num_images=2",
            "hydra.run.dir=run"]  # fmt: skip
    proc = run_train(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seen == {"added_by_masks": 0, "compiled": True, "added_by_compiled_call": 1}
    [offline] = (workdir / "run" / "wandb").glob("offline-run-*")
    assert len(list((offline / "files" / "media" / "images").glob("val/masks_*.png"))) == 2


# --- loader workers --------------------------------------------------------------------------


class ThreadCounts(Dataset):
    """Items that carry the OpenCV and torch thread counts of the process that made them."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        counts = [float(cv2.getNumThreads()), float(torch.get_num_threads()), 0.0]
        return torch.tensor(counts).view(3, 1, 1), torch.zeros(1, 1, dtype=torch.long)


@contextlib.contextmanager
def cv2_threads(count: int) -> Iterator[None]:
    saved = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(saved)


def test_loader_workers_run_opencv_without_threads_of_their_own() -> None:
    cfg = compose_train([*TINY, "data.num_workers=1"])
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.train_set = datamodule.val_set = ThreadCounts()
    with cv2_threads(4):  # what a forked worker would otherwise inherit
        assert cv2.getNumThreads() == 4
        for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
            assert loader.num_workers == 1
            images, _, _ = next(iter(loader))
            cv2_count, torch_count = images[0, :2, 0, 0].tolist()
            # setNumThreads(0): OpenCV runs in the calling thread and reports 1
            assert WORKER_CV2_THREADS == 0 and cv2_count == 1
            assert torch_count == 1  # torch's own worker loop


# --- one online wandb run per multi-node job -------------------------------------------------


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A node's main process under Lightning's own multi-node launch (no SLURM): NODE_RANK and
    MASTER_ADDR set, no RANK or LOCAL_RANK yet; wandb credentials and a server at a closed
    loopback port; Lightning's rank as it was read at import (0), restored afterwards."""
    for key in (*RANK_VARIABLES, "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_ID", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29577")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed port
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "8")
    monkeypatch.setattr(rank_zero_only, "rank", 0)  # (one object in every Lightning package)
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # no job name from other tests
    return monkeypatch


def _started(save_dir: Path) -> list[Path]:
    """The folders of the wandb runs started in ``save_dir`` (online or offline)."""
    return [p for p in (save_dir / "wandb").glob("*run-*") if p.is_dir()]


def test_a_second_nodes_main_process_starts_no_wandb_run(node: pytest.MonkeyPatch) -> None:
    import wandb

    node.setenv("NODE_RANK", "1")
    assert _get_rank() is None  # Lightning's rank ignores NODE_RANK: 0 until a Trainer
    probes: list[str] = []
    node.setattr(tracking, "reachable", lambda url, *a, **k: probes.append(url))
    save_dir = Path.home() / "run"
    logger = wandb_logger(save_dir=str(save_dir), mode="online")
    [kept] = start_loggers([logger])
    assert kept is logger and kept._wandb_init["mode"] == "online" and kept._experiment is None
    assert probes == [] and wandb.run is None and _started(save_dir) == []
    # Once the Trainer exists it knows this process's global rank (node 1 x 1 device): the
    # logger then holds wandb's dummy run and logging starts nothing.
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", logger=kept,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    assert trainer.global_rank == 1 and rank_zero_only.rank == 1
    kept.log_hyperparams({"lr": 0.1})
    kept.log_metrics({"val/mIoU": 0.5})
    assert wandb.run is None and _started(save_dir) == []


def test_the_first_nodes_main_process_starts_the_run(node: pytest.MonkeyPatch) -> None:
    node.setenv("NODE_RANK", "0")
    probes: list[str] = []
    real_reachable = tracking.reachable

    def spy_reachable(url: str, *args, **kwargs) -> str | None:
        probes.append(url)
        return real_reachable(url, *args, **kwargs)

    node.setattr(tracking, "reachable", spy_reachable)
    save_dir = Path.home() / "run"
    logger = wandb_logger(save_dir=str(save_dir), mode="online")
    try:
        [started] = start_loggers([logger])
        # it went for the server (a closed port), then on offline: a run was started
        assert probes == ["http://127.0.0.1:9"] and started._wandb_init["mode"] == "offline"
        started.log_metrics({"val/mIoU": 0.5})
    finally:
        finish_wandb()
    assert len(_started(save_dir)) == 1
