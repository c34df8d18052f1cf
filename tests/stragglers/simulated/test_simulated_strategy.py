"""SimulatedLearnersStrategy on real Trainer.fit runs: every variant, exact stale gradients, K = P
equal to minibatch SGD, resume equality, schedulers per update, bad input, the command line."""

from __future__ import annotations

import csv
import functools
import json
import threading
import time
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.demos.boring_classes import BoringModel
from torch.utils.data import DataLoader, TensorDataset

from conftest import run_cli, single_run_overrides
from lightning_echo.callbacks import TrainingProgress
from lightning_echo.core.delays import ComputeTimes, DelayDistribution
from lightning_echo.core.schedule import VARIANTS, ScheduleSimulation, variant_spec
from lightning_echo.echo import DataEchoing
from lightning_echo.data import SyntheticDataModule
from lightning_echo.errors import ConfigError
from lightning_echo.models import LogisticRegression
from lightning_echo.data.pipeline import throttled_loader
from lightning_echo.stragglers import SimulatedLearnersStrategy

LEARNERS = 4


class Linear(pl.LightningModule):
    """Least squares on (x, y) batches, plain SGD: small enough to replay by hand."""

    def __init__(self, lr: float = 0.05, per_step_schedule: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(6, 1)
        self.lr = lr
        self.per_step_schedule = per_step_schedule

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = 0.5 * ((self.layer(x).squeeze(-1) - y) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if not self.per_step_schedule:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def data(n: int = 96, batch_size: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=generator)
    y = x @ torch.arange(1.0, 7.0) + 0.1 * torch.randn(n, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(strategy, max_steps: int, **kwargs) -> pl.Trainer:
    options = dict(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False, limit_val_batches=0)
    options.update(kwargs)
    return pl.Trainer(strategy=strategy, **options)


def parameters(module: pl.LightningModule) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_any_module(variant: str) -> None:
    strategy = SimulatedLearnersStrategy(variant, learners=LEARNERS, delay={"distribution": "exponential"},
                                         max_delay=2 if variant == "ringmaster" else None)
    progress = TrainingProgress()
    fit = trainer(strategy, 12, callbacks=[progress])
    model = BoringModel()
    before = parameters(model)
    fit.fit(model)
    assert fit.global_step == 12  # one Lightning step per server update
    assert not all(torch.equal(a, b) for a, b in zip(before, parameters(model)))
    assert strategy.clock_s > 0 and progress.ledger.clock_s == strategy.clock_s and progress.clock == "simulated"
    assert progress.fresh_samples == 12 * strategy.spec.k  # BoringModel's batches hold one example
    assert strategy.store.peak <= LEARNERS  # one snapshot per version a running learner holds


@pytest.mark.parametrize("variant", ["sync", "k_batch_async", "async"])
def test_the_library_logistic_model_learns_under_stragglers(variant: str, tmp_path: Path) -> None:
    dm = SyntheticDataModule(n_examples=768, n_features=8, n_classes=3, condition_number=2, batch_size=16)
    dm.setup()
    model = LogisticRegression(dm.spec, optimizer=functools.partial(torch.optim.SGD, lr=0.2))

    def validation_loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(dm.splits.x_val), dm.splits.y_val))

    before = validation_loss()
    strategy = SimulatedLearnersStrategy(variant, learners=LEARNERS, k=2 if variant == "k_batch_async" else None,
                                         delay={"distribution": "exponential"}, lr_rule="mishchenko", seed=3)
    fit = trainer(strategy, 120, callbacks=[TrainingProgress()], limit_val_batches=1.0,
                  logger=CSVLogger(tmp_path, name="", version=""), log_every_n_steps=1)
    fit.fit(model, datamodule=dm)
    assert fit.global_step == 120
    assert validation_loss() < 0.7 * before
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    simulated = [float(r["time/simulated_s"]) for r in rows if r.get("time/simulated_s")]
    staleness = [float(r["stale/staleness_mean"]) for r in rows if r.get("stale/staleness_mean")]
    assert len(staleness) >= 100 and any(r.get("val/loss") for r in rows)
    assert simulated == sorted(simulated) and simulated[-1] == pytest.approx(strategy.clock_s)
    assert (max(staleness) == 0) == (variant == "sync")


def test_k_equal_p_is_minibatch_sgd_bit_for_bit() -> None:
    loader = data()
    model = Linear()
    strategy = SimulatedLearnersStrategy("k_sync", learners=LEARNERS, k=LEARNERS, delay={"distribution": "constant"})
    trainer(strategy, 6).fit(model, loader)
    reference = Linear()
    optimizer = torch.optim.SGD(reference.parameters(), lr=reference.lr)
    batches = list(loader)
    for update in range(6):
        total = None
        for x, y in batches[update * LEARNERS:(update + 1) * LEARNERS]:
            reference.zero_grad()
            (0.5 * ((reference.layer(x).squeeze(-1) - y) ** 2).mean()).backward()
            grads = [p.grad.detach().clone() for p in reference.parameters()]
            total = grads if total is None else [t.add_(g) for t, g in zip(total, grads)]
        for p, g in zip(reference.parameters(), total):
            p.grad = g / LEARNERS
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(parameters(model), parameters(reference)))


