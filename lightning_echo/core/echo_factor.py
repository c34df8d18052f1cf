"""How many times each fresh batch (or example) is served: the echo-factor rules.

- a number ``e >= 1``: ``floor(e)`` times, plus once more with probability ``e - floor(e)``
  (Choi et al.'s rule for non-integer factors), drawn from a seeded generator;
- ``"auto"``: serve again only while the next fresh batch is not ready, at most ``max_factor``
  times in all (see :func:`adaptive_should_echo`).
"""

from __future__ import annotations

import math
from typing import Union

import torch

from lightning_echo.errors import ConfigError

EchoFactor = Union[float, int, str]
AUTO = "auto"


def check_echo_factor(factor: EchoFactor, max_factor: int) -> EchoFactor:
    """Validate ``factor`` (a number >= 1 or ``"auto"``) and ``max_factor`` (an integer >= 1)."""
    if isinstance(max_factor, bool) or not isinstance(max_factor, int) or max_factor < 1:
        raise ConfigError("max_factor", max_factor, "must be an integer >= 1")
    if factor == AUTO:
        return AUTO
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
        raise ConfigError("factor", factor, "must be a number >= 1 or 'auto'")
    return factor


def is_integer_factor(factor: EchoFactor) -> bool:
    """True for a fixed whole-number factor (each batch served exactly that many times)."""
    return factor != AUTO and float(factor).is_integer()


def draw_repeats(factor: float, generator: torch.Generator) -> int:
    """Times to serve one fresh item: ``floor(factor)`` plus a Bernoulli(``factor - floor``) extra."""
    whole = math.floor(factor)
    fraction = factor - whole
    if fraction == 0:
        return int(whole)
    extra = torch.rand((), generator=generator, dtype=torch.float64).item() < fraction
    return int(whole) + int(extra)


def adaptive_should_echo(served: int, max_factor: int, fresh_ready: bool) -> bool:
    """Serve the current batch again? Only if a fresh one is not waiting and the cap is not reached."""
    return served < max_factor and not fresh_ready
