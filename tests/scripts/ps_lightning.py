"""Run ParameterServerStrategy fits on a tiny regression problem, as a user's script would:
``python ps_lightning.py OUT_DIR SCENARIO [SCENARIO ...]``. Lightning's launcher re-runs this
script for ranks 1 and 2 (``devices=3``: the server and two learners); every rank runs the
scenarios in order, one ``Trainer.fit`` each, in one world, and writes
``OUT_DIR/<scenario>.rank<r>.json``.

The learners' Trainers get smaller limits than the server's (``max_steps=2``, ``max_epochs=1``,
a Timer) to show that only the server's limits end a run. Scenario ``killed`` makes learner 1
SIGKILL itself at its third gradient: run it last (the world has one learner less afterwards);
``server_killed`` SIGKILLs the server after its third update, and the learners must then fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the algorithm registry

from lightning_echo.lightning_namespace import pl
from lightning_echo.stragglers import StragglerSettings
from lightning_echo.stragglers.processes import ParameterServerError
from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy

ROWS, DIM, BATCH, LR = 32, 4, 4, 0.1


def regression_data() -> TensorDataset:
    """Fixed inputs, targets and example indices (the same on every rank)."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(ROWS, DIM, generator=generator)
    y = x @ torch.arange(1.0, DIM + 1) + 0.1 * torch.randn(ROWS, generator=generator)
    return TensorDataset(x, y, torch.arange(ROWS))


def batch_loss(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(x @ weight.T + bias, y.unsqueeze(1))


class Regression(pl.LightningModule):
    """A linear model; records the example indices of every training batch it computes on."""

    def __init__(self, kill_at_step: int = -1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(DIM, 1)
        self.kill_at_step = kill_at_step
        self.batches: list[list[int]] = []
        self.callbacks_in_training: list[str] = []

    def on_train_start(self) -> None:
        self.callbacks_in_training = sorted(type(c).__name__ for c in self.trainer.callbacks)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, index = batch
        self.batches.append(index.tolist())
        if len(self.batches) == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        loss = batch_loss(self.linear.weight, self.linear.bias, x, y)
        self.log("train/loss", loss, sync_dist=True)  # a reduce that must stay local on learners
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.log("val/loss", batch_loss(self.linear.weight, self.linear.bias, x, y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)

    def flat(self) -> list[float]:
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()]).tolist()


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))  # one node: the local rank is the global rank


def trainer(out: Path, name: str, strategy: Any, max_steps: int, **kwargs: Any) -> pl.Trainer:
    """The server's Trainer has ``max_steps``; the learners' have far smaller limits."""
    limits = {"max_steps": max_steps} if rank() == 0 else {"max_steps": 2, "max_epochs": 1, "max_time": "00:00:00:30"}
    return pl.Trainer(
        devices=3, accelerator="cpu", strategy=strategy, logger=pl.loggers.CSVLogger(out / "logs", name=name),
        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
        **limits, **kwargs,
    )


def loaders() -> dict[str, DataLoader]:
    data = regression_data()
    return {"train_dataloaders": DataLoader(data, batch_size=BATCH), "val_dataloaders": DataLoader(data, batch_size=ROWS)}


def result(fit: pl.Trainer, model: Regression) -> dict[str, Any]:
    strategy = fit.strategy
    report = strategy.server_report if rank() == 0 else strategy.learner_report
    return {
        "rank": rank(),
        "global_step": fit.global_step,
        "report": dataclasses.asdict(report) if report is not None else None,
        "params": model.flat(),
        "batches": model.batches,
        "callbacks": model.callbacks_in_training,
    }


def scenario_async(out: Path) -> dict[str, Any]:
    # learner 1 is three times slower than learner 0, so learner 0 needs more than one epoch of its shard
    strategy = ParameterServerStrategy("async", delay={"distribution": "constant", "value": 0.01, "speeds": [1, 3]})
    model = Regression()
    fit = trainer(out, "async", strategy, max_steps=12, enable_checkpointing=True)
    fit.fit(model, **loaders())
    return {**result(fit, model), "metrics_csv": str(Path(fit.logger.log_dir) / "metrics.csv")}


def scenario_k_sync(out: Path) -> dict[str, Any]:
    strategy = ParameterServerStrategy("k_sync", k=1, delay={"distribution": "constant", "value": 0.01, "speeds": [1, 5]})
    model = Regression()
    fit = trainer(out, "k_sync", strategy, max_steps=10, enable_checkpointing=False)
    fit.fit(model, **loaders())
    return result(fit, model)


def scenario_sync(out: Path) -> dict[str, Any]:
    model = Regression()
    initial = model.flat()
    fit = trainer(out, "sync", ParameterServerStrategy("sync"), max_steps=5, enable_checkpointing=False)
    fit.fit(model, **loaders())
    return {**result(fit, model), "initial": initial}


def scenario_registered(out: Path) -> dict[str, Any]:
    model = Regression()
    fit = trainer(out, "registered", "parameter_server", max_steps=4, enable_checkpointing=False)
    fit.fit(model, **loaders())
    return {**result(fit, model), "strategy": type(fit.strategy).__name__}


