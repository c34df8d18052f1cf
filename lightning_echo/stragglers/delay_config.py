"""The ``stale.delay`` setting as a compute-time source for the simulated learners.

``{"distribution": "exponential", "scale": 1.0}`` (any of the shared delay distributions and
their parameters), optionally ``"speeds": [1, 1, 4, ...]`` (learner ``i`` is ``speeds[i]``
times slower), or ``{"trace": "times.csv"}`` (recorded compute times, replayed).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from lightning_echo.core.delays import (
    DISTRIBUTION_NAMES,
    ComputeTimes,
    ComputeTimeSource,
    DelayDistribution,
    TraceComputeTimes,
)
from lightning_echo.errors import ConfigError

DISTRIBUTION_PARAMETERS = ("scale", "shift", "shape", "sigma", "low", "high", "value")
KEYS = ("distribution", "speeds", "trace", *DISTRIBUTION_PARAMETERS)


def compute_times_from_config(delay: Mapping[str, Any], learners: Optional[int] = None) -> ComputeTimeSource:
    """Build the compute-time source a ``stale.delay`` mapping describes (errors name ``stale.delay.*``)."""
    delay = {k: v for k, v in dict(delay).items() if v is not None}
    unknown = sorted(set(delay) - set(KEYS))
    if unknown:
        raise ConfigError(f"stale.delay.{unknown[0]}", delay[unknown[0]], "is not a delay setting; use " + ", ".join(KEYS))
    try:
        if "trace" in delay:
            if "speeds" in delay or "distribution" in delay:
                raise ConfigError("stale.delay.trace", delay["trace"], "replaces the distribution: leave distribution and speeds unset")
            return TraceComputeTimes.from_csv(delay["trace"], learners=learners)
        name = delay.pop("distribution", "exponential")
        if name not in DISTRIBUTION_NAMES:
            raise ConfigError("stale.delay.distribution", name, "must be one of " + ", ".join(DISTRIBUTION_NAMES))
        speeds = delay.pop("speeds", None)
        parameters = {k: float(v) for k, v in delay.items()}
        return ComputeTimes(DelayDistribution(name, **parameters), speeds=list(speeds) if speeds is not None else None,
                            learners=learners if speeds is None else None)
    except ConfigError as error:
        raise error.with_prefix("stale.delay.") from None
