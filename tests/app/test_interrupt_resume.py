"""Interruptions and resume: SIGTERM / Ctrl-C end runs and sweeps as ``interrupted`` with the
conventional exit status, SIGTERM saves a checkpoint first, ``lightning-echo resume`` continues
runs and sweeps exactly, no loader thread outlives an interrupted run; and where runs write.

Signals are real: sent by a callback of the run itself at a chosen step (in-process tests) or by
the test to a console-script subprocess once the run has saved its first checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import console_script, main_error, run_cli, single_run_overrides
from run_resume import (
    SMALL,
    THROTTLED,
    assert_same_training_state as _assert_same_training_state,
    checkpoint as _checkpoint,
    interrupt_and_resume as _interrupt_and_resume,
    killer as _killer,
    metric_rows as _metric_rows,
    save_config,
)
from lightning_echo.app.config import compose_config
from lightning_echo.app.interrupt import RunInterrupted
from lightning_echo.app.job import run_training

from lightning_echo.app.resume_command import resume_main
from lightning_echo.cli import main
from lightning_echo.errors import ConfigError

THREAD_PREFIX = "lightning_echo-"


# -- resume equals the uninterrupted run ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, step, signum, in_validation",
    [
        pytest.param(THROTTLED + ["algorithm=sync"], 7, signal.SIGTERM, False, id="sync-sigterm"),
        # 7 = 2 * 3 + 1: the signal lands in the middle of an echo group
        pytest.param(THROTTLED + ["algorithm=echo", "echo.factor=3"], 7, signal.SIGTERM, False, id="echo3-sigterm-mid-group"),
        # Ctrl-C saves nothing: the resume starts from the periodic checkpoint at step 5
        pytest.param(THROTTLED + ["algorithm=echo", "echo.factor=2.5", "checkpoint.every_n_steps=5"], 7, signal.SIGINT, False,
                     id="echo2.5-ctrl-c-periodic-checkpoint"),
        # SIGTERM during a validation that runs at Nesterov's iterates (swapped in for validation)
        pytest.param(THROTTLED + ["algorithm=echo_nesterov"], 10, signal.SIGTERM, True, id="echo-nesterov-sigterm-in-validation"),
    ],
)
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, overrides, step, signum, in_validation) -> None:
    whole, split, stopped = _interrupt_and_resume(tmp_path, overrides, step, signum, in_validation)
    _assert_same_training_state(whole, split)
    record = json.loads((split / "run.json").read_text())
    assert [r["step"] for r in record["resumes"]] == [5 if signum == signal.SIGINT else step]
    if signum == signal.SIGTERM:
        assert stopped.checkpoint is not None and f"checkpoint {stopped.checkpoint} (step {step})" in str(stopped)
    if signum == signal.SIGTERM and not in_validation:  # stopped at a step: each metric logged once, as in the whole run
        assert _metric_rows(split) == _metric_rows(whole)


def test_sigterm_saves_a_checkpoint_at_the_step_it_stops(tmp_path) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_config(SMALL + THROTTLED + ["trainer.max_steps=12", "trainer.val_check_interval=100"] + _killer(tmp_path, 4, signal.SIGTERM))
    with pytest.raises(RunInterrupted) as stopped:
        run_training(cfg, run_dir)
    assert stopped.value.exit_code == 143 and stopped.value.signal_name == "SIGTERM"
    assert _checkpoint(run_dir)["global_step"] == 4  # saved by the stop: the periodic one is every 5 minutes
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"] and record["checkpoint"]
    assert not (run_dir / "summary.json").exists()


def test_final_train_loss_is_recorded(tmp_path) -> None:
    run_dir = tmp_path / "run"
    summary = run_training(compose_config(SMALL + ["trainer.max_steps=6"]), run_dir)
    with (run_dir / "csv" / "metrics.csv").open(newline="") as stream:
        losses = [float(r["train/loss"]) for r in csv.DictReader(stream) if r.get("train/loss")]
    assert summary.final_train_loss is not None and summary.final_train_loss == pytest.approx(losses[-1])
    assert json.loads((run_dir / "summary.json").read_text())["final_train_loss"] == summary.final_train_loss


# -- no thread outlives an interrupted run ---------------------------------------------------------
def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


def _no_pipeline_threads(deadline_s: float = 5.0) -> bool:
    end = time.monotonic() + deadline_s
    while _pipeline_threads() and time.monotonic() < end:
        time.sleep(0.02)
    return not _pipeline_threads()


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["loader=fixed_rate", "loader.seconds_per_batch=0.01"], id="throttled-loader"),
        pytest.param(["loader=none", "algorithm=echo", "echo.factor=auto"], id="echo-auto-background-queue"),
    ],
)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_no_loader_thread_outlives_a_run_interrupted_during_validation(tmp_path, overrides, signum) -> None:
    assert _no_pipeline_threads(), "threads left over by an earlier test"
    cfg = compose_config(SMALL + overrides + ["trainer.max_steps=30", "trainer.val_check_interval=4"]
                         + _killer(tmp_path, 4, signum, in_validation=True))
    with pytest.raises(RunInterrupted):
        run_training(cfg, tmp_path / "run")
    assert (tmp_path / "signal_sent").exists()
    assert _no_pipeline_threads(), [t.name for t in _pipeline_threads()]


# -- the command line ------------------------------------------------------------------------------
def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 240.0) -> None:
    end = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"the command ended before {path} appeared: {process.communicate()}"
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([console_script(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


CLI_RUN = single_run_overrides() + [
    "loader=fixed_rate", "loader.seconds_per_batch=0.015", "trainer.max_steps=300", "checkpoint.every_n_steps=10",
    "validate_before_training=false", "data.n_examples=2048", "data.batch_size=32",
]


@pytest.mark.slow
def test_console_script_sigterm_then_resume_equals_the_uninterrupted_run(tmp_path) -> None:
    run_dir = tmp_path / "run"
    process = _start(CLI_RUN + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    _wait_for(run_dir / "checkpoints" / "last.ckpt", process)  # training has started
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 143, err[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted", record
    stopped_at = _checkpoint(run_dir)["global_step"]
    assert 10 <= stopped_at < 300
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("lightning-echo: interrupted by SIGTERM: at step ") and "SystemExit" not in err
    assert last_line.endswith(f"continue it with: lightning-echo resume {run_dir}")

    resumed = run_cli(["resume", str(run_dir)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir} from {run_dir / 'checkpoints' / 'last.ckpt'} (step {stopped_at})" in resumed.stdout
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and [r["step"] for r in record["resumes"]] == [stopped_at]

    whole = tmp_path / "whole"
    run_training(compose_config(CLI_RUN), whole)
    _assert_same_training_state(whole, run_dir)
    assert _metric_rows(run_dir) == _metric_rows(whole)

    again = run_cli(["resume", str(run_dir)], cwd=tmp_path)
    assert again.returncode == 0 and f"{run_dir}: completed; nothing to resume" in again.stdout


@pytest.mark.slow
def test_console_script_ctrl_c_in_a_sweep_then_resume_finishes_it(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    process = _start(["-m", "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}"] + CLI_RUN, cwd=tmp_path)
    _wait_for(sweep_dir / "1" / "checkpoints" / "last.ckpt", process)  # job 1 is training
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 130, err[-3000:]
    assert "SystemExit" not in err and "Traceback" not in err
    assert "[job 0] completed" in out and "[job 1] INTERRUPTED" in out
    assert "sweep interrupted by SIGINT: 3 jobs, 1 completed, 0 failed, 1 interrupted, 1 not run" in out
    assert "  not run: job 2 (" in out and f"continue it with: lightning-echo resume {sweep_dir}" in out
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["status"] == "interrupted" and [j["status"] for j in plan["jobs"]] == ["completed", "interrupted", "pending"]
    assert [j["output_dir"] for j in plan["jobs"]] == ["0", "1", "2"]  # relative: a copied sweep is self-contained
    assert "seed=2" in plan["jobs"][2]["overrides"]
    assert json.loads((sweep_dir / "1" / "run.json").read_text())["status"] == "interrupted"
    assert not (sweep_dir / "2").exists()

    resumed = run_cli(["resume", str(sweep_dir)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[job 1] completed" in resumed.stdout and "[job 2] completed" in resumed.stdout
    assert "sweep: 3 jobs, 3 completed, 0 failed" in resumed.stdout
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["status"] == "finished" and [j["status"] for j in plan["jobs"]] == ["completed"] * 3
    for number in range(3):
        summary = json.loads((sweep_dir / str(number) / "summary.json").read_text())
        assert summary["optimizer_steps"] == 300 and summary["seed"] == number
    assert (sweep_dir / "report" / "index.html").is_file()


# -- bad input: one line, before anything is written -----------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (["+ckpt_path=/tmp/x.ckpt"], "ckpt_path='/tmp/x.ckpt' is not allowed: runs do not start from a checkpoint given on the command line; continue an interrupted run or sweep with: lightning-echo resume DIR"),
        (["ckpt_path=last.ckpt"], "ckpt_path='last.ckpt' is not allowed: runs do not start"),
        (["+trainer.ckpt_path=a.ckpt"], "trainer.ckpt_path='a.ckpt' is not allowed: runs do not start"),
        (["logger.csv.version=../../../x"], "logger.csv.version='../../../x' is not allowed: must be a folder name inside the run directory"),
        (["logger.csv.name=/tmp/elsewhere"], "logger.csv.name='/tmp/elsewhere' is not allowed: must be a folder name inside"),
        (["checkpoint.every_n_steps=0"], "checkpoint.every_n_steps=0 is not allowed: must be a positive integer"),
        (["checkpoint.every_n_minutes=null"], "checkpoint.every_n_minutes=None is not allowed: set checkpoint.every_n_minutes or"),
    ],
)
def test_bad_checkpoint_and_output_settings_are_one_line(capsys, tmp_path, args, expected) -> None:
    err = main_error(capsys, args + single_run_overrides())
    assert err.startswith("lightning-echo: error: ") and expected in err
    assert not (tmp_path / "le_outputs").exists()


def test_a_second_sweep_into_the_same_directory_is_refused(capsys, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    main(["-m", "seed=0", f"hydra.sweep.dir={sweep_dir}", "trainer.max_steps=3", "validate_before_training=false",
          "report.after_sweep=false", *single_run_overrides()])
    first = (sweep_dir / "0" / "run.json").read_text()
    capsys.readouterr()
    err = main_error(capsys, ["-m", "seed=0,1", f"hydra.sweep.dir={sweep_dir}", *single_run_overrides()])
    assert f"hydra.sweep.dir='{sweep_dir}' is not allowed: it holds an earlier sweep" in err
    assert (sweep_dir / "0" / "run.json").read_text() == first and not (sweep_dir / "1").exists()


def test_a_corrupted_dataset_file_is_refused_before_any_run_directory(capsys, tmp_path) -> None:
    from lightning_echo.data.formats.idx import write_idx

    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=generator, dtype=torch.uint8))
    images = mnist / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])  # a truncated download
    err = main_error(capsys, ["data=mnist", f"data.root={tmp_path / 'data'}", "data.verify_checksums=false", *single_run_overrides()])
    assert str(images) in err and "cannot read or decompress" in err
    assert not (tmp_path / "le_outputs").exists(), "the run directory was created before the data was checked"


def test_resume_refuses_what_is_not_a_run_or_sweep_directory(capsys, tmp_path) -> None:
    assert resume_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightning-echo: error: resume=") and "neither a run directory" in err[0]
    assert resume_main([str(tmp_path / "missing")]) == 2


def test_resume_refuses_a_run_that_a_live_process_is_running(capsys, tmp_path) -> None:
    import socket
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (run_dir / "run.json").write_text(json.dumps(
                {"status": "running", "group": "g", "name": "sync", "config": {}, "pid": other.pid, "host": socket.gethostname()}))
            assert resume_main([str(run_dir)]) == 2
        finally:
            other.kill()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"its run.json says it is still running (process {other.pid})" in err[0]


# -- what resume trusts in a run directory it did not write -------------------------------------------
class _WritesAMarker:
    """A pickled object whose unpickling writes a file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _interrupted_run(run_dir: Path, overrides: list[str]) -> None:
    run_dir.mkdir(parents=True)
    save_config(compose_config(single_run_overrides() + overrides), run_dir)
    (run_dir / "run.json").write_text(json.dumps({"status": "interrupted", "group": "g", "name": "sync", "config": {}}))


