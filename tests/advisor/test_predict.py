"""The advisor's predictions: equal to Dutta et al.'s closed forms where those are exact, within the
replay's sampling error where they are replayed; the replay of a recorded trace; the grid; echo
from a known data-wait fraction and the combined echo + variant replay."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_echo.advisor.fit import fit_step_trace, fit_trace
from lightning_echo.advisor.predict import (
    combined,
    command_overrides,
    echo_prediction,
    k_values,
    label,
    learner_data_times,
    predict,
    replay,
    variant_grid,
)
from lightning_echo.advisor.trace import StepRecord, StepTrace
from lightning_echo.core import runtimes
from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.schedule import variant_spec
from lightning_echo.errors import ConfigError

P = 4


def draws(distribution: DelayDistribution, n: int, seed: int) -> list[float]:
    return distribution.sample(torch.Generator().manual_seed(seed), n).tolist()


@pytest.fixture(scope="module")
def exponential_fit():
    """Four learners of equal speed, exponential times: every closed form applies."""
    return fit_trace([draws(DelayDistribution("exponential", scale=0.1), 800, seed=i) for i in range(P)])


def within_sampling_error(closed: float, replayed, rel: float = 0.01) -> bool:
    return abs(replayed.time_per_update - closed) <= 4 * replayed.standard_error + rel * closed


def test_the_closed_forms_are_used_where_exact_for_exponential_times(exponential_fit) -> None:
    assert exponential_fit.homogeneous and exponential_fit.best.family == "exponential"
    dist = exponential_fit.best.distribution
    table = predict(exponential_fit, gradients=400)
    for k in range(1, P):
        row = table.row("k_sync", k)
        assert row.time_per_update == runtimes.k_sync_time_per_update(dist, k, P)
        assert row.methods["time"].startswith("closed form E[X_(K:P)] (Lemma 3)")
    assert table.baseline.time_per_update == runtimes.k_sync_time_per_update(dist, P, P)
    assert table.row("k_async", 2).time_per_update == runtimes.k_async_time_per_update(dist, 2, P)
    for k in (1, 2, 4, 8, 16):
        assert table.row("k_batch_sync", k).time_per_update == runtimes.k_batch_sync_time_per_update(dist, k, P)
    trace_means = [exponential_fit.trace_source().mean(i) for i in range(P)]
    assert table.row("k_batch_async", 8).time_per_update == pytest.approx(8 / math.fsum(1 / m for m in trace_means), rel=1e-12)
    for name, k in (("rennala", 4), ("ringmaster", None)):  # no closed form: replayed
        row = table.row(name, k, max_delay=2 if name == "ringmaster" else None)
        assert row.methods["time"] == "replay (recorded trace)"
        assert row.time_per_update == row.replayed.time_per_update


def test_theorem_1_and_lemma_4_on_the_fitted_model(exponential_fit) -> None:
    dist = exponential_fit.best.distribution
    table = predict(exponential_fit, source="fit", gradients=400)
    async_row = table.row("async")
    assert table.speedup(async_row) == pytest.approx(runtimes.sync_async_ratio(dist, P), rel=1e-12)
    for k in (2, 4, 8):
        assert table.row("k_batch_async", k).time_per_update == pytest.approx(
            runtimes.k_batch_async_time_per_update(dist, k, P), rel=1e-12)
    batch = table.row("k_batch_async", 2)  # Theorem 2: K-async over K-batch-async
    assert table.row("k_async", 2).time_per_update / batch.time_per_update == pytest.approx(
        runtimes.batch_speedup_ratio(dist, 2, P), rel=1e-12)


def test_closed_forms_agree_with_the_replay_within_its_sampling_error(exponential_fit) -> None:
    specs = [variant_spec("sync", P), variant_spec("k_sync", P, 2), variant_spec("k_async", P, 2),
             variant_spec("k_batch_sync", P, 3), variant_spec("k_batch_async", P, 3), variant_spec("async", P)]
    table = predict(exponential_fit, source="fit", gradients=12000, specs=specs)
    for row in table.rows:
        assert row.methods["time"].startswith("closed form"), row.label
        assert within_sampling_error(row.time_per_update, row.replayed), (row.label, row.time_per_update, row.replayed)
    k_sync = table.row("k_sync", 2)
    assert k_sync.methods["wasted"].startswith("closed form")
    assert k_sync.replayed.wasted_fraction == pytest.approx(k_sync.wasted_fraction, abs=0.02)
    assert table.row("async").replayed.mean_staleness == pytest.approx(P - 1, abs=0.1)  # Little's law


def test_without_closed_forms_everything_is_replayed(exponential_fit) -> None:
    table = predict(exponential_fit, gradients=400, closed_forms=False, specs=[variant_spec("k_sync", P, 2)])
    row = table.rows[0]
    assert set(row.methods.values()) == {"replay (recorded trace)"}
    assert row.time_per_update == row.replayed.time_per_update


def test_unequal_speeds_replay_what_needs_iid_times() -> None:
    base = DelayDistribution("lognormal", scale=0.05, sigma=0.3)
    slowdowns = [1.0, 1.0, 1.0, 3.0]
    fit = fit_trace([[s * t for t in draws(base, 600, seed=40 + i)] for i, s in enumerate(slowdowns)])
    assert not fit.homogeneous
    table = predict(fit, source="fit", gradients=6000,
                    specs=[variant_spec("sync", P), variant_spec("k_sync", P, 3), variant_spec("k_batch_async", P, 4)])
    assert table.baseline.methods["time"].startswith("replay")
    assert table.row("k_sync", 3).methods["time"].startswith("replay")
    batch = table.row("k_batch_async", 4)
    model = fit.model()
    assert batch.time_per_update == pytest.approx(
        runtimes.k_batch_async_time_per_update(model.distribution, 4, P, speeds=model.speeds), rel=1e-12)
    assert within_sampling_error(batch.time_per_update, batch.replayed)
    assert table.gain(batch) > 2.0  # the slow rank holds every p_sync update


def test_replaying_a_lockstep_trace_gives_its_recorded_step_times() -> None:
    times = [[0.01 * (1 + (7 * step + 3 * rank) % 5) for step in range(50)] for rank in range(3)]
    fit = fit_trace(times)
    table = predict(fit, gradients=3, specs=[variant_spec("sync", 3)], closed_forms=False)
    row = table.baseline
    updates = row.replayed.updates
    warm = updates // 10
    expected = sum(max(times[r][j % 50] for r in range(3)) for j in range(warm, updates)) / (updates - warm)
    assert row.time_per_update == pytest.approx(expected, rel=1e-12)


def test_staleness_and_waste_that_are_exact(exponential_fit) -> None:
    table = predict(exponential_fit, gradients=400)
    for row in table.rows:
        if row.spec.name in ("sync", "k_sync", "k_batch_sync", "rennala"):
            assert row.mean_staleness == row.p99_staleness == 0.0 == row.replayed.mean_staleness
        if row.spec.name in ("k_async", "k_batch_async", "async"):
            assert row.wasted_fraction == 0.0 == row.replayed.wasted_fraction
            assert row.methods["wasted"].startswith("exact")
    assert table.row("async").p99_staleness >= table.row("async").mean_staleness > 0


def test_the_grid() -> None:
    assert k_values(8) == list(range(1, 9)) and k_values(8, max_k=3) == [1, 2, 3]
    assert k_values(64) == [1, 2, 3, 4, 8, 16, 32, 48, 64]
    specs = variant_grid(8)
    names = {(s.name, s.k, s.max_delay, s.stop_stale) for s in specs}
    assert len(names) == len(specs)
    assert ("k_sync", 8, None, False) not in names and ("k_async", 1, None, False) not in names
    assert {s.k for s in specs if s.name == "k_batch_async"} == {2, 3, 4, 5, 6, 7, 8, 16, 32}
    assert {s.max_delay for s in specs if s.name == "ringmaster"} == {1, 2, 4, 8, 16}
    assert [s.name for s in variant_grid(1)] == ["sync"]
    assert max(s.k for s in variant_grid(8, max_k=4)) == 8  # sync keeps K = P
    assert label(variant_spec("ringmaster", 8, max_delay=4, stop_stale=True)) == "ringmaster R=4 (stops)"
    assert label(variant_spec("sync", 8)) == "p_sync" and label(variant_spec("rennala", 8, 6)) == "rennala B=6"
    assert command_overrides(variant_spec("k_batch_async", 8, 6)) == ["algorithm=k_batch_async", "stale.learners=8", "stale.k=6"]
    with pytest.raises(ConfigError):
        predict(fit_trace([[1.0, 2.0, 3.0]]), source="model")


def test_shortlist_prefers_the_least_stale_of_near_ties() -> None:
    fit = fit_trace([draws(DelayDistribution("exponential", scale=0.1), 400, seed=60 + i) for i in range(8)])
    table = predict(fit, source="fit", gradients=2000)
    shortlist = table.shortlist()
    assert all(r.spec.k >= 4 and r.mean_staleness <= 2 for r in shortlist)
    top = shortlist[0]
    assert table.gain(top) >= 0.97 * max(table.gain(r) for r in shortlist)
    near = [r for r in shortlist if table.gain(r) >= 0.97 * table.gain(shortlist[0])]
    assert top.mean_staleness == min(r.mean_staleness for r in near)


def steps(rank_times: list[list[tuple[float, float, float]]], kind: str = "ddp") -> StepTrace:
    return StepTrace([StepRecord(rank, step, c, d, s, 32) for rank, rows in enumerate(rank_times)
                      for step, (c, d, s) in enumerate(rows)], kind=kind)


def test_echo_from_a_known_data_wait_fraction() -> None:
    trace = steps([[(0.06, 0.04, 0.0)] * 40, [(0.06, 0.0, 0.04)] * 40])  # rank 0 waits for data 40% of its step
    echo = echo_prediction(trace)
    assert echo.data_wait_fractions == pytest.approx((0.4, 0.0))
    assert echo.upstream_over_downstream == pytest.approx(1 / 0.6)
    assert echo.auto_factor == pytest.approx(1 / 0.6) == echo.speedup_bound
    assert echo.data_bound_ranks == (0,) and not echo.adds_little
    assert echo_prediction(trace, max_factor=1).auto_factor == 1.0
    little = echo_prediction(steps([[(0.06, 0.001, 0.0)] * 40]))
    assert little.adds_little and little.data_wait_fraction == pytest.approx(0.001 / 0.061)


def test_combined_echo_and_variant_replay() -> None:
    trace = steps([[(0.06, 0.04, 0.0)] * 40 for _ in range(4)])  # every rank's loader takes 0.1 s per batch
    fit = fit_step_trace(trace)
    data = learner_data_times(trace, [0, 1, 2, 3], 4)
    assert data is not None and data.mean(2) == pytest.approx(0.1)
    table = predict(fit, gradients=800)
    results = combined(fit, trace, [variant_spec("k_batch_async", 4, 4)], table, gradients=800)
    sync, batch = results
    assert sync.spec.name == "sync" and sync.compute_only == pytest.approx(0.06)
    assert sync.with_data.time_per_update == pytest.approx(0.1, rel=0.01)  # the loaders set the pace
    assert sync.with_echo.time_per_update == pytest.approx(0.06, rel=0.01)  # echo fills the wait
    assert sync.with_echo.echoed_fraction == pytest.approx(0.4, abs=0.02)
    assert batch.with_echo.time_per_update <= batch.with_data.time_per_update
    assert combined(fit, steps([[(0.06, 0.0, 0.0)] * 40] * 4), [variant_spec("sync", 4)], table) == []


def test_replay_counts_the_run() -> None:
    result = replay(variant_spec("rennala", 4, 4), ComputeTimes(DelayDistribution("exponential"), learners=4), gradients=800)
    assert result.updates == 200 and result.wasted_fraction > 0 and result.mean_staleness == 0
    assert 0 < result.utilisation <= 1 and result.standard_error > 0
