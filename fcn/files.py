"""Writing files so that a crash, a kill or a full disk never leaves a half-written file under
its final name, and never replaces a file the user did not ask to replace.

Every file the project writes goes through :func:`atomic_write`: the content is written to
``<name>.part`` beside the target (same folder, so the same file system), flushed to disk, and
renamed over the target in one step. On any failure the ``.part`` file is removed and the
previous version of the target, if any, is left whole.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from fcn.errors import ConfigError, DataError, FCNError

#: errno values meaning "the disk (or a quota, or a file-size limit) has no room for this".
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFull(FCNError):
    """A write failed for lack of space; the message names the file and its folder."""


def no_space_error(err: BaseException | None) -> OSError | None:
    """The OSError meaning "no space" that ``err`` is or was raised from (torch and others
    wrap it), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


def is_disk_full(err: BaseException) -> bool:
    """True when ``err`` means the disk (or a quota or file-size limit) had no room."""
    return no_space_error(err) is not None


def disk_full_message(path: Path | str, err: BaseException | None = None) -> str:
    """One line saying the disk is full, where, and that the previous file is whole."""
    path = Path(path)
    cause = no_space_error(err)
    why = f" ({cause.strerror})" if cause is not None and cause.strerror else ""
    return (
        f"no space left to write {path}{why}: free space on the disk holding {path.parent} and "
        "run again (the previous version of the file, if any, is whole; a training run "
        "continues with python -m fcn.resume <run folder>)"
    )


def ensure_folder(folder: Path | str) -> Path:
    """Create ``folder`` (and its parents); a file standing where a folder must be is a
    :class:`DataError` naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.is_file()), None)
        raise DataError(
            f"cannot create the folder {folder}: {blocker or folder} is a file, not a folder"
        ) from None
    except OSError as err:
        if err.errno in NO_SPACE:
            raise DiskFull(disk_full_message(folder, err)) from None
        raise DataError(f"cannot create the folder {folder}: {err.strerror or err}") from None
    return folder


def refuse_existing(path: Path | str, overwrite: bool, key: str = "output_file") -> None:
    """Refuse, before any work is done, an existing ``path`` the user did not ask to replace."""
    if not overwrite and (Path(path).exists() or Path(path).is_symlink()):
        raise ConfigError(f"{key} {path} already exists: add overwrite=true to replace it")


def atomic_write(path: Path | str, write: Callable[[Path], None], replace: bool = True) -> Path:
    """Write ``path`` through ``write(partial_path)`` and rename the result into place.

    ``replace=False`` refuses (a :class:`DataError`) when ``path`` already exists. A write that
    fails for lack of space raises :class:`DiskFull`; any failure removes the partial file.
    """
    path = Path(path)
    if not replace and (path.exists() or path.is_symlink()):
        raise DataError(f"{path} already exists: it is not replaced")
    ensure_folder(path.parent)
    partial = path.with_name(path.name + ".part")
    try:
        write(partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        if is_disk_full(err):
            raise DiskFull(disk_full_message(path, err)) from err
        raise
    return path


def write_text(path: Path | str, text: str, replace: bool = True) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), replace)


def write_bytes(path: Path | str, data: bytes, replace: bool = True) -> Path:
    """:func:`atomic_write` of bytes."""
    return atomic_write(path, lambda p: p.write_bytes(data), replace)


#: Bytes read at a time when hashing a file.
CHUNK = 1 << 20


def file_digests(path: Path | str, algorithms: Sequence[str] = ("md5", "sha256")) -> dict[str, str]:
    """``{algorithm: hex digest}`` of a file (hashlib names), read once in chunks. A file whose
    size and modification time have not changed is not read again in the same process (a
    weights file is checked when fetched and then recorded by its SHA-256)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, tuple(algorithms))
    return dict(_digests(*key))


@functools.lru_cache(maxsize=32)
def _digests(
    path: str, size: int, mtime_ns: int, algorithms: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    hashes = [hashlib.new(name) for name in algorithms]
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            for digest in hashes:
                digest.update(chunk)
    return tuple((name, d.hexdigest()) for name, d in zip(algorithms, hashes, strict=True))
