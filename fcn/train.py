"""Train an FCN: ``python -m fcn.train [group=option ...] [key=value ...]``.

The recipe: check the config, seed, build the datamodule, the network and its LightningModule,
callbacks, loggers and the Trainer from their ``_target_``s, fit, write ``metrics.json`` (by the
MetricsFile callback), finish the wandb run and return the best ``val/mIoU`` for sweepers.
In a multirun, a job that fails is recorded and the sweep goes on (fcn.sweep_failures).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from fcn.checkpoint import check_resumable, stored_section
from fcn.config_checks import check_config
from fcn.errors import ConfigError, exit_on_user_error
from fcn.files import write_text
from fcn.models.fcn import FCN
from fcn.models.precision import accelerator_device, native_bf16
from fcn.models.weights import init_weights, provenance, weights_file
from fcn.resume import RESUME_SOURCE_ENV
from fcn.run_folder import (
    clear_training_results,
    is_inside,
    is_secondary_process,
    requeue_checkpoint,
)
from fcn.stored_config import check_run_targets
from fcn.sweep_failures import FAILURE_FILE, report_unfinished_sweep
from fcn.training.autotuning import decide_cudnn_benchmark
from fcn.training.checkpoint_io import AtomicCheckpointIO
from fcn.training.class_weights import median_frequency_class_weights
from fcn.training.distributed import set_collective_timeout
from fcn.training.module import MEDIAN_FREQUENCY
from fcn.training.summary import run_summary, silence_lightning_tips
from fcn.training.tracking import finish_wandb, start_loggers

log = logging.getLogger("fcn.train")
# Lightning 2.6 on torch 2.14 warns about its own use of a deprecated torch API on every step.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model; return the best ``val/mIoU`` (None before any validation).
    A run that raises finishes its wandb run as failed, so that a sweep's next job starts its
    own."""
    try:
        return _train(cfg)
    except BaseException:
        try:
            finish_wandb(exit_code=1)
        except Exception as err:  # the run's own error is the one to report
            log.warning("could not finish the wandb run: %s", err)
        raise


def _train(cfg: DictConfig) -> float | None:
    silence_lightning_tips()
    check_config(cfg)
    _refuse_multirun_ddp(cfg)
    if requeued := requeue_checkpoint(Path(cfg.paths.output_dir)):  # SLURM started it again
        log.info("requeued by SLURM: continuing from %s", requeued)
        with open_dict(cfg):
            cfg.ckpt_path = str(requeued)
    autotuning = decide_cudnn_benchmark(cfg)
    _suggest_bf16(cfg)
    if os.environ.get(RESUME_SOURCE_ENV):  # options read from a run folder's file (fcn.resume)
        check_run_targets(cfg, os.environ[RESUME_SOURCE_ENV])
    if cfg.ckpt_path is not None:
        check_resumable(cfg.ckpt_path, cfg.trainer.get("max_epochs"))
    output_dir = Path(cfg.paths.output_dir)
    if not is_secondary_process():  # an earlier failed job's record in this folder is stale
        (output_dir / FAILURE_FILE).unlink(missing_ok=True)
    continuing = is_inside(cfg.ckpt_path, output_dir)  # fcn.resume: the same folder
    if cfg.get("overwrite") and not continuing and not is_secondary_process():
        removed = clear_training_results(output_dir)
        if removed:
            log.warning("overwrite=true: removed the earlier run's %s", ", ".join(removed))
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    with open_dict(cfg):  # recorded with the run (and in its checkpoints) for inference
        cfg.data.class_names = datamodule.class_names
        cfg.data.class_colors = datamodule.class_colors
        if cfg.module.get("class_weights") == MEDIAN_FREQUENCY:  # the numbers are recorded
            cfg.module.class_weights = median_frequency_class_weights(cfg, datamodule)
    _keep_drawn_splits(datamodule, output_dir)
    net = instantiate(cfg.model)
    if cfg.ckpt_path is None:
        path = _weights_file(cfg.weights, net)
        new = init_weights(net, cfg.weights.source, path)
        if new:
            log.info("layers new to this model (not in %s): %s", path, ", ".join(new))
        record = provenance(path, cfg.weights.source, cfg.weights.get("name"))
    else:  # every weight comes from the checkpoint
        log.info("resuming from %s", cfg.ckpt_path)
        record = _initial_weights_of(cfg.ckpt_path)
    with open_dict(cfg):  # what initialised the run, in its config and metrics.json
        cfg.weights.update(record)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    module = instantiate(
        cfg.module,
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.scheduler else None,
        class_names=datamodule.class_names,
        run_config=resolved,
        _recursive_=False,  # run_config holds _target_s: stored in checkpoints, not built
    )
    loggers = start_loggers([instantiate(c) for c in (cfg.logger or {}).values()])
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()] + autotuning
    if not loggers:  # Lightning refuses an LR monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    set_collective_timeout(trainer, cfg.get("ddp_timeout_s"))
    datamodule.check_processes(trainer.world_size)  # before the processes start

    _save_config(resolved, output_dir)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    finish_wandb()
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    if best is None:
        best = trainer.callback_metrics.get("val/mIoU")
    _report(cfg, output_dir)
    return float(best) if best is not None else None


