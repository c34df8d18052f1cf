"""How many times each fresh batch (or example) is served: the echo-factor rules.

- a number ``e >= 1``: ``floor(e)`` times, plus once more with probability ``e - floor(e)``
  (Choi et al.'s rule for non-integer factors), drawn from a seeded generator; where the number
  of fresh batches in a pass is known, the extra serves are spread over exactly
  ``round((e - floor(e)) * n)`` of its ``n`` batches, so every pass has the same length
  (:func:`draw_pass_repeats`, :func:`steps_per_pass`);
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


def extra_serves(factor: float, fresh_batches: int) -> int:
    """How many of ``fresh_batches`` batches are served ``floor(factor) + 1`` times in one pass
    at a fixed ``factor``: ``(factor - floor(factor)) * fresh_batches``, rounded half up."""
    return math.floor((factor - math.floor(factor)) * fresh_batches + 0.5)


def steps_per_pass(factor: float, fresh_batches: int) -> int:
    """Optimizer steps in one pass over ``fresh_batches`` batches at a fixed ``factor``:
    ``floor(factor) * fresh_batches + extra_serves(factor, fresh_batches)``."""
    return math.floor(factor) * fresh_batches + extra_serves(factor, fresh_batches)


def draw_pass_repeats(factor: float, fresh_batches: int, generator: torch.Generator) -> torch.Tensor:
    """Times to serve each of the ``fresh_batches`` batches of one pass: ``floor(factor)``, and once
    more for ``extra_serves`` of them drawn at random without replacement, so each batch is served
    ``factor`` times on average (up to the rounding) and the pass is exactly
    ``steps_per_pass(factor, fresh_batches)`` steps."""
    repeats = torch.full((fresh_batches,), math.floor(factor), dtype=torch.int64)
    chosen = torch.randperm(fresh_batches, generator=generator)[: extra_serves(factor, fresh_batches)]
    repeats[chosen] += 1
    return repeats


def adaptive_should_echo(served: int, max_factor: int, fresh_ready: bool) -> bool:
    """Serve the current batch again? Only if a fresh one is not waiting and the cap is not reached."""
    return served < max_factor and not fresh_ready
