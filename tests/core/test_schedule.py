"""The straggler schedule (ServerPolicy, ScheduleSimulation) and Dutta et al.'s closed-form runtimes.

Hand-computed schedules use P = 3 learners with constant compute times 1, 2, 3 (speeds) and
K = 2, so every event time is an integer; ties are broken by learner index and learners freed
at an instant start at its end (see ScheduleSimulation). Statistical checks use fixed seeds and
tolerances of about 3 to 5 standard errors, given with each test.
"""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import pytest

from lightning_echo.core.delays import (
    ComputeTimes,
    DelayDistribution,
    TraceComputeTimes,
)
from lightning_echo.core.runtimes import (
    batch_speedup_ratio,
    closed_form_time_per_update,
    expected_order_statistic,
    k_async_is_exact,
    k_batch_async_time_per_update,
    k_batch_sync_time_per_update,
    order_statistic_by_integration,
    sync_async_ratio,
)
from lightning_echo.core.schedule import (
    VARIANTS,
    ScheduleSimulation,
    ServerPolicy,
    UpdatePlan,
    VariantSpec,
    simulate_runtime,
    variant_spec,
)
from lightning_echo.errors import ConfigError

EXP = DelayDistribution("exponential")
SHIFTED = DelayDistribution("shifted_exponential", shift=1.0, scale=1.0)
PARETO = DelayDistribution("pareto", scale=1.0, shape=3.0)
STAIRS = ComputeTimes(DelayDistribution("constant", value=1.0), speeds=[1.0, 2.0, 3.0])
EQUAL = ComputeTimes(DelayDistribution("constant", value=1.0))

# Spec for every variant at P = 3, K = 2 where K is free.
HAND_SPECS = {
    "sync": variant_spec("sync", 3),
    "k_sync": variant_spec("k_sync", 3, k=2),
    "k_batch_sync": variant_spec("k_batch_sync", 3, k=2),
    "async": variant_spec("async", 3),
    "k_async": variant_spec("k_async", 3, k=2),
    "k_batch_async": variant_spec("k_batch_async", 3, k=2),
    "rennala": variant_spec("rennala", 3, k=2),
    "ringmaster": variant_spec("ringmaster", 3, max_delay=1),
    "ringmaster_stop": variant_spec("ringmaster", 3, max_delay=2, stop_stale=True),
}

