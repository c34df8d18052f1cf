"""Simulated learners with their own data streams and batch echoing (lightning_echo.core.learner_data)."""

from __future__ import annotations

import math

import pytest

from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.learner_data import DataTimes, LearnerDataStreams, LearnerEcho, data_times_from_config
from lightning_echo.core.schedule import VARIANTS, ScheduleSimulation, variant_spec
from lightning_echo.errors import ConfigError


def constant(value: float, learners: int | None = None) -> ComputeTimes:
    return ComputeTimes(DelayDistribution("constant", value=value), learners=learners)


def _spec(name: str, learners: int = 6):
    k = {"sync": None, "async": None, "ringmaster": None}.get(name, 3)
    return variant_spec(name, learners, k=k, max_delay=4 if name == "ringmaster" else None)


def _run(simulation: ScheduleSimulation, updates: int):
    plans = [simulation.next_update() for _ in range(updates)]
    return [(g.learner, g.read_version, g.staleness, g.started_at, g.arrived_at) for p in plans for g in p.gradients], plans


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("echo", [LearnerEcho("auto"), LearnerEcho(1), None])
def test_streams_without_data_time_give_the_schedule_without_streams(variant, echo):
    times = ComputeTimes(DelayDistribution("exponential"), speeds=[1, 1, 2, 2, 4, 4])
    plain, plain_plans = _run(ScheduleSimulation(_spec(variant), times, seed=3), 120)
    streams = LearnerDataStreams(6, data_times=None, echo=echo)
    with_streams, plans = _run(ScheduleSimulation(_spec(variant), times, seed=3, data=streams), 120)
    assert with_streams == plain  # bit for bit: same learners, versions and float times
    assert [p.totals.busy_time for p in plans] == [p.totals.busy_time for p in plain_plans]
    assert all(not g.is_echo and g.data_wait == 0.0 for p in plans for g in p.gradients)


def test_take_follows_the_prefetch_bound():
    one_ahead = LearnerDataStreams(1, data_times=constant(1.0), prefetch=1)
    assert one_ahead.take(0, 0.0).wait == 1.0  # batch 0 ready at 1
    assert one_ahead.take(0, 10.0).wait == 0.0  # batch 1: max(1, taken 1) + 1 = 2
    late = one_ahead.take(0, 10.5)  # batch 2: the loader held batch 1 until 10, then took 1 s
    assert (late.fresh_index, late.begin, late.wait) == (2, 11.0, 0.5)
    two_ahead = LearnerDataStreams(1, data_times=constant(1.0), prefetch=2)
    two_ahead.take(0, 0.0), two_ahead.take(0, 10.0)
    assert two_ahead.take(0, 10.5).wait == 0.0  # batch 2 was made while batch 1 waited: ready at 3


def test_a_data_bound_learner_waits_and_auto_echo_fills_the_wait():
    # One learner, compute 1 s, loader 4 s per batch: without echo 3 of every 4 s are spent waiting.
    spec = variant_spec("sync", 1)
    plain = ScheduleSimulation(spec, constant(1.0), data=LearnerDataStreams(1, constant(4.0)))
    for _ in range(100):
        plan = plain.next_update()
    assert plan.time == pytest.approx(4.0 * 100 + 1.0)
    assert plain.statistics()["utilization"] == pytest.approx(100 / plan.time, rel=1e-9)
    assert plan.totals.data_wait_time == pytest.approx(4.0 + 3.0 * 99, rel=1e-9)  # the waits of the 100 gradients
    echoed = ScheduleSimulation(spec, constant(1.0), data=LearnerDataStreams(1, constant(4.0), LearnerEcho("auto", 4)))
    plans = [echoed.next_update() for _ in range(100)]
    assert plans[-1].time == pytest.approx(4.0 + 100.0)  # a gradient every second after the first batch
    serves = [g.serve for p in plans for g in p.gradients]
    assert serves[:8] == [0, 1, 2, 3, 0, 1, 2, 3]  # each fresh batch four times: 3 echoes fill the 3 s wait
    capped = ScheduleSimulation(spec, constant(1.0), data=LearnerDataStreams(1, constant(4.0), LearnerEcho("auto", 2)))
    plans = [capped.next_update() for _ in range(100)]
    assert max(g.serve for p in plans for g in p.gradients) == 1  # the cap: two serves per fresh batch
    assert plans[-1].time == pytest.approx(4.0 * 49 + 6.0)  # batch j at 4 + 4j, computed at once and echoed once


