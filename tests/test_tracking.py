"""wandb never prompts, blocks or fails a run: offline without an account or a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from fcn.training.tracking import finish_wandb, resolve_wandb_mode, start_loggers, wandb_logger


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
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