@pytest.mark.parametrize("edit", ["model._target_", "settings_checks.stale"])
def test_resume_builds_nothing_a_saved_config_names_beyond_the_packaged_callables(capsys, tmp_path, edit) -> None:
    run_dir = tmp_path / "run"
    _interrupted_run(run_dir, [])
    saved = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(saved)
    OmegaConf.update(config, edit, "shutil.copy")
    OmegaConf.save(config, saved)
    assert resume_main([str(run_dir)]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert f"its saved config names {edit}=shutil.copy, which the packaged configs do not" in err
    assert err.endswith("resume it with --trust-config")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"  # nothing was touched


def test_resume_accepts_another_torch_optimizer_and_reads_checkpoints_weights_only(capsys, tmp_path) -> None:
    run_dir = tmp_path / "run"
    _interrupted_run(run_dir, ["optimizer._target_=torch.optim.AdamW", "~optimizer.momentum"])
    (run_dir / "checkpoints").mkdir()
    marker = tmp_path / "marker"
    torch.save({"global_step": 3, "payload": _WritesAMarker(marker)}, run_dir / "checkpoints" / "last.ckpt")
    assert resume_main([str(run_dir)]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "cannot read the checkpoint's step safely (weights-only)" in err and not marker.exists()
    # a truncated checkpoint: one line too
    good = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 3}, good)
    good.write_bytes(good.read_bytes()[:20])
    assert resume_main([str(run_dir)]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "cannot read the checkpoint's step safely" in err and "move the file away" in err


def test_a_sweeps_plan_keeps_its_jobs_inside_the_sweep_directory(capsys, tmp_path) -> None:
    from lightning_echo.app.sweep import job_directory

    sweep, original = tmp_path / "copy", tmp_path / "original"
    (sweep / "1").mkdir(parents=True)
    assert job_directory(sweep, 0, "0") == (sweep / "0").resolve()  # what sweep.json holds now
    # an older sweep.json of the original sweep: the copy's own job directory, never the original's
    assert job_directory(sweep, 1, str(original / "1")) == (sweep / "1").resolve()
    for outside in ("../original/0", str(original / "5"), "/etc", "."):
        with pytest.raises(ConfigError, match="outside the sweep directory"):
            job_directory(sweep, 0, outside)
    (sweep / "sweep.json").write_text(json.dumps({"status": "interrupted", "jobs": [
        {"number": 0, "overrides": ["seed=0"], "name": None, "status": "pending", "output_dir": "../elsewhere"}]}))
    assert resume_main([str(sweep)]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "puts job 0 in ../elsewhere, outside the sweep directory" in err and not (tmp_path / "elsewhere").exists()


@pytest.mark.slow
def test_a_second_resume_of_a_run_being_resumed_is_refused_at_once(capsys, tmp_path) -> None:
    run_dir = tmp_path / "run"
    _interrupted_run(run_dir, CLI_RUN[len(single_run_overrides()):])  # ~5 s of training, started over
    first = _start(["resume", str(run_dir)], cwd=tmp_path)
    try:
        _wait_for(run_dir / ".resume.lock", first)
        line = first.stdout.readline()  # printed once the run is planned and claimed
        assert line.startswith(f"starting {run_dir} over"), line
        assert resume_main([str(run_dir)]) == 2  # half a second later: refused, nothing touched
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert f"resume='{run_dir}' is not allowed: another process is resuming it right now" in err
    finally:
        first.kill()
        first.communicate(timeout=60)


def test_resume_reports_a_deeply_nested_run_json_in_one_line(capsys, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("[" * 200_000)
    assert resume_main([str(run_dir)]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "cannot read its run.json: run.json is nested too deeply" in err