# Per update: (time, version, used [(learner, read version, staleness, started, arrived)],
# discarded [(learner, read version, staleness)], cancelled, wasted time, busy time, held versions).
HAND_SCHEDULES = {
    # All wait for the slowest (3): every 3 time units, nothing wasted, 6 units of work.
    "sync": [
        (3, 0, [(0, 0, 0, 0, 1), (1, 0, 0, 0, 2), (2, 0, 0, 0, 3)], [], 0, 0, 6, []),
        (6, 1, [(0, 1, 0, 3, 4), (1, 1, 0, 3, 5), (2, 1, 0, 3, 6)], [], 0, 0, 6, []),
    ],
    # The two fastest count; learner 2 is cancelled after 2 of its 3 units, every time.
    "k_sync": [
        (2, 0, [(0, 0, 0, 0, 1), (1, 0, 0, 0, 2)], [], 1, 2, 5, []),
        (4, 1, [(0, 1, 0, 2, 3), (1, 1, 0, 2, 4)], [], 1, 2, 5, []),
    ],
    # Learner 0 delivers both mini-batches (at 1 and 2); learners 1 and 2 are cancelled at 2
    # (learner 1 finishes at 2 too, but after learner 0 by index: the update cancels it).
    "k_batch_sync": [
        (2, 0, [(0, 0, 0, 0, 1), (0, 0, 0, 1, 2)], [], 2, 4, 6, []),
        (4, 1, [(0, 1, 0, 2, 3), (0, 1, 0, 3, 4)], [], 2, 4, 6, []),
    ],
    # K = 1: learner 0 at 1 and 2; at 2 learner 1 (read 0) lands after update 1 -> staleness 2;
    # at 3 learner 0 (read 3, started at the end of instant 2) then learner 2 (read 0, staleness 4).
    "async": [
        (1, 0, [(0, 0, 0, 0, 1)], [], 0, 0, 3, [0]),
        (2, 1, [(0, 1, 0, 1, 2)], [], 0, 0, 3, [0]),
        (2, 2, [(1, 0, 2, 0, 2)], [], 0, 0, 0, [0]),
        (3, 3, [(0, 3, 0, 2, 3)], [], 0, 0, 3, [0, 3]),
        (3, 4, [(2, 0, 4, 0, 3)], [], 0, 0, 0, [3]),
    ],
    # Learners that pushed idle until the update; the third keeps running across updates.
    "k_async": [
        (2, 0, [(0, 0, 0, 0, 1), (1, 0, 0, 0, 2)], [], 0, 0, 5, [0]),
        (3, 1, [(0, 1, 0, 2, 3), (2, 0, 1, 0, 3)], [], 0, 0, 3, [1]),
        (4, 2, [(0, 2, 0, 3, 4), (1, 1, 1, 2, 4)], [], 0, 0, 3, [2]),
        (6, 3, [(0, 3, 0, 4, 5), (1, 3, 0, 4, 6)], [], 0, 0, 5, [2]),
        (7, 4, [(2, 2, 2, 3, 6), (0, 4, 0, 6, 7)], [], 0, 0, 2, [4]),
    ],
    # Never idle: any two gradients make an update.
    "k_batch_async": [
        (2, 0, [(0, 0, 0, 0, 1), (0, 0, 0, 1, 2)], [], 0, 0, 6, [0]),
        (3, 1, [(1, 0, 1, 0, 2), (0, 1, 0, 2, 3)], [], 0, 0, 3, [0, 1]),
        (4, 2, [(2, 0, 2, 0, 3), (0, 2, 0, 3, 4)], [], 0, 0, 3, [1, 2]),
        (5, 3, [(1, 1, 2, 2, 4), (0, 3, 0, 4, 5)], [], 0, 0, 3, [2, 3]),
        (6, 4, [(0, 4, 0, 5, 6), (1, 3, 1, 4, 6)], [], 0, 0, 3, [2]),
    ],
    # Only fresh gradients count; stale ones are discarded whole (learner 1: 2 units, learner 2: 3).
    "rennala": [
        (2, 0, [(0, 0, 0, 0, 1), (0, 0, 0, 1, 2)], [], 0, 0, 6, [0]),
        (4, 1, [(0, 1, 0, 2, 3), (0, 1, 0, 3, 4)], [(1, 0, 1), (2, 0, 1)], 0, 5, 6, [1]),
        (6, 2, [(0, 2, 0, 4, 5), (0, 2, 0, 5, 6)], [(1, 1, 1)], 0, 2, 6, [1, 2]),
    ],
    # R = 1: only staleness 0 is applied; learners 1 and 2 always arrive stale.
    "ringmaster": [
        (1, 0, [(0, 0, 0, 0, 1)], [], 0, 0, 3, [0]),
        (2, 1, [(0, 1, 0, 1, 2)], [], 0, 0, 3, [0]),
        (3, 2, [(0, 2, 0, 2, 3)], [(1, 0, 2)], 0, 2, 3, [0, 2]),
        (4, 3, [(0, 3, 0, 3, 4)], [(2, 0, 3)], 0, 3, 3, [2, 3]),
    ],
    # R = 2 with stops: at 2 (version 1 -> 2) learners 1 and 2 (read 0) reach delay 2 and are
    # stopped (2 units each); at 4 the same with read version 2.
    "ringmaster_stop": [
        (1, 0, [(0, 0, 0, 0, 1)], [], 0, 0, 3, [0]),
        (2, 1, [(0, 1, 0, 1, 2)], [], 2, 4, 3, []),
        (3, 2, [(0, 2, 0, 2, 3)], [], 0, 0, 3, [2]),
        (4, 3, [(0, 3, 0, 3, 4)], [], 2, 4, 3, []),
    ],
}


def _summary(plan: UpdatePlan) -> tuple:
    return (
        plan.time,
        plan.version,
        [(g.learner, g.read_version, g.staleness, g.started_at, g.arrived_at) for g in plan.gradients],
        [(g.learner, g.read_version, g.staleness) for g in plan.discarded],
        plan.cancelled,
        plan.wasted_time,
        plan.busy_time,
        sorted(plan.held_versions),
    )


