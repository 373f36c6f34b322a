"""Download, verify and lay out the datasets, and check any data option:
``python -m fcn.data.prepare``.

    python -m fcn.data.prepare                      # VOC2012 + SBD, downloaded and extracted
    python -m fcn.data.prepare --layout seed        # ... and build data/voc_seed/ (Keras seed's)
    python -m fcn.data.prepare --dataset ade20k     # ADE20K (SceneParsing) for data=ade20k
    python -m fcn.data.prepare --dataset cityscapes # what Cityscapes needs (an account)
    python -m fcn.data.prepare --check              # verify the VOC / SBD files, download nothing
    python -m fcn.data.prepare --check data=shapes  # statistics of any data option's splits

Archives go to ``<root>/downloads/`` through a ``.part`` file that is renamed only once its
checksum (MD5, SHA-1 for ADE20K) matches, so an interrupted download is never taken for a whole
one; a re-run skips whatever is already downloaded (and verified) and extracted. The native
layout (``VOCdevkit/``, ``benchmark_RELEASE/``) serves ``data=voc2012|sbd|voc_aug|seg11valid``;
``--layout seed`` links the files of the Keras seed's split (docs/seed.md#split) into
``voc_seed/`` for ``data=voc_seed``; ADE20K extracts into ``ADEChallengeData2016/``.

``--check`` followed by Hydra arguments (``data=<option>`` and any ``key=value`` of the
training config, e.g. ``paths.data_dir=/x``) reads every item of the option's two splits once
and reports the images per split, their sizes, the pixels and frequency of each class per split,
the classes absent from a split, the void fraction and the ids in both splits (fcn.data.stats);
``--output stats.json`` also writes them as JSON. Exit status 1 when a file cannot be read or a
label value is neither a class nor void.
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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from fcn.data.pascal import LABELS, SBD_DIR, SPLITS, VOC_DIR, PascalDataset
from fcn.data.readers import read_ids
from fcn.data.voc_seed import SPLITS_DIR as SEED_SPLITS
from fcn.data.voc_seed import SeedVOC
from fcn.errors import ConfigError, DataError, user_error_message
from fcn.files import CHUNK, file_digests

#: How each checksum algorithm is named in messages.
ALGORITHM_NAMES = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256"}


@dataclass(frozen=True)
class Source:
    """One archive to fetch: where from, its published checksum (``algorithm`` of hashlib),
    and the folder it extracts."""

    url: str
    checksum: str
    extracts: Path
    algorithm: str = "md5"

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def checksum_name(self) -> str:
        """The algorithm as messages name it (MD5, SHA-1)."""
        return ALGORITHM_NAMES.get(self.algorithm, self.algorithm)


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
    "ade20k": Source(  # the SceneParsing challenge release (data=ade20k), SHA-1 as published
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
        Path("ADEChallengeData2016"),
        "sha1",
    ),
}
#: What ``--dataset`` downloads when not given (VOC2012 and SBD, as before ADE20K was added).
DEFAULT_DATASETS = ["sbd", "voc"]
#: Datasets that cannot be downloaded: what to do instead is printed.
MANUAL = ("cityscapes",)
CITYSCAPES_DIR = Path("cityscapes")
CITYSCAPES_ARCHIVES = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")


def download(source: Source, folder: Path, timeout: float = 60.0) -> Path:
    """Fetch ``source`` into ``folder`` unless a verified copy is there; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / source.filename
    if final.is_file():
        if file_digests(final, [source.algorithm])[source.algorithm] == source.checksum:
            print(f"{final.name}: already downloaded and verified")
            return final
        print(f"{final.name}: checksum mismatch, downloading again")
        final.unlink()
    part = final.with_name(final.name + ".part")
    digest = hashlib.new(source.algorithm)
    received, total = 0, None
    try:
        with urllib.request.urlopen(source.url, timeout=timeout) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=final.name) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
    except (OSError, http.client.HTTPException) as err:  # refused, timed out, cut short
        raise DataError(
            f"cannot download {source.url}: {err}. The partial file {part} is never used; "
            "re-run to try again, or download the file yourself into "
            f"{folder} ({source.checksum_name} {source.checksum})"
        ) from None
    if total is not None and received != total:  # http.client does not raise for this
        part.unlink()
        raise DataError(
            f"cannot download {source.url}: the transfer was cut short ({received:,} of "
            f"{total:,} bytes); the partial file was discarded, never used: re-run to try again"
        )
    if digest.hexdigest() != source.checksum:
        part.unlink()
        raise DataError(
            f"{source.url} arrived with {source.checksum_name} {digest.hexdigest()}, expected "
            f"{source.checksum}: the file was discarded; re-run to try again"
        )
    os.replace(part, final)
    return final


