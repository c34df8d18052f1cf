"""TargetLoss on real Trainer.fit runs of logistic regression, and the float64 optimum solver."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from lightning_echo.echoed_optim import TargetLoss
from lightning_echo.echoed_optim.target import full_loss
from lightning_echo.core.optimum import logistic_regression_optimum
from lightning_echo.data import SyntheticDataModule
from lightning_echo.echo import DataEchoing, EchoedNesterov
from lightning_echo.errors import ConfigError
from lightning_echo.models import LogisticRegression


def small_data(batch_size: int = 64) -> SyntheticDataModule:
    return SyntheticDataModule(n_examples=1024, n_features=6, n_classes=2, noise=1.0, condition_number=2.0,
                               val_fraction=0.0, batch_size=batch_size)


def fit(tmp_path: Path, callbacks: list[pl.Callback], max_steps: int, lr: float = 1.0,
        optimizer: type = torch.optim.SGD) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    data = small_data()
    model = LogisticRegression(data.spec, partial(optimizer, lr=lr))
    trainer = pl.Trainer(max_steps=max_steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_optimum_agrees_with_long_gradient_descent(l2: float) -> None:
    data = small_data()
    x, y = data.splits.x_train, data.splits.y_train
    _, _, value = logistic_regression_optimum(x, y, 2, l2=l2)
    weight = torch.zeros(2, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    x64 = x.double()
    for _ in range(3000):
        loss = F.cross_entropy(x64 @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        grad_w, grad_b = torch.autograd.grad(loss, [weight, bias])
        with torch.no_grad():
            weight -= 2.0 * grad_w
            bias -= 2.0 * grad_b
    assert abs(loss.item() - value) < 1e-4
    assert value <= loss.item() + 1e-9


def test_reaches_target_with_echo_counts_and_writes_json(tmp_path: Path) -> None:
    echo = DataEchoing(factor=2)
    target = TargetLoss(every_n_steps=1, relative_gap=0.01)
    trainer = fit(tmp_path, [echo, target], max_steps=400)
    assert target.optimum is not None and target.reached_step is not None
    assert 0 < target.reached_step < 400 and trainer.global_step == 400  # not asked to stop
    # Factor 2: every fresh batch is served twice, so fresh samples follow steps / 2 batches.
    assert target.reached_fresh_samples == 64 * ((target.reached_step + 1) // 2)
    saved = json.loads((tmp_path / "target.json").read_text())
    assert saved["reached_step"] == target.reached_step
    assert saved["reached_fresh_samples"] == target.reached_fresh_samples
    assert saved["final_fresh_samples"] == echo.fresh_samples
    assert saved["optimum"] == pytest.approx(target.optimum)


def test_stops_at_target_without_echo(tmp_path: Path) -> None:
    target = TargetLoss(every_n_steps=1, stop_at_target=True)
    trainer = fit(tmp_path, [target], max_steps=400)
    assert target.reached_step is not None and trainer.global_step == target.reached_step
    assert target.reached_fresh_samples == 64 * target.reached_step
    assert target.reached_loss <= target.optimum * 1.01


def test_regularised_objective_is_trained_and_targeted(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    data = small_data()
    model = LogisticRegression(data.spec, partial(torch.optim.SGD, lr=1.0), l2=0.05)
    target = TargetLoss(every_n_steps=1, stop_at_target=True)
    trainer = pl.Trainer(max_steps=400, callbacks=[target], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    x, y = data.splits.x_train, data.splits.y_train
    assert target.optimum == pytest.approx(logistic_regression_optimum(x, y, 2, l2=0.05)[2])
    assert target.optimum > logistic_regression_optimum(x, y, 2)[2] + 1e-3  # the penalty is part of it
    assert target.reached_step is not None and trainer.global_step == target.reached_step
    with torch.no_grad():
        cross_entropy = F.cross_entropy(model(x), y).item()
        penalty = 0.025 * model.network[1].weight.pow(2).sum().item()
    assert target.last_loss == pytest.approx(cross_entropy + penalty, rel=1e-5)
    assert target.last_loss <= target.optimum * 1.01


def test_optimum_is_cached_per_data_and_model(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = TargetLoss(every_n_steps=50, cache_dir=str(cache))
    fit(tmp_path / "a", [first], max_steps=2)
    (cached,) = cache.glob("optimum-*.json")
    assert json.loads(cached.read_text())["optimum"] == pytest.approx(first.optimum)
    cached.write_text(json.dumps({"optimum": 0.123}))  # a second run must read it, not recompute
    second = TargetLoss(every_n_steps=50, cache_dir=str(cache))
    fit(tmp_path / "b", [second], max_steps=2)
    assert second.optimum == 0.123


def test_stops_a_diverging_run(tmp_path: Path) -> None:
    target = TargetLoss(every_n_steps=1, optimum=0.5)
    trainer = fit(tmp_path, [target], max_steps=200, lr=1e4)
    assert target.diverged and trainer.global_step < 200 and target.reached_step is None


@pytest.mark.parametrize("at_iterates", [True, False])
def test_nesterov_loss_is_taken_at_the_iterate_or_the_look_ahead_point(tmp_path: Path, at_iterates: bool) -> None:
    target = TargetLoss(every_n_steps=1, optimum=0.1, at_iterates=at_iterates)
    trainer = fit(tmp_path, [DataEchoing(factor=2), target], max_steps=6, lr=0.5, optimizer=EchoedNesterov)
    model, (optimizer,) = trainer.lightning_module, trainer.optimizers
    x, y = trainer.datamodule.splits.x_train, trainer.datamodule.splits.y_train
    at_look_ahead = full_loss(model, x, y)
    optimizer.swap_parameters_and_iterates()
    at_iterate = full_loss(model, x, y)
    optimizer.swap_parameters_and_iterates()
    assert abs(at_iterate - at_look_ahead) > 1e-4  # the momentum moved the look-ahead point away
    assert target.last_loss == pytest.approx(at_iterate if at_iterates else at_look_ahead, abs=1e-7)
    assert full_loss(model, x, y) == pytest.approx(at_look_ahead, abs=1e-7)  # parameters restored


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"relative_gap": 0}, "relative_gap"), ({"every_n_steps": 0}, "every_n_steps"),
     ({"optimum": float("nan")}, "optimum"), ({"stop_at_target": "yes"}, "stop_at_target"),
     ({"divergence_factor": 0.5}, "divergence_factor"), ({"at_iterates": 1}, "at_iterates")],
)
def test_bad_settings(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        TargetLoss(**kwargs)