def _plans(spec: VariantSpec, times, n: int, seed: int = 0) -> list[UpdatePlan]:
    simulation = ScheduleSimulation(spec, times, seed)
    return [simulation.next_update() for _ in range(n)]


# -- variant specs ---------------------------------------------------------------------------
def test_variant_spec_resolves_k() -> None:
    assert variant_spec("sync", 8).k == 8
    assert variant_spec("async", 8).k == 1
    assert variant_spec("ringmaster", 8, max_delay=4).k == 1
    assert variant_spec("k_batch_async", 4, k=12).k == 12  # batch variants may exceed P
    assert variant_spec("rennala", 4, k=9) == VariantSpec("rennala", 4, 9)
    assert set(HAND_SPECS) - {"ringmaster_stop"} == set(VARIANTS)


def test_k_above_learners_message() -> None:
    with pytest.raises(ConfigError) as error:
        variant_spec("k_sync", 8, k=9)
    assert str(error.value) == "stale.k=9 is not allowed: must be between 1 and stale.learners=8 for k_sync"


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"name": "k_sync", "learners": 4, "k": 5}, "stale.k"),
        ({"name": "k_async", "learners": 4, "k": 0}, "stale.k"),
        ({"name": "k_batch_async", "learners": 4, "k": 0}, "stale.k"),
        ({"name": "rennala", "learners": 4, "k": -1}, "stale.k"),
        ({"name": "k_sync", "learners": 4}, "stale.k"),
        ({"name": "k_sync", "learners": 4, "k": 2.0}, "stale.k"),
        ({"name": "sync", "learners": 4, "k": 3}, "stale.k"),
        ({"name": "async", "learners": 4, "k": 2}, "stale.k"),
        ({"name": "k_sync", "learners": 0, "k": 1}, "stale.learners"),
        ({"name": "hogwild", "learners": 4}, "algorithm"),
        ({"name": "k_async", "learners": 4, "k": 2, "max_delay": 3}, "stale.max_delay"),
        ({"name": "ringmaster", "learners": 4, "max_delay": 0}, "stale.max_delay"),
        ({"name": "k_batch_async", "learners": 4, "k": 2, "stop_stale": True}, "stale.stop_stale"),
    ],
)
def test_bad_variant_settings_are_one_line_config_errors(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}=") as error:
        variant_spec(**kwargs)
    assert "\n" not in str(error.value)


def test_simulation_refuses_compute_times_for_other_learner_counts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^speeds=\[1.0, 2.0\] .*4 entries"):
        ScheduleSimulation(variant_spec("k_sync", 4, k=2), ComputeTimes(EXP, speeds=[1.0, 2.0]))
    trace = tmp_path / "t.csv"
    trace.write_text("learner,seconds\n0,1\n1,2\n")
    with pytest.raises(ConfigError, match="^trace="):
        ScheduleSimulation(variant_spec("sync", 3), TraceComputeTimes.from_csv(trace))
    with pytest.raises(ConfigError, match="^updates=0 "):
        simulate_runtime(variant_spec("sync", 3), EQUAL, updates=0)


# -- hand-computed schedules -------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(HAND_SCHEDULES))
def test_hand_computed_schedule(variant: str) -> None:
    expected = HAND_SCHEDULES[variant]
    plans = _plans(HAND_SPECS[variant], STAIRS, len(expected))
    assert [_summary(plan) for plan in plans] == [
        (t, v, used, discarded, cancelled, wasted, busy, held)
        for t, v, used, discarded, cancelled, wasted, busy, held in expected
    ]


def test_trace_with_the_same_times_gives_the_same_schedule(tmp_path: Path) -> None:
    path = tmp_path / "stairs.csv"
    path.write_text("learner,seconds\n0,1\n1,2\n2,3\n")
    spec = HAND_SPECS["k_async"]
    from_trace = _plans(spec, TraceComputeTimes.from_csv(path, learners=3), 5)
    assert [_summary(p) for p in from_trace] == [_summary(p) for p in _plans(spec, STAIRS, 5)]


def test_k_equals_p_with_constant_times_is_synchronous() -> None:
    plans = _plans(variant_spec("k_sync", 3, k=3), STAIRS, 10)
    assert [plan.time for plan in plans] == [3.0 * (i + 1) for i in range(10)]  # one update per slowest time
    assert all(g.staleness == 0 and g.read_version == plan.version for plan in plans for g in plan.gradients)
    assert all(plan.cancelled == 0 and plan.wasted_time == 0 for plan in plans)


