"""Continue a killed run in its own folder: ``python -m fcn.resume <run folder>``.

Runs ``python -m fcn.train`` again with the run's own overrides (``.hydra/overrides.yaml``),
``ckpt_path=<run>/checkpoints/last.ckpt`` and ``hydra.run.dir=<run>``: the same folder, the same
checkpoints, ``metrics.json`` history kept. wandb: online, with every earlier part of the folder's
wandb run on the server, the same wandb run goes on; otherwise (offline, or an offline part not
synced yet: wandb ignores ``resume`` offline and ``wandb sync`` cannot append one folder of a run
to another) a new run of the same group, named ``<name> (resumed at epoch k)`` and tagged
``resumed``; the run ends by printing the ``wandb sync`` command for the folder's offline runs.
Extra ``key=value`` arguments are added, e.g. ``trainer.max_epochs=40`` to go on longer
(a finished run is refused without a larger ``trainer.max_epochs``: its history is kept).
The overrides read from the folder may not choose code to run (:func:`read_overrides`).
With a seed set, the random streams and the shuffle order continue from the checkpoint, so the
result equals an uninterrupted run's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fcn.errors import DataError

#: Set for the ``fcn.train`` that ``fcn.resume`` starts: its options come from a file
#: (``.hydra/overrides.yaml``), so it builds only fcn's own components (see
#: :func:`fcn.stored_config.check_run_targets`).
RESUME_SOURCE_ENV = "FCN_OPTIONS_FROM_FILE"
#: Keys through which an override would choose code to run.
CODE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def _quoted(value: Path) -> str:
    """A path as a Hydra override value (quoted: paths may hold = , or spaces)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_command(run: Path, extra: list[str]) -> list[str]:
    """The ``fcn.train`` command line that continues ``run``."""
    run = run.expanduser().resolve()
    overrides_file = run / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise DataError(f"{run} is not a run folder of fcn.train (no .hydra/overrides.yaml)")
    checkpoint = run / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise DataError(
            f"{checkpoint} does not exist: the run ended before its first checkpoint; start it "
            "again instead"
        )
    overrides = [
        o for o in read_overrides(overrides_file)
        if not o.lstrip("+~").startswith(("ckpt_path=", "overwrite="))
    ]  # fmt: skip
    return [
        sys.executable, "-m", "fcn.train", *overrides, *extra,
        f"ckpt_path={_quoted(checkpoint)}", f"hydra.run.dir={_quoted(run)}",
    ]  # fmt: skip


def read_overrides(path: Path) -> list[str]:
    """The overrides a run was started with, refused (naming the file and the override) when
    one would choose code to run or change Hydra itself: a run folder's file never does."""
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise DataError(f"{path} is not a list of overrides (key=value strings)")
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise DataError(f"{path}: {str(err).splitlines()[0]}") from None
    for text, override in zip(overrides, parsed, strict=True):
        parts = override.key_or_group.replace("/", ".").split(".")
        if (
            parts[0] == "hydra"
            or any(p in CODE_KEYS for p in parts)
            or _names_code(override.value())
        ):
            raise DataError(
                f"{path}: the override {text!r} would choose code to run or change Hydra "
                "itself, which a run folder's file may not do: refused"
            )
    return overrides


def _names_code(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(k in CODE_KEYS or _names_code(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_names_code(v) for v in value)
    return False


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if args else 2)
    try:
        command = resume_command(Path(args[0]), args[1:])
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print("resuming:", " ".join(command[1:]), flush=True)
    env = dict(os.environ, **{RESUME_SOURCE_ENV: str(Path(args[0]) / ".hydra" / "overrides.yaml")})
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    main()
