"""Downloading dataset files (http(s):// or file:// URLs) with checksums, and safe tar extraction."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Optional

from lightning_echo.data.files import open_binary
from lightning_echo.errors import DataFileError, one_line

DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def _digest_stream(stream: IO[bytes], algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: Path, decompress_gz: bool = False, suffix: Optional[str] = None) -> str:
    """Hex sha256 of the file's bytes, or with ``decompress_gz`` of its decompressed bytes.

    Decompression follows the file's suffix (``.gz`` or ``.bz2``; other files are hashed as they
    are), or ``suffix`` when given.
    """
    path = Path(path)
    if decompress_gz:
        with open_binary(path, suffix) as stream:
            return _digest_stream(stream, "sha256")
    with open(path, "rb") as stream:
        return _digest_stream(stream, "sha256")


def md5_of(path: Path) -> str:
    """Hex md5 of the file's bytes (only to compare with published md5 sums)."""
    with open(path, "rb") as stream:
        return _digest_stream(stream, "md5")


def download_file(
    url: str,
    dest: Path,
    sha256: Optional[str] = None,
    md5: Optional[str] = None,
    *,
    sha256_of_decompressed: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    mismatch_hint: str = "",
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to a temporary file next to ``dest``, which is renamed onto ``dest`` only once
    complete and verified, so ``dest`` never holds a partial or wrong file. ``sha256`` is of the
    file as downloaded, or of its decompressed bytes when ``sha256_of_decompressed`` is set
    (decompressed according to the suffix of ``dest``: ``.gz`` or ``.bz2``).
    A failed download or a checksum mismatch deletes the temporary file and raises a one-line
    :class:`DataFileError` (a mismatch message ends with ``mismatch_hint``). ``timeout`` (seconds)
    bounds each blocking network operation.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out, _CHUNK)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            # HTTPError's str has the status code; other URLErrors wrap the cause in .reason.
            is_http = isinstance(error, urllib.error.HTTPError)
            reason = error if is_http else getattr(error, "reason", None) or error
            raise DataFileError(f"download of {url} failed: {one_line(reason)}") from error
        for kind, expected in (("sha256", sha256), ("md5", md5)):
            if expected is not None:
                decompress = kind == "sha256" and sha256_of_decompressed
                _verify(tmp, url, kind, expected, decompress, dest.suffix, mismatch_hint)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _verify(path: Path, url: str, kind: str, expected: str, decompress: bool, suffix: str, hint: str) -> None:
    """Raise a one-line DataFileError unless ``path``'s ``kind`` digest is ``expected``."""
    try:
        got = sha256_of(path, decompress_gz=decompress, suffix=suffix) if kind == "sha256" else md5_of(path)
    except (OSError, EOFError, zlib.error) as error:
        raise DataFileError(f"download of {url}: cannot check its {kind}: {one_line(error)}") from error
    if got != expected.lower():
        what = f"{kind} of the decompressed bytes" if decompress else kind
        raise DataFileError(
            f"download of {url}: {what} mismatch: expected {expected.lower()}, got {got}; nothing was kept{hint}"
        )


def _member_target(target: Path, member: tarfile.TarInfo, archive: Path) -> Path:
    """Where ``member`` goes under ``target``; refuse anything that would land outside it."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise DataFileError(f"{archive}: refusing to extract {member.name!r}: it would escape {target}")
    path = (target / Path(*name.parts)).resolve() if name.parts else target.resolve()
    if not path.is_relative_to(target.resolve()):
        raise DataFileError(f"{archive}: refusing to extract {member.name!r}: it would escape {target}")
    return path


def extract_tar(archive: Path, target: Path) -> Path:
    """Extract a (``.tar.gz``, ``.tar.bz2`` or plain) tar archive into ``target``; returns ``target``.

    Only regular files and directories are extracted: absolute names, ``..`` parts, links and
    device files are refused with a one-line DataFileError (before anything is written).
    """
    archive, target = Path(archive), Path(target)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                if not (member.isfile() or member.isdir()):
                    raise DataFileError(f"{archive}: refusing to extract {member.name!r}: not a regular file or directory")
                _member_target(target, member, archive)
            target.mkdir(parents=True, exist_ok=True)
            for member in members:
                path = _member_target(target, member, archive)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have content
                with source, open(path, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
    except (tarfile.TarError, OSError, EOFError) as error:
        if isinstance(error, DataFileError):
            raise
        raise DataFileError(f"{archive}: cannot extract: {one_line(error)}") from error
    return target
