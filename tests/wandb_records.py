"""Read the records of an offline wandb run file (``run-<id>.wandb``), to check what a run
logged without a wandb server. The file is a LevelDB-style log: a 7-byte header (``:W&B``,
magic, version), then 32 KiB blocks of records, each with a 7-byte header (crc32, length, type)
and chunks of one protobuf ``Record`` when it spans blocks."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[pb.Record]:
    """Every record of ``path``, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer: zero padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def summary(path: Path) -> dict:
    """``run`` (name, group, tags), the set of ``history`` keys logged and, per logged image
    key, the mask names of its last images (``masks``)."""
    run: dict = {}
    keys: set[str] = set()
    masks: dict[str, set[str]] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = {
                "name": record.run.display_name,
                "group": record.run.run_group,
                "tags": list(record.run.tags),
            }
        elif kind == "history":
            for item in record.history.item:
                key = item.key or item.nested_key[0]  # media: [key, field]
                keys.add(key)
                if list(item.nested_key[1:]) == ["all_masks"]:
                    masks[key] = {name for image in json.loads(item.value_json) for name in image}
    return {**run, "history_keys": keys, "masks": masks}


def history(path: Path) -> list[dict]:
    """The history rows of ``path`` in order, each ``{key: value}`` (media under their
    top-level key, as the JSON wandb stores); ``_step`` is wandb's own row counter."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            row: dict = {}
            for item in record.history.item:
                path = [item.key] if item.key else list(item.nested_key)  # media: [key, field]
                if len(path) == 1:
                    row[path[0]] = json.loads(item.value_json)
                else:
                    row.setdefault(path[0], {})[path[-1]] = json.loads(item.value_json)
            rows.append(row)
    return rows


def run_record(path: Path) -> pb.RunRecord:
    """The first run record of ``path``: id, name, group, tags, notes as the run started."""
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")


def artifacts(path: Path, kind: str = "model") -> list[dict]:
    """The artifacts of type ``kind`` that ``path`` logged, in order: name, aliases, metadata
    and the names of their files."""
    return [
        {
            "name": r.artifact.name,
            "aliases": list(r.artifact.aliases),
            "metadata": json.loads(r.artifact.metadata or "{}"),
            "files": [entry.path for entry in r.artifact.manifest.contents],
        }
        for r in records(path)
        if r.WhichOneof("record_type") == "artifact" and r.artifact.type == kind
    ]
