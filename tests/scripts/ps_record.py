"""StepTimeRecorder on the learners of a ParameterServerStrategy, as a user's script:
``python ps_record.py OUT_DIR SCENARIO...``. Lightning's launcher re-runs it for ranks 1 and 2
(``devices=3``: the server and two learners). Each scenario is one ``fit`` whose trace goes to
``OUT_DIR/<scenario>/``; every rank writes ``OUT_DIR/<scenario>.rank<r>.json``: its own rows, the
summary it holds after ``fit``, the server's logged metrics file, and the threads and child
processes left after it.

- ``sync_slow_learner``: sync, learner 1 (rank 2) takes 5 x learner 0's injected compute time
  (0.1 s against 0.02 s): rank 2 must show compute, rank 1 waiting for the server's START.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from world_scenarios import run_scenarios, scenarios_of

from lightning_echo.advisor.record import StepTimeRecorder
from lightning_echo.lightning_namespace import pl
from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy

UPDATES, BATCH = 14, 4


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))  # one node: the local rank is the global rank


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.linear(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(7)
    data = TensorDataset(torch.randn(256, 4, generator=generator), torch.randn(256, 1, generator=generator))
    return DataLoader(data, batch_size=BATCH)


def scenario_sync_slow_learner(out: Path) -> dict[str, Any]:
    name = "sync_slow_learner"
    recorder = StepTimeRecorder(dirpath=out / name, gather_timeout_s=30.0)
    strategy = ParameterServerStrategy("sync", timeout=30.0,
                                       delay={"distribution": "constant", "value": 0.02, "speeds": [1, 5]})
    logger = pl.loggers.CSVLogger(out / "logs", name=name)
    trainer = pl.Trainer(devices=3, accelerator="cpu", strategy=strategy, max_steps=UPDATES, callbacks=[recorder],
                         logger=logger, log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Regression(), train_dataloaders=loader())
    return {"records": [dataclasses.asdict(r) for r in recorder.records], "summary": recorder.summary,
            "trace_ranks": recorder.trace.ranks if recorder.trace else None,
            "written": str(recorder.written) if recorder.written else None,
            "metrics_csv": str(Path(logger.log_dir) / "metrics.csv") if rank() == 0 else None}


def main() -> None:
    run_scenarios(scenarios_of(globals()), rank(), grace_s=5.0)


if __name__ == "__main__":
    main()
