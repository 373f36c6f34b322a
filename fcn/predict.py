"""Segment images: ``python -m fcn.predict ckpt_path=<file> input=<image or folder>``.

Writes, for every image, its predicted classes as a VOC-palette PNG (``masks/``, pixel values are
the class indices) and an overlay of the class colours on the image (``overlays/``), both at the
image's own size, keeping the input folder's sub-folders. Unreadable images are named, skipped,
and make the exit status 1 once every other image is done.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from fcn.data.readers import read_image
from fcn.errors import ConfigError, DataError, exit_on_user_error
from fcn.inference import load_model, pick_device, predict_mask
from fcn.viz import mask_image, overlay, save_png

log = logging.getLogger("fcn.predict")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(input_path: Path) -> tuple[Path, list[Path]]:
    """``(base folder, images)``: the file itself, or every image under a folder, sorted.

    Two images that would write the same output name (``a.jpg`` and ``a.png`` side by side)
    are refused, naming both.
    """
    if input_path.is_file():
        return input_path.parent, [input_path]
    if not input_path.is_dir():
        raise DataError(f"input not found: {input_path}")
    images = sorted(
        p for p in input_path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {input_path}")
    seen: dict[Path, Path] = {}
    for path in images:
        name = path.relative_to(input_path).with_suffix(".png")
        if name in seen:
            raise DataError(f"{seen[name]} and {path} would both be written as {name}")
        seen[name] = path
    return input_path, images


def predict(cfg: DictConfig) -> int:
    """Write masks and overlays for ``cfg.input``; return the number of unreadable images."""
    if not 0.0 <= cfg.overlay_alpha <= 1.0:
        raise ConfigError(f"overlay_alpha must be in [0, 1], got {cfg.overlay_alpha}")
    if cfg.max_size is not None and (not isinstance(cfg.max_size, int) or cfg.max_size < 32):
        raise ConfigError(f"max_size must be an integer >= 32 or null, got {cfg.max_size!r}")
    base, images = find_images(Path(cfg.input).expanduser())
    model = load_model(cfg, cfg.ckpt_path)
    device = pick_device(cfg.device)
    model.net.to(device)
    out = Path(cfg.output_dir)
    log.info("%s from %s on %s: %d image(s)", model.net.variant, cfg.ckpt_path, device, len(images))
    failed = []
    for path in tqdm(images, desc="predict", unit="image", disable=len(images) == 1):
        try:
            image = read_image(path)
        except DataError as err:
            log.warning("skipped: %s", err)
            failed.append(path)
            continue
        mask = predict_mask(model, image, device, cfg.max_size)
        name = path.relative_to(base).with_suffix(".png")
        save_png(mask_image(mask), out / "masks" / name)
        save_png(overlay(image, mask, cfg.overlay_alpha), out / "overlays" / name)
    done = len(images) - len(failed)
    print(f"{done} mask(s) and overlay(s) written to {out / 'masks'} and {out / 'overlays'}")
    if failed:
        print(f"{len(failed)} image(s) could not be read: {', '.join(map(str, failed[:10]))}",
              file=sys.stderr)  # fmt: skip
    return len(failed)


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a user error ends with its message alone and exit status 1, as does
    any unreadable image (after all the others are done)."""
    if predict(cfg):
        sys.exit(1)


if __name__ == "__main__":
    main()
