"""SimulatedLearnersStrategy on the modules people write (``tests/project_modules.py``): the
lightning-hydra-template module with torchmetrics and its DDP-style DataModule, a one-cycle
schedule sized by ``estimated_stepping_batches``, early stopping on a training metric, manual
optimization and momentum, under both Lightning namespaces."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

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
