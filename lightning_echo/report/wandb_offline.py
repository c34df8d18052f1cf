"""Read a wandb offline run (``offline-run-*/run-*.wandb``) without network or wandb's servers.

The file is a log of protobuf ``Record`` messages in the LevelDB log layout: a 7-byte file
header, then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type) where type
1 is a whole record and 2/3/4 are its first/middle/last pieces.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

_FILE_HEADER = 7
_CHUNK_HEADER = 7
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What a wandb offline run recorded."""

    path: Path
    run_id: str = ""
    group: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: Optional[int] = None


def iter_record_bytes(path: Path) -> Iterator[bytes]:
    """Yield the serialized records of a ``.wandb`` file in order.

    Raises ValueError when the file is not a wandb run file or ends inside a record (truncated).
    """
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{Path(path).name}: not a wandb run file (bad header)")
    position, pending = _FILE_HEADER, b""
    while position + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _CHUNK_HEADER:
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + _CHUNK_HEADER])
        position += _CHUNK_HEADER
        if kind == 0 and length == 0:  # zero padding at the end of a block
            position += left_in_block - _CHUNK_HEADER
            continue
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST) or length > left_in_block - _CHUNK_HEADER:
            raise ValueError(f"{Path(path).name}: corrupt at byte {position - _CHUNK_HEADER} (chunk type {kind}, length {length})")
        if position + length > len(data):
            raise ValueError(f"{Path(path).name}: truncated (the file ends inside a record)")
        pending += data[position : position + length]
        position += length
        if kind in (_FULL, _LAST):
            yield pending
            pending = b""
    if pending or data[position:].strip(b"\0"):
        raise ValueError(f"{Path(path).name}: truncated (the file ends inside a record)")


def _items(updates: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in updates:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def read_offline_run(run_dir_or_file: Path) -> OfflineRun:
    """Parse an ``offline-run-*`` directory (or its ``run-*.wandb`` file); ValueError when it is
    truncated or corrupt."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2  # wandb is heavy: only when a wandb run is read

    path = Path(run_dir_or_file)
    files = [path] if path.is_file() else sorted(path.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{path}: no run-*.wandb file")
    run = OfflineRun(path=files[0])
    for raw in iter_record_bytes(files[0]):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(raw)
        except DecodeError as error:
            raise ValueError(f"{files[0].name}: a record that does not parse ({error})") from None
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.name = record.run.run_id, record.run.run_group, record.run.display_name
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def find_offline_runs(root: Path) -> list[Path]:
    """All ``offline-run-*`` directories under ``root``."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir())
