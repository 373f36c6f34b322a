"""wandb never prompts, blocks or fails a run: offline without an account or a network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fcn.training.tracking import finish_wandb, resolve_wandb_mode, start_loggers, wandb_logger


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    from hydra.core.hydra_config import HydraConfig

    # no Hydra job: an earlier test's composed config would name and tag the runs built here
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    return tmp_path


def test_auto_is_offline_without_credentials(clean_env: Path) -> None:
    assert resolve_wandb_mode("auto") == "offline"


def test_auto_is_online_after_wandb_login(clean_env: Path) -> None:
    (clean_env / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40)
    (clean_env / ".netrc").chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"


def test_explicit_choices_win(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="logger.wandb.mode"):
        resolve_wandb_mode("sometimes")


def test_online_run_that_cannot_connect_falls_back_to_offline(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Credentials, but the server (a closed loopback port) cannot be reached.
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "8")
    logger = wandb_logger(save_dir=str(clean_env / "run"))
    assert logger._wandb_init["mode"] == "online"
    try:
        [started] = start_loggers([logger])
        assert started._wandb_init["mode"] == "offline"
        started.log_metrics({"val/mIoU": 0.5})
    finally:
        finish_wandb()
    assert len(list((clean_env / "run" / "wandb").glob("offline-run-*"))) == 1


def _folder_with_run(root: Path, folder: str, synced: bool = False) -> Path:
    """A run folder whose ``wandb/`` holds one earlier wandb run (``folder``) and the record of
    its name, group and tags."""
    save_dir = root / "run"
    run = save_dir / "wandb" / folder
    run.mkdir(parents=True)
    (run / f"run-{folder.rsplit('-', 1)[1]}.wandb").touch()
    if synced:
        (run / f"run-{folder.rsplit('-', 1)[1]}.wandb.synced").touch()
    record = {"name": "fcn8", "group": "variants", "tags": ["quickstart"]}
    (save_dir / "wandb" / "fcn-run.json").write_text(json.dumps(record))
    return save_dir


@pytest.mark.parametrize(
    ("folder", "synced", "mode", "same_run"),
    [
        ("run-20260101_000000-abc", False, "online", True),  # online before: on the server
        ("offline-run-20260101_000000-abc", True, "online", True),  # synced since
        ("offline-run-20260101_000000-abc", False, "online", False),  # not uploaded yet
        ("run-20260101_000000-abc", False, "offline", False),  # offline runs ignore resume
    ],
)
def test_a_continuation_appends_to_its_run_only_online_to_an_uploaded_run(
    clean_env: Path, folder: str, synced: bool, mode: str, same_run: bool
) -> None:
    save_dir = _folder_with_run(clean_env, folder, synced)
    logger = wandb_logger(save_dir=str(save_dir), mode=mode, resuming_from="missing.ckpt")
    init = logger._wandb_init
    if same_run:
        assert (init["id"], init["resume"], init["name"]) == ("abc", "allow", None)
    else:
        assert init["id"] != "abc"
        assert init["name"] == "fcn8 (resumed at its last checkpoint)"
        assert (init["group"], init["tags"]) == ("variants", ["quickstart", "resumed"])


def test_a_continuation_that_cannot_go_online_becomes_a_new_run(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed port
    save_dir = _folder_with_run(clean_env, "run-20260101_000000-abc")
    logger = wandb_logger(save_dir=str(save_dir), mode="online", resuming_from="missing.ckpt")
    assert logger._wandb_init["id"] == "abc"
    [offline] = start_loggers([logger])
    assert offline._wandb_init["mode"] == "offline" and offline._wandb_init["id"] != "abc"
    assert offline._wandb_init["name"] == "fcn8 (resumed at its last checkpoint)"


def test_log_model_takes_false_true_or_all(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert wandb_logger(save_dir=str(clean_env), mode="offline")._log_model is False
    assert wandb_logger(save_dir=str(clean_env), mode="offline", log_model=True)._log_model is True
    with caplog.at_level("WARNING"):
        assert wandb_logger(save_dir=str(clean_env), mode="offline", log_model="all")._log_model
    assert "storage grows with every epoch" in caplog.text
    with pytest.raises(ValueError, match="logger.wandb.log_model"):
        wandb_logger(save_dir=str(clean_env), mode="offline", log_model="best")