def test_auto_echo_never_echoes_when_the_loader_keeps_up():
    spec = variant_spec("k_async", 4, k=2)
    streams = LearnerDataStreams(4, constant(0.5), LearnerEcho("auto", 4))
    simulation = ScheduleSimulation(spec, ComputeTimes(DelayDistribution("shifted_exponential", shift=1.0)), data=streams)
    plans = [simulation.next_update() for _ in range(200)]
    assert not any(g.is_echo for p in plans for g in p.gradients)
    assert all(g.data_wait == 0.0 for p in plans[2:] for g in p.gradients)  # only the first batches waited


@pytest.mark.parametrize("factor, expected", [(2, 2.0), (3, 3.0), (1.5, 1.5)])
def test_a_number_as_factor_serves_each_fresh_batch_that_many_times(factor, expected):
    streams = LearnerDataStreams(1, data_times=None, echo=LearnerEcho(factor, seed=5))
    takes = [streams.take(0, float(t)) for t in range(3000)]
    fresh = sum(1 for t in takes if not t.is_echo)
    assert 3000 / fresh == pytest.approx(expected, rel=0.03)
    if float(factor).is_integer():
        assert [t.serve for t in takes[: 2 * factor]] == list(range(factor)) * 2


def test_a_computation_cancelled_before_its_data_arrived_keeps_its_batch():
    streams = LearnerDataStreams(1, data_times=constant(5.0), echo=None)
    first = streams.take(0, 0.0)
    assert (first.fresh_index, first.begin) == (0, 5.0)
    streams.cancel(0, 2.0, first.begin)  # K-sync cancelled it at t=2
    again = streams.take(0, 2.0)
    assert (again.fresh_index, again.serve, again.begin, again.wait) == (0, 0, 5.0, 3.0)
    assert streams.waits() == [5.0]  # 2 s, then 3 s: counted once
    assert streams.statistics()["fresh_batches_per_learner"] == [1]


def test_k_sync_with_slow_loaders_loses_no_fresh_batch_to_cancellation():
    spec = variant_spec("k_sync", 4, k=2)
    streams = LearnerDataStreams(4, data_times=ComputeTimes(DelayDistribution("exponential", scale=3.0)))
    simulation = ScheduleSimulation(spec, ComputeTimes(DelayDistribution("exponential")), data=streams)
    plans = [simulation.next_update() for _ in range(300)]
    per_learner: dict[int, list[int]] = {}
    for plan in plans:
        for g in plan.gradients:
            per_learner.setdefault(g.learner, []).append(g.fresh_index)
    for indices in per_learner.values():
        assert indices == sorted(set(indices))  # each learner's used batches in stream order, none twice
    stats = simulation.statistics()
    assert stats["computations_cancelled"] > 0
    assert stats["utilization"] < 1.0 and stats["wasted_time"] >= 0.0


@pytest.mark.parametrize("variant", ["async", "k_batch_async", "k_sync", "rennala"])
def test_the_state_round_trip_continues_exactly(variant):
    def build():
        times = ComputeTimes(DelayDistribution("exponential"), speeds=[1, 2, 3, 4, 5, 6])
        data = DataTimes(slowdown=3, jitter="exponential", speeds=(1, 1, 2, 2, 3, 3)).source(times, 6)
        return ScheduleSimulation(_spec(variant), times, seed=1,
                                  data=LearnerDataStreams(6, data, LearnerEcho(1.7, seed=2), prefetch=2, seed=1))

    straight = build()
    _run(straight, 40)
    saved = straight.state_dict()
    expected, _ = _run(straight, 60)
    resumed = build()
    resumed.load_state_dict(saved)
    got, _ = _run(resumed, 60)
    assert got == expected
    assert resumed.statistics()["data_wait_per_learner"] == straight.statistics()["data_wait_per_learner"]


