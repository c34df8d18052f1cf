"""``lightning-echo advise`` and ``advise()``: the table, the HTML page and the recommendation on
written traces; sync is enough when it is; echo from the data waits; ``--replay`` on a command-line
run directory; bad input in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import main_error
from lightning_echo.advisor.advise import GRID_FILE, HTML_FILE, LOSS_FIGURE, advise
from lightning_echo.advisor.predict import variant_grid
from lightning_echo.advisor.trace import COMPUTE_FILE, STEPS_FILE, SUMMARY_FILE, StepRecord, StepTrace, write_step_trace
from lightning_echo.cli import main
from lightning_echo.core.delays import DelayDistribution
from run_resume import SMALL

FAST = ["--gradients", "400"]


def write_trace(directory: Path, slowdowns=(1.0, 1.0, 1.0, 2.5), sigma: float = 0.3, steps: int = 200,
                data_wait: float = 0.0, kind: str = "ddp", seed: int = 0) -> Path:
    """A DDP-like trace: lognormal compute times, each rank ``slowdowns[r]`` slower; every step waits for
    the slowest rank; rank 0 waits ``data_wait`` for its data."""
    generator = torch.Generator().manual_seed(seed)
    base = DelayDistribution("lognormal", scale=0.05, sigma=sigma)
    records = []
    for step in range(steps):
        compute = [float(base.sample(generator)) * s for s in slowdowns]
        for rank, c in enumerate(compute):
            wait = data_wait if rank == 0 else 0.0
            records.append(StepRecord(rank, step, c, wait, max(compute) - c, 32))
    write_step_trace(directory, StepTrace(records, kind=kind))
    return directory


def test_the_command_line_prints_the_table_and_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = write_trace(tmp_path / "run")
    out = tmp_path / "advice"
    main(["advise", str(run), "--out", str(out), *FAST])  # returns: exit status 0
    printed = capsys.readouterr().out
    for expected in ("compute times per rank:", "predictions, best of each variant", "k_batch_async", "recommendation:",
                     "the slowest rank is 2.", "echo would add little", "recorded:", f"advice: {out / HTML_FILE}"):
        assert expected in printed, expected
    page = (out / HTML_FILE).read_text()
    assert "<img" in page and "Recommendation" in page and "lognormal" in page
    rows = (out / GRID_FILE).read_text().splitlines()
    assert len(rows) == 1 + len(variant_grid(4))
    assert (out / COMPUTE_FILE).read_text().startswith("learner,seconds")


def test_the_python_api_recommends_a_remedy_for_a_slow_rank(tmp_path: Path) -> None:
    advice = advise(write_trace(tmp_path / "run"), write=False, gradients=600)
    assert advice.fit.best.family == "lognormal" and not advice.fit.homogeneous
    recommendation = advice.recommendation
    assert not recommendation.sync_is_enough and recommendation.choice.name != "sync"
    chosen = next(r for r in advice.table.rows if r.spec == recommendation.choice)
    assert advice.table.gain(chosen) >= 1.2 and chosen.mean_staleness <= 2
    assert any(line.startswith(chosen.label + " is predicted") for line in recommendation.lines)
    assert f"algorithm={recommendation.choice.name}" in recommendation.command
    assert advice.files == {} and advice.out is None


def test_sync_is_enough_for_equal_speeds_and_light_tails(tmp_path: Path) -> None:
    advice = advise(write_trace(tmp_path / "run", slowdowns=(1.0,) * 4, sigma=0.03), write=False, gradients=600)
    assert advice.fit.homogeneous
    assert advice.recommendation.sync_is_enough and advice.recommendation.choice.name == "sync"
    assert any(line.startswith("sync is enough") and "speeds are equal" in line for line in advice.recommendation.lines)


def test_echo_from_the_recorded_data_waits(tmp_path: Path) -> None:
    trace = StepTrace([StepRecord(0, step, 0.06, 0.04, 0.0, 32) for step in range(40)], kind="single")
    write_step_trace(tmp_path / "run", trace)
    advice = advise(tmp_path / "run", write=False, gradients=400, learners=2)
    assert advice.echo.data_wait_fraction == pytest.approx(0.4)
    assert advice.echo.auto_factor == pytest.approx(1 / 0.6)
    assert any("echo factor auto would reach about 1.7" in line for line in advice.recommendation.lines)
    sync = next(c for c in advice.combined if c.spec.name == "sync")
    assert sync.with_echo.time_per_update == pytest.approx(0.06, rel=0.02)
    assert "stale.delay.trace" not in advice.recommendation.command  # nothing written: no files to name
    written = advise(tmp_path / "run", gradients=400, learners=2)
    command = written.recommendation.command
    assert "echo.factor=auto" in command and f"loader.trace={tmp_path / 'run' / 'advice' / 'data_times.csv'}" in command
    assert written.files["data_times.csv"].read_text().startswith("learner,seconds\n0,0.1")
    single = advise(tmp_path / "run", write=False, gradients=400)
    assert single.table.learners == 1 and [r.spec.name for r in single.table.rows] == ["sync"]
    assert any("one learner" in line for line in single.recommendation.lines)


def test_a_bare_compute_time_trace(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    times = DelayDistribution("pareto", scale=0.02, shape=2.5).sample(torch.Generator().manual_seed(3), 400).tolist()
    trace = tmp_path / "times.csv"
    trace.write_text("learner,seconds\n" + "".join(f"{i % 4},{t}\n" for i, t in enumerate(times)))
    main(["advise", str(trace), *FAST])
    printed = capsys.readouterr().out
    assert "pareto(" in printed and (tmp_path / "advice" / HTML_FILE).is_file()


def run_directory(tmp_path: Path) -> Path:
    """A small command-line run with its saved config, and a recorded trace of four ranks."""
    from lightning_echo.app.config import compose_config
    from lightning_echo.app.job import run_training

    run = tmp_path / "run"
    cfg = compose_config([*SMALL, "trainer.max_steps=30"])
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    run_training(cfg, run)
    write_trace(run, steps=60)
    return run


@pytest.mark.slow
def test_replay_trains_the_runs_model_on_the_recorded_times(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = run_directory(tmp_path)
    capsys.readouterr()
    main(["advise", str(run), "--replay", "--replay-steps", "20", *FAST])
    printed = capsys.readouterr().out
    assert "trained on the recorded times" in printed and "trained replay" in printed
    assert (run / "advice" / LOSS_FIGURE).is_file()
    advice = advise(run, replay=True, replay_steps=20, gradients=400, write=False)
    trained = advice.replay
    assert trained is not None and trained.runs[0].spec.name == "sync" and len(trained.runs) >= 2
    horizon = trained.baseline.points[-1][0]
    assert trained.baseline.points[-1][1] == 20 and trained.baseline.time_to_target is not None
    for run_ in trained.runs:
        assert run_.points[0][0] == 0.0 and run_.points[0][2] == trained.baseline.points[0][2]  # the same start
        times = [p[0] for p in run_.points]
        assert times == sorted(times) and times[-1] >= 0.95 * horizon


def test_replay_needs_a_saved_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = write_trace(tmp_path / "run")
    error = main_error(capsys, ["advise", str(run), "--replay"])
    assert "--replay" in error and ".hydra/config.yaml" in error


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    short = write_trace(tmp_path / "short", steps=5)
    assert "too short" in main_error(capsys, ["advise", str(short)])
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("rank,when\n0,1\n")
    assert "header" in main_error(capsys, ["advise", str(malformed)])
    simulated = write_trace(tmp_path / "simulated")
    summary = json.loads((simulated / SUMMARY_FILE).read_text())
    (simulated / SUMMARY_FILE).write_text(json.dumps({**summary, "clock": "simulated"}))
    assert "simulated clock" in main_error(capsys, ["advise", str(simulated)])
    other_kind = write_trace(tmp_path / "other")
    (other_kind / SUMMARY_FILE).write_text(json.dumps({**summary, "kind": "horovod"}))
    assert "kind" in main_error(capsys, ["advise", str(other_kind)])
    run_json = write_trace(tmp_path / "simulated_run")
    (run_json / "run.json").write_text(json.dumps({"status": "completed", "config": {"clock": "simulated"}}))
    assert "simulated" in main_error(capsys, ["advise", str(run_json / STEPS_FILE)])
    assert "does not exist" in main_error(capsys, ["advise", str(tmp_path / "nowhere.csv")])
    good = write_trace(tmp_path / "good")
    assert "--learners" in main_error(capsys, ["advise", str(good), "--learners", "0"])
    assert "--max-k" in main_error(capsys, ["advise", str(good), "--max-k", "0"])
    (tmp_path / "file").write_text("")
    assert "--out" in main_error(capsys, ["advise", str(good), "--out", str(tmp_path / "file")])
    zeros = tmp_path / "zeros"
    write_step_trace(zeros, StepTrace([StepRecord(r, s, 0.0, 0.01, 0.0, 32) for r in range(2) for s in range(20)]))
    assert "no compute times" in main_error(capsys, ["advise", str(zeros)])
    shutil.rmtree(good)
