"""SimulatedLearnersStrategy on the modules people write (``tests/project_modules.py``): the
lightning-hydra-template module with torchmetrics and its DDP-style DataModule, a one-cycle
schedule sized by ``estimated_stepping_batches``, early stopping on a training metric, manual
optimization and momentum, under both Lightning namespaces."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import pl
from lightning_echo.stragglers import SimulatedLearnersStrategy

from project_modules import DigitsDataModule, DigitsLitModule, ManualDigitsModule, OneCycleDigitsModule


def trainer(strategy: SimulatedLearnersStrategy, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, **kwargs)


@pytest.mark.parametrize("variant, k", [("k_sync", 2), ("k_batch_async", 3), ("async", 1)])
def test_one_cycle_sized_by_estimated_stepping_batches_spans_the_updates(variant: str, k: int) -> None:
    model = OneCycleDigitsModule()
    fit = trainer(SimulatedLearnersStrategy(variant, learners=4, k=k), max_epochs=2)
    fit.fit(model, datamodule=DigitsDataModule(batch_size=8))
    updates = 2 * (96 // 8 // k)  # 12 mini-batches per epoch, K per update
    assert model.estimated_steps == fit.global_step == updates
    assert len(model.lrs) == updates and model.lrs[-1] < 1e-3  # the cycle ended with the run, not halfway


def test_the_template_module_trains_and_early_stopping_watches_a_training_metric() -> None:
    model, data = DigitsLitModule(), DigitsDataModule(batch_size=8)
    stopping = pl.callbacks.EarlyStopping(monitor="train/loss", mode="min", patience=10)
    fit = trainer(SimulatedLearnersStrategy("k_async", learners=4, k=2), max_epochs=3, callbacks=[stopping])
    fit.fit(model, datamodule=data)
    assert data.world_sizes_seen == [1]  # the simulated learners share the one device
    assert {"train/loss", "train/acc", "val/acc", "val/acc_best"} <= set(fit.callback_metrics)
    assert fit.current_epoch == 3 and stopping.best_score is not None


def test_manual_optimization_is_refused_in_one_line_before_any_step() -> None:
    model = ManualDigitsModule()
    fit = trainer(SimulatedLearnersStrategy("k_sync", learners=4, k=2), max_epochs=1)
    with pytest.raises(ConfigError, match="automatic_optimization=False") as raised:
        fit.fit(model, datamodule=DigitsDataModule(batch_size=8))
    assert "\n" not in str(raised.value) and fit.global_step == 0


@pytest.mark.parametrize("variant", ["async", "ringmaster", "k_async"])
def test_momentum_under_a_variant_with_stale_gradients_warns_at_setup(variant: str) -> None:
    fit = trainer(SimulatedLearnersStrategy(variant, learners=4), max_steps=1)
    with pytest.warns(UserWarning, match="momentum 0.9"):
        fit.fit(DigitsLitModule(momentum=0.9, scheduler=False), datamodule=DigitsDataModule(batch_size=8))


@pytest.mark.parametrize("variant, momentum", [("sync", 0.9), ("k_sync", 0.9), ("rennala", 0.9), ("async", 0.0)])
def test_no_momentum_warning_without_stale_gradients_or_without_momentum(variant: str, momentum: float) -> None:
    fit = trainer(SimulatedLearnersStrategy(variant, learners=4), max_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.fit(DigitsLitModule(momentum=momentum, scheduler=False), datamodule=DigitsDataModule(batch_size=8))
    assert not [w for w in caught if "implicit momentum" in str(w.message)]


@pytest.mark.slow
def test_the_implicit_momentum_correction_keeps_async_with_momentum_from_diverging() -> None:
    def final_val_loss(correction: str) -> float:
        model = DigitsLitModule(lr=0.1, momentum=0.9, scheduler=False)
        strategy = SimulatedLearnersStrategy("async", learners=8, momentum_correction=correction)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = trainer(strategy, max_epochs=4)
            fit.fit(model, datamodule=DigitsDataModule(batch_size=8, train_rows=512, val_rows=128))
        assert fit.optimizers[0].param_groups[0]["momentum"] == 0.9  # the user's setting, as configured
        return float(fit.callback_metrics["val/loss"])

    assert final_val_loss("none") > 100  # momentum 0.9 on top of the 0.875 asynchrony adds: diverged
    assert final_val_loss("implicit") < 0.5  # 0.025 explicit: as good as plain SGD (bench/momentum_staleness.py)


class TwoVectors(pl.LightningModule):
    """Two same-shape parameters, grouped the way weight-decay splits group them."""

    def __init__(self, group_order: str = "ab", leave_out: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(4))
        self.b = torch.nn.Parameter(torch.randn(4))
        self.extra = torch.nn.Linear(4, 1)  # trainable, left out of the optimizer when leave_out
        self.group_order, self.leave_out = group_order, leave_out
        self.factors: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        prediction = x @ self.a + 3.0 * (x @ self.b) + self.extra(x).squeeze(-1)
        return ((prediction - y) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = {"a": {"params": [self.a]}, "b": {"params": [self.b], "weight_decay": 0.0}}
        extra = [] if self.leave_out else [{"params": list(self.extra.parameters())}]
        return torch.optim.SGD([groups[name] for name in self.group_order] + extra, lr=0.05)

    def on_train_batch_end(self, *args: Any) -> None:
        self.factors.append(self.trainer.strategy.server_optimizer.last_factor)


def _vectors() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=generator)
    y = x @ torch.tensor([1.0, -1.0, 0.5, 2.0]) + 0.1 * torch.randn(64, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


@pytest.mark.parametrize("leave_out", [False, True])
def test_the_dutta_rule_pairs_stale_parameters_by_identity_whatever_the_optimizers_group_order(leave_out: bool) -> None:
    def factors(order: str) -> list[float]:
        model = TwoVectors(order, leave_out)
        strategy = SimulatedLearnersStrategy("async", learners=4, lr_rule="dutta", c=0.002)
        trainer(strategy, max_epochs=2).fit(model, _vectors())
        return model.factors

    straight, swapped = factors("ab"), factors("ba")
    assert len(straight) == 32 and any(f < 1.0 for f in straight)  # the rule really shrank some steps
    assert swapped == pytest.approx(straight, rel=1e-6)  # the same distances, however the groups are listed
