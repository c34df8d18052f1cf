"""DataEchoing on the learners of a ParameterServerStrategy, as a user's script:
``python ps_echo.py OUT_DIR SCENARIO...``. Lightning's launcher re-runs this script for ranks 1
and 2 (``devices=3``: the server and two learners); every rank runs the scenarios in order, one
``Trainer.fit`` each (two for ``resume``), in one world, and writes ``OUT_DIR/<scenario>.rank<r>.json``:
what the server counted, what each learner computed on (the example indices of every batch), and
the threads and child processes left after the fit. A scenario whose fit raises records the error.

The data: 36 rows, batches of 4, so each learner's shard of 18 rows is 5 batches (4, 4, 4, 4, 2).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from lightning_echo.callbacks.progress import training_progress
from lightning_echo.echo import DataEchoing
from lightning_echo.lightning_namespace import pl
from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy
from world_scenarios import run_scenarios, scenarios_of

ROWS, DIM, BATCH = 36, 4, 4


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))  # one node: the local rank is the global rank


class Rows(Dataset):
    """Fixed regression rows ``(x, y, index)``; each item takes ``seconds`` to load, and loading
    item ``fail_at`` raises (a broken file, say)."""

    def __init__(self, seconds: float = 0.0, fail_at: Optional[int] = None) -> None:
        generator = torch.Generator().manual_seed(7)
        self.x = torch.randn(ROWS, DIM, generator=generator)
        self.y = self.x @ torch.arange(1.0, DIM + 1) + 0.1 * torch.randn(ROWS, generator=generator)
        self.seconds, self.fail_at, self.loaded = seconds, fail_at, 0

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        self.loaded += 1
        if self.fail_at is not None and self.loaded == self.fail_at:
            raise OSError(f"the user's dataset cannot read row {index}")
        if self.seconds:
            time.sleep(self.seconds)
        return self.x[index], self.y[index], index


class Regression(pl.LightningModule):
    """A linear model; records the example indices of every batch it computes a gradient on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(DIM, 1)
        self.batches: list[list[int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, index = batch
        self.batches.append(index.tolist())
        loss = torch.nn.functional.mse_loss(self.linear(x), y.unsqueeze(1))
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def trainer(out: Path, name: str, strategy: ParameterServerStrategy, echo: DataEchoing, max_steps: int,
            **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(devices=3, accelerator="cpu", strategy=strategy, callbacks=[echo], max_steps=max_steps,
                      logger=pl.loggers.CSVLogger(out / "logs", name=name), log_every_n_steps=1,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=out, **kwargs)


def loader(dataset: Optional[Dataset] = None, **kwargs: Any) -> DataLoader:
    return DataLoader(dataset if dataset is not None else Rows(), batch_size=BATCH, **kwargs)


def result(fit: pl.Trainer, model: Regression) -> dict[str, Any]:
    """What this rank did: the server's counts, or the learner's batches and report."""
    strategy = fit.strategy
    if rank() == 0:
        progress = training_progress(fit)
        assert progress is not None
        state = strategy.server_state
        return {"global_step": fit.global_step, "report": dataclasses.asdict(strategy.server_report),
                "metrics_csv": str(Path(fit.logger.log_dir) / "metrics.csv") if fit.logger else None,
                "fresh_samples": progress.fresh_samples, "fresh_batches": progress.fresh_batches,
                "totals": state["totals"] if state else None}
    return {"batches": model.batches, "report": dataclasses.asdict(strategy.learner_report)}


def fit_once(out: Path, name: str, strategy: ParameterServerStrategy, echo: DataEchoing, max_steps: int,
             train: DataLoader, **kwargs: Any) -> dict[str, Any]:
    model = Regression()
    fit = trainer(out, name, strategy, echo, max_steps)
    fit.fit(model, train_dataloaders=train, **kwargs)
    return result(fit, model)


def scenario_k_async_factor_2(out: Path) -> dict[str, Any]:
    """Every fresh batch gives two gradients; learner 1 is twice as slow as learner 0, and
    learner 0 needs more than a pass over its shard (10 gradients)."""
    strategy = ParameterServerStrategy("k_async", k=1, timeout=30.0,
                                       delay={"distribution": "constant", "value": 0.01, "speeds": [1, 2]})
    return fit_once(out, "k_async_factor_2", strategy, DataEchoing(factor=2), 24, loader())


def scenario_sync_factor_1_5(out: Path) -> dict[str, Any]:
    """A non-integer factor: each pass of 5 fresh batches is 7 gradients on a learner."""
    return fit_once(out, "sync_factor_1_5", ParameterServerStrategy("sync", timeout=30.0), DataEchoing(factor=1.5),
                    12, loader())


def scenario_no_echo(out: Path) -> dict[str, Any]:
    """Without DataEchoing every gradient is computed on a fresh batch."""
    model = Regression()
    fit = pl.Trainer(devices=3, accelerator="cpu", strategy=ParameterServerStrategy("k_async", k=1, timeout=30.0),
                     max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
    fit.fit(model, train_dataloaders=loader())
    return result(fit, model)


def scenario_one_epoch(out: Path) -> dict[str, Any]:
    """max_epochs=1 with factor 2: the server's epoch is a pass of the learners' echoed data,
    ceil(2 x 9 batches / 2 gradients per update) = 9 updates (5 without echoing)."""
    model = Regression()
    fit = trainer(out, "one_epoch", ParameterServerStrategy("sync", timeout=30.0), DataEchoing(factor=2), -1,
                  max_epochs=1)
    fit.fit(model, train_dataloaders=loader())
    return result(fit, model)


def scenario_budget(out: Path) -> dict[str, Any]:
    """DataEchoing's budget of 20 fresh samples is the cluster's: sync, factor 2, two learners of
    batches of 4 bring 8 fresh samples every other update, so the run ends after update 5 (24)."""
    echo = DataEchoing(factor=2, max_fresh_samples=20)
    return fit_once(out, "budget", ParameterServerStrategy("sync", timeout=30.0), echo, 100, loader())


def scenario_auto_slow(out: Path) -> dict[str, Any]:
    """factor='auto' on loaders slower than the learners' compute (40 ms a batch, in a worker process):
    the learners echo while their next fresh batch loads."""
    return fit_once(out, "auto_slow", ParameterServerStrategy("sync", timeout=30.0), DataEchoing(factor="auto"), 16,
                    loader(Rows(seconds=0.01), num_workers=1))


def scenario_auto_fast(out: Path) -> dict[str, Any]:
    """factor='auto' on loaders far faster than the learners' compute (20 ms a gradient): no echo."""
    strategy = ParameterServerStrategy("k_async", k=1, timeout=30.0, delay={"distribution": "constant", "value": 0.02})
    return fit_once(out, "auto_fast", strategy, DataEchoing(factor="auto"), 16, loader())


def scenario_resume(out: Path) -> dict[str, Any]:
    """Sync, factor 2: 5 updates, a checkpoint, then a second fit from it to 9 updates."""
    path = out / "resume.ckpt"
    first_model = Regression()
    first = trainer(out, "resume_first", ParameterServerStrategy("sync", timeout=30.0), DataEchoing(factor=2), 5)
    first.fit(first_model, train_dataloaders=loader())
    first.save_checkpoint(path)  # every rank calls it, as under DDP; rank 0 writes
    saved = torch.load(path, weights_only=True)["parameter_server"]["totals"] if rank() == 0 else None
    before = result(first, first_model)
    model = Regression()
    second = trainer(out, "resume_second", ParameterServerStrategy("sync", timeout=30.0), DataEchoing(factor=2), 9)
    second.fit(model, train_dataloaders=loader(), ckpt_path=path)
    return {**result(second, model), "saved": saved, "first": before}


def scenario_refused(out: Path) -> dict[str, Any]:
    """A fractional val_check_interval with factor='auto': every rank refuses it before the channels open."""
    model = Regression()
    fit = trainer(out, "refused", ParameterServerStrategy("sync", timeout=30.0), DataEchoing(factor="auto"), 10,
                  val_check_interval=0.5)
    fit.fit(model, train_dataloaders=loader(), val_dataloaders=loader())
    return result(fit, model)


def scenario_loader_fails(out: Path) -> dict[str, Any]:
    """Learner 1's loader raises at its 7th row, in the auto echo stage's thread: its fit fails with
    the user's error, the server's and learner 0's with ParameterServerError."""
    dataset = Rows(fail_at=7 if rank() == 2 else None)
    return fit_once(out, "loader_fails", ParameterServerStrategy("sync", timeout=30.0, shrink_k=False),
                    DataEchoing(factor="auto"), 50,
                    loader(dataset))


def scenario_library_loader(out: Path) -> dict[str, Any]:
    """The library's throttled_loader built as a DataModule builds it (no rank, no world size): each
    learner reads its own shard of P = 2 (not of the P + 1 processes), one epoch, factor 2."""
    from lightning_echo.data.pipeline import throttled_loader

    train = throttled_loader(Rows(), BATCH, shuffle=True, seed=3, seconds_per_batch=0.001)
    model = Regression()
    fit = trainer(out, "library_loader", ParameterServerStrategy("sync", timeout=30.0), DataEchoing(factor=2), -1,
                  max_epochs=1)
    fit.fit(model, train_dataloaders=train)
    return result(fit, model)


def main() -> None:
    run_scenarios(scenarios_of(globals()), rank(), grace_s=5.0)


if __name__ == "__main__":
    main()