def _stamp(source: Source, root: Path) -> Path:
    return root / f".extracted-{source.checksum}"


def is_extracted(source: Source, root: Path) -> bool:
    """True once ``source`` was fully extracted into ``root`` (its stamp file is written last)."""
    return _stamp(source, root).is_file() and (root / source.extracts).is_dir()


def unsafe_member(name: str) -> bool:
    """True for an archive member name that would land outside the folder it is extracted
    into: an absolute path, a drive or a ``..`` part (either slash)."""
    path = PurePosixPath(name.replace("\\", "/"))
    first = path.parts[0] if path.parts else ""
    return path.is_absolute() or ".." in path.parts or ":" in first


def _extract_zip(archive: Path, root: Path) -> None:
    """Unpack a zip into ``root``, refusing it whole (nothing written) if any member's name
    would land outside ``root``."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        unsafe = [m.filename for m in members if unsafe_member(m.filename)]
        if unsafe:
            raise DataError(
                f"{archive} was refused: {len(unsafe)} member(s) would be written outside "
                f"{root} (absolute paths or '..'), e.g. {unsafe[0]!r}; nothing was extracted"
            )
        for member in tqdm(members, desc=f"extracting {archive.name}", unit="file"):
            zf.extract(member, root)


def extract(archive: Path, source: Source, root: Path) -> None:
    """Unpack ``archive`` (a tar, compressed or not, or a zip) into ``root``; members that would
    land outside ``root`` are refused; the stamp file is written only when all went well."""
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, root)
        else:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in tqdm(members, desc=f"extracting {archive.name}", unit="file"):
                    tar.extract(member, root, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
        raise DataError(f"cannot extract {archive}: {err}") from None
    if not (root / source.extracts).is_dir():
        raise DataError(f"{archive} did not contain {source.extracts}/")
    _stamp(source, root).write_text(f"{archive.name}\n")


def cityscapes_instructions(root: Path, train_args: str = "") -> str:
    """What Cityscapes needs (it cannot be downloaded without an account), or that it is
    there."""
    folder = root / CITYSCAPES_DIR
    check = f"python -m fcn.data.prepare --check data=cityscapes{train_args}"
    train = f"python -m fcn.train data=cityscapes{train_args}"
    if (folder / "leftImg8bit").is_dir() and (folder / "gtFine").is_dir():
        return (
            f"cityscapes: {folder}/leftImg8bit/ and {folder}/gtFine/ are there.\n"
            f"  Read it all once: {check}\n  Train: {train}"
        )
    left, fine = CITYSCAPES_ARCHIVES
    return f"""cityscapes: not downloaded (its files need an account); to get it:
  1. register at https://www.cityscapes-dataset.com and log in;
  2. download {left} (11 GB) and {fine} (241 MB) from its download page;
  3. unzip both into {folder}/, so that {folder}/leftImg8bit/ and {folder}/gtFine/ are there:
       mkdir -p {folder} && cd {folder} && unzip {left} && unzip {fine}
  4. check it ({check}), then train: {train}"""


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


def _quoted(value: Path) -> str:
    """A path as a Hydra override value (quoted: paths may hold = , or spaces)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_data(
    overrides: Sequence[str],
    output: Path | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> bool:
    """Compose the ``train`` config with ``overrides``, build its data option's two datasets,
    print their statistics (and write them as JSON to ``output``); return True when every item
    was read and every label value is a class or void."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from fcn.config_checks import check_data_config
    from fcn.data.stats import dataset_stats, format_report
    from fcn.files import write_text

    if output is not None and not overwrite and (output.exists() or output.is_symlink()):
        raise ConfigError(f"--output {output} already exists: add --overwrite to replace it")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a positive number of images per split, got {limit}")
    with initialize_config_module(config_module="fcn.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    data = cfg.data
    check_data_config(data)
    datasets = {}
    for split in ("train", "val"):
        node = data.get(f"{split}_set")
        datasets[split] = instantiate(node) if node is not None else None
    if workers is None:
        workers = data.get("num_workers") or 0
    stats = dataset_stats(
        datasets, data.num_classes, data.get("class_names"), limit, workers,
        data=cfg.hydra.runtime.choices.get("data"), progress=progress,
    )  # fmt: skip
    print(format_report(stats), flush=True)
    if output is not None:
        write_text(output, stats.to_json(), replace=overwrite)
        print(f"wrote {output}")
    return stats.ok


def _user_error(err: Exception) -> str | None:
    """The message of an error the user can fix (a config Hydra cannot compose included)."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    message = user_error_message(err)
    if message is not None:
        return message
    if isinstance(err, HydraException) and not isinstance(err, InstantiationException):
        return str(err).split("\nConfig search path")[0].strip()  # Hydra's own search path
    if isinstance(err, OmegaConfBaseException):
        return str(err).strip().splitlines()[0]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fcn.data.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="with --check: data=<option> and any overrides of the training config",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="data folder (default: $FCN_DATA_DIR or ./data); with --check data=...: sets "
        "paths.data_dir",
    )
    parser.add_argument(
        "--dataset", "--datasets", dest="datasets", nargs="+",
        choices=[*SOURCES, *MANUAL], default=DEFAULT_DATASETS,
        help="what to download (default: voc sbd, i.e. VOC2012 + SBD); cityscapes downloads "
        "nothing and says what it needs",
    )  # fmt: skip
    parser.add_argument("--layout", choices=("native", "seed"), default="native",
                        help="seed: also build voc_seed/ (the Keras seed's split) for "
                             "data=voc_seed")  # fmt: skip
    parser.add_argument(
        "--check",
        action="store_true",
        help="only verify what is there; with data=<option>: that option's statistics",
    )
    parser.add_argument(
        "--output", type=Path, help="with --check data=...: also write the statistics as JSON"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--limit",
        type=int,
        help="with --check data=...: read at most this many images per split, spread over it "
        "(default: all)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="with --check data=...: loader workers reading the files (default: data.num_workers)",
    )
    parser.add_argument("--keep-archives", action="store_true", help="keep downloads/ afterwards")
    parser.add_argument("--seed-splits", type=Path, default=SEED_SPLITS, help=argparse.SUPPRESS)
    for name, source in SOURCES.items():
        parser.add_argument(
            f"--{name}-url", default=source.url, help=f"mirror of {source.filename}"
        )
        parser.add_argument(
            f"--{name}-{source.algorithm}", dest=f"{name}_checksum", default=source.checksum,
            help=argparse.SUPPRESS,
        )  # fmt: skip
    args = parser.parse_intermixed_args(argv)
    default_root = Path(os.environ.get("FCN_DATA_DIR", "data"))
    root = (args.root or default_root).expanduser().resolve()
    try:
        if args.overrides or args.output or args.limit is not None or args.workers is not None:
            if not (args.check and args.overrides):
                raise ConfigError(
                    "key=value arguments, --output, --limit and --workers go with --check "
                    "data=<option>, e.g. python -m fcn.data.prepare --check data=shapes"
                )
            overrides = list(args.overrides)
            if args.root is not None:
                overrides.insert(0, f"paths.data_dir={_quoted(root)}")
            ok = check_data(overrides, args.output, args.overwrite, args.limit, args.workers)
            return 0 if ok else 1
        if args.check:
            return 0 if check(root, args.seed_splits) else 1
        downloaded = []
        for name in args.datasets:
            if name == "cityscapes":
                print(cityscapes_instructions(root, f" paths.data_dir={root}" if args.root else ""))
                continue
            default = SOURCES[name]
            source = Source(
                getattr(args, f"{name}_url"), getattr(args, f"{name}_checksum"),
                default.extracts, default.algorithm,
            )  # fmt: skip
            downloaded.append(name)
            if is_extracted(source, root):
                print(f"{source.filename}: already downloaded and extracted")
                continue
            archive = download(source, root / "downloads")
            extract(archive, source, root)
            if not args.keep_archives:
                archive.unlink()
        if args.layout == "seed":
            print(f"built {build_seed_layout(root, args.seed_splits)}")
    except Exception as err:
        message = _user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    if downloaded or args.layout == "seed":
        print(f"data ready under {root}")
    if "ade20k" in downloaded:
        where = f" paths.data_dir={root}" if args.root else ""
        print(f"ADE20K: python -m fcn.train data=ade20k{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
