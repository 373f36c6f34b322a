"""Weight files fetched on first use, checked, and cached where torch caches them.

- torchvision's ImageNet VGG16 (``weights=imagenet``): fetched with torch's own
  :func:`torch.hub.download_url_to_file` (progress bar; the SHA-256 prefix in the file's name
  checked, as torchvision does) into ``<torch hub dir>/checkpoints/``.
- The reference PyTorch port's conversions of the paper's Caffe models (``weights=imagenet_caffe``,
  ``weights=released weights.name=fcn8s``, ...): Google Drive files, fetched with
  ``gdown.cached_download`` (which handles Drive's confirmation pages and, from gdown 6.5, stages
  the download beside the target) and checked against the MD5 the port publishes
  (docs/paper.md#released-models), into the same folder.

Both write beside the final name and rename once the file is whole and checked, so a cut
download is never read. A lock file beside the target makes the processes of one machine (DDP)
wait for the one that downloads. A file already there is checked before it is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from fcn.errors import DataError
from fcn.files import file_digests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightFile:
    """A file of weights: its cache name, where it comes from, its checksum (``md5:<hex>`` or
    ``sha256-prefix:<hex>``), the input normalisation it needs, and the model option it fits
    (None for a VGG16 trunk)."""

    filename: str
    url: str
    checksum: str
    normalization: str
    model: str | None = None


_DRIVE = "https://drive.google.com/uc?id="
TORCHVISION_VGG16 = WeightFile(
    "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
    "sha256-prefix:397923af", "torchvision",
)  # fmt: skip
#: ``weights.name`` -> the reference port's file (its URL and MD5, as the port publishes them).
RELEASED = {
    "vgg16_caffe": WeightFile(
        "vgg16_from_caffe.pth", _DRIVE + "1adDBTGY3GcEB_47dvcibajyzi872RAs3",
        "md5:aa75b158f4181e7f6230029eb96c1b13", "caffe",
    ),
    "fcn32s": WeightFile(
        "fcn32s_from_caffe.pth", _DRIVE + "11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f",
        "md5:d3eb467a80e7da0468a20dfcbc13e6c8", "caffe", "fcn32",
    ),
    "fcn16s": WeightFile(
        "fcn16s_from_caffe.pth", _DRIVE + "1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP",
        "md5:a2d4035f669f09483b39c9a14a0d6670", "caffe", "fcn16",
    ),
    "fcn8s": WeightFile(
        "fcn8s_from_caffe.pth", _DRIVE + "1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI",
        "md5:de93e540ec79512f8770033849c8ae89", "caffe", "fcn8",
    ),
    "fcn8s_atonce": WeightFile(
        "fcn8s-atonce_from_caffe.pth", _DRIVE + "0B9P1L--7Wd2vblE1VUIxV1o2d2M",
        "md5:bfed4437e941fef58932891217fe6464", "caffe", "fcn8_atonce",
    ),
}  # fmt: skip


def cache_dir() -> Path:
    """Where fetched weights live: torch's hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


#: The skips and skip scaling of each model option a released FCN fits.
MODEL_SKIPS = {
    "fcn32": ([], False), "fcn16": (["pool4"], False), "fcn8": (["pool4", "pool3"], False),
    "fcn8_atonce": (["pool4", "pool3"], True),
}  # fmt: skip


def check_fits(entry: WeightFile, name: str, skips: list[str], skip_scaling: bool) -> None:
    """Raise ValueError unless the network chosen (its skips and skip scaling) is the one the
    released file ``name`` holds; a VGG16 trunk fits any network."""
    if entry.model is None:
        return
    if (list(skips), bool(skip_scaling)) != MODEL_SKIPS[entry.model]:
        raise ValueError(f"{name} is the network model={entry.model}: add model={entry.model}")


def matches(digests: dict[str, str], checksum: str) -> bool:
    """Whether a file's digests satisfy a :class:`WeightFile` checksum."""
    kind, _, value = checksum.partition(":")
    if kind == "sha256-prefix":
        return digests["sha256"].startswith(value)
    return digests[kind] == value


def fetch(entry: WeightFile, url: str | None = None, progress: bool = True) -> Path:
    """The checked local copy of ``entry``, downloaded from ``url`` (default: its own) into
    :func:`cache_dir` unless a checked copy is there. Raises :class:`DataError` naming the URL
    and the exact path to put the file at when it cannot be fetched or does not check out."""
    from filelock import FileLock

    url = url or entry.url
    path = cache_dir() / entry.filename
    if path.is_file() and matches(file_digests(path), entry.checksum):
        return path  # no lock needed to read a whole, checked file (the cache may be read-only)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as err:
        raise DataError(
            f"cannot write to the weights cache {path.parent} ({err.strerror or err}): set "
            "TORCH_HOME to a writable folder, or download the file yourself and give "
            f"weights.path=<file> ({url}, checked against {entry.checksum})"
        ) from None
    try:  # the other processes wait at the lock for a whole, checked file
        return _fetch_locked(entry, url, path, progress)
    finally:
        lock.release()


def _fetch_locked(entry: WeightFile, url: str, path: Path, progress: bool) -> Path:
    """:func:`fetch` once the lock is held."""
    if path.is_file():
        if matches(file_digests(path), entry.checksum):
            return path
        log.warning("%s does not match its checksum %s: fetching it again (it is replaced "
                    "only by a whole, checked file)", path, entry.checksum)  # fmt: skip
    log.info("downloading %s to %s", url, path)
    try:
        _download(entry, url, path, progress)
    except Exception as err:  # network, HTTP, Drive, cut transfers and checksums alike
        raise DataError(
            f"cannot download {url} ({type(err).__name__}: {_first_line(err)}): put the file "
            f"at {path} (checked against {entry.checksum}), or give weights.path=<file>"
        ) from None
    return path


def _download(entry: WeightFile, url: str, path: Path, progress: bool) -> None:
    kind, _, value = entry.checksum.partition(":")
    if kind == "sha256-prefix":
        torch.hub.download_url_to_file(url, str(path), hash_prefix=value, progress=progress)
        return
    import gdown

    gdown.cached_download(url, str(path), quiet=not progress, hash=entry.checksum)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no detail"
