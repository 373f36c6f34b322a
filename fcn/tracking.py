"""Weights & Biases that never prompts, never blocks and finishes each job's run."""

from __future__ import annotations

import logging
import netrc
import os
import re
from collections.abc import Sequence
from urllib.parse import urlparse

from pytorch_lightning.loggers import Logger, WandbLogger

log = logging.getLogger(__name__)
WANDB_MODES = ("auto", "online", "offline", "disabled")


def has_wandb_credentials() -> bool:
    """True when an API key is in the environment or in ~/.netrc (``wandb login`` puts it there)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` becomes $WANDB_MODE if set, else online with credentials, else offline."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode must be one of {list(WANDB_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env in ("dryrun", "run"):
        return "offline" if env == "dryrun" else "online"
    return "online" if has_wandb_credentials() else "offline"


def _job_context() -> tuple[str | None, str | None]:
    """(name from the job's overrides, group from the sweep folder) when run under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None
    name = re.sub(r"[^\w=,.+-]+", "_", hc.job.override_dirname) or None
    group = (
        os.path.basename(os.path.normpath(hc.sweep.dir)) if hc.mode == RunMode.MULTIRUN else None
    )
    return name, group


def wandb_logger(
    project: str = "fcn",
    save_dir: str = ".",
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    **kwargs,
) -> WandbLogger:
    """A WandbLogger whose run lives in ``save_dir/wandb`` and is offline without credentials.

    Name and group default to the Hydra job's overrides and the multirun sweep folder, so every
    job of a sweep is its own run in one group.
    """
    resolved = resolve_wandb_mode(mode)
    job_name, job_group = _job_context()
    os.makedirs(save_dir, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    logger = WandbLogger(
        project=project,
        save_dir=save_dir,
        mode=resolved,
        name=name or job_name,
        group=group or job_group,
        tags=list(tags),
        **kwargs,
    )
    if logger._wandb_init.get("anonymous") is None:  # wandb warns about the unused setting
        logger._wandb_init.pop("anonymous")
    return logger


def start_loggers(loggers: list[Logger]) -> list[Logger]:
    """Start each wandb run now; an online run that cannot start falls back to offline."""
    started = []
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._wandb_init.get("mode") == "online":
            try:
                logger.experiment  # noqa: B018 - starts the run (rank zero only)
            except Exception as err:  # wandb raises many types when the service is unreachable
                log.warning("wandb could not go online (%s); logging offline instead", err)
                init = dict(logger._wandb_init, mode="offline")
                logger = WandbLogger(save_dir=init.pop("dir"), **init)
        started.append(logger)
    return started


def finish_wandb() -> None:
    """Close this process's wandb run, so that the next multirun job starts a new one."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
