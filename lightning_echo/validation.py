"""Small argument checks shared by every layer; each raises :class:`ConfigError`."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from lightning_echo.errors import ConfigError


def positive_int(key: str, value: Any) -> int:
    """Return ``value`` if it is an integer >= 1, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be a positive integer")
    return value


def non_negative_int(key: str, value: Any) -> int:
    """Return ``value`` if it is an integer >= 0, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, value, "must be an integer >= 0")
    return value


MAX_SEED = 2**32 - 1  # numpy's and Lightning's seeds are unsigned 32-bit integers
MAX_INT64 = 2**63 - 1


def boolean(key: str, value: Any) -> bool:
    """Return ``value`` if it is true or false (not a string such as ``maybe``), else raise ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "must be true or false")
    return value


def random_seed(key: str, value: Any) -> int:
    """Return ``value`` if it is an integer seed in ``[0, 2**32 - 1]``, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(key, value, f"must be an integer from 0 to {MAX_SEED}")
    return value


def positive_float(key: str, value: Any) -> float:
    """Return ``value`` as float if it is a finite number > 0, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(key, value, "must be a finite number > 0")
    return float(value)


def non_negative_float(key: str, value: Any) -> float:
    """Return ``value`` as float if it is a finite number >= 0, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(key, value, "must be a finite number >= 0")
    return float(value)


def fraction(key: str, value: Any, *, allow_zero: bool = True, allow_one: bool = False) -> float:
    """Return ``value`` if it lies in [0, 1) (bounds adjustable), else raise ConfigError."""
    low = "[0" if allow_zero else "(0"
    high = "1]" if allow_one else "1)"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (value <= 1 if allow_one else value < 1)
    if not ok:
        raise ConfigError(key, value, f"must be a number in {low}, {high}")
    return float(value)


def one_of(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise ConfigError listing them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(key, value, "must be one of " + ", ".join(map(str, allowed)))
    return value


def writable_directory(key: str, value: Any, path: Path) -> Path:
    """Return ``path`` if files can be written there: it is a directory, or it can be created
    because its nearest existing ancestor is a writable directory; else raise ConfigError.

    Writability is probed by creating and removing a temporary directory (permission bits do not
    tell for root or on a read-only mount); nothing stays behind.
    """
    path = Path(os.path.expanduser(str(path)))
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if existing is None:
        raise ConfigError(key, value, f"no part of {path} exists")
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(key, value, f"{path} {what}; give a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lightning-echo-write-check-", dir=existing))
    except OSError as error:
        raise ConfigError(key, value, f"cannot write into {existing} ({error.strerror}); give a writable directory") from None
    return path
