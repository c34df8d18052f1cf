"""Expected time per parameter-server update of the SGD variants (Dutta et al. 2018, Sec. 3.1, 4).

P learners with i.i.d. compute times X per mini-batch; ``X_{K:P}`` is the K-th smallest of P
draws. Per update:

- K-sync: ``E[X_{K:P}]`` (Lemma 3); sync is K = P;
- K-batch-async: ``K E[X] / P`` for any X (Lemma 4, renewal theory); async is K = 1;
- K-async: ``E[X_{K:P}]`` for exponential X (Lemma 5 with equality), an upper bound for
  new-longer-than-used X (shifted exponential is one; Pareto with a positive minimum is not, so
  there it bounds nothing);
- K-batch-sync: ``K / (P mu)`` for exponential X with rate mu (Sec. 4.1), no closed form otherwise;
- Theorem 1: ``E[T_sync] / E[T_async] = P E[X_{P:P}] / E[X]``; Theorem 2: ``P E[X_{K:P}] / (K E[X])``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence

from lightning_echo.core.delays import DelayDistribution
from lightning_echo.core.schedule import VariantSpec
from lightning_echo.errors import ConfigError
from lightning_echo.validation import positive_float, positive_int

_PANEL_WIDTH = 0.125  # in log(x - lower): the integrand varies on a scale >= ~0.5 there
_GAUSS_POINTS = 8


def _check_k_p(k: int, p: int) -> None:
    positive_int("stale.learners", p)
    positive_int("stale.k", k)
    if k > p:
        raise ConfigError("stale.k", k, f"must be between 1 and stale.learners={p} for an order statistic")


def _harmonic(n: int) -> float:
    return math.fsum(1.0 / i for i in range(1, n + 1))


def expected_order_statistic(dist: DelayDistribution, k: int, p: int) -> float:
    """``E[X_{K:P}]``, the expected K-th smallest of ``p`` i.i.d. draws of ``dist``.

    Exact for exponential and shifted exponential (``shift + scale (H_P - H_{P-K})``), uniform,
    constant and Pareto (``scale Gamma(P+1) Gamma(P-K+1-1/a) / (Gamma(P-K+1) Gamma(P+1-1/a))``);
    numerical integration (:func:`order_statistic_by_integration`) otherwise.
    """
    _check_k_p(k, p)
    if dist.name in ("exponential", "shifted_exponential"):
        return dist.shift + dist.scale * (_harmonic(p) - _harmonic(p - k))
    if dist.name == "constant":
        return dist.value
    if dist.name == "lognormal" and dist.sigma == 0:
        return dist.scale
    if dist.name == "uniform":
        return dist.low + (dist.high - dist.low) * k / (p + 1)
    if dist.name == "pareto":
        # X = scale U^(-1/a): the K-th smallest X is the (P-K+1)-th smallest U ~ Beta(P-K+1, K).
        c, j = 1.0 / dist.shape, p - k + 1
        return dist.scale * math.exp(math.lgamma(p + 1) + math.lgamma(j - c) - math.lgamma(j) - math.lgamma(p + 1 - c))
    return order_statistic_by_integration(dist, k, p)


def order_statistic_by_integration(dist: DelayDistribution, k: int, p: int) -> float:
    """``E[X_{K:P}] = lower + integral over x > lower of P(X_{K:P} > x) dx``, numerically.

    ``P(X_{K:P} > x) = sum_{j<K} C(P, j) F(x)^j S(x)^(P-j)`` (fewer than K draws are <= x),
    with ``S`` computed directly so the far tail keeps its digits. The integral runs over
    ``s = log(x - lower)`` (composite Gauss-Legendre), where both ends decay exponentially for
    any tail lighter than ``x^-1.2``; float64, relative error below 1e-8 for the distributions here.
    """
    _check_k_p(k, p)
    lower, upper = dist.support()
    if upper == lower:
        return lower
    binomials = [math.comb(p, j) for j in range(k)]

    def survival(x: float) -> float:
        s = dist.survival(x)
        f = dist.cdf(x)
        return math.fsum(binomials[j] * f**j * s ** (p - j) for j in range(k))

    def integrand(t: float) -> float:
        step = math.exp(t)
        return survival(lower + step) * step

    reference = max(dist.mean - lower, 1e-300)
    start = math.log(reference) - 40.0  # the part below contributes at most e^-40 * reference
    end = math.log(upper - lower) if math.isfinite(upper) else _tail_end(integrand, math.log(reference), reference)
    panels = max(1, math.ceil((end - start) / _PANEL_WIDTH))
    width = (end - start) / panels
    nodes, weights = _gauss_legendre(_GAUSS_POINTS)
    total = math.fsum(
        w * integrand(start + width * (i + (x + 1.0) / 2.0)) for i in range(panels) for x, w in zip(nodes, weights)
    )
    return lower + total * width / 2.0


def _tail_end(integrand, middle: float, reference: float) -> float:
    """A log-point beyond which the integrand stays below 1e-18 of ``reference`` (checked over a
    run of points, since the integrand falls monotonically there)."""
    end = middle
    while end < 700.0:
        end += 1.0
        if all(integrand(end + d) < 1e-18 * reference for d in (0.0, 0.5, 1.0)):
            return end + 1.0
    raise ConfigError("shape", None, "the tail is too heavy to integrate numerically (tail index must be > 1.2)")


@lru_cache(maxsize=None)
def _gauss_legendre(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes and weights of n-point Gauss-Legendre quadrature on [-1, 1] (Newton on P_n)."""
    nodes, weights = [], []
    for i in range(1, n + 1):
        x = math.cos(math.pi * (i - 0.25) / (n + 0.5))
        for _ in range(100):
            p0, p1 = 1.0, x
            for m in range(2, n + 1):
                p0, p1 = p1, ((2 * m - 1) * x * p1 - (m - 1) * p0) / m
            derivative = n * (x * p1 - p0) / (x * x - 1.0)
            step = p1 / derivative
            x -= step
            if abs(step) < 1e-16:
                break
        nodes.append(x)
        weights.append(2.0 / ((1.0 - x * x) * derivative * derivative))
    return tuple(nodes), tuple(weights)


