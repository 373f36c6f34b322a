"""Weights & Biases that never prompts, never blocks and finishes each job's run."""

from __future__ import annotations

import configparser
import ipaddress
import logging
import netrc
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from fcn.run_folder import is_secondary_process
from fcn.training.model_artifacts import ALL_WARNING, CheckpointArtifactsLogger, check_log_model
from fcn.training.wandb_runs import (
    RESUMED_TAG,
    continuation,
    folder_run_id,
    is_uploaded,
    not_appendable,
    previous_run_id,
    read_run_record,
    resumed_epoch,
    run_folders,
    sync_commands,
    write_run_record,
)

log = logging.getLogger(__name__)
WANDB_MODES = ("auto", "online", "offline", "disabled")
#: Overrides that never name a run (a resumed run keeps its name).
UNNAMED_KEYS = ("ckpt_path",)
#: Seconds ``wandb.init`` may wait for the server when ``logger.wandb.init_timeout`` is not given
#: (wandb's own default is 90).
INIT_TIMEOUT = 20.0
#: Seconds the reachability check of the wandb server may take before a run goes offline.
PROBE_TIMEOUT = 3.0


def wandb_base_url() -> str:
    """The server an online run talks to: $WANDB_BASE_URL, else the one ``wandb login --host``
    saved in wandb's settings file, else wandb's default."""
    if url := os.environ.get("WANDB_BASE_URL"):
        return url
    folder = os.environ.get("WANDB_CONFIG_DIR") or os.path.expanduser("~/.config/wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(os.path.join(folder, "settings"))
        url = parser.get("default", "base_url", fallback=None)
    except configparser.Error:
        url = None
    if url:
        return url
    import wandb

    return wandb.Settings().base_url


def _netrc_hosts(url: str) -> set[str]:
    """The ~/.netrc machine names wandb accepts for the server at ``url``."""
    urls = [url]
    try:  # a CoreWeave Forge address (wandb >= 0.26's default) also reads api.wandb.ai's entry
        from wandb.sdk.lib.urls import forge_upstream_url

        urls.append(forge_upstream_url(url))
    except ImportError:
        pass
    return {name for u in urls for name in (urlparse(u).netloc, urlparse(u).hostname) if name}


def has_wandb_credentials() -> bool:
    """True when an API key is in the environment or in ~/.netrc (``wandb login`` puts it there)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        entries = netrc.netrc()
    except (OSError, netrc.NetrcParseError):
        return False
    return any(entries.authenticators(host) for host in _netrc_hosts(wandb_base_url()))


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe_address(url: str) -> tuple[str, int]:
    """(host, port) that a connection to ``url`` opens first: its proxy's when one is set
    ($HTTPS_PROXY / $HTTP_PROXY or WANDB_HTTPS_PROXY / WANDB_HTTP_PROXY, not for loopback or
    $NO_PROXY hosts, as wandb's Go service does), else its own."""
    parsed = urlparse(url)
    scheme = parsed.scheme or "https"
    host = parsed.hostname or ""
    proxy = os.environ.get(f"WANDB_{scheme.upper()}_PROXY") or urllib.request.getproxies().get(
        scheme
    )
    if proxy and not _is_loopback(host) and not urllib.request.proxy_bypass(host):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        scheme, host = parsed.scheme, parsed.hostname or ""
    return host, parsed.port or (443 if scheme == "https" else 80)


def reachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a TCP connection to the server at ``url`` (or its proxy) opens within
    ``timeout`` seconds (name lookup included), else why not."""
    host, port = probe_address(url)
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err.strerror or str(err) or type(err).__name__)

    thread = threading.Thread(target=attempt, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:g} s"


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


def wandb_logger(
    project: str = "fcn",
    save_dir: str = ".",
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    resuming_from: str | None = None,
    init_timeout: float | None = None,
    log_model: bool | str = False,
    **kwargs,
) -> WandbLogger:
    """A WandbLogger whose run lives in ``save_dir/wandb`` and is offline without credentials.

    Name and group default to the Hydra job's swept overrides (``fcn8``; all overrides for a
    single run) and the multirun sweep folder's name, so every job of a sweep is its own run in
    one group. The chosen experiment, model and data are added to ``tags``.

    ``resuming_from`` (the run's ``ckpt_path``): a run continued in a folder that already holds
    a wandb run goes on in that wandb run (same id) when it logs online and every earlier part
    of that run is on the server (logged online, or synced). Otherwise (offline, or an earlier
    offline part not synced yet) it is a new run of the same group and tags, named
    ``<name> (resumed at epoch k)`` and tagged ``resumed``: wandb ignores ``resume`` offline
    and ``wandb sync`` does not append a second folder of one run id to the first, so only a
    new id keeps every logged point.

    ``init_timeout``: seconds ``wandb.init`` may wait for the server before the run falls back
    to offline (None: $WANDB_INIT_TIMEOUT, else 20). ``log_model``: false (nothing), true (the
    best and the last checkpoint once, at the end of a successful training) or ``all`` (every
    checkpoint as it is saved; see :mod:`fcn.training.model_artifacts`).
    """
    resolved = resolve_wandb_mode(mode)
    log_model = check_log_model(log_model)
    if log_model == "all":
        log.warning(ALL_WARNING)
    if init_timeout is None:
        init_timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT)
    settings = kwargs.get("settings")
    if settings is None or isinstance(settings, Mapping):  # a wandb.Settings is used as given
        # a dict, not a wandb.Settings: wandb.init builds a new Settings from it on each call
        # (it changes a Settings object it is given), so the offline fallback can reuse it
        kwargs["settings"] = {"init_timeout": float(init_timeout), **(settings or {})}
    job_name, job_group, job_tags = _job_context()
    record = read_run_record(save_dir) if resuming_from else {}
    name = name or record.get("name") or job_name
    group = group or record.get("group") or job_group
    tags = list(dict.fromkeys([*tags, *job_tags, *record.get("tags", [])]))
    tags = [t for t in tags if t != RESUMED_TAG]
    previous = previous_run_id(save_dir) if resuming_from else None
    offline_run = None  # the run's continuation should an online run fall back to offline
    same_run = False
    if previous and "id" not in kwargs and resolved != "disabled":
        new_run = continuation(previous, name, group, tags, resumed_epoch(resuming_from))
        earlier = [f for f in run_folders(Path(save_dir) / "wandb") if folder_run_id(f) == previous]
        if resolved == "online" and all(is_uploaded(f) for f in earlier):
            kwargs.update(id=previous, resume="allow")  # the same run, continued on the server
            same_run, offline_run = True, new_run
        else:
            kwargs.update(new_run)
            log.info(
                "wandb: run %s of this folder is %s, so this continuation is a new run %s "
                "(%r, group %r)", previous, not_appendable(earlier, resolved), new_run["id"],
                new_run["name"], new_run["group"],
            )  # fmt: skip
    if resolved != "disabled":
        write_run_record(save_dir, name, group, tags)
    os.makedirs(save_dir, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if resolved != "online":
        _no_wandb_telemetry()
    if same_run:  # keep the name and group the server has
        name = group = None
    name, group, tags = (
        kwargs.pop("name", name),
        kwargs.pop("group", group),
        kwargs.pop("tags", tags),
    )
    logger = CheckpointArtifactsLogger(
        project=project,
        save_dir=save_dir,
        mode=resolved,
        name=name,
        group=group,
        tags=list(tags),
        log_model=log_model,
        **kwargs,
    )
    logger._fcn_offline_run = offline_run
    return _without_anonymous(logger)


def _without_anonymous(logger: WandbLogger) -> WandbLogger:
    if logger._wandb_init.get("anonymous") is None:  # wandb warns about the unused setting
        logger._wandb_init.pop("anonymous", None)
    return logger


def _no_wandb_telemetry() -> None:
    """Keep wandb's own usage and error reports (sent to the wandb server at the end of a run,
    offline runs included) off the network; set before the first ``wandb.init``."""
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def _drop_wandb_reports() -> None:
    """After a failed online start: drop wandb's usage reports, which it would otherwise send
    to the same unresponsive server at exit (up to 10 s a request)."""
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy as reports
    except ImportError:  # another wandb version
        return
    reports.disable()
    if hasattr(reports, "_check_server_supports_open_telemetry_proxy"):  # wandb 0.31: the
        # question each run's reporter asks the server once, before its first report
        reports._check_server_supports_open_telemetry_proxy = lambda *args: False


def _offline(logger: WandbLogger) -> WandbLogger:
    """The same run, logged offline into its ``<save_dir>/wandb``; a continuation of an online
    run becomes a new run (offline runs cannot append to one)."""
    _no_wandb_telemetry()
    init = dict(logger._wandb_init, mode="offline")
    new_run = getattr(logger, "_fcn_offline_run", None)
    if new_run:
        init.update(new_run)
        log.info("wandb: this continuation is a new run %s (%r)", new_run["id"], new_run["name"])
    offline = type(logger)(
        save_dir=init.pop("dir"),
        log_model=logger._log_model,
        prefix=logger._prefix,
        checkpoint_name=logger._checkpoint_name,
        add_file_policy=logger.add_file_policy,
        **init,
    )
    offline._fcn_offline_run = None
    return _without_anonymous(offline)


def _go_online(logger: WandbLogger) -> WandbLogger:
    """Start an online run, or say why not and return the same run offline. Only the job's
    global rank zero starts one: any other process returns ``logger`` untouched (the Trainer,
    once built, gives it wandb's dummy run)."""
    if not is_global_zero():
        return logger
    url = wandb_base_url()
    settings = logger._wandb_init.get("settings") or {}
    if not isinstance(settings, Mapping):  # a wandb.Settings
        settings = {"init_timeout": settings.init_timeout}
    timeout = settings.get("init_timeout", 90.0)  # 90: wandb's default
    log.info(
        "wandb: connecting to %s (logger.wandb.init_timeout=%g s; falls back to offline)",
        url,
        timeout,
    )
    if why := reachable(url):
        where = os.path.join(logger._wandb_init["dir"], "wandb")
        log.warning(
            "wandb: cannot reach %s (%s); falling back to offline, into %s (upload it later: "
            "wandb sync %s/offline-run-*)",
            *(url, why, where, where),
        )
        return _offline(logger)
    try:
        logger.experiment  # noqa: B018 - starts the run (rank zero only)
    except Exception as err:  # wandb raises many types when the service is unreachable
        log.warning("wandb could not go online (%s); falling back to offline", err)
        _drop_wandb_reports()
        return _offline(logger)
    return logger


def is_global_zero() -> bool:
    """True in the process that is (or will be) the job's global rank zero, before a Trainer
    exists. Lightning's ``rank_zero_only.rank`` reads RANK, LOCAL_RANK and SLURM_PROCID at
    import but not NODE_RANK, so under Lightning's own multi-node launch the main process of
    every node would pass for rank zero until the Trainer sets the ranks: a node's rank
    (NODE_RANK) counts too (:func:`fcn.run_folder.is_secondary_process`)."""
    return rank_zero_only.rank == 0 and not is_secondary_process()


def start_loggers(loggers: list[Logger]) -> list[Logger]:
    """Start each wandb run now, on the job's global rank zero only (every node's main process
    runs this before the Trainer exists); an online run whose server cannot be reached (a TCP
    check of a few seconds) or whose ``wandb.init`` fails or times out falls back to offline."""
    return [
        _go_online(logger)
        if isinstance(logger, WandbLogger) and logger._wandb_init.get("mode") == "online"
        else logger
        for logger in loggers
    ]


def finish_wandb(exit_code: int = 0) -> None:
    """Close this process's wandb run, so that the next multirun job starts a new one.
    ``exit_code``: nonzero marks the run failed (a job that raised). Then log the ``wandb sync``
    command that uploads the offline runs of the run's folder not synced yet, if any."""
    import wandb

    run = wandb.run
    if run is None:
        return
    try:
        wandb_dir = Path(run.settings.sync_dir).parent if run.settings.mode != "disabled" else None
    except (AttributeError, TypeError, ValueError):
        wandb_dir = None
    wandb.finish(exit_code=exit_code)
    commands = sync_commands([wandb_dir]) if wandb_dir and rank_zero_only.rank == 0 else []
    if commands:
        log.info(
            "wandb: offline runs not uploaded yet; after `wandb login`, upload them with:\n%s",
            "\n".join(f"  {c}" for c in commands),
        )
