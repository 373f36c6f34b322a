"""Download, verify and lay out Pascal VOC 2012 and SBD: ``python -m fcn.data.prepare``.

    python -m fcn.data.prepare                      # download + extract both into data/
    python -m fcn.data.prepare --layout seed        # ... and build data/voc_seed/ (Keras seed's)
    python -m fcn.data.prepare --check              # verify what is there, download nothing

Archives go to ``<root>/downloads/`` through a ``.part`` file that is renamed only once its MD5
matches, so an interrupted download is never taken for a whole one; a re-run skips whatever is
already downloaded (and verified) and extracted. The native layout (``VOCdevkit/``,
``benchmark_RELEASE/``) serves ``data=voc2012|sbd|voc_aug|seg11valid``; ``--layout seed`` links
the files of the Keras seed's split (docs/seed.md#split) into ``voc_seed/`` for ``data=voc_seed``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fcn.data.pascal import LABELS, SBD_DIR, SPLITS, VOC_DIR, PascalDataset
from fcn.data.readers import read_ids
from fcn.data.voc_seed import SPLITS_DIR as SEED_SPLITS
from fcn.data.voc_seed import SeedVOC
from fcn.errors import DataError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One archive to fetch: where from, its MD5, and the folder it extracts."""

    url: str
    md5: str
    extracts: Path

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


SOURCES = {
    "voc": Source(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
        VOC_DIR,
    ),
    "sbd": Source(
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
        "benchmark.tgz",
        "82b4d87ceb2ed10f6038a1cba92111cb",
        SBD_DIR,
    ),
}


def md5sum(path: Path) -> str:
    """MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(source: Source, folder: Path, timeout: float = 60.0) -> Path:
    """Fetch ``source`` into ``folder`` unless a verified copy is there; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / source.filename
    if final.is_file():
        if md5sum(final) == source.md5:
            print(f"{final.name}: already downloaded and verified")
            return final
        print(f"{final.name}: checksum mismatch, downloading again")
        final.unlink()
    part = final.with_name(final.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(source.url, timeout=timeout) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=final.name) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as err:  # refused, timed out, cut short
        raise DataError(
            f"cannot download {source.url}: {err}. The partial file {part} is never used; "
            "re-run to try again, or download the file yourself into "
            f"{folder} (MD5 {source.md5})"
        ) from None
    if digest.hexdigest() != source.md5:
        part.unlink()
        raise DataError(
            f"{source.url} arrived with MD5 {digest.hexdigest()}, expected {source.md5}: "
            "the file was discarded; re-run to try again"
        )
    os.replace(part, final)
    return final


def is_extracted(source: Source, root: Path) -> bool:
    """True once ``source`` was fully extracted into ``root`` (its stamp file is written last)."""
    return (root / f".extracted-{source.md5}").is_file() and (root / source.extracts).is_dir()


def extract(archive: Path, source: Source, root: Path) -> None:
    """Unpack ``archive`` into ``root``; the stamp file is written only when all went well."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in tqdm(members, desc=f"extracting {archive.name}", unit="file"):
                tar.extract(member, root, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot extract {archive}: {err}") from None
    if not (root / source.extracts).is_dir():
        raise DataError(f"{archive} did not contain {source.extracts}/")
    (root / f".extracted-{source.md5}").write_text(f"{archive.name}\n")


def build_seed_layout(root: Path, splits_dir: Path = SEED_SPLITS) -> Path:
    """Link the Keras seed's split into ``root/voc_seed/`` from the native VOC and SBD trees."""
    out = root / "voc_seed"
    plan = []
    for list_name, source in (("train_mat", "sbd"), ("val_mat", "sbd"), ("train_png", "voc")):
        kind = list_name.split("_")[1]
        labels, suffix, images = LABELS[source]
        for id_ in read_ids(splits_dir / f"{list_name}.txt"):
            plan.append((root / images / f"{id_}.jpg", out / f"images_{kind}" / f"{id_}.jpg"))
            plan.append(
                (root / labels / f"{id_}{suffix}", out / f"labels_{kind}" / f"{id_}{suffix}")
            )
    missing = [str(src) for src, _ in plan if not src.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} file(s) of the Keras seed's split are missing from the downloaded "
            f"data, e.g. {', '.join(missing[:3])}"
        )
    for src, dst in tqdm(plan, desc="building voc_seed", unit="file"):
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return out


def check(root: Path, seed_splits: Path = SEED_SPLITS) -> bool:
    """Print a report of every split found under ``root``; return True when all is well.

    Reads every item as training would, so unreadable or truncated files, foreign label values
    and label/image size mismatches are found.
    """
    ok, found_any = True, False
    print(f"{'split':<16}{'ids':>8}{'unreadable':>12}")
    datasets = []
    if (root / "voc_seed").is_dir():
        datasets += [(f"voc_seed/{s}", lambda s=s: SeedVOC(root / "voc_seed", s, seed_splits))
                     for s in ("train", "val")]  # fmt: skip
    for split in SPLITS:
        needs = SBD_DIR if split.startswith("sbd") else VOC_DIR
        if (root / needs).is_dir():
            datasets.append((split, lambda split=split: PascalDataset(root, split)))
    for name, make in datasets:
        found_any = True
        try:
            dataset = make()
        except DataError as err:
            ok = False
            print(f"{name:<16}{'-':>8}{'-':>12}  {err}")
            continue
        unreadable = []
        for index in tqdm(range(len(dataset)), desc=name, leave=False):
            try:
                dataset[index]  # reads the image and the label and checks them together
            except DataError as err:
                unreadable.append(str(err))
        ok &= not unreadable
        print(f"{name:<16}{len(dataset):>8}{len(unreadable):>12}")
        for line in unreadable[:5]:
            print(f"    {line}")
    if not found_any:
        print(f"nothing to check under {root}: run python -m fcn.data.prepare to download")
        return False
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fcn.data.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("FCN_DATA_DIR", "data")),
        help="data folder (default: $FCN_DATA_DIR or ./data)",
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(SOURCES), default=sorted(SOURCES))
    parser.add_argument("--layout", choices=("native", "seed"), default="native",
                        help="seed: also build voc_seed/ (the Keras seed's split) for "
                             "data=voc_seed")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="only verify what is there")
    parser.add_argument("--keep-archives", action="store_true", help="keep downloads/ afterwards")
    parser.add_argument("--seed-splits", type=Path, default=SEED_SPLITS, help=argparse.SUPPRESS)
    for name, source in SOURCES.items():
        parser.add_argument(
            f"--{name}-url", default=source.url, help=f"mirror of {source.filename}"
        )
        parser.add_argument(f"--{name}-md5", default=source.md5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.expanduser().resolve()
    try:
        if args.check:
            return 0 if check(root, args.seed_splits) else 1
        for name in args.datasets:
            default = SOURCES[name]
            source = Source(
                getattr(args, f"{name}_url"), getattr(args, f"{name}_md5"), default.extracts
            )
            if is_extracted(source, root):
                print(f"{source.filename}: already downloaded and extracted")
                continue
            archive = download(source, root / "downloads")
            extract(archive, source, root)
            if not args.keep_archives:
                archive.unlink()
        if args.layout == "seed":
            print(f"built {build_seed_layout(root, args.seed_splits)}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"data ready under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
