"""Fit each rank's recorded compute times with the delay models' families (pure: torch and math).

Per rank, and pooled over ranks after dividing each rank's times by its speed (its median over
the median of all times), by maximum likelihood in closed form:

- ``exponential``: ``scale = mean``;
- ``shifted_exponential``: ``shift = min``, ``scale = mean - min``;
- ``pareto``: ``scale = min``, ``shape = n / sum(log(x / min))`` (a tail index <= 1 has no
  finite mean: reported, but it cannot drive a simulation);
- ``lognormal``: ``scale = exp(mean(log x))``, ``sigma = std(log x)`` (the 1/n MLE).

How well: the log-likelihood, AIC and BIC (families are ranked by BIC, whose log(n) penalty keeps
the exponential ahead of the shifted exponential it is nested in when the shift is noise) and the
Kolmogorov-Smirnov distance, against its 5% critical value ``1.358 / sqrt(n)`` (conservative here:
the parameters come from the same data). The trace itself is always there too: the empirical
model, replayed by :meth:`TraceFit.trace_source`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from lightning_echo.advisor.trace import StepTrace, percentile
from lightning_echo.core.delays import ComputeTimes, DelayDistribution, TraceComputeTimes
from lightning_echo.errors import ConfigError

FAMILIES = ("exponential", "shifted_exponential", "pareto", "lognormal")
_PARAMETERS = {"exponential": 1, "shifted_exponential": 2, "pareto": 2, "lognormal": 2, "constant": 1}
KS_5_PERCENT = 1.358  # the Kolmogorov distribution's 95% quantile: D * sqrt(n) above it rejects at 5%
MEDIAN_Z = 2.576  # a rank's speed differs from the others' when the overall median leaves its 99% interval
SPEED_TOLERANCE = 0.05  # ... and by more than 5%


@dataclass(frozen=True)
class FamilyFit:
    """One family fitted to ``samples`` times: the model (None when the MLE is no usable delay
    model, ``note`` says why), its log-likelihood and Kolmogorov-Smirnov distance."""

    family: str
    distribution: Optional[DelayDistribution]
    log_likelihood: float
    ks: float
    samples: int
    note: str = ""

    @property
    def parameters(self) -> int:
        return _PARAMETERS[self.family]

    @property
    def aic(self) -> float:
        return 2 * self.parameters - 2 * self.log_likelihood

    @property
    def bic(self) -> float:
        return self.parameters * math.log(self.samples) - 2 * self.log_likelihood

    @property
    def ks_critical(self) -> float:
        """The KS distance above which the family is rejected at the 5% level."""
        return KS_5_PERCENT / math.sqrt(self.samples)

    @property
    def acceptable(self) -> bool:
        """Usable, and not rejected by the KS test at the 5% level."""
        return self.distribution is not None and self.ks <= self.ks_critical

    def describe(self) -> str:
        """``lognormal(scale=0.0213, sigma=0.41)``, or the family and its note."""
        d = self.distribution
        if d is None:
            return f"{self.family} ({self.note})"
        values = {"exponential": ("scale",), "shifted_exponential": ("shift", "scale"), "pareto": ("scale", "shape"),
                  "lognormal": ("scale", "sigma"), "constant": ("value",)}[self.family]
        return f"{self.family}(" + ", ".join(f"{k}={getattr(d, k):.4g}" for k in values) + ")"


@dataclass(frozen=True)
class RankFit:
    """One rank's compute times (seconds > 0, in step order) and every family's fit, best first."""

    rank: int
    times: tuple[float, ...]
    fits: tuple[FamilyFit, ...]

    @property
    def best(self) -> FamilyFit:
        """The usable family of lowest BIC (the first fit when none is usable)."""
        return next((f for f in self.fits if f.distribution is not None), self.fits[0])

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def mean(self) -> float:
        return math.fsum(self.times) / len(self.times)

    @property
    def p99(self) -> float:
        return percentile(self.times, 99.0)

    @property
    def autocorrelation(self) -> float:
        """Lag-1 autocorrelation of the times: near 0 for independent draws, as the models assume."""
        return lag_one_autocorrelation(self.times)

    def fit_of(self, family: str) -> FamilyFit:
        return next(f for f in self.fits if f.family == family)


@dataclass(frozen=True)
class TraceFit:
    """The fits of every rank, their speeds (rank median / median of all times) and the pooled fit of
    the speed-normalised times: ``model()`` is the fitted cluster, ``trace_source()`` the recorded one."""

    ranks: tuple[RankFit, ...]
    speeds: tuple[float, ...]
    pooled: RankFit
    homogeneous: bool
    notes: tuple[str, ...] = ()

    @property
    def best(self) -> FamilyFit:
        return self.pooled.best

    @property
    def learners(self) -> int:
        return len(self.ranks)

    @property
    def slowest_over_median(self) -> float:
        """The slowest rank's median over the median of the ranks' medians."""
        medians = [r.median for r in self.ranks]
        return max(medians) / statistics.median(medians)

    def model(self, learners: Optional[int] = None) -> ComputeTimes:
        """The pooled best family times each rank's speed (``learners`` > ranks: the ranks' speeds in
        turn); equal speeds are left out when the ranks do not differ measurably."""
        distribution = self.best.distribution
        if distribution is None:
            raise ConfigError("trace", self.best.family, f"has no usable fitted model ({self.best.note}): replay the trace")
        count = learners or self.learners
        if self.homogeneous:
            return ComputeTimes(distribution, learners=count)
        return ComputeTimes(distribution, speeds=[self.speeds[i % self.learners] for i in range(count)])

    def trace_source(self, learners: Optional[int] = None) -> TraceComputeTimes:
        """The recorded times, each learner replaying its rank's (``learners`` > ranks: the ranks in turn)."""
        count = learners or self.learners
        return TraceComputeTimes(per_learner=[self.ranks[i % self.learners].times for i in range(count)],
                                 source="recorded trace")