def test_each_gradient_is_taken_at_the_stale_parameters_its_learner_read() -> None:
    # Replay the same schedule by hand, keeping every version: the strategy must match bit for bit.
    loader, updates = data(n=160), 15  # one epoch: 40 mini-batches
    model = Linear()
    strategy = SimulatedLearnersStrategy("k_batch_async", learners=LEARNERS, k=2, delay={"distribution": "exponential"}, seed=3)
    trainer(strategy, updates).fit(model, loader)
    simulation = ScheduleSimulation(variant_spec("k_batch_async", LEARNERS, 2), ComputeTimes(DelayDistribution("exponential")), seed=3)
    reference = Linear()
    optimizer = torch.optim.SGD(reference.parameters(), lr=reference.lr)
    versions = [parameters(reference)]
    batches = iter(list(loader))
    stale_seen = 0
    for _ in range(updates):
        plan = simulation.next_update()
        total = None
        for gradient in plan.gradients:
            x, y = next(batches)
            stale_seen += gradient.staleness > 0
            live = parameters(reference)
            with torch.no_grad():
                for p, v in zip(reference.parameters(), versions[gradient.read_version]):
                    p.copy_(v)
            reference.zero_grad()
            (0.5 * ((reference.layer(x).squeeze(-1) - y) ** 2).mean()).backward()
            grads = [p.grad.detach().clone() for p in reference.parameters()]
            with torch.no_grad():
                for p, v in zip(reference.parameters(), live):
                    p.copy_(v)
            total = grads if total is None else [t.add_(g) for t, g in zip(total, grads)]
        for p, g in zip(reference.parameters(), total):
            p.grad = g / len(plan.gradients)
        optimizer.step()
        versions.append(parameters(reference))
    assert stale_seen > 0  # the schedule did use stale gradients
    assert all(torch.equal(a, b) for a, b in zip(parameters(model), parameters(reference)))


def test_scheduler_steps_once_per_server_update() -> None:
    model = Linear(per_step_schedule=True)
    strategy = SimulatedLearnersStrategy("k_async", learners=LEARNERS, k=2)
    trainer(strategy, 5).fit(model, data())
    assert strategy.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 / 6)


def test_resume_mid_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    def strategy():
        return SimulatedLearnersStrategy("k_async", learners=LEARNERS, k=2, delay={"distribution": "exponential"},
                                         lr_rule="mishchenko", seed=5)

    whole_model, whole = Linear(), strategy()
    trainer(whole, 20).fit(whole_model, data())
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=7, save_top_k=-1, save_last=False)
    first = strategy()
    trainer(first, 7, enable_checkpointing=True, callbacks=[checkpoints]).fit(Linear(), data())
    (path,) = sorted(tmp_path.glob("*.ckpt"))
    resumed_model, resumed = Linear(), strategy()
    trainer(resumed, 20).fit(resumed_model, data(), ckpt_path=str(path))
    assert resumed.clock_s == pytest.approx(whole.clock_s, rel=0, abs=0)
    assert all(torch.equal(a, b) for a, b in zip(parameters(resumed_model), parameters(whole_model)))


def test_registered_under_its_name() -> None:
    fit = trainer("simulated_learners", 3)
    assert isinstance(fit.strategy, SimulatedLearnersStrategy) and fit.strategy.spec.name == "async"
    fit.fit(BoringModel())
    assert fit.global_step == 3


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"variant": "k_sync", "learners": 8, "k": 9}, "stale.k"),
        ({"variant": "k_async", "learners": 8, "k": 0}, "stale.k"),
        ({"variant": "sometimes"}, "stale.variant"),  # the same key on both backends (one StragglerSettings)
        ({"delay": {"distribution": "pareto", "shape": 1.0}}, "stale.delay.shape"),
        ({"delay": {"distribution": "gamma"}}, "stale.delay.distribution"),
        ({"delay": {"trace": "/no/such/trace.csv"}}, "stale.delay.trace"),
        ({"delay": {"distribution": "exponential", "speeds": [1.0, 2.0]}, "learners": 8}, "speeds"),
        ({"lr_rule": "dutta"}, "stale.c"),
        ({"lr_rule": "sometimes"}, "stale.lr_rule"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, key) -> None:
    with pytest.raises(ConfigError) as error:
        SimulatedLearnersStrategy(**kwargs)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_empty_trace_file_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "times.csv"
    trace.write_text("learner,seconds\n")
    with pytest.raises(ConfigError, match="stale.delay.trace"):
        SimulatedLearnersStrategy("async", learners=2, delay={"trace": str(trace)})


