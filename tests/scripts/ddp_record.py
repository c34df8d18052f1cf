"""StepTimeRecorder under two-process DDP (gloo on CPU), as a user's script:
``python ddp_record.py OUT_DIR SCENARIO...``; Lightning's launcher re-runs it for rank 1. Each
scenario is one ``fit`` whose trace goes to ``OUT_DIR/<scenario>/``; every rank writes
``OUT_DIR/<scenario>.rank<r>.json``: its own rows, the summary it holds after ``fit``, and the
threads left after it.

- ``slow_rank``: rank 1 sleeps 0.2 s in every ``training_step`` of a tiny model: rank 1 must show
  compute, rank 0 waiting for it (the gradient all-reduce), not compute;
- ``slow_loader``: rank 1's collate sleeps 0.2 s per batch: rank 1 shows data wait, rank 0
  waiting for rank 1 (in the all-reduce);
- ``slow_loader_batchnorm``: the same with a BatchNorm layer, whose buffers DDP broadcasts before
  each forward: rank 0 waits there.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from world_scenarios import run_scenarios, scenarios_of

from lightning_echo.advisor.record import StepTimeRecorder
from lightning_echo.lightning_namespace import pl

STEPS, SLEEP_S = 12, 0.2


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))  # one node: the local rank is the global rank


class Tiny(pl.LightningModule):
    def __init__(self, sleep_s: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)) if batch_norm else torch.nn.Linear(4, 1)
        self.sleep_s = sleep_s

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(sleep_s: float = 0.0) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(256, 4, generator=generator), torch.randn(256, 1, generator=generator))

    def collate(items: list) -> Any:
        if sleep_s:
            time.sleep(sleep_s)
        return torch.utils.data.default_collate(items)

    return DataLoader(data, batch_size=8, collate_fn=collate)


def fit(out: Path, name: str, model: pl.LightningModule, train: DataLoader) -> dict[str, Any]:
    recorder = StepTimeRecorder(dirpath=out / name)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=STEPS, callbacks=[recorder],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=train)
    return {"records": [dataclasses.asdict(r) for r in recorder.records], "summary": recorder.summary,
            "trace_ranks": recorder.trace.ranks if recorder.trace else None,
            "written": str(recorder.written) if recorder.written else None,
            "training_step_patched": "training_step" in vars(model)}


def scenario_slow_rank(out: Path) -> dict[str, Any]:
    return fit(out, "slow_rank", Tiny(sleep_s=SLEEP_S if rank() == 1 else 0.0), loader())


def scenario_slow_loader(out: Path) -> dict[str, Any]:
    return fit(out, "slow_loader", Tiny(), loader(sleep_s=SLEEP_S if rank() == 1 else 0.0))


def scenario_slow_loader_batchnorm(out: Path) -> dict[str, Any]:
    return fit(out, "slow_loader_batchnorm", Tiny(batch_norm=True), loader(sleep_s=SLEEP_S if rank() == 1 else 0.0))


def main() -> None:
    run_scenarios(scenarios_of(globals()), rank(), grace_s=0.0)


if __name__ == "__main__":
    main()
