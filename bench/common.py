"""Shared pieces of the benchmarks: quiet trainers, timed fits, parameter snapshots."""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch

from lightning_echo.callbacks import TrainingProgress


def quiet() -> None:
    """Silence Lightning's per-run banners and warnings so the tables stay readable."""
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)


class CpuClock(pl.Callback):
    """Process CPU time spent between the start and the end of the training loop."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.process_time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cpu_s = time.process_time() - self._start


class Snapshots(pl.Callback):
    """Copies the parameters every ``every`` optimizer steps, with elapsed training time."""

    def __init__(self, every: int, progress: TrainingProgress) -> None:
        self.every = every
        self.progress = progress
        self.rows: list[tuple[float, int, int, dict[str, torch.Tensor]]] = []

    def _take(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.rows.append((self.progress.elapsed_s, trainer.global_step, self.progress.fresh_samples, state))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._take(trainer, pl_module)


@dataclass
class FitResult:
    steps: int
    elapsed_s: float
    fresh_samples: int
    wait_s: float
    cpu_s: float = 0.0
    snapshots: list = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        """Optimizer steps per second of training wall-clock time."""
        return self.steps / self.elapsed_s

    @property
    def steps_per_cpu_s(self) -> float:
        """Optimizer steps per second of process CPU time (less sensitive to other tenants)."""
        return self.steps / self.cpu_s


def timed_fit(
    model: pl.LightningModule,
    loader: Any,
    max_steps: int,
    callbacks: Optional[list[pl.Callback]] = None,
    snapshot_every: Optional[int] = None,
    wait_of: Optional[Callable[[], float]] = None,
) -> FitResult:
    """Fit for ``max_steps`` without validation, logging or checkpoints; time the training loop."""
    progress = TrainingProgress()
    cpu = CpuClock()
    extra: list[pl.Callback] = [progress, cpu]
    snapshots = Snapshots(snapshot_every, progress) if snapshot_every else None
    if snapshots is not None:
        extra.append(snapshots)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=(callbacks or []) + extra,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train_dataloaders=loader)
    return FitResult(
        steps=trainer.global_step,
        elapsed_s=progress.elapsed_s,
        fresh_samples=progress.fresh_samples,
        wait_s=wait_of() if wait_of else 0.0,
        cpu_s=cpu.cpu_s,
        snapshots=snapshots.rows if snapshots else [],
    )


def median(values: list[float]) -> float:
    return statistics.median(values)
