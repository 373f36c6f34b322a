"""The layers stay visible: the network and the checkpoint format need neither Lightning nor
Hydra, and the commands are the package's top-level modules."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

FRAMEWORKS = ("pytorch_lightning", "lightning", "lightning_fabric", "hydra", "omegaconf")


def test_models_and_the_checkpoint_format_import_no_framework() -> None:
    code = (
        "import sys, fcn.models, fcn.models.weights, fcn.checkpoint, fcn.scores, fcn.files\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"


def test_training_only_code_lives_in_its_subpackage() -> None:
    top = {p.stem for p in (REPO / "fcn").glob("*.py")}
    commands = {"train", "evaluate", "predict", "export", "figure", "compare", "resume"}
    assert commands <= top
    assert not top & {"module", "metrics", "optim", "callbacks", "tracking"}
    training = {p.stem for p in (REPO / "fcn" / "training").glob("*.py")}
    assert {"module", "metrics", "optim", "callbacks", "tracking"} <= training
