"""Named random delay distributions (loader jitter, straggler compute times).

Each distribution draws from its own ``torch.Generator`` so a seed fixes the whole sequence.
``unit_mean_delay(name, param)`` gives the variant scaled to mean 1, used to jitter a base delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from lightning_echo.errors import ConfigError

DELAY_NAMES = ("exponential", "shifted_exponential", "pareto", "lognormal")


@dataclass(frozen=True)
class DelayDistribution:
    """A positive random delay.

    - ``exponential``: ``scale * Exp(1)``;
    - ``shifted_exponential``: ``shift + scale * Exp(1)``;
    - ``pareto``: ``scale * U^(-1/shape)`` (minimum ``scale``, tail index ``shape``);
    - ``lognormal``: ``exp(log(scale) + sigma * N(0, 1))``.
    """

    name: str
    scale: float = 1.0
    shift: float = 0.0
    shape: float = 3.0
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in DELAY_NAMES:
            raise ConfigError("distribution", self.name, "must be one of " + ", ".join(DELAY_NAMES))
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError("scale", self.scale, "must be a finite number > 0")
        if self.shift < 0:
            raise ConfigError("shift", self.shift, "must be >= 0")
        if self.name == "pareto" and not self.shape > 1:
            raise ConfigError("shape", self.shape, "must be > 1 (a Pareto delay needs a finite mean)")
        if self.name == "lognormal" and not self.sigma >= 0:
            raise ConfigError("sigma", self.sigma, "must be >= 0")

    @property
    def mean(self) -> float:
        """Expected delay."""
        if self.name == "exponential":
            return self.scale
        if self.name == "shifted_exponential":
            return self.shift + self.scale
        if self.name == "pareto":
            return self.scale * self.shape / (self.shape - 1)
        return self.scale * math.exp(self.sigma**2 / 2)

    def sample(self, generator: torch.Generator, n: Optional[int] = None) -> torch.Tensor:
        """``n`` independent delays (a 0-d tensor when ``n`` is None), in float64."""
        size = (n,) if n is not None else ()
        uniform = torch.rand(size, generator=generator, dtype=torch.float64).clamp_min(1e-300)
        if self.name in ("exponential", "shifted_exponential"):
            return self.shift + self.scale * -torch.log(uniform)
        if self.name == "pareto":
            return self.scale * uniform ** (-1.0 / self.shape)
        normal = torch.randn(size, generator=generator, dtype=torch.float64)
        return torch.exp(math.log(self.scale) + self.sigma * normal)


def unit_mean_delay(name: str, param: Optional[float] = None) -> DelayDistribution:
    """The named distribution scaled to mean 1, so ``base * sample`` has mean ``base``.

    ``param`` is the distribution's shape: the shift fraction in [0, 1) for
    ``shifted_exponential`` (default 0.5), the tail index > 1 for ``pareto`` (default 3),
    ``sigma`` for ``lognormal`` (default 0.5); unused by ``exponential``.
    """
    if name not in DELAY_NAMES:
        raise ConfigError("jitter", name, "must be one of " + ", ".join(DELAY_NAMES) + " (or null)")
    if name == "exponential":
        return DelayDistribution("exponential", scale=1.0)
    if name == "shifted_exponential":
        shift = 0.5 if param is None else float(param)
        if not 0 <= shift < 1:
            raise ConfigError("jitter_param", param, "is the shift fraction of shifted_exponential: a number in [0, 1)")
        return DelayDistribution("shifted_exponential", scale=1.0 - shift, shift=shift)
    if name == "pareto":
        shape = 3.0 if param is None else float(param)
        if not shape > 1:
            raise ConfigError("jitter_param", param, "is the tail index of pareto: a number > 1")
        return DelayDistribution("pareto", scale=(shape - 1) / shape, shape=shape)
    sigma = 0.5 if param is None else float(param)
    if not sigma >= 0:
        raise ConfigError("jitter_param", param, "is sigma of lognormal: a number >= 0")
    return DelayDistribution("lognormal", scale=math.exp(-(sigma**2) / 2), sigma=sigma)