def test_k_async_extremes_are_async_and_sync() -> None:
    # Why k_async has exact runtimes at K = 1 (E[X]/P) and K = P (E[X_{P:P}]) for any X.
    times = ComputeTimes(PARETO, speeds=[1.0, 2.0, 2.0])
    k1 = _plans(variant_spec("k_async", 3, k=1), times, 300, seed=8)
    assert k1 == _plans(variant_spec("async", 3), times, 300, seed=8)
    assert k1 == _plans(variant_spec("k_batch_async", 3, k=1), times, 300, seed=8)
    k3 = _plans(variant_spec("k_async", 3, k=3), times, 300, seed=8)
    assert k3 == _plans(variant_spec("sync", 3), times, 300, seed=8)
    assert _plans(variant_spec("k_batch_sync", 3, k=1), times, 300, seed=8) == _plans(
        variant_spec("k_sync", 3, k=1), times, 300, seed=8
    )


def test_k_batch_async_with_equal_times() -> None:
    # All three finish together every time unit: updates at 1, 2, 2, 3, 4, 4, ... (3 per 2 units,
    # K E[X] / P = 2/3 per update); within each pair of units staleness (0,0), (1,0), (1,1).
    plans = _plans(variant_spec("k_batch_async", 3, k=2), EQUAL, 9)
    assert [plan.time for plan in plans] == [1, 2, 2, 3, 4, 4, 5, 6, 6]
    assert [[g.staleness for g in plan.gradients] for plan in plans[:3]] == [[0, 0], [1, 0], [1, 1]]
    assert [[g.learner for g in plan.gradients] for plan in plans[:3]] == [[0, 1], [2, 0], [1, 2]]
    assert plans[-1].time / len(plans) == pytest.approx(2 / 3)


def test_rennala_with_b_equal_p_and_equal_times_is_sync() -> None:
    rennala = _plans(variant_spec("rennala", 4, k=4), EQUAL, 20)
    sync = _plans(variant_spec("sync", 4), EQUAL, 20)
    assert rennala == sync
    assert all(g.staleness == 0 for plan in rennala for g in plan.gradients)
    assert [plan.time for plan in rennala] == [float(i + 1) for i in range(20)]


def test_ringmaster_without_threshold_is_async() -> None:
    times = ComputeTimes(EXP, speeds=[1.0, 1.0, 2.0, 5.0])
    ringmaster = _plans(variant_spec("ringmaster", 4), times, 400, seed=3)
    assert ringmaster == _plans(variant_spec("async", 4), times, 400, seed=3)
    assert _plans(variant_spec("ringmaster", 3), STAIRS, 6) == _plans(variant_spec("async", 3), STAIRS, 6)


def test_ringmaster_threshold_and_stops() -> None:
    times = ComputeTimes(EXP, speeds=[1.0, 1.0, 3.0, 8.0])
    limit = 3
    kept = _plans(variant_spec("ringmaster", 4, max_delay=limit), times, 2000, seed=1)
    assert all(g.staleness < limit for plan in kept for g in plan.gradients)
    discarded = [g for plan in kept for g in plan.discarded]
    assert discarded and all(g.staleness >= limit for g in discarded)
    assert sum(plan.cancelled for plan in kept) == 0
    assert sum(p.wasted_time for p in kept) == pytest.approx(sum(g.arrived_at - g.started_at for g in discarded))

    stopped = _plans(variant_spec("ringmaster", 4, max_delay=limit, stop_stale=True), times, 2000, seed=1)
    assert not any(plan.discarded for plan in stopped)  # nothing stale enough survives to arrive
    assert sum(plan.cancelled for plan in stopped) > 0
    for plan in stopped:
        # after the update (version + 1) every running computation has delay < R
        assert all(plan.version + 1 - read < limit for read in plan.held_versions)
        assert all(g.staleness < limit for g in plan.gradients)


def test_rennala_accepts_only_fresh_gradients() -> None:
    plans = _plans(variant_spec("rennala", 4, k=6), ComputeTimes(EXP, speeds=[1.0, 2.0, 2.0, 4.0]), 1000, seed=2)
    assert all(len(plan.gradients) == 6 and all(g.staleness == 0 for g in plan.gradients) for plan in plans)
    assert all(g.staleness >= 1 for plan in plans for g in plan.discarded)
    assert sum(len(plan.discarded) for plan in plans) > 0