def _weights_file(weights: DictConfig, net: FCN) -> Path | None:
    """The local file of the weights config, fetched on first use (``weights.name`` or
    torchvision's VGG16); a value that cannot work, or a released model of another network than
    ``net``, is a ConfigError naming its key (before anything is downloaded)."""
    try:
        return weights_file(
            weights.source, weights.get("path"), weights.get("name"), weights.get("url"), net
        )
    except ValueError as err:
        raise ConfigError(f"weights.{err}") from None


def _initial_weights_of(ckpt_path: str) -> dict:
    """A resumed run keeps the record of what initialised it (from the checkpoint's config)."""
    weights = stored_section(ckpt_path, "weights")
    return {k: weights.get(k) for k in ("option", "file", "sha256")} if weights else {}


@rank_zero_only
def _keep_drawn_splits(datamodule, output_dir: Path) -> None:
    """Write the id lists of splits drawn at random (``split_by=fraction``) into the run folder
    as ``splits/{train,val}.txt``, reusable as they are with ``split_by=lists`` (once: not on
    another node's first process, which Lightning has not yet told its rank)."""
    if is_secondary_process():
        return
    for name in ("train", "val"):
        wrapped = getattr(datamodule, f"{name}_set", None)
        dataset = getattr(wrapped, "dataset", None)
        if getattr(dataset, "drawn", False):
            path = write_text(output_dir / "splits" / f"{name}.txt", "\n".join(dataset.ids) + "\n")
            log.info("the drawn %s split (%d ids) is kept in %s", name, len(dataset), path)


@rank_zero_only
def _report(cfg: DictConfig, output_dir: Path) -> None:
    """Print the end-of-run summary (from metrics.json), or the run folder alone."""
    metrics = ((cfg.get("callbacks") or {}).get("metrics_file") or {}).get("path")
    if not metrics or not Path(metrics).is_file():
        log.info("run folder: %s", output_dir)
        return
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    sweep = Path(HydraConfig.get().sweep.dir) if multirun else None
    print(run_summary(Path(metrics), output_dir, sweep), flush=True)


def _suggest_bf16(cfg: DictConfig) -> None:
    """Training in fp32 on a device with bfloat16 units leaves most of its speed unused: say so,
    once, with the settings measured (docs/performance.md#training-recipe)."""
    if str(cfg.trainer.get("precision")) not in ("32-true", "32") or is_secondary_process():
        return
    device = accelerator_device(cfg.trainer.get("accelerator", "auto"))
    if native_bf16(device):
        log.info(
            "this %s has bfloat16 units: trainer.precision=bf16-mixed module.channels_last=true "
            "trains faster (1.9x on the built-in data on an AVX-512 BF16 CPU, mIoU within the "
            "seeds' spread; docs/performance.md#training-recipe)",
            device.upper(),
        )


def _refuse_multirun_ddp(cfg: DictConfig) -> None:
    """On one machine, Lightning re-launches DDP processes with the parent's command line,
    which under a local Hydra multirun would start the whole sweep again in every process.
    Sweeps sent to SLURM (``hydra/launcher=slurm``) are fine: SLURM starts the processes."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if "submitit" in launcher or "SLURM_NTASKS" in os.environ:
        return
    devices = cfg.trainer.get("devices", 1)
    if str(devices) in ("auto", "-1"):
        gpus = torch.cuda.device_count() if cfg.trainer.get("accelerator") != "cpu" else 0
        many = gpus > 1
    else:
        many = (len(devices) if OmegaConf.is_list(devices) else int(devices)) > 1
    if many or cfg.trainer.get("num_nodes", 1) > 1:
        raise ConfigError(
            f"trainer.devices={devices} cannot be combined with a multirun (-m) sweep on one "
            "machine: run the sweep's jobs one at a time (python -m fcn.train <job's options> "
            f"trainer.devices={devices}), or send the sweep to a SLURM cluster with "
            "hydra/launcher=slurm, where each job gets its devices"
        )


@rank_zero_only
def _save_config(resolved: dict, output_dir: Path) -> None:
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))


@report_unfinished_sweep
@hydra.main(version_base="1.3", config_path="pkg://fcn.conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; a user error ends with its message alone and exit status 1 (in a
    multirun: the job is recorded as failed and the sweep goes on)."""
    return train(cfg)


if __name__ == "__main__":
    main()
