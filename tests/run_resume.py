"""Interrupt a run with a real signal at a chosen step, resume it, and compare it with the
uninterrupted run: shared by the command line's resume tests and the algorithm registry's."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from lightning_echo.app.config import compose_config
from lightning_echo.app.interrupt import RunInterrupted
from lightning_echo.app.job import run_training
from lightning_echo.app.resume import resume_point, saved_config

SMALL = [
    "experiment=single", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.max_steps=40",
    "validate_before_training=false", "data.n_examples=512", "data.batch_size=32",
    "trainer.val_check_interval=10", "trainer.check_val_every_n_epoch=null", "+data.val_batch_size=16",
]
THROTTLED = ["loader=fixed_rate", "loader.seconds_per_batch=0.001"]


class SignalAtStep(pl.Callback):
    """Sends ``signum`` to this process once, when training reaches ``step`` (after that step, or
    during the validation that follows it); ``marker`` remembers it was sent, across a resume."""

    def __init__(self, step: int, marker: str, signum: int = signal.SIGTERM, in_validation: bool = False) -> None:
        self.step, self.marker, self.signum, self.in_validation = step, Path(marker), signum, in_validation

    def _send(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self.in_validation:
            self._send(trainer)

    def on_validation_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.in_validation:
            self._send(trainer)


def killer(tmp_path: Path, step: int, signum: int, in_validation: bool = False) -> list[str]:
    node = "+algorithm.callbacks.signal_at_step"
    return [f"{node}._target_={__name__}.SignalAtStep", f"{node}.step={step}", f"{node}.marker={tmp_path / 'signal_sent'}",
            f"{node}.signum={int(signum)}", f"{node}.in_validation={str(in_validation).lower()}"]


def save_config(cfg, run_dir: Path) -> None:
    from omegaconf import OmegaConf

    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def assert_same_training_state(a: Path, b: Path) -> None:
    """Same optimizer step, parameters and optimizer state, bit for bit."""
    ca, cb = checkpoint(a), checkpoint(b)
    assert ca["global_step"] == cb["global_step"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), key
    for sa, sb in zip(ca["optimizer_states"], cb["optimizer_states"], strict=True):
        for index, state in sa["state"].items():
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, sb["state"][index][name]), (index, name)
    summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("optimizer_steps", "fresh_samples", "final_val_loss", "final_train_loss"):
        assert summary_a[key] == summary_b[key], key


def metric_rows(run_dir: Path) -> list[tuple[int, tuple[str, ...]]]:
    """Each metrics.csv row as (step, the metrics it holds), without wall-clock columns."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    return sorted((int(float(r["step"])), tuple(sorted(k for k, v in r.items() if v and k != "step"))) for r in rows)


def interrupt_and_resume(tmp_path: Path, overrides: list[str], step: int, signum: int, in_validation: bool = False) -> tuple[Path, Path, RunInterrupted]:
    """An uninterrupted run and one stopped by ``signum`` at ``step`` then resumed; their directories."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_training(compose_config(SMALL + overrides), whole)
    cfg = compose_config(SMALL + overrides + killer(tmp_path, step, signum, in_validation))
    save_config(cfg, split)
    with pytest.raises(RunInterrupted) as stopped:
        run_training(cfg, split)
    record = json.loads((split / "run.json").read_text())
    assert record["status"] == "interrupted" and stopped.value.signum == signum
    point = resume_point(split)
    assert 0 < point.step <= step
    run_training(saved_config(split), split, resume=point)
    assert json.loads((split / "run.json").read_text())["status"] == "completed"
    return whole, split, stopped.value
