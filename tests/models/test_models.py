"""Every model trains for real with Trainer.fit on generated data."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from lightning_echo.callbacks import TrainingProgress
from lightning_echo.data import LeastSquaresDataModule, SyntheticDataModule
from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import ConfigError
from lightning_echo.models import CNN, MLP, LinearRegression, LogisticRegression


def tiny_trainer(max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def full_loss(model: pl.LightningModule, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return model.loss(model(x), y).item()


@pytest.mark.parametrize("model_cls", [LogisticRegression, MLP])
def test_classifiers_reduce_training_loss(model_cls) -> None:
    pl.seed_everything(0)
    dm = SyntheticDataModule(n_examples=600, n_features=8, n_classes=3, batch_size=32)
    model = model_cls(dm.spec, optimizer=partial(torch.optim.SGD, lr=0.2))
    before = full_loss(model, dm.splits.x_train, dm.splits.y_train)
    tiny_trainer(60).fit(model, datamodule=dm)
    after = full_loss(model, dm.splits.x_train, dm.splits.y_train)
    assert after < 0.8 * before


def test_linear_regression_approaches_least_squares_optimum() -> None:
    pl.seed_everything(0)
    dm = LeastSquaresDataModule(n_examples=512, n_features=16, noise=0.1, batch_size=64)
    model = LinearRegression(dm.spec, optimizer=partial(torch.optim.SGD, lr=0.3))
    tiny_trainer(400).fit(model, datamodule=dm)
    gap = full_loss(model, dm.splits.x_train, dm.splits.y_train) - dm.optimum()
    assert 0 <= gap < 0.01


def test_cnn_trains_on_images() -> None:
    pl.seed_everything(0)
    spec = DataSpec("images", (1, 12, 12), 2)
    model = CNN(spec, optimizer=partial(torch.optim.SGD, lr=0.1), channels=[4])
    x = torch.randn(64, 1, 12, 12)
    y = (x[:, 0, :6].mean(dim=(1, 2)) > x[:, 0, 6:].mean(dim=(1, 2))).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = tiny_trainer(8)
    trainer.fit(model, train_dataloaders=loader)
    assert trainer.global_step == 8
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_progress_callback_counts_samples_and_time(tmp_path) -> None:
    dm = SyntheticDataModule(n_examples=100, n_features=4, n_classes=2, val_fraction=0.0, batch_size=30)
    progress = TrainingProgress()
    trainer = tiny_trainer(7, callbacks=[progress])
    trainer.fit(LogisticRegression(dm.spec), datamodule=dm)
    # 100 examples in batches of 30, 30, 30, 10, then 3 more batches of 30.
    assert progress.fresh_batches == 7
    assert progress.fresh_samples == 100 + 3 * 30
    assert progress.elapsed_s > 0
    state = progress.state_dict()
    restored = TrainingProgress()
    restored.load_state_dict(state)
    assert restored.fresh_samples == progress.fresh_samples and restored.elapsed_s == pytest.approx(state["elapsed_s"])


def test_model_arguments_are_checked() -> None:
    spec = DataSpec("v", (4,), 2)
    with pytest.raises(ConfigError, match="^hidden_sizes="):
        MLP(spec, hidden_sizes=[])
    with pytest.raises(ConfigError, match="^dropout="):
        MLP(spec, dropout=1.5)
