"""``stale.k=auto`` on a ParameterServerStrategy, as a user's script: ``python ps_adaptive_k.py
OUT_DIR SCENARIO...``. Lightning's launcher re-runs this script for ranks 1 and 2 (``devices=3``:
the server and two learners, learner 1 six times slower than learner 0); every rank runs the
scenarios in order and writes ``OUT_DIR/<scenario>.rank<r>.json``: the server's adaptive K (its
state after the fit and, for ``resume``, the state the checkpoint saved) and its metrics file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_echo.core.adaptive_k import AdaptiveK
from lightning_echo.lightning_namespace import pl
from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy
from world_scenarios import run_scenarios, scenarios_of

ROWS, DIM, BATCH = 64, 4, 4
DELAY = {"distribution": "constant", "value": 0.004, "speeds": [1, 6]}
WINDOW = 32  # updates per loss window (the default, 64 P, would need a longer run to see the floor)


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))  # one node: the local rank is the global rank


class Regression(pl.LightningModule):
    """A linear model on noisy rows: its loss reaches its floor within a few hundred updates."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(DIM, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.linear(x), y.unsqueeze(1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(ROWS, DIM, generator=generator)
    y = x @ torch.arange(1.0, DIM + 1) + 0.3 * torch.randn(ROWS, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def trainer(out: Path, name: str, max_steps: int, **kwargs: Any) -> pl.Trainer:
    rule = AdaptiveK("k_async", 2, window=WINDOW)
    strategy = ParameterServerStrategy("k_async", k="auto", timeout=30.0, delay=DELAY, adaptive_k=rule)
    return pl.Trainer(devices=3, accelerator="cpu", strategy=strategy, max_steps=max_steps,
                      logger=pl.loggers.CSVLogger(out / "logs", name=name), log_every_n_steps=1,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=out, **kwargs)


def result(fit: pl.Trainer) -> dict[str, Any]:
    if rank() != 0:
        return {}
    state = fit.strategy.server_state
    return {"global_step": fit.global_step, "adaptive_k": state["adaptive_k"] if state else None,
            "metrics_csv": str(Path(fit.logger.log_dir) / "metrics.csv")}


def scenario_auto(out: Path) -> dict[str, Any]:
    """500 updates: K starts at 1 (the slow learner would cost 6x per update) and rises when the loss
    reaches its floor."""
    fit = trainer(out, "auto", 500)
    fit.fit(Regression(), train_dataloaders=loader())
    return result(fit)


def scenario_resume(out: Path) -> dict[str, Any]:
    """400 updates and a checkpoint, then a second fit from it to 600: K and the rule continue."""
    path = out / "resume.ckpt"
    first = trainer(out, "resume_first", 400)
    first.fit(Regression(), train_dataloaders=loader())
    first.save_checkpoint(path)  # every rank calls it, as under DDP; rank 0 writes
    saved = torch.load(path, weights_only=True)["parameter_server"]["adaptive_k"] if rank() == 0 else None
    second = trainer(out, "resume_second", 600)
    second.fit(Regression(), train_dataloaders=loader(), ckpt_path=path)
    return {**result(second), "saved": saved, "first": result(first)}


def scenario_epochs_only(out: Path) -> dict[str, Any]:
    """max_epochs alone: every rank refuses it before the channels open (an epoch's updates are not known)."""
    fit = trainer(out, "epochs_only", -1, max_epochs=1)
    fit.fit(Regression(), train_dataloaders=loader())
    return result(fit)


def main() -> None:
    run_scenarios(scenarios_of(globals()), rank(), grace_s=5.0)


if __name__ == "__main__":
    main()
