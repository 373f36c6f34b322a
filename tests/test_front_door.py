"""The README's two commands are the project's front door; CI runs the test one verbatim."""

from __future__ import annotations

import re
from importlib.metadata import version

from tests.conftest import REPO


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_starts_with_the_install_and_run_and_the_test_commands() -> None:
    run, test = _readme_commands()
    assert "constraints.txt" in run and "python -m fcn.train experiment=quickstart" in run
    assert "constraints.txt" in test and '".[dev]"' in test and test.endswith("-m pytest")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, test = _readme_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci


def test_the_environment_runs_the_torch_that_constraints_pin() -> None:
    """The README's install commands took torch and torchvision from constraints.txt."""
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    assert set(pins) == {"torch", "torchvision"}
    for name, pinned in pins.items():
        assert version(name).split("+")[0] == pinned, name
