"""Delay distributions (uniform, constant, survival functions) and per-learner compute times.

The loader-jitter side of ``lightning_echo.core.delays`` (``unit_mean_delay``, the four jitter
names) is tested in ``test_throttle.py``; here: the straggler-simulation side.
"""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import pytest
import torch

from lightning_echo.core.delays import (
    DELAY_NAMES,
    DISTRIBUTION_NAMES,
    ComputeTimes,
    DelayDistribution,
    TraceComputeTimes,
    unit_mean_delay,
)
from lightning_echo.errors import ConfigError

DISTRIBUTIONS = [
    DelayDistribution("exponential", scale=2.0),
    DelayDistribution("shifted_exponential", shift=1.0, scale=0.5),
    DelayDistribution("pareto", scale=1.0, shape=3.0),
    DelayDistribution("lognormal", scale=1.5, sigma=0.4),
    DelayDistribution("uniform", low=0.5, high=2.0),
    DelayDistribution("constant", value=0.7),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- distributions ---------------------------------------------------------------------------
def test_jitter_names_are_unchanged_and_new_distributions_are_not_jitters() -> None:
    assert DELAY_NAMES == ("exponential", "shifted_exponential", "pareto", "lognormal")
    assert set(DISTRIBUTION_NAMES) == set(DELAY_NAMES) | {"uniform", "constant"}
    with pytest.raises(ConfigError, match="^jitter='uniform'"):
        unit_mean_delay("uniform")


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name)
def test_samples_match_mean_support_and_survival(dist: DelayDistribution) -> None:
    draws = dist.sample(torch.Generator().manual_seed(1), 50000)
    assert draws.dtype == torch.float64 and bool((draws > 0).all())
    lower, upper = dist.support()
    assert draws.min().item() >= lower and draws.max().item() <= upper
    # 50000 draws: the sample mean is within 4 standard errors (lognormal, pareto(3) have finite variance).
    assert draws.mean().item() == pytest.approx(dist.mean, rel=0.03, abs=1e-12)
    for quantile in (0.1, 0.5, 0.9):
        x = torch.quantile(draws, quantile).item()
        empirical = (draws > x).double().mean().item()
        assert dist.survival(x) == pytest.approx(empirical, abs=0.01)
        assert dist.survival(x) + dist.cdf(x) == pytest.approx(1.0, abs=1e-12)


def test_uniform_and_constant_by_hand() -> None:
    uniform = DelayDistribution("uniform", low=1.0, high=3.0)
    assert uniform.mean == 2.0 and uniform.support() == (1.0, 3.0)
    assert uniform.survival(0.5) == 1.0 and uniform.survival(1.5) == 0.75 and uniform.survival(3.0) == 0.0
    constant = DelayDistribution("constant", value=0.25)
    draws = constant.sample(torch.Generator().manual_seed(0), 10)
    assert torch.equal(draws, torch.full((10,), 0.25, dtype=torch.float64))
    assert constant.survival(0.2) == 1.0 and constant.survival(0.25) == 0.0


def test_pareto_survival_keeps_far_tail_digits() -> None:
    pareto = DelayDistribution("pareto", scale=1.0, shape=2.0)
    assert pareto.survival(1e10) == pytest.approx(1e-20, rel=1e-12)  # 1 - cdf would give 0


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"name": "uniform", "low": -1.0, "high": 1.0}, "low"),
        ({"name": "uniform", "low": 2.0, "high": 2.0}, "high"),
        ({"name": "uniform", "low": 0.0, "high": math.inf}, "high"),
        ({"name": "constant", "value": 0.0}, "value"),
        ({"name": "constant", "value": math.nan}, "value"),
        ({"name": "pareto", "shape": 0.5}, "shape"),
        ({"name": "weibull"}, "distribution"),
    ],
)
def test_bad_distribution_parameters_name_the_setting(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}=") as error:
        DelayDistribution(**kwargs)
    assert "\n" not in str(error.value)


# -- ComputeTimes -------------------------------------------------------------------------------
def test_speeds_scale_each_learner() -> None:
    times = ComputeTimes(DelayDistribution("constant", value=2.0), speeds=[1.0, 0.5, 3.0])
    assert [times.sample(i) for i in (0, 1, 2, 2)] == [2.0, 1.0, 6.0, 6.0]
    assert times.learners == 3 and times.mean(2) == 6.0
    # Random delays: learner 1 (speed 4) is four times slower on average than learner 0.
    times = ComputeTimes(DelayDistribution("exponential"), speeds=[1.0, 4.0], seed=3)
    slow = [times.sample(1) for _ in range(20000)]
    fast = [times.sample(0) for _ in range(20000)]
    assert sum(slow) / sum(fast) == pytest.approx(4.0, rel=0.05)


def test_compute_times_are_seeded() -> None:
    dist = DelayDistribution("exponential")

    def draws(times: ComputeTimes) -> list[float]:
        return [times.sample(0) for _ in range(100)]

    assert draws(ComputeTimes(dist, seed=5)) == draws(ComputeTimes(dist, seed=5))
    assert draws(ComputeTimes(dist, seed=5)) != draws(ComputeTimes(dist, seed=6))
    used = ComputeTimes(dist, seed=0)
    draws(used)
    assert draws(used.seeded(5)) == draws(ComputeTimes(dist, seed=5))  # a fresh copy, from the start


