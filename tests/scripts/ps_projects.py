"""ParameterServerStrategy on modules written the way third-party projects write them
(``tests/project_modules.py``), as a user's script: ``python ps_projects.py OUT_DIR SCENARIO...``.
Lightning's launcher re-runs this script for ranks 1 and 2 (``devices=3``: the server and two
learners); every rank runs the scenarios in order, one ``Trainer.fit`` each, and writes
``OUT_DIR/<scenario>.rank<r>.json``. A scenario whose fit raises records the error (type and
message) and the threads still alive afterwards, and the script goes on.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the third-party-style modules

from project_modules import DigitsDataModule, DigitsLitModule, OneCycleDigitsModule, digits

from lightning_echo.lightning_namespace import pl
from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy
from world_scenarios import run_scenarios, scenarios_of


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def trainer(out: Path, name: str, strategy: ParameterServerStrategy, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(devices=3, accelerator="cpu", strategy=strategy, default_root_dir=out / name,
                      logger=pl.loggers.CSVLogger(out / "logs", name=name), log_every_n_steps=1,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def accuracy_on_validation(model: DigitsLitModule) -> float:
    data = digits(256, seed=2)  # the validation set of scenario_template
    with torch.no_grad():
        return float((model(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean())


def scenario_template(out: Path) -> dict[str, Any]:
    """The lightning-hydra-template set-up: torchmetrics objects, a DDP-style DataModule,
    ReduceLROnPlateau on val/loss, early stopping and checkpoints on training metrics."""
    model, data = DigitsLitModule(lr=0.2), DigitsDataModule(batch_size=12, val_rows=256)
    callbacks = [pl.callbacks.EarlyStopping(monitor="train/loss", mode="min", patience=10),
                 pl.callbacks.ModelCheckpoint(monitor="train/acc", mode="max", dirpath=out / "template_ckpt")]
    fit = trainer(out, "template", ParameterServerStrategy("async", timeout=30.0), max_epochs=3, callbacks=callbacks)
    fit.fit(model, datamodule=data)
    metrics = {key: float(value) for key, value in fit.callback_metrics.items()}
    return {"world_sizes_seen": data.world_sizes_seen, "global_step": fit.global_step, "metrics": metrics,
            "val_accuracy_now": accuracy_on_validation(model), "best_model_path": callbacks[1].best_model_path,
            "metrics_csv": str(Path(fit.logger.log_dir) / "metrics.csv"),
            "lr": fit.optimizers[0].param_groups[0]["lr"] if fit.optimizers else None}


def scenario_one_cycle(out: Path) -> dict[str, Any]:
    """OneCycleLR sized by ``trainer.estimated_stepping_batches`` under k_async with K = 2."""
    model = OneCycleDigitsModule()
    fit = trainer(out, "one_cycle", ParameterServerStrategy("k_async", k=2, timeout=30.0), max_epochs=2,
                  enable_checkpointing=False)
    fit.fit(model, datamodule=DigitsDataModule(batch_size=12))
    return {"estimated": model.estimated_steps, "global_step": fit.global_step, "lrs": model.lrs}


def scenario_momentum(out: Path) -> dict[str, Any]:
    """SGD momentum 0.9 under async on 2 learners: a warning on the server, none with the correction."""
    seen = {}
    for correction in ("none", "implicit"):
        strategy = ParameterServerStrategy("async", timeout=30.0, momentum_correction=correction)
        fit = trainer(out, f"momentum_{correction}", strategy, max_steps=2, enable_checkpointing=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit.fit(DigitsLitModule(momentum=0.9, scheduler=False), datamodule=DigitsDataModule(batch_size=12))
        seen[correction] = {"warnings": [str(w.message) for w in caught if "implicit momentum" in str(w.message)],
                            "offset": strategy.momentum_offset}
    return seen


class FailsAtStep(pl.Callback):
    """The user's own callback raising on the server after its third update."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == 3:
            raise RuntimeError("the user's callback failed at update 3")


class BuggyDigitsModule(DigitsLitModule):
    """A module whose training_step raises on learner 1 at its third batch."""

    def __init__(self) -> None:
        super().__init__(scheduler=False)
        self.steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        if rank() == 2 and self.steps == 3:
            raise ValueError("the user's training_step failed on learner 1")
        return super().training_step(batch, batch_idx)


def scenario_learner_fails(out: Path) -> dict[str, Any]:
    fit = trainer(out, "learner_fails", ParameterServerStrategy("sync", timeout=30.0, shrink_k=False), max_epochs=2,
                  enable_checkpointing=False)
    fit.fit(BuggyDigitsModule(), datamodule=DigitsDataModule(batch_size=12))
    return {}


def scenario_server_fails(out: Path) -> dict[str, Any]:
    fit = trainer(out, "server_fails", ParameterServerStrategy("async", timeout=30.0), max_epochs=2,
                  enable_checkpointing=False, callbacks=[FailsAtStep()] if rank() == 0 else [])
    fit.fit(DigitsLitModule(scheduler=False), datamodule=DigitsDataModule(batch_size=12))
    return {}


def main() -> None:
    run_scenarios(scenarios_of(globals()), rank(), grace_s=0.0)


if __name__ == "__main__":
    main()
