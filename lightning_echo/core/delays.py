"""Named random delay distributions (loader jitter, straggler compute times).

Each distribution draws from its own ``torch.Generator`` so a seed fixes the whole sequence.
``unit_mean_delay(name, param)`` gives the variant scaled to mean 1, used to jitter a base delay.

Straggler simulation reads per-learner compute times from a :class:`ComputeTimeSource`:
:class:`ComputeTimes` (a distribution times a per-learner slowdown) or
:class:`TraceComputeTimes` (recorded times replayed from a CSV file).
"""

from __future__ import annotations

import abc
import csv
import math
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from lightning_echo.errors import ConfigError, one_line, shown_value
from lightning_echo.validation import positive_float, positive_int

# Jitter names (``unit_mean_delay``, the loader throttle); DISTRIBUTION_NAMES adds the ones that
# have no unit-mean form worth jittering with.
DELAY_NAMES = ("exponential", "shifted_exponential", "pareto", "lognormal")
DISTRIBUTION_NAMES = DELAY_NAMES + ("uniform", "constant")
# The numeric fields of a DelayDistribution (each distribution reads some of them).
PARAMETERS = ("scale", "shift", "shape", "sigma", "low", "high", "value")
_LOG_MAX_FLOAT = math.log(sys.float_info.max)


