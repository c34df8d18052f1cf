"""The advisor's fits: 5000 draws of a known distribution give back its parameters, and its family
wins; speeds and the pooled model of a heterogeneous cluster; the models drive ComputeTimes."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_echo.advisor.fit import FAMILIES, fit_family, fit_times, fit_trace, lag_one_autocorrelation
from lightning_echo.core.delays import ComputeTimes, DelayDistribution, TraceComputeTimes
from lightning_echo.errors import ConfigError


def draws(distribution: DelayDistribution, n: int = 5000, seed: int = 0) -> list[float]:
    return distribution.sample(torch.Generator().manual_seed(seed), n).tolist()


def test_exponential_scale_within_5_percent_and_the_family_wins() -> None:
    fit = fit_times(draws(DelayDistribution("exponential", scale=0.2)))
    assert fit.best.family == "exponential"
    assert fit.best.distribution.scale == pytest.approx(0.2, rel=0.05)
    assert fit.best.acceptable


def test_shifted_exponential_shift_and_scale() -> None:
    fit = fit_times(draws(DelayDistribution("shifted_exponential", shift=0.1, scale=0.05), seed=1))
    assert fit.best.family == "shifted_exponential"
    assert fit.best.distribution.shift == pytest.approx(0.1, rel=0.01)
    assert fit.best.distribution.scale == pytest.approx(0.05, rel=0.05)


def test_pareto_shape_within_10_percent_and_the_family_wins() -> None:
    fit = fit_times(draws(DelayDistribution("pareto", scale=0.1, shape=2.5), seed=2))
    assert fit.best.family == "pareto"
    assert fit.best.distribution.shape == pytest.approx(2.5, rel=0.10)
    assert fit.best.distribution.scale == pytest.approx(0.1, rel=0.01)


@pytest.mark.parametrize("sigma", [0.2, 0.6, 1.2])
def test_lognormal_sigma_within_5_percent_and_the_family_wins(sigma: float) -> None:
    fit = fit_times(draws(DelayDistribution("lognormal", scale=0.05, sigma=sigma), seed=3))
    assert fit.best.family == "lognormal"
    assert fit.best.distribution.sigma == pytest.approx(sigma, rel=0.05)
    assert fit.best.distribution.scale == pytest.approx(0.05, rel=0.05)


def test_the_wrong_families_are_rejected_by_the_ks_test() -> None:
    fit = fit_times(draws(DelayDistribution("lognormal", scale=0.05, sigma=0.3), seed=4))
    assert fit.fit_of("lognormal").acceptable
    for family in ("exponential", "pareto"):
        assert not fit.fit_of(family).acceptable, family
        assert fit.fit_of(family).ks > fit.fit_of(family).ks_critical


def test_likelihoods_are_the_closed_form_maximum() -> None:
    times = draws(DelayDistribution("exponential", scale=1.0), n=400, seed=5)
    fit = fit_family("exponential", times)
    scale = fit.distribution.scale
    for nearby in (0.97 * scale, 1.03 * scale):  # the log-likelihood is largest at the MLE
        assert sum(-math.log(nearby) - t / nearby for t in times) < fit.log_likelihood
    assert fit.aic == pytest.approx(2 - 2 * fit.log_likelihood)
    assert fit.bic == pytest.approx(math.log(400) - 2 * fit.log_likelihood)


def test_a_pareto_tail_without_a_mean_is_reported_not_used() -> None:
    times = draws(DelayDistribution("pareto", scale=1.0, shape=3.0), n=2000, seed=6)
    heavy = [t ** 4 for t in times]  # tail index 3/4: infinite mean
    fit = fit_family("pareto", heavy)
    assert fit.distribution is None and "infinite mean" in fit.note
    assert fit_times(heavy).best.family != "pareto"


def test_constant_times_fit_a_constant() -> None:
    fit = fit_times([0.25] * 20)
    assert fit.best.family == "constant" and fit.best.distribution.value == 0.25


def test_bad_times_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least two compute times"):
        fit_times([1.0])
    with pytest.raises(ConfigError, match="> 0"):
        fit_times([1.0, 0.0, 2.0])
    with pytest.raises(ConfigError, match="family"):
        fit_family("weibull", [1.0, 2.0])


def test_speeds_and_the_pooled_model_of_a_heterogeneous_cluster() -> None:
    base = DelayDistribution("lognormal", scale=0.1, sigma=0.4)
    slowdowns = [1.0, 1.0, 1.0, 3.0]
    per_rank = [[s * t for t in draws(base, n=2000, seed=10 + i)] for i, s in enumerate(slowdowns)]
    fit = fit_trace(per_rank)
    assert not fit.homogeneous
    assert fit.speeds[3] / fit.speeds[0] == pytest.approx(3.0, rel=0.08)
    assert fit.slowest_over_median == pytest.approx(3.0, rel=0.08)
    assert fit.best.family == "lognormal" and fit.best.distribution.sigma == pytest.approx(0.4, rel=0.05)
    model = fit.model()
    assert isinstance(model, ComputeTimes)
    assert model.mean(3) / model.mean(0) == pytest.approx(3.0, rel=0.08)
    assert model.mean(0) == pytest.approx(base.mean, rel=0.08)
    replay = fit.trace_source(learners=8)  # 8 learners replay the 4 ranks in turn
    assert isinstance(replay, TraceComputeTimes) and replay.learners == 8
    assert replay.mean(7) == pytest.approx(sum(per_rank[3]) / 2000)


def test_equal_speeds_are_homogeneous_and_the_model_has_none() -> None:
    base = DelayDistribution("exponential", scale=0.5)
    fit = fit_trace([draws(base, n=300, seed=20 + i) for i in range(4)])
    assert fit.homogeneous
    assert fit.model().speeds is None and fit.model(learners=6).learners == 6


def test_every_family_is_tried() -> None:
    fit = fit_times(draws(DelayDistribution("exponential"), n=200))
    assert {f.family for f in fit.fits} == set(FAMILIES)
    assert all(f.describe().startswith(f.family) for f in fit.fits)


def test_correlated_times_are_noted() -> None:
    slow_runs = [1.0 + (i // 25) % 2 for i in range(400)]  # 25 fast steps, 25 slow, ...
    assert lag_one_autocorrelation(slow_runs) > 0.9
    jitter = draws(DelayDistribution("exponential", scale=0.01), n=400)
    fit = fit_trace([[a + b for a, b in zip(slow_runs, jitter)]])
    assert any("correlated" in note for note in fit.notes)
    assert abs(lag_one_autocorrelation(jitter)) < 0.1
