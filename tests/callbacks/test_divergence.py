"""A run whose loss stops being finite: DivergenceGuard (the one owner of the decision) on real
Trainer.fit runs, TargetLoss reporting to it, and the command line and report through the
installed console script: one line, status ``diverged``, exit 3, strict JSON, a sweep that goes
on, and a report that never lets the run set the target, a final loss or a speed-up."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import quiet_trainer_overrides, run_cli, single_run_overrides
from lightning_echo.echoed_optim import TargetLoss
from lightning_echo.callbacks.divergence import DivergenceGuard, divergence_guard
from lightning_echo.data import SyntheticDataModule
from lightning_echo.errors import ConfigError
from lightning_echo.models import LogisticRegression

# A step size at which logistic regression's loss is infinite after a step or two.
DIVERGING_LR = "1e38"
DIVERGED_EXIT_CODE = 3


def strict_json(path: Path) -> dict:
    """Parse ``path`` refusing NaN and Infinity, as JSON itself does."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path.name} holds a bare {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def fit(tmp_path: Path, callbacks: list[pl.Callback], lr: float, max_steps: int = 50) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    data = SyntheticDataModule(n_examples=512, val_fraction=0.0, batch_size=32)
    trainer = pl.Trainer(max_steps=max_steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(LogisticRegression(data.spec, partial(torch.optim.SGD, lr=lr)), datamodule=data)
    return trainer


def test_the_guard_stops_training_at_the_first_loss_that_is_not_finite(tmp_path: Path) -> None:
    guard = DivergenceGuard()
    trainer = fit(tmp_path, [guard], lr=float(DIVERGING_LR))
    assert guard.divergence is not None and guard.divergence.metric == "train/loss"
    assert not torch.isfinite(torch.tensor(guard.divergence.value))
    assert trainer.global_step == guard.divergence.step + 1 < 50  # stopped right after that step
    calm = DivergenceGuard()
    assert fit(tmp_path / "calm", [calm], lr=0.1, max_steps=20).global_step == 20 and calm.divergence is None


def test_target_loss_reports_its_divergence_to_the_runs_guard(tmp_path: Path) -> None:
    target = TargetLoss(every_n_steps=1, optimum=0.5)
    trainer = fit(tmp_path, [target], lr=1e4, max_steps=200)
    guard = divergence_guard(trainer)
    assert guard is not None and target.divergence is guard.divergence  # one record, in the guard
    assert target.diverged and guard.divergence.metric == "train/full_loss" and trainer.global_step < 200
    saved = strict_json(tmp_path / "target.json")
    assert saved["diverged"] and saved["divergence"]["step"] == guard.divergence.step


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_and_records_diverged(tmp_path: Path) -> None:
    result = run_cli([f"optimizer.lr={DIVERGING_LR}", "trainer.max_steps=50", *single_run_overrides()], cwd=tmp_path)
    assert result.returncode == DIVERGED_EXIT_CODE, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "diverged" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("lightning-echo: training diverged: train/loss=inf at step ")
    assert f"optimizer.lr={float(DIVERGING_LR)}" in lines[0]
    (run_dir,) = (tmp_path / "le_outputs" / "runs").iterdir()
    record = strict_json(run_dir / "run.json")
    assert record["status"] == "diverged" and record["error"] == lines[0].removeprefix("lightning-echo: ")
    summary = strict_json(run_dir / "summary.json")
    assert summary["status"] == "diverged" and summary["final_val_loss"] is None
    assert 0 < summary["optimizer_steps"] < 50


@pytest.mark.slow
def test_a_sweep_goes_on_after_a_diverging_job_and_the_report_marks_it(tmp_path: Path) -> None:
    result = run_cli(["-m", "experiment=single", f"optimizer.lr={DIVERGING_LR},0.1", "trainer.max_steps=8",
                      "trainer.val_check_interval=4", "trainer.check_val_every_n_epoch=null",
                      *quiet_trainer_overrides()], cwd=tmp_path)
    assert result.returncode == DIVERGED_EXIT_CODE, result.stderr[-3000:]
    assert "[job 0] DIVERGED" in result.stdout and "[job 1] completed" in result.stdout
    (sweep,) = (tmp_path / "le_outputs" / "multirun").iterdir()
    assert strict_json(sweep / "0" / "run.json")["status"] == "diverged"
    healthy = strict_json(sweep / "1" / "summary.json")
    # The target comes from the run that did not diverge (not from the diverged run's last finite
    # value, its loss before training).
    report = run_cli(["report", str(sweep), "--out", str(tmp_path / "r")], cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    target_line = next(line for line in report.stdout.splitlines() if line.startswith("target:"))
    assert f"({healthy['final_val_loss']:.4g})" in target_line, report.stdout
    rows = {line.split("  ")[0]: line for line in report.stdout.splitlines() if line.startswith("sync")}
    diverged_row = rows[f"sync, optimizer.lr={float(DIVERGING_LR)}"]
    assert "1 (1 diverged)" in diverged_row and "diverged (0/1)" in diverged_row
    assert diverged_row.split()[-1] == "-"  # no speed-up
    assert "1.00 (baseline)" in rows["sync, optimizer.lr=0.1"]
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<span class='diverged'>diverged</span>" in page


def test_a_loss_that_grows_past_max_growth_times_its_start_is_a_divergence_though_finite(tmp_path: Path) -> None:
    guard = DivergenceGuard(max_growth=100)
    trainer = fit(tmp_path, [guard], lr=1e6, max_steps=60)
    assert guard.divergence is not None and guard.divergence.metric == "train/loss"
    assert torch.isfinite(torch.tensor(guard.divergence.value))  # finite, but far above where it started
    assert guard.divergence.limit == pytest.approx(100 * guard.reference_loss)
    assert guard.divergence.value > guard.divergence.limit and trainer.global_step < 60
    assert guard.state_dict() == {"reference_loss": guard.reference_loss}  # a resumed run keeps its reference
    plain = DivergenceGuard()  # without the rule, only a loss that is not finite counts
    fit(tmp_path / "plain", [plain], lr=1e6, max_steps=60)
    assert plain.divergence is None or not torch.isfinite(torch.tensor(plain.divergence.value))


@pytest.mark.parametrize("bad", [1, 0.5, float("inf"), "100", True])
def test_a_bad_max_growth_is_refused_in_one_line(bad) -> None:
    with pytest.raises(ConfigError, match="max_growth=.* is not allowed: must be a finite number > 1") as raised:
        DivergenceGuard(max_growth=bad)
    assert "\n" not in str(raised.value)


@pytest.mark.slow
def test_the_default_job_with_a_huge_step_size_is_recorded_diverged_not_completed(tmp_path: Path) -> None:
    result = run_cli(["optimizer.lr=1e6", "trainer.max_steps=60", *single_run_overrides()], cwd=tmp_path)
    assert result.returncode == DIVERGED_EXIT_CODE, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "diverged" in line]
    assert "training diverged: " in line and " above " in line and "optimizer.lr=1000000.0" in line
    (run_dir,) = (tmp_path / "le_outputs" / "runs").iterdir()
    assert strict_json(run_dir / "run.json")["status"] == "diverged"
    assert strict_json(run_dir / "summary.json")["status"] == "diverged"