def _finite_number(key: str, value: Any) -> float:
    """``value`` as a float if it is a finite real number (not a bool, not text), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(key, value, "must be a finite number")
    return float(value)


def _overflows(compute: Callable[[], float]) -> bool:
    """Whether ``compute()`` leaves the float range (inf, or OverflowError as math.exp raises)."""
    try:
        return not math.isfinite(compute())
    except OverflowError:
        return True


@dataclass(frozen=True)
class DelayDistribution:
    """A positive random delay.

    - ``exponential``: ``scale * Exp(1)``;
    - ``shifted_exponential``: ``shift + scale * Exp(1)`` (the only one with a ``shift``);
    - ``pareto``: ``scale * U^(-1/shape)`` (minimum ``scale``, tail index ``shape``);
    - ``lognormal``: ``exp(log(scale) + sigma * N(0, 1))``;
    - ``uniform``: uniform on ``[low, high]``;
    - ``constant``: always ``value``.
    """

    name: str
    scale: float = 1.0
    shift: float = 0.0
    shape: float = 3.0
    sigma: float = 0.5
    low: float = 0.0
    high: float = 1.0
    value: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in DISTRIBUTION_NAMES:
            raise ConfigError("distribution", self.name, "must be one of " + ", ".join(DISTRIBUTION_NAMES))
        for key in PARAMETERS:
            object.__setattr__(self, key, _finite_number(key, getattr(self, key)))
        if not self.scale > 0:
            raise ConfigError("scale", self.scale, "must be a finite number > 0")
        self._check_shift()
        if self.name == "pareto" and not self.shape > 1:
            raise ConfigError("shape", self.shape, "must be a finite number > 1 (a Pareto delay needs a finite mean)")
        if self.name == "lognormal":
            self._check_sigma()
        if self.name == "uniform":
            if not self.low >= 0:
                raise ConfigError("low", self.low, "must be a finite number >= 0")
            if not self.high > self.low:
                raise ConfigError("high", self.high, f"must be a finite number > low={self.low}")
        if self.name == "constant":
            positive_float("value", self.value)
        if not math.isfinite(self.mean):
            key = {"uniform": "high", "constant": "value"}.get(self.name, "scale")
            overflow = f"gives {self.name} delays an infinite mean (float overflow): use a smaller value"
            raise ConfigError(key, getattr(self, key), overflow)

    def _check_shift(self) -> None:
        # Only shifted_exponential has a shift in its mean, support, tails and sampler; accepting
        # one elsewhere would sample a shifted delay that every closed form ignores.
        if self.shift < 0:
            raise ConfigError("shift", self.shift, "must be a finite number >= 0")
        if self.shift != 0 and self.name != "shifted_exponential":
            raise ConfigError("shift", self.shift, f"{self.name} delays take no shift: leave it unset (0), or use "
                                                   "distribution shifted_exponential (shift + scale * Exp(1))")

    def _check_sigma(self) -> None:
        # The mean scale * exp(sigma**2 / 2) must be a finite float (and so must exp(sigma**2 / 2)).
        bound = math.sqrt(2.0 * (_LOG_MAX_FLOAT - max(0.0, math.log(self.scale))))
        if self.sigma < 0 or _overflows(lambda: self.mean):
            shown = math.floor(bound * 1000) / 1000
            raise ConfigError("sigma", self.sigma, f"must be a number from 0 to {shown} (for scale={self.scale:g}; "
                                                   "larger gives the mean scale * exp(sigma**2 / 2) past the float range)")

    @property
    def mean(self) -> float:
        """Expected delay."""
        if self.name == "exponential":
            return self.scale
        if self.name == "shifted_exponential":
            return self.shift + self.scale
        if self.name == "pareto":
            return self.scale * self.shape / (self.shape - 1)
        if self.name == "uniform":
            return (self.low + self.high) / 2
        if self.name == "constant":
            return self.value
        return self.scale * math.exp(self.sigma**2 / 2)

    def support(self) -> tuple[float, float]:
        """Smallest and largest possible delay (the largest may be ``inf``)."""
        if self.name == "shifted_exponential":
            return self.shift, math.inf
        if self.name == "pareto":
            return self.scale, math.inf
        if self.name == "uniform":
            return self.low, self.high
        if self.name == "constant":
            return self.value, self.value
        return 0.0, math.inf

    def survival(self, x: float) -> float:
        """``P(delay > x)``, computed directly (not as ``1 - cdf``) so far tails keep their digits."""
        lower, upper = self.support()
        if x < lower:
            return 1.0
        if x >= upper:
            return 0.0
        if self.name in ("exponential", "shifted_exponential"):
            return math.exp(-(x - self.shift) / self.scale)
        if self.name == "pareto":
            return (self.scale / x) ** self.shape
        if self.name == "uniform":
            return (self.high - x) / (self.high - self.low)
        if x <= 0:
            return 1.0
        if self.sigma == 0:
            return 0.0 if x >= self.scale else 1.0
        return 0.5 * math.erfc((math.log(x) - math.log(self.scale)) / (self.sigma * math.sqrt(2.0)))

    def cdf(self, x: float) -> float:
        """``P(delay <= x)``."""
        lower, upper = self.support()
        if x < lower:
            return 0.0
        if x >= upper:
            return 1.0
        if self.name in ("exponential", "shifted_exponential"):
            return -math.expm1(-(x - self.shift) / self.scale)
        if self.name == "lognormal" and x > 0 and self.sigma > 0:
            return 0.5 * math.erfc(-(math.log(x) - math.log(self.scale)) / (self.sigma * math.sqrt(2.0)))
        return 1.0 - self.survival(x)

    def sample(self, generator: torch.Generator, n: Optional[int] = None) -> torch.Tensor:
        """``n`` independent delays (a 0-d tensor when ``n`` is None), in float64."""
        size = (n,) if n is not None else ()
        if self.name == "constant":
            return torch.full(size, self.value, dtype=torch.float64)
        uniform = torch.rand(size, generator=generator, dtype=torch.float64).clamp_min(1e-300)
        if self.name in ("exponential", "shifted_exponential"):
            return self.shift + self.scale * -torch.log(uniform)
        if self.name == "pareto":
            return self.scale * uniform ** (-1.0 / self.shape)
        if self.name == "uniform":
            return self.low + (self.high - self.low) * uniform
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


# -- per-learner compute times -------------------------------------------------------------
class ComputeTimeSource(abc.ABC):
    """Where each learner's mini-batch compute times come from (interface).

    ``sample(learner)`` gives the next compute time of ``learner`` (seconds, finite, > 0);
    ``seeded(seed)`` a fresh, independent copy whose draws the seed fixes; ``state_dict()`` /
    ``load_state_dict()`` carry the position in the sequence (plain, picklable data), so a
    restored copy draws the same times as the original would have.
    """

    learners: Optional[int] = None  # how many learners it describes; None: any number

    @abc.abstractmethod
    def sample(self, learner: int) -> float:
        """The next compute time of ``learner``."""

    @abc.abstractmethod
    def mean(self, learner: int) -> float:
        """The expected (or the trace's average) compute time of ``learner``."""

    @abc.abstractmethod
    def seeded(self, seed: int) -> "ComputeTimeSource":
        """A fresh copy at the start of its sequence, drawing with ``seed``."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The position in the sequence (plain python / tensor data)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`state_dict`."""

    def check_learners(self, learners: int) -> None:
        """Raise ConfigError unless this source can serve ``learners`` learners."""

    def _check_learner(self, learner: int) -> None:
        if self.learners is not None and not 0 <= learner < self.learners:
            raise ConfigError("learner", learner, f"must be between 0 and {self.learners - 1}")


class ComputeTimes(ComputeTimeSource):
    """Learner ``i`` computes a mini-batch in ``speeds[i] * X``, ``X`` drawn from ``distribution``.

    ``speeds[i]`` is a slowdown: learner ``i`` takes ``speeds[i]`` times longer than a learner of
    speed 1. Without ``speeds`` every learner has speed 1 and any number of learners is served
    (``learners`` fixes the count). Draws come from one seeded stream, in the order they are
    requested; they are taken in blocks, so one draw costs a list lookup.

    Example::

        times = ComputeTimes(DelayDistribution("exponential"), speeds=[1.0, 1.0, 4.0], seed=0)
        times.sample(2)  # learner 2 is four times slower on average
    """

    BLOCK = 4096

    def __init__(
        self,
        distribution: DelayDistribution,
        speeds: Optional[Sequence[float]] = None,
        learners: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(distribution, DelayDistribution):
            raise ConfigError("distribution", distribution, "must be a DelayDistribution")
        if learners is not None:
            positive_int("learners", learners)
        if speeds is not None:
            speeds = [positive_float(f"speeds[{i}]", s) for i, s in enumerate(speeds)]
            if not speeds:
                raise ConfigError("speeds", speeds, "must hold one slowdown > 0 per learner")
            if learners is not None and len(speeds) != learners:
                raise ConfigError("speeds", speeds, f"must hold one slowdown per learner: {learners} entries")
            learners = len(speeds)
        self.distribution = distribution
        self.speeds: Optional[list[float]] = speeds
        self.learners = learners
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._refill()

    def _refill(self) -> None:
        # The generator state before the block is all a checkpoint needs to redraw it.
        self._block_start = self._generator.get_state()
        self._block = self.distribution.sample(self._generator, self.BLOCK).tolist()
        self._index = 0

    def sample(self, learner: int) -> float:
        if self.learners is not None and not 0 <= learner < self.learners:
            self._check_learner(learner)
        if self._index == self.BLOCK:
            self._refill()
        draw = self._block[self._index]
        self._index += 1
        return draw * self.speeds[learner] if self.speeds is not None else draw

    def mean(self, learner: int) -> float:
        self._check_learner(learner)
        return self.distribution.mean * (self.speeds[learner] if self.speeds is not None else 1.0)

    def seeded(self, seed: int) -> "ComputeTimes":
        return ComputeTimes(self.distribution, self.speeds, self.learners, seed)

    def check_learners(self, learners: int) -> None:
        if self.learners is None or self.learners == learners:
            return
        if self.speeds is None:
            raise ConfigError("learners", self.learners, f"must equal stale.learners={learners}")
        raise ConfigError("speeds", self.speeds, f"must hold one slowdown per learner: {learners} entries")

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "block_start": self._block_start.clone(), "index": self._index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self._generator.set_state(state["block_start"])
        self._refill()
        self._index = int(state["index"])


HEADERS = "'learner,seconds' or 'seconds'"


def _trace_path(path: Any) -> Path:
    """``path`` as a Path if it names an existing file, else ConfigError."""
    try:
        found = Path(path)
        exists = found.is_file()
    except (TypeError, ValueError):  # not a path at all, or one with a NUL byte
        raise ConfigError("trace", path, f"must be the path of a CSV file (header {HEADERS})") from None
    if not exists:
        raise ConfigError("trace", str(found), f"must be an existing CSV file (header {HEADERS})")
    return found


def _csv_rows(path: Path) -> list[list[str]]:
    """The non-blank rows of a UTF-8 CSV file, each cell stripped; ConfigError for a file that is
    not one (binary, another encoding, unreadable)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [[cell.strip() for cell in row] for row in csv.reader(handle) if any(c.strip() for c in row)]
    except UnicodeDecodeError:
        raise ConfigError("trace", str(path), f"is not UTF-8 text: it must be a CSV file (header {HEADERS})") from None
    except csv.Error as error:
        raise ConfigError("trace", str(path), f"is not a CSV file ({one_line(error)}): header {HEADERS}") from None
    except OSError as error:
        raise ConfigError("trace", str(path), f"cannot be read ({error.strerror or error})") from None


class TraceComputeTimes(ComputeTimeSource):
    """Recorded compute times, replayed in order and from the start again when exhausted.

    Either ``per_learner[i]`` is learner ``i``'s own sequence, or ``shared`` is one sequence
    that every learner draws from in turn (in the order computations start: the simulation
    starts learners that start at the same instant in index order). No randomness: the seed of
    :meth:`seeded` is ignored.
    """

    def __init__(
        self,
        per_learner: Optional[Sequence[Sequence[float]]] = None,
        shared: Optional[Sequence[float]] = None,
        source: str = "trace",
    ) -> None:
        if (per_learner is None) == (shared is None):
            raise ConfigError("trace", source, "give either per-learner times or one shared sequence")
        self.source = source
        if per_learner is not None:
            self._times = [[self._checked(t, f"learner {i}") for t in times] for i, times in enumerate(per_learner)]
            empty = [i for i, times in enumerate(self._times) if not times]
            if not self._times or empty:
                raise ConfigError("trace", source, f"has no times for learner {empty[0] if empty else 0}")
            self.learners = len(self._times)
        else:
            self._times = [[self._checked(t, "shared") for t in shared]]
            if not self._times[0]:
                raise ConfigError("trace", source, "holds no compute times")
            self.learners = None
        self._positions = [0] * len(self._times)

    def _checked(self, seconds: Any, where: str) -> float:
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            where = f"{self.source} ({where}): {seconds}"
            raise ConfigError("trace", where, "compute times must be finite numbers > 0")
        return value

    @classmethod
    def from_csv(cls, path: Union[str, Path], learners: Optional[int] = None) -> "TraceComputeTimes":
        """Read a trace with header ``learner,seconds`` (each learner replays its own rows in
        file order; ids must be 0..N-1, each with rows, N = ``learners`` when given: a larger id
        is refused as it is read) or header ``seconds`` (one sequence shared by all learners).
        A file that is not UTF-8 CSV text is refused in one line."""
        path = _trace_path(path)
        rows = _csv_rows(path)
        if not rows:
            raise ConfigError("trace", str(path), "is empty: it needs a header 'learner,seconds' or 'seconds' and rows")
        header, body = [cell.lower() for cell in rows[0]], rows[1:]
        if header not in (["learner", "seconds"], ["seconds"]):
            raise ConfigError("trace", str(path), f"has header {shown_value(','.join(rows[0]))}: must be {HEADERS}")
        if not body:
            raise ConfigError("trace", str(path), "holds no compute times")
        if any(len(row) != len(header) for row in body):
            raise ConfigError("trace", str(path), f"every row must have {len(header)} column(s) like the header")
        if header == ["seconds"]:
            return cls(shared=[row[0] for row in body], source=str(path))
        per_learner: dict[int, list[str]] = {}
        for learner, seconds in body:
            per_learner.setdefault(cls._learner_id(learner, path, learners), []).append(seconds)
        count = learners if learners is not None else max(per_learner) + 1
        # The first id without rows lies below len(per_learner) + 1 whatever the largest id is,
        # so this stops early for a trace with one huge id.
        missing = next((i for i in range(count) if i not in per_learner), None)
        if missing is not None:
            raise ConfigError("trace", str(path), f"has no rows for learner {missing} (ids must run 0..{count - 1})")
        return cls(per_learner=[per_learner[i] for i in range(count)], source=str(path))

    @staticmethod
    def _learner_id(text: str, path: Path, learners: Optional[int]) -> int:
        try:
            learner = int(text)
        except ValueError:
            learner = -1
        if learner < 0 or (learners is not None and learner >= learners):
            top = f"{learners - 1} (stale.learners={learners})" if learners is not None else "N-1"
            raise ConfigError("trace", f"{path} (learner {text})", f"learner ids must be integers 0..{top}")
        return learner

    def _sequence(self, learner: int) -> int:
        self._check_learner(learner)
        return learner if self.learners is not None else 0

    def sample(self, learner: int) -> float:
        which = self._sequence(learner)
        times, position = self._times[which], self._positions[which]
        self._positions[which] = (position + 1) % len(times)
        return times[position]

    def mean(self, learner: int) -> float:
        times = self._times[self._sequence(learner)]
        return sum(times) / len(times)

    def seeded(self, seed: int) -> "TraceComputeTimes":
        if self.learners is not None:
            return TraceComputeTimes(per_learner=self._times, source=self.source)
        return TraceComputeTimes(shared=self._times[0], source=self.source)

    def check_learners(self, learners: int) -> None:
        if self.learners is not None and self.learners != learners:
            counts = f"has times for {self.learners} learners, not stale.learners={learners}"
            raise ConfigError("trace", self.source, counts)

    def state_dict(self) -> dict[str, Any]:
        return {"positions": list(self._positions)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        positions = [int(p) for p in state["positions"]]
        if len(positions) != len(self._positions):
            raise ConfigError("trace", self.source, "state was saved for a trace with another number of learners")
        self._positions = [p % len(times) for p, times in zip(positions, self._times)]
