"""The advisor's overhead model (issue 22): calibrated on a written trace of a synchronous run (the
recorded time per update over the compute-only p_sync prediction, split into the recorded data
wait per gradient and the rest per update), who pays what under each variant, the predictions with
it (closed forms on the shifted times where exact, else the replay), and advise() / the command line
with and without it. Arithmetic on written traces only: no wall clock."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lightning_echo.advisor.advise import GRID_FILE, advise
from lightning_echo.advisor.fit import fit_step_trace, fit_trace
from lightning_echo.advisor.predict import Overhead, ShiftedTimes, calibrate_overhead, predict, recorded_time_per_update
from lightning_echo.advisor.trace import StepRecord, StepTrace, write_step_trace
from lightning_echo.cli import main
from lightning_echo.core.delays import DelayDistribution, TraceComputeTimes
from lightning_echo.core.schedule import variant_spec
from lightning_echo.errors import ConfigError

COMPUTE = (0.02, 0.02, 0.03, 0.06)  # each rank's constant compute time: every replay is exact
DATA, UPDATE = 0.002, 0.008  # the written run's data wait per step and its extra per update


def lockstep(kind: str = "ddp", data: float = DATA, update: float = UPDATE, steps: int = 60) -> StepTrace:
    """A synchronous run: every step waits for the slowest rank, then ``update`` more (communication);
    every rank waits ``data`` for its next batch."""
    slowest = max(COMPUTE)
    return StepTrace([StepRecord(rank, step, c, data, slowest - c + update, 32)
                      for step in range(steps) for rank, c in enumerate(COMPUTE)], kind=kind)


def test_calibration_splits_the_recorded_overhead_into_data_wait_and_the_rest() -> None:
    trace = lockstep()
    fit = fit_step_trace(trace)
    overhead = calibrate_overhead(trace, fit, gradients=400)
    assert overhead is not None and overhead.learners == 4
    assert recorded_time_per_update(trace) == overhead.recorded == pytest.approx(max(COMPUTE) + DATA + UPDATE)
    assert overhead.predicted == pytest.approx(max(COMPUTE), rel=1e-12)  # p_sync from compute alone
    assert overhead.per_gradient == pytest.approx(DATA) and overhead.per_update == pytest.approx(UPDATE)
    assert overhead.total == pytest.approx(overhead.recorded - overhead.predicted)
    # a data wait larger than the whole overhead is capped by it; nothing negative
    capped = calibrate_overhead(lockstep(data=0.01, update=-0.009), fit, gradients=400)
    assert capped is not None and capped.per_gradient == pytest.approx(0.001) and capped.per_update == pytest.approx(0.0)
    faster = calibrate_overhead(lockstep(data=0.0, update=-0.01), fit, gradients=400)  # recorded below the prediction
    assert faster is not None and faster.total == 0.0


def test_calibration_needs_a_run_whose_steps_are_updates() -> None:
    ps = lockstep(kind="parameter_server")
    fit = fit_step_trace(ps)
    assert calibrate_overhead(ps, fit, gradients=400) is None  # a server's run of an unknown variant
    assert calibrate_overhead(ps, fit, synchronous=True, gradients=400) is not None  # its p_sync run
    times = StepTrace([StepRecord(r, s, c) for s in range(20) for r, c in enumerate(COMPUTE)], kind="parameter_server")
    assert calibrate_overhead(times, fit_step_trace(times), gradients=400) is None  # a compute-time trace


def test_who_pays_what() -> None:
    overhead = Overhead(per_gradient=0.002, per_update=0.008, recorded=0.07, predicted=0.06, learners=4)
    for spec in (variant_spec("sync", 4), variant_spec("k_sync", 4, 3), variant_spec("k_batch_sync", 4, 4),
                 variant_spec("rennala", 4, 4)):
        assert overhead.extra(spec) == (0.002, 0.008)  # every learner restarts after the update
    assert overhead.extra(variant_spec("k_async", 4, 2)) == (0.010, 0.0)  # the K that pushed wait for it
    assert overhead.extra(variant_spec("k_batch_async", 4, 4)) == (0.004, 0.0)  # one learner in K waits
    assert overhead.extra(variant_spec("async", 4)) == (0.010, 0.0)
    assert overhead.extra(variant_spec("ringmaster", 4, max_delay=4, stop_stale=True)) == (0.010, 0.0)
    assert "per update" in overhead.how(variant_spec("sync", 4)) and "per update" not in overhead.how(variant_spec("async", 4))


def test_shifted_times() -> None:
    base = TraceComputeTimes(per_learner=[[0.01, 0.02], [0.03]])
    shifted = ShiftedTimes(base, 0.005)
    assert shifted.learners == 2 and shifted.mean(0) == pytest.approx(0.02) and shifted.mean(1) == pytest.approx(0.035)
    again = shifted.seeded(1)
    assert [again.sample(0), again.sample(0), again.sample(1)] == pytest.approx([0.015, 0.025, 0.035])
    with pytest.raises(ConfigError):
        ShiftedTimes(base, -1.0)


def test_predictions_with_the_overhead() -> None:
    trace = lockstep()
    fit = fit_step_trace(trace)
    overhead = calibrate_overhead(trace, fit, gradients=400)
    specs = [variant_spec("sync", 4), variant_spec("k_sync", 4, 3), variant_spec("k_async", 4, 2),
             variant_spec("k_batch_async", 4, 4), variant_spec("k_batch_sync", 4, 4)]
    plain = predict(fit, specs=specs, gradients=800)
    table = predict(fit, specs=specs, gradients=800, overhead=overhead)
    assert table.overhead is overhead and plain.overhead is None
    g, u = overhead.per_gradient, overhead.per_update
    sync = table.baseline
    assert sync.time_per_update == pytest.approx(overhead.recorded, rel=1e-9)  # the recorded run, by construction
    assert sync.compute_only == plain.baseline.time_per_update and "overhead" in sync.methods
    assert table.row("k_sync", 3).time_per_update == pytest.approx(COMPUTE[2] + g + u)  # the third arrival, then the update
    batch = table.row("k_batch_async", 4)  # renewal closed form on the shifted times
    assert batch.time_per_update == pytest.approx(4 / math.fsum(1 / (c + g + u / 4) for c in COMPUTE), rel=1e-12)
    assert batch.compute_only == pytest.approx(4 / math.fsum(1 / c for c in COMPUTE), rel=1e-12)
    for row, without in zip(table.rows, plain.rows):
        assert row.compute_time_per_update == without.time_per_update
        assert row.time_per_update > row.compute_only
        assert (row.mean_staleness, row.wasted_fraction) == (without.mean_staleness, without.wasted_fraction)
    assert without.compute_only is None and without.compute_time_per_update == without.time_per_update


def test_order_statistics_shift_exactly_for_equal_speeds() -> None:
    draws = [DelayDistribution("exponential", scale=0.1).sample(torch.Generator().manual_seed(i), 800).tolist()
             for i in range(4)]
    fit = fit_trace(draws)
    overhead = Overhead(per_gradient=0.01, per_update=0.02, recorded=0.0, predicted=0.0, learners=4)
    specs = [variant_spec("sync", 4), variant_spec("k_sync", 4, 2), variant_spec("k_async", 4, 2)]
    table = predict(fit, specs=specs, gradients=400, overhead=overhead)
    assert table.baseline.time_per_update == pytest.approx(table.baseline.compute_only + 0.03, rel=1e-12)
    assert table.row("k_sync", 2).time_per_update == pytest.approx(table.row("k_sync", 2).compute_only + 0.03, rel=1e-12)
    shifted = table.row("k_async", 2)  # Lemma 5 needs memoryless times: the shifted times are replayed
    assert shifted.compute_only < shifted.time_per_update != pytest.approx(shifted.compute_only + 0.03, rel=1e-6)


def test_advise_includes_the_overhead_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    write_step_trace(run, lockstep(steps=80))
    advice = advise(run, write=False, gradients=400)
    overhead = advice.table.overhead
    assert overhead is not None and overhead.per_update == pytest.approx(UPDATE)
    assert advice.table.baseline.time_per_update == pytest.approx(max(COMPUTE) + DATA + UPDATE)
    text = advice.text()
    assert "compute only" in text and "overhead model calibrated on it" in text and "[overhead]" in text
    plain = advise(run, write=False, gradients=400, overhead=False)
    assert plain.table.overhead is None and all(r.compute_only is None for r in plain.table.rows)
    assert "these predictions leave out" in plain.recorded_line()
    main(["advise", str(run), "--no-overhead", "--gradients", "400"])
    printed = capsys.readouterr().out
    assert "compute only" not in printed and "overhead model" not in printed
    main(["advise", str(run), "--gradients", "400"])
    capsys.readouterr()
    header = (run / "advice" / GRID_FILE).read_text().splitlines()[0].split(",")
    assert header[-2:] == ["compute_only_time_per_update_s", "overhead_method"]


@pytest.mark.slow
def test_the_trained_replay_adds_the_per_update_overhead_to_its_clock(tmp_path: Path) -> None:
    from test_advise import run_directory

    run = run_directory(tmp_path)
    write_step_trace(run, lockstep(data=0.0, steps=60))  # all of the overhead per update: the same simulated run
    kept = {"replay": True, "replay_steps": 12, "gradients": 400, "write": False, "replay_variants": 1}
    with_overhead, plain = advise(run, **kept), advise(run, overhead=False, **kept)
    assert with_overhead.replay is not None and plain.replay is not None
    u = with_overhead.table.overhead.per_update
    for (t, step, loss), (t0, step0, loss0) in zip(with_overhead.replay.baseline.points, plain.replay.baseline.points):
        assert (step, loss) == (step0, loss0) and t == pytest.approx(t0 + u * step, rel=1e-9)
