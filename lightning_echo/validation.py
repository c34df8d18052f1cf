"""Small argument checks shared by every layer; each raises :class:`ConfigError`."""

from __future__ import annotations

import math
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