def scenario_resume(out: Path) -> dict[str, Any]:
    path = out / "resume.ckpt"
    first = trainer(out, "resume", ParameterServerStrategy("async"), max_steps=4, enable_checkpointing=False)
    first.fit(Regression(), **loaders())
    first.save_checkpoint(path)  # every rank calls it, as under DDP; rank 0 writes
    saved = torch.load(path, weights_only=True)["parameter_server"] if rank() == 0 else None
    model = Regression()
    second = trainer(out, "resume", ParameterServerStrategy("async"), max_steps=7, enable_checkpointing=False)
    second.fit(model, ckpt_path=path, **loaders())
    state = second.strategy.server_state
    return {**result(second, model), "saved": saved, "state_after": state}


def scenario_killed(out: Path) -> dict[str, Any]:
    # learner 1 is fast and dies early; learner 0 alone needs about 2 s for the 20 updates, so the
    # server is still training when learner 1 dies
    delay = {"distribution": "constant", "value": 0.1, "speeds": [1, 0.1]}
    strategy = ParameterServerStrategy("async", delay=delay, timeout=10.0)
    model = Regression(kill_at_step=3 if rank() == 2 else -1)
    fit = trainer(out, "killed", strategy, max_steps=20, enable_checkpointing=False)
    fit.fit(model, **loaders())
    return {**result(fit, model), "metrics_csv": str(Path(fit.logger.log_dir) / "metrics.csv")}


class NormalizedRegression(Regression):
    """The linear model behind a BatchNorm of the inputs, plus a constant float buffer (``offset``)
    that no forward pass changes; records the server's buffers after fit."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(DIM, momentum=0.5)
        self.register_buffer("offset", torch.full((DIM,), 0.1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, index = batch
        self.batches.append(index.tolist())
        return batch_loss(self.linear.weight, self.linear.bias, self.norm(x) + self.offset, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.log("val/loss", batch_loss(self.linear.weight, self.linear.bias, self.norm(x) + self.offset, y))

    def buffers_now(self) -> dict[str, list[float]]:
        return {name: buffer.tolist() for name, buffer in self.named_buffers()}


def scenario_batchnorm(out: Path) -> dict[str, Any]:
    model = NormalizedRegression()
    initial = model.buffers_now()
    fit = trainer(out, "batchnorm", ParameterServerStrategy("sync"), max_steps=3, enable_checkpointing=False)
    fit.fit(model, **loaders())
    return {**result(fit, model), "initial_buffers": initial, "buffers": model.buffers_now()}


class KillServerAt(pl.Callback):
    """SIGKILLs the server process after its ``step``-th update."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def scenario_server_killed(out: Path) -> dict[str, Any]:
    strategy = ParameterServerStrategy("async", delay={"distribution": "constant", "value": 0.01}, timeout=3.0)
    model = Regression()
    fit = trainer(out, "server_killed", strategy, max_steps=1000, enable_checkpointing=False,
                  callbacks=[KillServerAt(3)] if rank() == 0 else [])
    fit.fit(model, **loaders())
    return result(fit, model)


def registry_settings(name: str) -> StragglerSettings:
    """The StragglerSettings the algorithm registry's ``name`` gives on this world's two learners,
    with constant injected delays, learner 1 five times slower (so that work is cancelled or discarded)."""
    from algorithm_registry import REGISTRY, backend_overrides  # tests/, on the path below

    from lightning_echo.app.builders import build_algorithm_settings
    from lightning_echo.app.config import compose_config

    cfg = compose_config([f"algorithm={name}", *backend_overrides("processes"), *REGISTRY[name].overrides,
                          "stale.learners=2", "stale.delay.distribution=constant", "stale.delay.value=0.01",
                          "stale.delay.speeds=[1,5]"])
    return build_algorithm_settings(cfg)


def scenario_registry(out: Path, name: str) -> dict[str, Any]:
    """Algorithm ``name`` of the registry: 4 updates, a checkpoint, then a second fit from it to 8."""
    settings = registry_settings(name)
    path = out / f"registry_{name}.ckpt"
    first = trainer(out, f"registry_{name}_first", ParameterServerStrategy(settings, timeout=30.0), max_steps=4,
                    enable_checkpointing=False)
    first.fit(Regression(), **loaders())
    first.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["parameter_server"]["totals"] if rank() == 0 else None
    model = Regression()
    second = trainer(out, f"registry_{name}_second", ParameterServerStrategy(settings, timeout=30.0), max_steps=8,
                     enable_checkpointing=False)
    second.fit(model, ckpt_path=path, **loaders())
    logs = [str(Path(fit.logger.log_dir) / "metrics.csv") for fit in (first, second)] if rank() == 0 else None
    return {**result(second, model), "variant": settings.variant, "saved_totals": saved, "metrics_csv": logs}


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def main() -> None:
    torch.set_num_threads(1)
    out, names = Path(sys.argv[1]), sys.argv[2:]
    for name in names:
        try:  # "registry_<algorithm>" runs scenario_registry for that algorithm of tests/algorithm_registry.py
            scenario, _, algorithm = name.partition("_") if name.startswith("registry_") else (name, "", "")
            outcome = SCENARIOS[scenario](out, algorithm) if algorithm else SCENARIOS[scenario](out)
        except ParameterServerError as error:  # recorded for the test, then this process fails
            (out / f"{name}.rank{rank()}.json").write_text(json.dumps({"rank": rank(), "error": str(error)}))
            raise
        (out / f"{name}.rank{rank()}.json").write_text(json.dumps(outcome))


if __name__ == "__main__":
    main()
