"""The network is touched only by an online wandb run: no update check on import, no reports
from an offline run, and a wandb server that cannot be reached costs seconds, not minutes, with
one clear line saying what happens. Only loopback addresses are used."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcn.training.tracking import has_wandb_credentials, probe_address, reachable, wandb_logger
from tests.conftest import REPO, TINY, run_train

FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex characters, known to no server

#: Python run first in a subprocess: every name lookup and every connection to a non-loopback
#: address is recorded and refused; the record is written to $NETWORK_LOG at exit, after the
#: exit handlers of the libraries (registered later, so run earlier).
GUARD = """
import atexit, ipaddress, os, socket, traceback
attempts = []
def _remote(family, host):
    if family not in (socket.AF_INET, socket.AF_INET6, None) or host is None:
        return False
    host = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"
def _guard(what, real, family_and_host):
    def guarded(*args, **kwargs):
        family, host = family_and_host(*args, **kwargs)
        if _remote(family, host):
            stack = "".join(traceback.format_stack(limit=30)[:-1])
            attempts.append(f"{what} {host!r}\\n{stack}")
            raise OSError(f"network refused by the test: {what} {host!r}")
        return real(*args, **kwargs)
    return guarded
S = socket.socket
S.connect = _guard("connect", S.connect, lambda s, a: (s.family, a[0]))
S.connect_ex = _guard("connect_ex", S.connect_ex, lambda s, a: (s.family, a[0]))
socket.getaddrinfo = _guard("getaddrinfo", socket.getaddrinfo, lambda host, *a, **k: (None, host))
def _report():
    with open(os.environ["NETWORK_LOG"], "w") as f:
        f.write("\\n".join(attempts))
atexit.register(_report)
"""

ENTRY_POINTS = ["train", "evaluate", "predict", "export", "figure", "resume", "compare"]


def _guarded(code: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``GUARD + code`` in a fresh interpreter; (exit status, output, recorded attempts)."""
    log = cwd / "network.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NO_ALBU"))}
    full_env.update(HOME=str(cwd), NETWORK_LOG=str(log), PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-c", GUARD + code], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr, log.read_text() if log.exists() else "?"


def test_imports_and_an_offline_training_run_open_no_connection(tmp_path: Path) -> None:
    # One fresh interpreter: the imports first (albumentations asks PyPI for its latest version
    # on import unless NO_ALBUMENTATIONS_UPDATE), then the real entry point, logging to wandb
    # offline (no credentials): wandb's reports of its own use would otherwise look up its
    # server at exit.
    imports = "; ".join(f"import fcn.{e}" for e in ENTRY_POINTS)
    args = [*TINY, "logger=wandb", "hydra.run.dir=run"]
    code = (
        f"import fcn.data.transforms; import albumentations; {imports}\n"
        "print('imported', flush=True)\n"
        "import sys\n"
        f"sys.argv = ['fcn/train.py', *{args!r}]\n"
        "fcn.train.main()  # as python -m fcn.train runs it\n"
    )
    status, output, attempts = _guarded(code, tmp_path, {"WANDB_DISABLE_CODE": "true"})
    assert status == 0, output[-3000:]
    assert "Error fetching version info" not in output
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert attempts == "", f"connection attempts on import or during an offline run:\n{attempts}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


def test_probe_tells_a_listening_server_from_a_closed_port(silent_server: int) -> None:
    assert reachable(f"http://127.0.0.1:{silent_server}") is None
    why = reachable(f"http://127.0.0.1:{_closed_port()}", timeout=3)
    assert why is not None and "refused" in why.lower()


def test_probe_goes_to_the_proxy_except_for_loopback_and_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("WANDB_HTTPS_PROXY", raising=False)
    assert probe_address("https://api.example.org") == ("api.example.org", 443)
    assert probe_address("http://127.0.0.1:8080") == ("127.0.0.1", 8080)
    monkeypatch.setenv("https_proxy", "http://proxy.example.org:3128")
    assert probe_address("https://api.example.org") == ("proxy.example.org", 3128)
    assert probe_address("https://127.0.0.1:8443") == ("127.0.0.1", 8443)
    monkeypatch.setenv("no_proxy", "example.org")
    assert probe_address("https://api.example.org") == ("api.example.org", 443)
    monkeypatch.setenv("WANDB_HTTPS_PROXY", "wandbproxy.example.org:8000")
    assert probe_address("https://wandb.example.com") == ("wandbproxy.example.org", 8000)


def test_init_timeout_reaches_wandb_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)  # set by an offline logger
    assert wandb_logger(save_dir=str(tmp_path), mode="offline")._wandb_init["settings"] == {
        "init_timeout": 20.0
    }
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "7")
    logger = wandb_logger(save_dir=str(tmp_path), mode="offline", settings={"quiet": True})
    assert logger._wandb_init["settings"] == {"init_timeout": 7.0, "quiet": True}
    logger = wandb_logger(save_dir=str(tmp_path), mode="offline", init_timeout=3)
    assert logger._wandb_init["settings"]["init_timeout"] == 3.0


def test_wandb_login_to_the_default_server_counts_as_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # wandb 0.31 logs in to https://api.forge.coreweave.com: its ~/.netrc entry names that host
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    import wandb

    host = wandb.Settings().base_url.split("://", 1)[1]
    (tmp_path / ".netrc").write_text(f"machine {host}\n  login user\n  password {FAKE_KEY}\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert has_wandb_credentials()


def _output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def test_an_unreachable_wandb_server_falls_back_to_offline_in_seconds(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    env = {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": url}
    start = time.monotonic()
    proc = run_train([*TINY, "logger=wandb", "hydra.run.dir=run"], tmp_path, env=env)
    elapsed = time.monotonic() - start
    out = _output(proc)
    assert proc.returncode == 0, out[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"  # wandb alone waits 90 s before giving up
    assert f"wandb: connecting to {url} (logger.wandb.init_timeout=20 s; falls back" in out
    assert f"wandb: cannot reach {url} (Connection refused); falling back to offline" in out
    assert out.count("falling back to offline") == 1
    runs = list((tmp_path / "run" / "wandb").glob("*run-*"))
    assert [r.name.split("-")[0] for r in runs if r.is_dir()] == ["offline"]


def test_a_server_that_never_answers_is_left_after_init_timeout(
    tmp_path: Path, silent_server: int
) -> None:
    url = f"http://127.0.0.1:{silent_server}"
    env = {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": url}
    args = [*TINY, "logger=wandb", "logger.wandb.init_timeout=3", "hydra.run.dir=run"]
    start = time.monotonic()
    proc = run_train(args, tmp_path, env=env)
    elapsed = time.monotonic() - start
    out = _output(proc)
    assert proc.returncode == 0, out[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert "(logger.wandb.init_timeout=3 s; falls back to offline)" in out
    assert "wandb could not go online" in out and "falling back to offline" in out
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