# -- invariants, statistics, checkpoints ---------------------------------------------------------
ALL_SPECS = [
    variant_spec("sync", 4),
    variant_spec("k_sync", 4, k=2),
    variant_spec("k_batch_sync", 4, k=6),
    variant_spec("async", 4),
    variant_spec("k_async", 4, k=3),
    variant_spec("k_batch_async", 4, k=5),
    variant_spec("rennala", 4, k=3),
    variant_spec("ringmaster", 4, max_delay=2),
    variant_spec("ringmaster", 4, max_delay=2, stop_stale=True),
]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s.name}-k{s.k}-{s.stop_stale}")
def test_plans_are_consistent(spec: VariantSpec) -> None:
    times = ComputeTimes(DelayDistribution("pareto", shape=2.5), speeds=[1.0, 1.5, 2.0, 6.0])
    simulation = ScheduleSimulation(spec, times, seed=4)
    plans = [simulation.next_update() for _ in range(600)]
    for previous, plan in zip([None] + plans, plans):
        assert len(plan.gradients) == spec.k
        assert len(plan.held_versions) <= spec.learners and all(v <= plan.version for v in plan.held_versions)
        assert all(g.staleness == plan.version - g.read_version for g in plan.gradients)
        assert all(g.started_at < g.arrived_at <= plan.time for g in plan.gradients + plan.discarded)
        if previous is not None:
            assert plan.version == previous.version + 1 and plan.time >= previous.time
            # the consumer can compute every gradient: its read version was held or is the newest
            reads = {g.read_version for g in plan.gradients + plan.discarded}
            assert all(r in previous.held_versions or r > previous.version for r in reads)
    stats = simulation.statistics()
    assert stats["updates"] == 600 and stats["clock"] == plans[-1].time
    assert stats["gradients_used"] == 600 * spec.k
    assert stats["gradients_discarded"] == sum(len(p.discarded) for p in plans)
    assert stats["computations_cancelled"] == sum(p.cancelled for p in plans)
    assert stats["wasted_time"] == pytest.approx(sum(p.wasted_time for p in plans))
    assert stats["busy_time"] == pytest.approx(sum(p.busy_time for p in plans))
    assert stats["busy_time"] == pytest.approx(sum(stats["busy_time_per_learner"]))
    assert stats["wasted_time"] <= stats["busy_time"]
    assert 0 < stats["utilization"] <= 1 + 1e-12
    assert sum(stats["staleness_counts"].values()) == stats["gradients_used"]
    started = stats["gradients_used"] + stats["gradients_discarded"] + stats["computations_cancelled"]
    assert stats["computations_started"] == started + len(simulation.policy.running())


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s.name}-k{s.k}-{s.stop_stale}")
def test_state_dict_round_trip_mid_run(spec: VariantSpec) -> None:
    times = ComputeTimes(EXP, speeds=[1.0, 1.0, 2.0, 3.0])
    simulation = ScheduleSimulation(spec, times, seed=9)
    for _ in range(37):
        simulation.next_update()
    state = pickle.loads(pickle.dumps(simulation.state_dict()))
    expected = [simulation.next_update() for _ in range(ComputeTimes.BLOCK // 8)]  # crosses a draw block
    restored = ScheduleSimulation(spec, times, seed=1234)  # the state carries the seed's stream
    restored.load_state_dict(state)
    assert [restored.next_update() for _ in range(len(expected))] == expected
    assert restored.statistics() == simulation.statistics()


def test_state_dict_round_trip_with_equal_times_mid_instant() -> None:
    # k_batch_async with equal times makes two updates at one instant: save between them.
    spec = variant_spec("k_batch_async", 3, k=2)
    simulation = ScheduleSimulation(spec, EQUAL)
    for _ in range(2):
        simulation.next_update()
    state = copy.deepcopy(simulation.state_dict())
    restored = ScheduleSimulation(spec, EQUAL)
    restored.load_state_dict(state)
    assert [restored.next_update() for _ in range(7)] == [simulation.next_update() for _ in range(7)]


def test_state_of_another_variant_is_refused() -> None:
    state = ScheduleSimulation(variant_spec("k_sync", 3, k=2), EQUAL).state_dict()
    with pytest.raises(ValueError, match="saved for"):
        ScheduleSimulation(variant_spec("k_async", 3, k=2), EQUAL).load_state_dict(state)


def test_server_policy_without_a_clock() -> None:
    policy = ServerPolicy(variant_spec("k_async", 3, k=2))
    assert policy.initial_starts() == [0, 1, 2]
    first = policy.on_arrival(2)
    assert first.accepted and not first.update_due and first.starts == () and first.staleness == 0
    with pytest.raises(RuntimeError, match="no update is due"):
        policy.apply_update()
    with pytest.raises(ValueError, match="no running computation"):
        policy.on_arrival(2)  # learner 2 waits for the update
    assert policy.on_arrival(0).update_due
    with pytest.raises(RuntimeError, match="update is due"):
        policy.on_arrival(1)
    update = policy.apply_update()
    assert update.version == 1 and [g.learner for g in update.gradients] == [2, 0]
    assert [g.ticket for g in update.gradients] == [0, 1]
    assert update.cancelled == () and update.starts == (0, 2)
    assert policy.running() == {0: 1, 1: 0, 2: 1}
    copy_ = ServerPolicy(variant_spec("k_async", 3, k=2))
    copy_.load_state_dict(pickle.loads(pickle.dumps(policy.state_dict())))
    assert copy_.on_arrival(1) == policy.on_arrival(1)  # learner 1 read version 0: staleness 1
    assert policy.on_arrival(0).staleness == 0


def test_server_policy_restarts_at_once_unless_deferred() -> None:
    policy = ServerPolicy(variant_spec("k_batch_async", 2, k=3))
    policy.initial_starts()
    assert policy.on_arrival(0).starts == (0,)
    assert policy.on_arrival(1, defer_start=True).starts == () and policy.ready() == (1,)
    assert policy.start_ready() == (1,) and policy.running() == {0: 0, 1: 0}
    assert policy.on_arrival(1).update_due
    assert policy.apply_update(defer_start=True).starts == () and policy.ready() == (1,)


# -- staleness under exponential delays --------------------------------------------------------------
def test_async_staleness_is_geometric_for_exponential_times() -> None:
    # Memorylessness: each update comes from a uniformly random learner, independently, so a
    # gradient's staleness is Geometric: P(s) = (1/P) (1 - 1/P)^s, mean P - 1. The indicators
    # "update j is stale-free" (same learner as update j-1) are pairwise uncorrelated, so the
    # standard error of the fraction is sqrt(p (1-p) / n) = 0.0031 at n = 20000, P = 4.
    learners, n = 4, 20000
    simulation = ScheduleSimulation(variant_spec("async", learners), ComputeTimes(EXP), seed=5)
    for _ in range(n):
        simulation.next_update()
    counts = simulation.statistics()["staleness_counts"]
    for s in range(4):
        expected = (1 / learners) * (1 - 1 / learners) ** s
        assert counts.get(s, 0) / n == pytest.approx(expected, abs=5 * math.sqrt(expected * (1 - expected) / n))
    # variance of Geometric = (1-p)/p^2 = 12: standard error of the mean 0.025 (x ~2 for correlation)
    assert simulation.statistics()["mean_staleness"] == pytest.approx(learners - 1, abs=0.15)


def test_k_async_fresh_fraction_for_exponential_times() -> None:
    # After each update K learners restart at the new version and P - K keep stale work; by
    # memorylessness the next K to finish are a uniform K-subset, so a fraction K/P of the used
    # gradients has staleness 0 (hypergeometric, independent across updates: standard error
    # sqrt(K (K/P)(1-K/P)(P-K)/(P-1)) / (K sqrt(n)) = 0.0020 for P = 4, K = 2, n = 20000).
    simulation = ScheduleSimulation(variant_spec("k_async", 4, k=2), ComputeTimes(EXP), seed=6)
    for _ in range(20000):
        simulation.next_update()
    stats = simulation.statistics()
    assert stats["staleness_counts"][0] / stats["gradients_used"] == pytest.approx(0.5, abs=0.01)


# -- closed forms ----------------------------------------------------------------------------
def test_theorem_1_ratios_from_the_design_notes() -> None:
    assert sync_async_ratio(EXP, 8) == pytest.approx(21.74, abs=0.005)
    assert sync_async_ratio(SHIFTED, 8) == pytest.approx(14.87, abs=0.005)
    assert batch_speedup_ratio(EXP, 8, 8) == pytest.approx(sync_async_ratio(EXP, 8) / 8)


@pytest.mark.parametrize(
    "dist",
    [EXP, SHIFTED, PARETO, DelayDistribution("pareto", scale=2.0, shape=1.5), DelayDistribution("uniform", high=2.0)],
    ids=lambda d: f"{d.name}-{d.shape}",
)
def test_numerical_order_statistics_match_exact_ones(dist: DelayDistribution) -> None:
    for p, k in [(1, 1), (2, 1), (2, 2), (8, 1), (8, 5), (8, 8), (32, 1), (32, 31), (32, 32)]:
        exact = expected_order_statistic(dist, k, p)
        assert order_statistic_by_integration(dist, k, p) == pytest.approx(exact, rel=1e-6)


def test_lognormal_order_statistics_by_integration() -> None:
    lognormal = DelayDistribution("lognormal", scale=1.0, sigma=0.5)
    assert expected_order_statistic(lognormal, 1, 1) == pytest.approx(lognormal.mean, rel=1e-9)
    # sum over K of E[X_{K:P}] is P E[X]
    total = sum(expected_order_statistic(lognormal, k, 6) for k in range(1, 7))
    assert total == pytest.approx(6 * lognormal.mean, rel=1e-8)


def test_closed_form_edge_cases() -> None:
    assert closed_form_time_per_update(variant_spec("rennala", 4, k=2), EXP) is None
    assert closed_form_time_per_update(variant_spec("k_batch_sync", 4, k=2), SHIFTED) is None
    assert closed_form_time_per_update(variant_spec("ringmaster", 4), SHIFTED) == pytest.approx(2.0 / 4)
    assert k_batch_sync_time_per_update(EXP, 3, 4) == pytest.approx(0.75)
    assert k_batch_async_time_per_update(EXP, 2, 3, speeds=[1.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert k_async_is_exact(SHIFTED, 1, 4) and k_async_is_exact(SHIFTED, 4, 4) and not k_async_is_exact(SHIFTED, 2, 4)
    with pytest.raises(ConfigError, match="^distribution='shifted_exponential'"):
        k_batch_sync_time_per_update(SHIFTED, 2, 4)
    with pytest.raises(ConfigError, match="^stale.k=5 "):
        expected_order_statistic(EXP, 5, 4)


def _runtime_cases() -> list[tuple[str, DelayDistribution, int]]:
    p = 3
    cases = []
    for dist in (EXP, SHIFTED, PARETO):
        for k in range(1, p + 1):
            cases += [("k_sync", dist, k), ("k_batch_async", dist, k)]
            if dist is EXP:  # k_async with K = 1 or P is async or sync, see test_k_async_extremes
                cases += [("k_async", dist, k), ("k_batch_sync", dist, k)]
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("name, dist, k", _runtime_cases(), ids=lambda x: getattr(x, "name", x))
def test_simulated_time_per_update_matches_closed_form(name: str, dist: DelayDistribution, k: int) -> None:
    # 20000 updates: the relative standard error is at most CV(X) / sqrt(20000) = 0.7% (exponential,
    # K = 1); 2% is ~3 standard errors there and many more elsewhere.
    spec = variant_spec(name, 3, k=k)
    closed = closed_form_time_per_update(spec, dist)
    assert closed is not None
    assert simulate_runtime(spec, ComputeTimes(dist), 20000, seed=11) == pytest.approx(closed, rel=0.02)


@pytest.mark.slow
def test_k_batch_async_with_heterogeneous_speeds_matches_renewal_rate() -> None:
    speeds = [1.0, 1.0, 2.0, 4.0]
    spec = variant_spec("k_batch_async", 4, k=2)
    closed = k_batch_async_time_per_update(SHIFTED, 2, 4, speeds=speeds)
    simulated = simulate_runtime(spec, ComputeTimes(SHIFTED, speeds=speeds), 20000, seed=2)
    assert simulated == pytest.approx(closed, rel=0.02)
