"""The ``stale.delay`` setting as a compute-time source for the simulated learners.

``{"distribution": "exponential", "scale": 1.0}`` (any of the shared delay distributions and
their parameters), optionally ``"speeds": [1, 1, 4, ...]`` (learner ``i`` is ``speeds[i]``
times slower), or ``{"trace": "times.csv"}`` (recorded compute times, replayed).

A trace replaces the distribution: next to it, ``distribution`` and ``scale`` at their defaults
(``exponential``, ``1.0``, what ``conf/config.yaml`` sets) are ignored, so ``stale.delay.trace=...``
alone works from the shell; any other distribution setting, or ``speeds``, is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Mapping, Optional

from lightning_echo.core.delays import (
    DISTRIBUTION_NAMES,
    PARAMETERS,
    ComputeTimes,
    ComputeTimeSource,
    DelayDistribution,
    TraceComputeTimes,
)
from lightning_echo.errors import ConfigError

KEYS = ("distribution", "speeds", "trace", *PARAMETERS)
# The delay when nothing is set; a trace ignores these values (the config's defaults) next to it.
DEFAULT_DISTRIBUTION: Mapping[str, Any] = {"distribution": "exponential", "scale": 1.0}


def compute_times_from_config(delay: Mapping[str, Any], learners: Optional[int] = None) -> ComputeTimeSource:
    """Build the compute-time source a ``stale.delay`` mapping describes (errors name ``stale.delay.*``).

    ``learners`` (P, when known) lets a trace refuse learner ids >= P while it is read.
    """
    delay = _set_keys(delay)
    try:
        if "trace" in delay:
            return _trace(delay, learners)
        return _distribution(delay, learners)
    except ConfigError as error:
        raise error.with_prefix("stale.delay.") from None


def _set_keys(delay: Any) -> dict[str, Any]:
    """The keys of ``delay`` that are set (not None); ConfigError for an unknown key."""
    if not isinstance(delay, Mapping):
        raise ConfigError("stale.delay", delay, "must be a mapping such as {distribution: exponential, scale: 1.0} "
                                                "or {trace: times.csv}")
    delay = {k: v for k, v in delay.items() if v is not None}
    unknown = sorted(set(delay) - set(KEYS), key=str)
    if unknown:
        raise ConfigError(f"stale.delay.{unknown[0]}", delay[unknown[0]], "is not a delay setting; use " + ", ".join(KEYS))
    return delay


def _trace(delay: dict[str, Any], learners: Optional[int]) -> TraceComputeTimes:
    """The trace ``delay`` names; ConfigError if a distribution setting is set next to it."""
    others = [k for k in KEYS if k in delay and k != "trace" and not _is_default(k, delay[k])]
    if others:
        replaced = (f"is set next to stale.delay.trace={delay['trace']!r}, which replaces the distribution: "
                    "leave distribution, its parameters and speeds unset")
        raise ConfigError(others[0], delay[others[0]], replaced)
    return TraceComputeTimes.from_csv(delay["trace"], learners=learners)


def _is_default(key: str, value: Any) -> bool:
    """Whether ``value`` is the config's default for ``key`` (``scale: 1`` counts, ``true`` does not)."""
    default = DEFAULT_DISTRIBUTION.get(key)
    return default is not None and type(value) in (type(default), int) and value == default


def _distribution(delay: dict[str, Any], learners: Optional[int]) -> ComputeTimes:
    name = delay.pop("distribution", DEFAULT_DISTRIBUTION["distribution"])
    if name not in DISTRIBUTION_NAMES:
        raise ConfigError("distribution", name, "must be one of " + ", ".join(DISTRIBUTION_NAMES))
    speeds = delay.pop("speeds", None)
    if speeds is not None and (isinstance(speeds, (str, bytes, Mapping)) or not isinstance(speeds, Iterable)):
        raise ConfigError("speeds", speeds, "must be a list of slowdowns > 0, one per learner, e.g. [1, 1, 4]")
    parameters = {k: _number_from_text(v) for k, v in delay.items()}
    return ComputeTimes(DelayDistribution(name, **parameters), speeds=list(speeds) if speeds is not None else None,
                        learners=learners if speeds is None else None)


def _number_from_text(value: Any) -> Any:
    """A number written as text (``"0.5"``) as a float; anything else as is, for
    :class:`DelayDistribution` to accept or refuse in one line."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
