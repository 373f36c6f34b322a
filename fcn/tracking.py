"""Weights & Biases that never prompts, never blocks and finishes each job's run."""

from __future__ import annotations

import glob
import logging
import netrc
import os
import re
from collections.abc import Sequence
from urllib.parse import urlparse

from pytorch_lightning.loggers import Logger, WandbLogger

log = logging.getLogger(__name__)
WANDB_MODES = ("auto", "online", "offline", "disabled")
#: Overrides that never name a run (a resumed run keeps its name).
UNNAMED_KEYS = ("ckpt_path",)


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


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept_keys(sweep_dir: str) -> set[str] | None:
    """The keys a multirun sweeps (given several values, a range or a sweeper's choice), read
    from the sweep's ``multirun.yaml``; None when it cannot be read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        hydra = OmegaConf.load(os.path.join(sweep_dir, "multirun.yaml")).hydra
        parsed = OverridesParser.create().parse_overrides(list(hydra.overrides.task))
    except Exception:  # a missing or foreign file: fall back to every override
        return None
    searched = (hydra.get("sweeper") or {}).get("params") or {}  # e.g. the Optuna sweeper's
    return {o.key_or_group for o in parsed if o.is_sweep_override()} | set(searched)


def run_name(overrides: Sequence[str], groups: Sequence[str], keep: set[str] | None) -> str | None:
    """A short run name from a job's overrides: a group's choice as its value (``fcn8``), any
    other key as ``<last part>=<value>`` (``lr=0.001``). ``keep``: only these keys (the swept
    ones of a multirun); None: all."""
    parts = []
    for override in overrides:
        key, value = _split(override)
        if (keep is not None and key not in keep) or key in UNNAMED_KEYS:
            continue
        parts.append(value if key in groups else f"{key.rsplit('.', 1)[-1]}={value}")
    name = re.sub(r"[^\w=,.+-]+", "_", ",".join(parts))
    return name or None


def _job_context() -> tuple[str | None, str | None, list[str]]:
    """(name from the job's overrides, group from the sweep folder, tags from the chosen
    experiment, model and data) when run under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None, []
    choices = {k: v for k, v in hc.runtime.choices.items() if v is not None}
    multirun = hc.mode == RunMode.MULTIRUN
    keep = swept_keys(hc.sweep.dir) if multirun else None
    name = run_name(list(hc.overrides.task), list(choices), keep)
    if multirun and name is None:
        name = f"job{hc.job.num}"
    group = os.path.basename(os.path.normpath(hc.sweep.dir)) if multirun else None
    tags = [choices[g] for g in ("experiment", "model", "data") if g in choices]
    return name, group, tags


def previous_run_id(save_dir: str) -> str | None:
    """The id of the wandb run already in ``save_dir/wandb`` (a resumed run folder), or None."""
    runs = sorted(glob.glob(os.path.join(save_dir, "wandb", "*run-*-*")), key=os.path.getmtime)
    runs = [r for r in runs if os.path.isdir(r) and not os.path.islink(r)]
    return runs[-1].rsplit("-", 1)[1] if runs else None


def wandb_logger(
    project: str = "fcn",
    save_dir: str = ".",
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    resuming_from: str | None = None,
    **kwargs,
) -> WandbLogger:
    """A WandbLogger whose run lives in ``save_dir/wandb`` and is offline without credentials.

    Name and group default to the Hydra job's swept overrides (``fcn8``; all overrides for a
    single run) and the multirun sweep folder's name, so every job of a sweep is its own run in
    one group. The chosen experiment, model and data are added to ``tags``. ``resuming_from``
    (the run's ``ckpt_path``): a run continued in a folder that already holds a wandb run goes
    on in that wandb run.
    """
    resolved = resolve_wandb_mode(mode)
    job_name, job_group, job_tags = _job_context()
    previous = previous_run_id(save_dir) if resuming_from else None
    if previous and "id" not in kwargs:  # the run folder's own run, continued (fcn.resume)
        kwargs.update(id=previous, resume="allow")
        job_name = job_group = None  # keep the name and group it was given
    os.makedirs(save_dir, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    logger = WandbLogger(
        project=project,
        save_dir=save_dir,
        mode=resolved,
        name=name or job_name,
        group=group or job_group,
        tags=list(dict.fromkeys([*tags, *job_tags])),
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
