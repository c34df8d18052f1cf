"""The parameter server from the command line: ``backend=processes`` turns a straggler
algorithm's simulated learners into real processes (a server and ``stale.learners`` learners,
gloo on CPU), started and supervised by the job as DDP ranks are.

Faults come from the model (``InjectedFault`` of rank_faults): a learner that kills itself, the
server asking the job to stop as a scheduler's SIGTERM would.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import main_error, only_run_dir as _only_run_dir, run_cli, run_record as _record
from lightning_echo.app.config import compose_config
from lightning_echo.app.launch import process_plan
from lightning_echo.report.aggregate import compare_runs
from lightning_echo.report.runs import find_runs
from rank_faults import fault_overrides as _fault, rank_env as _env

PS = ["experiment=single", "backend=processes", "trainer.enable_progress_bar=false", "data.n_examples=2048",
      "data.batch_size=32", "stale.delay.distribution=constant", "validate_before_training=false"]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def _column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


# -- settings, checked before anything runs ---------------------------------------------------------
def test_the_preset_starts_a_server_and_one_process_per_learner() -> None:
    cfg = compose_config(["backend=processes", "algorithm=k_async", "stale.learners=3"])
    assert cfg.trainer.devices == 4 and cfg.algorithm.strategy._target_.endswith("ParameterServerStrategy")
    assert process_plan(cfg).processes == 4 and process_plan(cfg).deciding_ranks == [0]


@pytest.mark.parametrize("overrides,expected", [
    (["algorithm=sync"], "backend='processes' is not allowed: runs a straggler algorithm's learners; "
                         "algorithm=sync has none: choose algorithm=p_sync"),
    (["algorithm=async", "trainer.devices=3"], "trainer.devices=3 is not allowed: a parameter server with "
                                               "stale.learners=8 needs 9 processes on this machine"),
    (["algorithm=async", "ps.inject_delays=maybe"], "ps.inject_delays='maybe' is not allowed: must be true or false"),
    (["algorithm=async", "ps.timeout=0"], "ps.timeout=0"),
    (["algorithm=k_async", "stale.k=0"], "stale.k=0"),
    (["algorithm=async", "+trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches=2 is not allowed: "
                                                                "must be 1 with the parameter server"),
    (["algorithm=async", "ps.restart_learners=-1"], "ps.restart_learners=-1 is not allowed"),
    (["algorithm=async", "ps.rejoin_wait=-2"], "ps.rejoin_wait=-2 is not allowed: must be a number of seconds"),
    (["algorithm=async", "ps.shrink_k=often"], "ps.shrink_k='often' is not allowed: must be true or false"),
    (["algorithm=async", "stale.learners=2", "ps.min_learners=3"], "ps.min_learners=3 is not allowed: must be at most "
                                                                   "stale.learners (2)"),
    (["algorithm=async", "ps.restart_server=1", "checkpoint.enabled=false"],
     "ps.restart_server=1 is not allowed: needs checkpoint.enabled=true"),
])
def test_bad_settings_are_refused_in_one_line_before_any_run(
    overrides: list[str], expected: str, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    error = main_error(capsys, ["experiment=single", "backend=processes", *overrides])
    assert expected in error
    assert not (tmp_path / "le_outputs").exists()


# -- real runs ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_async_carries_on_without_a_killed_learner_and_the_report_reads_the_run(
    tmp_path: Path, no_leftovers: None
) -> None:
    result = run_cli([*PS, "algorithm=async", "stale.learners=3", "stale.delay.value=0.02", "trainer.max_steps=60",
                      *_fault("sigkill", rank=2, step=4)], cwd=tmp_path, env_extra=_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 2 of 4 was killed by SIGKILL; the run goes on while rank 0 decides so" in result.stderr
    run_dir = _only_run_dir(tmp_path)
    record = _record(run_dir)
    assert record["status"] == "completed" and record["processes"] == 4
    assert [(r["rank"], r["status"]) for r in record["ranks"]] == [
        (0, "completed"), (1, "completed"), (2, "killed"), (3, "completed")]
    assert record["ranks"][0]["optimizer_steps"] == 60
    assert record["config"]["label"] == "async P=3 (processes)" and record["config"]["clock"] == "wall_clock"
    rows = _metrics(run_dir)
    assert {int(row["step"]) for row in rows if row.get("ps/updates_per_s")} == set(range(1, 61))
    assert _column(rows, "ps/lost_learners")[-1] == 1.0
    # the raw link was timed when the first learner joined; the run's traffic is a fraction of it
    link, fraction = _column(rows, "ps/link_bytes_per_s"), _column(rows, "ps/link_fraction")
    assert len(set(link)) == 1 and link[0] > 1e6 and 0 < fraction[-1] < 1
    assert fraction[-1] == pytest.approx(_column(rows, "ps/bytes_per_s")[-1] / link[0])
    assert max(_column(rows, "stale/staleness_max")) >= 1  # three learners: async gradients are stale
    summary = _summary(run_dir)
    assert summary["clock"] == "wall_clock" and summary["simulated_s"] is None
    assert summary["final_train_loss"] is not None and summary["final_val_loss"] is not None
    # The comparison report reads the run like any other, on the wall clock.
    comparison = compare_runs(find_runs([run_dir]))
    assert comparison.clock == "wall_clock" and [run.status for run in comparison.runs] == ["completed"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sync_without_shrink_k_resumes_on_every_process_and_fails_in_one_line_when_a_learner_dies(
    tmp_path: Path, no_leftovers: None
) -> None:
    # First the server asks the job to stop, as a scheduler's SIGTERM would (once: the marker);
    # the resumed run goes on from the checkpoint until learner 0, whose steps count from 0 again,
    # kills itself at its 14th gradient: sync cannot go on without it.
    faults = ["model._target_=rank_faults.ServerStopsThenLearnerDies", "+model.action=sigterm_job", "+model.rank=0",
              "+model.step=6", f"+model.marker={tmp_path / 'stopped'}", "+model.kill_rank=1", "+model.kill_step=14"]
    first = run_cli([*PS, "algorithm=p_sync", "stale.learners=2", "stale.delay.value=0.01", "trainer.max_steps=200",
                     "ps.timeout=20", "ps.shrink_k=false", *faults], cwd=tmp_path, env_extra=_env(tmp_path))
    assert first.returncode == 143, first.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    assert _record(run_dir)["status"] == "interrupted" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    stopped_at = int(_column(_metrics(run_dir), "progress/optimizer_steps")[-1])
    assert 6 <= stopped_at <= 8

    second = run_cli(["resume", "--trust-config", str(run_dir)], cwd=tmp_path, env_extra=_env(tmp_path))  # a test fault injector
    assert second.returncode == 1, second.stderr[-3000:]
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith("lightning-echo: rank 0 of 3 failed: ParameterServerError: learner 0 (rank 1) is lost")
    assert "sync needs a fresh gradient" in line
    record = _record(run_dir)
    assert record["status"] == "failed" and len(record["resumes"]) == 1
    steps = _column(_metrics(run_dir), "progress/optimizer_steps")
    # Every process resumed: the server went on from its checkpoint, both learners computed again.
    assert stopped_at < steps[-1] < 200 and steps[-1] >= stopped_at + 10



@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_frozen_server_ends_the_run_in_one_line_once_its_learners_gave_up(tmp_path: Path, no_leftovers: None) -> None:
    # The server stops itself (SIGSTOP) after its third update: alive, never answering again. The
    # learners give up after 2 x ps.timeout; the job then gives it ps.timeout + 10 s and ends the run.
    result = run_cli([*PS, "algorithm=async", "stale.learners=2", "stale.delay.value=0.01", "trainer.max_steps=500",
                      "ps.timeout=2", *_fault("freeze", rank=0, step=3)], cwd=tmp_path, env_extra=_env(tmp_path),
                     timeout=200)
    assert result.returncode == 1, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("lightning-echo: rank 0 of 3 did not end within 12 s after every other rank had failed "
                           "(frozen or stuck); it was killed"), line
    record = _record(_only_run_dir(tmp_path))
    assert record["status"] == "failed" and [r["status"] for r in record["ranks"]] == ["killed", "failed", "failed"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_p_sync_goes_on_without_a_killed_learner_and_takes_its_restarted_process_back(
    tmp_path: Path, no_leftovers: None
) -> None:
    # Learner 1 (rank 2) kills itself once (the marker): the job starts it again, it joins the
    # running server, and p_sync's K, lowered to the learner left, comes back to 2.
    # 0.1 s per gradient: the run lasts long enough (15 s) for the new process to start and join.
    result = run_cli([*PS, "algorithm=p_sync", "stale.learners=2", "stale.delay.value=0.1", "trainer.max_steps=150",
                      "ps.timeout=20", "ps.restart_learners=2",
                      *_fault("sigkill", rank=2, step=5, marker=tmp_path / "killed")],
                     cwd=tmp_path, env_extra=_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 2 of 3 was killed by SIGKILL; started again (learner restarts left: 1)" in result.stderr
    run_dir = _only_run_dir(tmp_path)
    record = _record(run_dir)
    assert record["status"] == "completed"
    assert [(r["rank"], r["role"]) for r in record["restarts"]] == [(2, "learner")]
    faults = [(event["event"], event.get("learner", event.get("k"))) for event in record["faults"]]
    assert faults == [("lost", 1), ("k", 1), ("joined", 1), ("k", 2)]
    assert [(r["rank"], r["status"]) for r in record["ranks"]] == [(0, "completed"), (1, "completed"), (2, "completed")]
    rows = _metrics(run_dir)
    k = _column(rows, "stale/k")
    assert 1.0 in k and k[-1] == 2.0 and k[0] == 2.0  # one learner's gradient while it was away
    assert _column(rows, "ps/joins")[-1] == 1.0 and _column(rows, "ps/live_learners")[-1] == 2.0
    assert _column(rows, "progress/optimizer_steps")[-1] == 150


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_server_is_started_again_from_its_checkpoint_and_its_learners_rejoin(
    tmp_path: Path, no_leftovers: None
) -> None:
    result = run_cli([*PS, "algorithm=async", "stale.learners=2", "stale.delay.value=0.02", "trainer.max_steps=60",
                      "ps.timeout=20", "ps.restart_server=1", "checkpoint.every_n_steps=10",
                      *_fault("sigkill", rank=0, step=25, marker=tmp_path / "killed")],
                     cwd=tmp_path, env_extra=_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 of 3 was killed by SIGKILL; started again (server restarts left: 0)" in result.stderr
    run_dir = _only_run_dir(tmp_path)
    record = _record(run_dir)
    assert record["status"] == "completed" and [(r["rank"], r["role"]) for r in record["restarts"]] == [(0, "server")]
    assert [resume["step"] for resume in record["resumes"]] == [20]  # from the last checkpoint before the kill
    restarted = [event for event in record["faults"] if event["event"] == "restarted"]
    assert len(restarted) == 1 and restarted[0]["checkpoint_version"] == 20 and restarted[0]["version"] > 25
    by_step = {int(row["step"]): float(row["ps/version"]) for row in _metrics(run_dir) if row.get("ps/version")}
    versions = [by_step[step] for step in sorted(by_step)]
    assert all(a < b for a, b in zip(versions, versions[1:]))  # never back, never reused
    assert by_step[21] > 25  # the restarted server's first update skipped the lost versions
    steps = _column(_metrics(run_dir), "progress/optimizer_steps")
    assert steps[-1] == 60 and 20 in steps
    assert _summary(run_dir)["final_val_loss"] is not None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_hung_learner_is_dropped_ended_and_started_again(tmp_path: Path, no_leftovers: None) -> None:
    # Learner 1 stops itself (SIGSTOP, once): the server drops it after ps.timeout and names it in the
    # join store; the job kills it and starts a new process, which joins.
    result = run_cli([*PS, "algorithm=async", "stale.learners=2", "stale.delay.value=0.1", "trainer.max_steps=300",
                      "ps.timeout=3", "ps.restart_learners=1",
                      *_fault("freeze", rank=2, step=5, marker=tmp_path / "frozen")],
                     cwd=tmp_path, env_extra=_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 2 of 3 stopped answering and the server dropped it; killing it to start it again" in result.stderr
    assert "rank 2 of 3 was killed by SIGKILL; started again (learner restarts left: 0)" in result.stderr
    record = _record(run_dir := _only_run_dir(tmp_path))
    assert record["status"] == "completed" and [r["rank"] for r in record["restarts"]] == [2]
    lost = [event for event in record["faults"] if event["event"] == "lost"]
    assert len(lost) == 1 and "no gradient within ps.timeout=3 s" in lost[0]["reason"]
    assert [event["learner"] for event in record["faults"] if event["event"] == "joined"] == [1]
    assert _column(_metrics(run_dir), "ps/live_learners")[-1] == 2.0