def k_sync_time_per_update(dist: DelayDistribution, k: int, p: int) -> float:
    """K-sync SGD (Lemma 3): ``E[X_{K:P}]``; sync SGD is K = P."""
    return expected_order_statistic(dist, k, p)


def k_batch_async_time_per_update(
    dist: DelayDistribution, k: int, p: int, speeds: Optional[Sequence[float]] = None
) -> float:
    """K-batch-async SGD (Lemma 4): ``K E[X] / P`` for any X; async SGD is K = 1.

    With ``speeds`` (learner i takes ``speeds[i]`` times longer) the same renewal argument gives
    ``K / sum_i 1 / (speeds[i] E[X])``.
    """
    positive_int("stale.learners", p)
    positive_int("stale.k", k)
    if speeds is None:
        return k * dist.mean / p
    if len(speeds) != p:
        raise ConfigError("speeds", list(speeds), f"must hold one slowdown per learner: {p} entries")
    rate = math.fsum(1.0 / (positive_float(f"speeds[{i}]", s) * dist.mean) for i, s in enumerate(speeds))
    return k / rate


def k_async_time_per_update(dist: DelayDistribution, k: int, p: int) -> float:
    """K-async SGD (Lemma 5): ``E[X_{K:P}]``, exact for exponential X (memorylessness) and for
    K = P (it is sync SGD); an upper bound for new-longer-than-used X; no bound for other X,
    e.g. Pareto (a fresh draw never falls below the minimum while a running computation may be
    about to finish, yet one that has run long will likely run much longer). K = 1 is async
    SGD: ``E[X] / P`` for any X (Lemma 4). :func:`k_async_is_exact` says which case applies."""
    _check_k_p(k, p)
    if k == 1:
        return dist.mean / p
    return expected_order_statistic(dist, k, p)


def k_async_is_exact(dist: DelayDistribution, k: int, p: int) -> bool:
    """Whether :func:`k_async_time_per_update` is the expected time, not just a bound."""
    return dist.name == "exponential" or k in (1, p)


def k_batch_sync_time_per_update(dist: DelayDistribution, k: int, p: int) -> float:
    """K-batch-sync SGD: ``K / (P mu)`` for exponential X of rate mu = 1/scale (each update
    takes Erlang(K, P mu)); for K = 1 it is 1-sync, ``E[X_{1:P}]`` for any X. No closed form
    otherwise (ConfigError)."""
    positive_int("stale.learners", p)
    positive_int("stale.k", k)
    if dist.name == "exponential":
        return k * dist.scale / p
    if k == 1:
        return expected_order_statistic(dist, 1, p)
    only = "k_batch_sync with K > 1 has a closed form only for exponential compute times"
    raise ConfigError("distribution", dist.name, only)


def sync_async_ratio(dist: DelayDistribution, p: int) -> float:
    """Theorem 1: ``E[T_sync] / E[T_async] = P E[X_{P:P}] / E[X]`` (about P log P for exponential)."""
    return p * expected_order_statistic(dist, p, p) / dist.mean


def batch_speedup_ratio(dist: DelayDistribution, k: int, p: int) -> float:
    """Theorem 2 (exponential X): ``E[T_K-async] / E[T_K-batch-async] = P E[X_{K:P}] / (K E[X])``."""
    return p * expected_order_statistic(dist, k, p) / (k * dist.mean)


def closed_form_time_per_update(spec: VariantSpec, dist: DelayDistribution) -> Optional[float]:
    """Dutta et al.'s expected time per update for ``spec`` with i.i.d. ``dist`` compute times,
    or None where there is none: k_batch_sync beyond exponential, rennala, ringmaster with a
    finite ``max_delay``. For k_async beyond exponential and 1 < K < P the value is
    ``E[X_{K:P}]``, only a bound (see :func:`k_async_time_per_update`)."""
    p, k = spec.learners, spec.k
    if spec.name in ("sync", "k_sync"):
        return k_sync_time_per_update(dist, k, p)
    if spec.name in ("async", "k_async"):
        return k_async_time_per_update(dist, k, p)
    if spec.name == "k_batch_async" or (spec.name == "ringmaster" and spec.max_delay is None):
        return k_batch_async_time_per_update(dist, k, p)
    if spec.name == "k_batch_sync" and (dist.name == "exponential" or k == 1):
        return k_batch_sync_time_per_update(dist, k, p)
    return None