@pytest.mark.parametrize("persistent_workers", [False, True], ids=["throttled-loader", "persistent-workers"])
def test_no_loader_thread_or_worker_outlives_fit(persistent_workers: bool) -> None:
    # Lightning sees only the strategy's update loader: the user's loader under it must stop too.
    dataset = TensorDataset(torch.randn(64, 6), torch.randn(64))
    if persistent_workers:
        loader = DataLoader(dataset, batch_size=4, num_workers=1, persistent_workers=True)
    else:
        loader = throttled_loader(dataset, batch_size=4, seconds_per_batch=0.001)
    fit = trainer(SimulatedLearnersStrategy("k_async", learners=2, k=1), 6)
    fit.fit(Linear(), loader)
    deadline = time.monotonic() + 5
    while _loader_activity(loader) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _loader_activity(loader)


def _loader_activity(loader: object) -> list[str]:
    threads = [t.name for t in threading.enumerate() if t.name.startswith("lightning_echo-") and t.is_alive()]
    workers = [] if getattr(loader, "_iterator", None) is None else ["persistent DataLoader workers"]
    return threads + workers


def test_combinations_that_are_refused_before_training() -> None:
    with pytest.raises(ConfigError, match="echo.kind"):
        trainer(SimulatedLearnersStrategy("async", learners=2), 3, callbacks=[DataEchoing(factor=2, kind="example")]).fit(BoringModel())
    with pytest.raises(ConfigError, match="_OtherSource.*cannot be combined"):
        trainer(SimulatedLearnersStrategy("async", learners=2), 3,
                callbacks=[TrainingProgress(), _OtherSource()]).fit(BoringModel())
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        trainer(SimulatedLearnersStrategy("async", learners=2), 3, accumulate_grad_batches=2).fit(BoringModel())
    with pytest.raises(ConfigError, match="trainer.devices"):
        trainer(SimulatedLearnersStrategy("async", learners=2), 3, devices=2, accelerator="cpu").fit(BoringModel())


class _OtherSource(pl.Callback):
    """A second progress source that does not compose with the straggler strategies."""

    clock = "wall_clock"
    enforces_budget = False

    def step_report(self):
        return None

    def progress_metrics(self, ledger):
        return {}

    def progress_bar(self, ledger):
        return {}


@pytest.mark.slow
def test_command_line_run_on_the_simulated_clock(tmp_path: Path) -> None:
    result = run_cli(["algorithm=k_async", "stale.learners=4", "stale.k=2", "trainer.max_steps=20",
                      "trainer.log_every_n_steps=1", *single_run_overrides()], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "le_outputs" / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["config"]["clock"] == "simulated"
    assert record["config"]["label"] == "k_async K=2 of P=4" and record["config"]["stale_k"] == 2
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("time/simulated_s", "stale/staleness_mean", "stale/step_factor", "stale/utilisation"):
        assert column in header
    bad = run_cli(["algorithm=k_sync", "stale.learners=4", "stale.k=9", *single_run_overrides()], cwd=tmp_path)
    assert bad.returncode == 2 and "stale.k=9 is not allowed" in bad.stderr


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_resume_mid_epoch_over_a_shuffling_loader_without_state_warns(tmp_path: Path, shuffle: bool) -> None:
    def loader() -> DataLoader:
        x, y = data().dataset.tensors
        return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=shuffle)  # loader=none's plain DataLoader

    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1, save_last=False)
    trainer(SimulatedLearnersStrategy("async", learners=LEARNERS), 5, enable_checkpointing=True,
            callbacks=[checkpoints]).fit(Linear(), loader())
    (path,) = sorted(tmp_path.glob("*.ckpt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(SimulatedLearnersStrategy("async", learners=LEARNERS), 8).fit(Linear(), loader(), ckpt_path=str(path))
    ours = [w for w in caught if "resuming in the middle of a pass" in str(w.message)]
    assert len(ours) == (1 if shuffle else 0)  # without shuffling, skipping the used items is exact