def fit_family(family: str, times: Sequence[float]) -> FamilyFit:
    """The maximum-likelihood fit of ``family`` to ``times`` (all > 0, at least two)."""
    if family not in FAMILIES:
        raise ConfigError("family", family, "must be one of " + ", ".join(FAMILIES))
    x = torch.tensor(list(times), dtype=torch.float64)
    n = x.numel()
    low, mean = float(x.min()), float(x.mean())
    logs = torch.log(x)
    if family == "exponential":
        distribution: Optional[DelayDistribution] = DelayDistribution("exponential", scale=mean)
        return _scored(family, distribution, -n * math.log(mean) - n, x)
    if family == "shifted_exponential":
        scale = mean - low
        if not scale > 0:
            return FamilyFit(family, None, -math.inf, 1.0, n, "all times equal")
        return _scored(family, DelayDistribution(family, scale=scale, shift=low), -n * math.log(scale) - n, x)
    if family == "pareto":
        total = float((logs - math.log(low)).sum())
        if not total > 0:
            return FamilyFit(family, None, -math.inf, 1.0, n, "all times equal")
        shape = n / total
        likelihood = n * math.log(shape) + n * shape * math.log(low) - (shape + 1) * float(logs.sum())
        if not shape > 1:
            ks = _ks(x, lambda t: 1 - (low / t) ** shape)
            return FamilyFit(family, None, likelihood, ks, n, f"tail index {shape:.3g} <= 1: infinite mean")
        return _scored(family, DelayDistribution("pareto", scale=low, shape=shape), likelihood, x)
    mu, sigma = float(logs.mean()), float(logs.std(unbiased=False))
    if not sigma > 0:
        return FamilyFit(family, None, -math.inf, 1.0, n, "all times equal")
    likelihood = -float(logs.sum()) - n * math.log(sigma) - n / 2 * math.log(2 * math.pi) - n / 2
    try:
        distribution = DelayDistribution("lognormal", scale=math.exp(mu), sigma=sigma)
    except ConfigError as error:  # a mean past the float range
        return FamilyFit(family, None, likelihood, 1.0, n, error.allowed)
    return _scored(family, distribution, likelihood, x)


def _scored(family: str, distribution: DelayDistribution, likelihood: float, x: torch.Tensor) -> FamilyFit:
    return FamilyFit(family, distribution, likelihood, _ks(x, lambda t: _cdf(distribution, t)), x.numel())


def _cdf(d: DelayDistribution, t: torch.Tensor) -> torch.Tensor:
    """``d``'s CDF at every point of ``t`` (vectorised :meth:`DelayDistribution.cdf`)."""
    if d.name in ("exponential", "shifted_exponential"):
        return (-torch.expm1(-(t - d.shift).clamp_min(0) / d.scale))
    if d.name == "pareto":
        return (1 - (d.scale / t.clamp_min(d.scale)) ** d.shape)
    return 0.5 * torch.erfc(-(torch.log(t) - math.log(d.scale)) / (d.sigma * math.sqrt(2.0)))


