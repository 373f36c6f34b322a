"""Segment images: ``python -m fcn.predict ckpt_path=<file> input=<image or folder>``.

Writes, for every image, its predicted classes as a palette PNG (``masks/``, pixel values are
the class indices, colours the classes' own) and an overlay of the class colours on the image
(``overlays/``), both at the image's own size, keeping the input folder's sub-folders.
Images are scored whole, or in windows (``window``, ``stride``, for images too large for the
device's memory) and with flips (``flip``), as :class:`fcn.models.tiling.TiledScorer` does.
Unreadable images are named, skipped, and make the exit status 1 once every other image is done.

Nothing of the user's is replaced: an output that would replace an input is refused, and so are
existing outputs (of an earlier run into the same ``output_dir``) unless ``overwrite=true``; both
are checked before any image is scored. Each run lists its outputs in ``predict.json`` in its
output folder, and a folder search skips the files such a list names (and the run's own output
folder when it lies inside the input folder), so outputs are never read as inputs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from fcn.data.readers import read_image
from fcn.errors import ConfigError, DataError, exit_on_user_error, first_few
from fcn.files import ensure_folder, write_text
from fcn.inference import (
    load_model,
    pick_device,
    predict_mask,
    scoring_precision,
    tiling_options,
)
from fcn.models.tiling import TiledScorer
from fcn.viz import mask_image, overlay, save_png

log = logging.getLogger("fcn.predict")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: The list of a run's outputs, written into its output folder.
MANIFEST = "predict.json"
OUTPUT_KINDS = ("masks", "overlays")
#: Names of a class 0 that is the background (left untinted on overlays).
BACKGROUND_NAMES = ("background", "_background_", "bg")


def read_manifest(folder: Path) -> set[str]:
    """The outputs (paths relative to ``folder``) its ``predict.json`` lists, none without one;
    a ``predict.json`` that is not such a list is a DataError."""
    path = folder / MANIFEST
    if not (path.exists() or path.is_symlink()):
        return set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("written_by") == "fcn.predict":
            return {str(name) for name in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise DataError(f"{path} is not a list of fcn.predict's outputs")


def find_images(input_path: Path, output_dir: Path | None = None) -> tuple[Path, list[Path]]:
    """``(base folder, images)``: the file itself, or every image under a folder, sorted.

    A folder search skips the files listed by the ``predict.json`` files it meets and
    ``output_dir`` when it lies inside the folder. Entries that only look like images (broken
    links, link loops) are kept, to be named when read. Two images that would write the same
    output name (``a.jpg`` and ``a.png`` side by side) are refused, naming both.
    """
    if not input_path.is_dir():
        if not (input_path.exists() or input_path.is_symlink()):
            raise DataError(f"input not found: {input_path}")
        return input_path.parent, [input_path]
    own = output_dir.resolve() if output_dir is not None else None
    outputs: set[Path] = set()
    images = []
    for folder, subfolders, files in os.walk(input_path):
        here = Path(folder)
        try:
            outputs.update(here / name for name in read_manifest(here))
        except DataError as err:
            log.warning("%s: ignored", err)
        subfolders[:] = [d for d in subfolders if (here / d).resolve() != own]
        images += [
            here / name
            for name in files
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and here / name not in outputs
        ]
    images.sort()
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {input_path}")
    seen: dict[Path, Path] = {}
    for path in images:
        name = path.relative_to(input_path).with_suffix(".png")
        if name in seen:
            raise DataError(f"{seen[name]} and {path} would both be written as {name}")
        seen[name] = path
    return input_path, images


def plan_outputs(
    base: Path, images: list[Path], out: Path, overwrite: bool
) -> dict[Path, tuple[Path, Path]]:
    """``{image: (mask, overlay)}``; refuses an output that is an input or a folder, and an
    existing output unless ``overwrite``, naming the first ones."""
    plan = {}
    for path in images:
        name = path.relative_to(base).with_suffix(".png")
        plan[path] = (out / "masks" / name, out / "overlays" / name)
    inputs = {path.resolve() for path in images}
    targets = sorted(target for pair in plan.values() for target in pair)
    clash = [t for t in targets if t.resolve() in inputs]
    if clash:
        raise DataError(
            f"the outputs would replace the input image(s) {first_few(clash, 3)}: input images are "
            "never replaced, choose another output_dir"
        )
    folders = [t for t in targets if t.is_dir()]
    if folders:
        raise DataError(f"a folder stands where an output file must go: {first_few(folders, 3)}")
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        raise DataError(
            f"{len(existing)} output file(s) already exist ({first_few(existing, 3)}): set "
            "overwrite=true to replace them, or choose another output_dir"
        )
    return plan


def write_manifest(out: Path, cfg: DictConfig, files: set[str]) -> None:
    """List ``files`` (relative to ``out``) as outputs in ``out/predict.json``."""
    record = {"written_by": "fcn.predict", "ckpt_path": str(cfg.ckpt_path)}
    record.update({"input": str(cfg.input), "files": sorted(files)})
    write_text(out / MANIFEST, json.dumps(record, indent=1) + "\n")


def predict(cfg: DictConfig) -> int:
    """Write masks and overlays for ``cfg.input``; return the number of unreadable images."""
    if not 0.0 <= cfg.overlay_alpha <= 1.0:
        raise ConfigError(f"overlay_alpha must be in [0, 1], got {cfg.overlay_alpha}")
    if cfg.max_size is not None and (not isinstance(cfg.max_size, int) or cfg.max_size < 32):
        raise ConfigError(f"max_size must be an integer >= 32 or null, got {cfg.max_size!r}")
    if not isinstance(cfg.overwrite, bool):
        raise ConfigError(f"overwrite must be true or false, got {cfg.overwrite!r}")
    tiling = tiling_options(cfg)
    device = pick_device(cfg.device)
    precision = scoring_precision(cfg, device)
    out = Path(cfg.output_dir).expanduser()
    base, images = find_images(Path(cfg.input).expanduser(), out)
    plan = plan_outputs(base, images, out, cfg.overwrite)
    try:
        listed = read_manifest(out)
    except DataError as err:
        raise DataError(f"{err}: it is not replaced, choose another output_dir") from None
    for folder in (out, *(out / kind for kind in OUTPUT_KINDS)):
        ensure_folder(folder)
    model = load_model(cfg, cfg.ckpt_path)
    model.net.to(device)
    scorer = TiledScorer(model.net, **tiling, precision=precision)
    log.info(
        "%s from %s on %s, %s: %d image(s)",
        model.net.variant, cfg.ckpt_path, device, scorer.describe(), len(images),
    )  # fmt: skip
    names = {path: [t.relative_to(out).as_posix() for t in plan[path]] for path in images}
    write_manifest(out, cfg, listed.union(*names.values()))  # before any output is written
    # a class named background stays untinted on the overlays; otherwise every class is tinted
    untinted = 0 if model.class_names[0].lower() in BACKGROUND_NAMES else None
    failed = []
    for path in tqdm(images, desc="predict", unit="image", disable=len(images) == 1):
        try:
            image = read_image(path)
        except DataError as err:
            log.warning("skipped: %s", err)
            failed.append(path)
            continue
        mask = predict_mask(model, image, device, cfg.max_size, scorer)
        mask_path, overlay_path = plan[path]
        save_png(mask_image(mask, model.class_colors), mask_path)
        tinted = overlay(image, mask, cfg.overlay_alpha, model.class_colors, untinted)
        save_png(tinted, overlay_path)
    write_manifest(out, cfg, listed.union(*(names[p] for p in images if p not in failed)))
    done = len(images) - len(failed)
    print(f"{done} mask(s) and overlay(s) written to {out / 'masks'} and {out / 'overlays'}")
    if failed:
        print(f"{len(failed)} image(s) could not be read: {', '.join(map(str, failed[:10]))}",
              file=sys.stderr)  # fmt: skip
    return len(failed)


@hydra.main(version_base="1.3", config_path="pkg://fcn.conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a user error ends with its message alone and exit status 1, as does
    any unreadable image (after all the others are done)."""
    if predict(cfg):
        sys.exit(1)


if __name__ == "__main__":
    main()