def test_compute_times_state_round_trips_across_blocks() -> None:
    times = ComputeTimes(DelayDistribution("pareto", shape=2.5), speeds=[1.0, 2.0], seed=11)
    for i in range(ComputeTimes.BLOCK + 123):  # past the first block
        times.sample(i % 2)
    state = pickle.loads(pickle.dumps(times.state_dict()))
    expected = [times.sample(i % 2) for i in range(2 * ComputeTimes.BLOCK)]
    restored = ComputeTimes(DelayDistribution("pareto", shape=2.5), speeds=[1.0, 2.0], seed=0)
    restored.load_state_dict(state)
    assert [restored.sample(i % 2) for i in range(2 * ComputeTimes.BLOCK)] == expected


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"speeds": [1.0, 0.0]}, r"speeds\[1\]"),
        ({"speeds": [1.0, -2.0]}, r"speeds\[1\]"),
        ({"speeds": [math.inf]}, r"speeds\[0\]"),
        ({"speeds": []}, "speeds"),
        ({"speeds": [1.0, 1.0], "learners": 3}, "speeds"),
        ({"learners": 0}, "learners"),
    ],
)
def test_bad_speeds_name_the_setting(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}=") as error:
        ComputeTimes(DelayDistribution("exponential"), **kwargs)
    assert "\n" not in str(error.value)


def test_wrong_number_of_speeds_and_learner_out_of_range() -> None:
    times = ComputeTimes(DelayDistribution("exponential"), speeds=[1.0, 2.0])
    with pytest.raises(ConfigError, match="^speeds=.*one slowdown per learner: 4 entries"):
        times.check_learners(4)
    times.check_learners(2)
    with pytest.raises(ConfigError, match="^learner=2 "):
        times.sample(2)


# -- TraceComputeTimes -----------------------------------------------------------------------
def test_per_learner_trace_replays_its_rows_and_cycles(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "learner,seconds\n0,1.5\n1,2\n0,0.5\n1,4\n1,8\n")
    trace = TraceComputeTimes.from_csv(path)
    assert trace.learners == 2
    assert [trace.sample(0) for _ in range(3)] == [1.5, 0.5, 1.5]
    assert [trace.sample(1) for _ in range(4)] == [2.0, 4.0, 8.0, 2.0]
    assert trace.mean(1) == pytest.approx(14 / 3)
    state = copy.deepcopy(trace.state_dict())
    after = [trace.sample(0), trace.sample(1)]
    restored = TraceComputeTimes.from_csv(path)
    restored.load_state_dict(state)
    assert [restored.sample(0), restored.sample(1)] == after
    fresh = trace.seeded(123)
    assert [fresh.sample(0), fresh.sample(1)] == [1.5, 2.0]


def test_shared_trace_is_consumed_in_request_order(tmp_path: Path) -> None:
    trace = TraceComputeTimes.from_csv(_write(tmp_path / "s.csv", "seconds\n1\n2\n3\n"))
    assert trace.learners is None
    assert [trace.sample(learner) for learner in (5, 0, 2, 7)] == [1.0, 2.0, 3.0, 1.0]
    trace.check_learners(16)  # a shared trace serves any number of learners


@pytest.mark.parametrize(
    "text, learners, message",
    [
        (None, None, "must be an existing CSV file"),
        ("", None, "is empty"),
        ("learner,seconds\n", None, "holds no compute times"),
        ("seconds\n1\n-2\n", None, "finite numbers > 0"),
        ("seconds\n1\n0\n", None, "finite numbers > 0"),
        ("seconds\nnan\n", None, "finite numbers > 0"),
        ("seconds\ninf\n", None, "finite numbers > 0"),
        ("seconds\nfast\n", None, "finite numbers > 0"),
        ("learner,seconds\n0,1\n2,1\n", 2, "learner ids must be integers 0..1"),
        ("learner,seconds\n0,1\n-1,1\n", None, "learner ids must be integers"),
        ("learner,seconds\n0,1\n2,1\n", None, "has no rows for learner 1"),
        ("learner,seconds\n0,1\n", 2, "has no rows for learner 1"),
        ("worker,time\n0,1\n", None, "must be 'learner,seconds' or 'seconds'"),
        ("learner,seconds\n0\n", None, "every row must have 2 column"),
    ],
)
def test_bad_traces_are_config_errors(tmp_path: Path, text: str, learners: int, message: str) -> None:
    path = tmp_path / "trace.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match="^trace=") as error:
        TraceComputeTimes.from_csv(path, learners=learners)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_trace_for_other_learner_count_is_refused(tmp_path: Path) -> None:
    trace = TraceComputeTimes.from_csv(_write(tmp_path / "t.csv", "learner,seconds\n0,1\n1,1\n"))
    with pytest.raises(ConfigError, match="^trace=.*has times for 2 learners, not stale.learners=3"):
        trace.check_learners(3)