def _ks(x: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov distance between the sample ``x`` and a continuous ``cdf``."""
    ordered, _ = torch.sort(x)
    n = ordered.numel()
    f = cdf(ordered)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - f, f - (i - 1) / n).max())


def fit_times(times: Sequence[float], rank: int = 0) -> RankFit:
    """Every family fitted to ``times`` (seconds > 0, at least two), best (lowest BIC) first."""
    values = tuple(float(t) for t in times)
    if len(values) < 2 or not all(math.isfinite(t) and t > 0 for t in values):
        raise ConfigError("trace", f"rank {rank}", "needs at least two compute times, all finite and > 0, to fit")
    if max(values) - min(values) <= 1e-12 * max(values):  # a constant injected delay: no family has a density there
        constant = FamilyFit("constant", DelayDistribution("constant", value=values[0]), math.inf, 0.0, len(values))
        others = tuple(FamilyFit(f, None, -math.inf, 1.0, len(values), "all times equal") for f in FAMILIES)
        return RankFit(rank, values, (constant, *others))
    fits = [fit_family(family, values) for family in FAMILIES]
    fits.sort(key=lambda f: (f.distribution is None, f.bic))
    return RankFit(rank, values, tuple(fits))


def fit_trace(per_rank: Sequence[Sequence[float]], ranks: Optional[Sequence[int]] = None) -> TraceFit:
    """Fit each rank's compute times and the pooled, speed-normalised times of all ranks."""
    labels = list(ranks) if ranks is not None else list(range(len(per_rank)))
    fits = tuple(fit_times(times, rank) for times, rank in zip(per_rank, labels))
    if not fits:
        raise ConfigError("trace", None, "holds no rank with compute times")
    overall = statistics.median(t for r in fits for t in r.times)
    speeds = tuple(r.median / overall for r in fits)
    homogeneous = all(_same_speed(r.times, overall) for r in fits)
    pooled_times = [t / (1.0 if homogeneous else s) for r, s in zip(fits, speeds) for t in r.times]
    notes = []
    correlated = [r.rank for r in fits if abs(r.autocorrelation) > 0.3]
    if correlated:
        notes.append(f"ranks {', '.join(map(str, correlated))}: compute times are correlated from step to step "
                     "(lag-1 autocorrelation > 0.3): the fitted i.i.d. models understate runs of slow steps, the replay keeps them")
    return TraceFit(fits, speeds, fit_times(pooled_times, rank=-1), homogeneous, tuple(notes))


def _same_speed(times: Sequence[float], overall: float) -> bool:
    """Whether ``overall`` lies in the rank's 99% median interval, or within 5% of its median."""
    ordered = sorted(times)
    n = len(ordered)
    half = MEDIAN_Z * math.sqrt(n) / 2
    low = ordered[max(0, math.floor(n / 2 - half))]
    high = ordered[min(n - 1, math.ceil(n / 2 + half))]
    return low <= overall <= high or abs(statistics.median(ordered) / overall - 1) <= SPEED_TOLERANCE


def lag_one_autocorrelation(values: Sequence[float]) -> float:
    """The lag-1 autocorrelation of ``values`` (0 for fewer than three or constant values)."""
    n = len(values)
    if n < 3:
        return 0.0
    mean = math.fsum(values) / n
    centred = [v - mean for v in values]
    variance = math.fsum(c * c for c in centred)
    if variance <= 0:
        return 0.0
    return math.fsum(a * b for a, b in zip(centred, centred[1:])) / variance



def fit_step_trace(trace: StepTrace) -> TraceFit:
    """:func:`fit_trace` on a recorded trace: each rank's positive compute times (a rank that computed
    nothing, such as a parameter server's rank 0, is left out with a note)."""
    per_rank, ranks, left_out = [], [], []
    for rank in trace.ranks:
        times = [t for t in trace.compute_times(rank) if t > 0]
        if len(times) < 2:
            left_out.append(rank)
            continue
        per_rank.append(times)
        ranks.append(rank)
    if not per_rank:
        raise ConfigError("trace", trace.source, "holds no compute times > 0: nothing to fit")
    fit = fit_trace(per_rank, ranks)
    if left_out:
        note = f"ranks {', '.join(map(str, left_out))} recorded no compute times: left out (a server, or a rank that only waited)"
        fit = TraceFit(fit.ranks, fit.speeds, fit.pooled, fit.homogeneous, (*fit.notes, note))
    return fit
