"""Continue a killed or finished run in its own folder: ``python -m fcn.resume <run folder>``.

Runs ``python -m fcn.train`` again with the run's own overrides (``.hydra/overrides.yaml``),
``ckpt_path=<run>/checkpoints/last.ckpt`` and ``hydra.run.dir=<run>``: the same folder, the same
checkpoints, ``metrics.json`` history kept, and the same wandb run (its id is found in the
folder). Extra ``key=value`` arguments are added, e.g. ``trainer.max_epochs=40`` to go on longer.
With a seed set, the random streams and the shuffle order continue from the checkpoint, so the
result equals an uninterrupted run's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from fcn.errors import DataError


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
        o for o in yaml.safe_load(overrides_file.read_text()) or []
        if not o.lstrip("+~").startswith("ckpt_path=")
    ]  # fmt: skip
    return [
        sys.executable, "-m", "fcn.train", *overrides, *extra,
        f"ckpt_path={_quoted(checkpoint)}", f"hydra.run.dir={_quoted(run)}",
    ]  # fmt: skip


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
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
