"""Shared plumbing for file-backed datasets: transparent decompression and file lookup."""

from __future__ import annotations

import bz2
import gzip
import os
import zlib
from pathlib import Path
from typing import IO, Optional, Sequence

from lightning_echo.data.modules.array import DATA_ENV_VAR
from lightning_echo.errors import DataFileError, one_line


def open_binary(path: Path, suffix: Optional[str] = None) -> IO[bytes]:
    """Open ``path`` for reading, decompressing ``.gz`` and ``.bz2`` files on the fly.

    The compression follows ``suffix`` when given (e.g. for a temporary file), else the path's suffix.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        if suffix == ".gz":
            return gzip.open(path, "rb")
        if suffix == ".bz2":
            return bz2.open(path, "rb")
        return open(path, "rb")
    except OSError as error:
        raise DataFileError(f"{path}: cannot open: {one_line(error.strerror or error)}") from error


def read_bytes(path: Path) -> bytes:
    """All (decompressed) bytes of ``path``; a broken archive raises a one-line DataFileError."""
    path = Path(path)
    try:
        with open_binary(path) as stream:
            return stream.read()
    except DataFileError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise DataFileError(f"{path}: cannot read or decompress: {one_line(error)}") from error


def find_file(directories: Sequence[Path], name: str, suffixes: Sequence[str] = ("", ".gz")) -> Optional[Path]:
    """First existing ``<dir>/<name><suffix>``, directories in order, then suffixes in order."""
    for directory in directories:
        for suffix in suffixes:
            candidate = Path(directory) / (name + suffix)
            if candidate.is_file():
                return candidate
    return None


def data_base(root: Optional[str]) -> Optional[str]:
    """The data root in effect: ``root`` or else the ``LIGHTNING_ECHO_DATA`` environment variable."""
    return root if root is not None else (os.environ.get(DATA_ENV_VAR) or None)


def missing_files_error(
    dataset: str,
    missing: Sequence[str],
    directories: Sequence[Path],
    root: Optional[str],
    folder: str,
    extra_hint: str = "",
) -> DataFileError:
    """The one-line error for files not found, naming them, where we looked and how to get them."""
    if directories:
        looked = ", ".join(str(d) for d in directories)
    else:
        looked = f"nowhere (data.root and {DATA_ENV_VAR} are unset)"
    base = data_base(root)
    if base:
        target = Path(base).expanduser() / folder
        how = f"get it with data.download=true (data.root={base}) or copy the files into {target}"
    else:
        how = f"get it with data.download=true data.root=DIR (or set {DATA_ENV_VAR}) or copy the files into DIR/{folder}"
    return DataFileError(f"{dataset}: missing {', '.join(missing)}; looked in {looked}; {how}{extra_hint}")