def test_a_state_saved_without_streams_is_refused_by_a_simulation_with_them():
    plain = ScheduleSimulation(_spec("async"), constant(1.0, 6))
    plain.next_update()
    streams = ScheduleSimulation(_spec("async"), constant(1.0, 6), data=LearnerDataStreams(6))
    with pytest.raises(ValueError, match="saved without learner data streams"):
        streams.load_state_dict(plain.state_dict())


def test_data_bound_async_reaches_the_loaders_rate_and_echo_the_compute_rate():
    # 4 learners, compute 1 s each, loaders 3 s per batch: async applies one gradient per update.
    spec = variant_spec("async", 4)
    plain = ScheduleSimulation(spec, constant(1.0, 4), data=LearnerDataStreams(4, constant(3.0, 4)))
    for _ in range(400):
        plan = plain.next_update()
    assert 400 / plan.time == pytest.approx(4 / 3.0, rel=0.02)  # P / data time
    echoed = ScheduleSimulation(spec, constant(1.0, 4), data=LearnerDataStreams(4, constant(3.0, 4), LearnerEcho("auto", 4)))
    times = [echoed.next_update().time for _ in range(400)]
    assert 300 / (times[-1] - times[99]) == pytest.approx(4 / 1.0, rel=0.02)  # P / compute time, after the first wait


def test_data_times_bases():
    compute = ComputeTimes(DelayDistribution("exponential", scale=2.0), speeds=[1, 3])
    relative = DataTimes(slowdown=4).source(compute, 2)
    assert [relative.mean(0), relative.mean(1)] == [8.0, 24.0]
    fixed = DataTimes(seconds_per_batch=0.5, speeds=(1, 4), jitter="exponential").source(compute, 2)
    assert [fixed.mean(0), fixed.mean(1)] == [0.5, 2.0]


def test_data_times_trace(tmp_path):
    trace = tmp_path / "data.csv"
    trace.write_text("learner,seconds\n0,1.5\n1,2.5\n0,0.5\n1,3.5\n")
    source = DataTimes(trace=str(trace)).source(constant(1.0), 2)
    assert [source.sample(0), source.sample(1), source.sample(0)] == [1.5, 2.5, 0.5]


@pytest.mark.parametrize("fields, key", [
    ({}, "slowdown"),
    ({"slowdown": 2, "seconds_per_batch": 1}, "slowdown"),
    ({"slowdown": -1}, "slowdown"),
    ({"slowdown": 2, "jitter": "gamma"}, "jitter"),
    ({"slowdown": 2, "jitter_param": 0.5}, "jitter_param"),
    ({"slowdown": 2, "speeds": ()}, "speeds"),
    ({"slowdown": 2, "speeds": (1, 0)}, "speeds[1]"),
    ({"trace": "t.csv", "speeds": (1, 2)}, "speeds"),
    ({"slowdown": 2, "prefetch": 0}, "prefetch"),
])
def test_bad_data_times_are_refused_in_one_line(fields, key):
    with pytest.raises(ConfigError) as error:
        DataTimes(**fields)
    assert error.value.key == key and "\n" not in str(error.value)


def test_speeds_must_match_the_learners():
    with pytest.raises(ConfigError, match="one slowdown per learner: 3 entries"):
        DataTimes(slowdown=2, speeds=(1, 2)).source(constant(1.0), 3)


def test_the_loader_group_as_data_times():
    assert data_times_from_config({"name": "none"}) is None
    assert data_times_from_config({"name": "throttle", "slowdown": None, "seconds_per_batch": None}) is None
    times = data_times_from_config({"name": "throttle", "slowdown": 4.0, "seconds_per_batch": None, "jitter": None,
                                    "jitter_param": None, "queue_size": 3, "speeds": [1, 2]})
    assert times == DataTimes(slowdown=4.0, speeds=(1.0, 2.0), prefetch=3)
    with pytest.raises(ConfigError, match="slowness"):
        data_times_from_config({"name": "throttle", "slowness": 4})


def test_bad_echo_settings():
    with pytest.raises(ConfigError):
        LearnerEcho(0.5)
    with pytest.raises(ConfigError):
        LearnerEcho("auto", max_factor=0)
    assert math.isfinite(LearnerDataStreams(2, echo=LearnerEcho(2)).take(1, 0.0).begin)
