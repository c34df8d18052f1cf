"""DataEchoing with what real Lightning projects do (issue 10, cases 1, 2, 7 and 8): training steps
and hooks that change their batch, custom batch types, schedulers / monitors / clipping /
checkpoints on echoed optimizers, code that reads the train loader or iterates it itself.
Every test is a real ``Trainer.fit`` on tiny data."""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.demos.boring_classes import BoringModel, RandomDataset
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from conftest import quiet_trainer
from lightning_echo.callbacks import TrainingProgress
from lightning_echo.echo import DataEchoing, EchoedNesterov, EchoedProx, EchoedSGD
from lightning_echo.errors import ConfigError
from lightning_echo.stragglers.optim import StalenessAwareOptimizer

N, BATCH, FEATURES = 64, 8, 32  # 8 fresh batches per epoch


def make_trainer(callbacks: list, **kwargs: Any) -> pl.Trainer:
    return quiet_trainer(callbacks, **{"max_epochs": 1, **kwargs})


class Records(Dataset):
    """Example i: features all equal to i, label i % 2, id "rec-i" (strings first in each dict)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": f"rec-{index}", "x": torch.full((FEATURES,), float(index)), "labels": torch.tensor(index % 2)}


class DictModel(BoringModel):
    """A Hugging Face style step: ``labels = batch.pop("labels")``; records what each step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.hook_calls = {"on_before_batch_transfer": 0, "transfer_batch_to_device": 0, "on_after_batch_transfer": 0}

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.hook_calls["on_before_batch_transfer"] += 1
        batch["x"].mul_(2)  # in place, on the loader's own tensor
        return batch

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.hook_calls["transfer_batch_to_device"] += 1
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.hook_calls["on_after_batch_transfer"] += 1
        return batch

    def training_step(self, batch, batch_idx):
        labels = batch.pop("labels")
        self.seen.append({"ids": list(batch["id"]), "x": batch["x"][:, 0].tolist(), "labels": labels.tolist()})
        return super().training_step(batch["x"], batch_idx)


def _expected_step(ids: list[str]) -> dict[str, Any]:
    """What a step on these examples sees without echoing: x doubled once by the hook."""
    rows = [int(i.split("-")[1]) for i in ids]
    return {"ids": ids, "x": [2.0 * r for r in rows], "labels": [r % 2 for r in rows]}


# -- case 1: batches changed by the step or the hooks ---------------------------------------------
def test_a_step_that_pops_labels_and_a_hook_that_changes_x_in_place_see_each_batch_as_without_echoing() -> None:
    model = DictModel()
    echo = DataEchoing(factor=3)
    make_trainer([echo]).fit(model, DataLoader(Records(), batch_size=BATCH))
    assert len(model.seen) == 24 and echo.fresh_batches == 8 and echo.echoed_steps == 16
    # Every step, the echoes included, has its labels and sees x doubled once (not 2x, 4x, 8x).
    assert all(step == _expected_step(step["ids"]) for step in model.seen)
    assert [model.seen[3 * g]["ids"] for g in range(8)] == [[f"rec-{8 * g + i}" for i in range(8)] for g in range(8)]
    # The three transfer hooks run once per fresh batch, as the device copy is reused by its echoes.
    assert model.hook_calls == {"on_before_batch_transfer": 8, "transfer_batch_to_device": 8, "on_after_batch_transfer": 8}
    assert echo.device_copies == 8


def test_where_each_step_gets_new_data_the_transfer_hooks_run_every_step() -> None:
    model = DictModel()
    echo = DataEchoing(factor=2, kind="example", shuffle_buffer=16)
    make_trainer([echo]).fit(model, DataLoader(Records(), batch_size=BATCH))
    assert len(model.seen) == 16 and echo.fresh_samples == N
    assert model.hook_calls == {name: 16 for name in model.hook_calls}
    assert all(step == _expected_step(step["ids"]) for step in model.seen)  # ids stay with their rows


def test_an_in_place_change_in_training_step_reaches_the_echoes_and_is_warned_about() -> None:
    seen: list[float] = []

    class Scaling(BoringModel):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0, 0].item())
            batch.mul_(2)  # changes the shared tensor: documented, warned
            return super().training_step(batch, batch_idx)

    data = torch.ones(16, FEATURES)
    with pytest.warns(UserWarning, match="changed in place"):
        make_trainer([DataEchoing(factor=3)]).fit(Scaling(), DataLoader(data, batch_size=BATCH))
    assert seen == [1.0, 2.0, 4.0] * 2


# -- case 2: custom batch types ---------------------------------------------------------------------
@dataclass
class CustomBatch:
    """A dataclass batch with its own ``.to()``, strings first."""

    names: list[str]
    x: torch.Tensor

    def to(self, device: Any) -> "CustomBatch":
        return CustomBatch(self.names, self.x.to(device))


def collate_custom(items: list[dict[str, Any]]) -> CustomBatch:
    return CustomBatch([item["id"] for item in items], torch.stack([item["x"] for item in items]))


class CustomModel(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[list[str], list[float]]] = []

    def training_step(self, batch, batch_idx):
        assert isinstance(batch, CustomBatch)
        self.steps.append((list(batch.names), batch.x[:, 0].tolist()))
        return super().training_step(batch.x, batch_idx)


@pytest.mark.parametrize("kind", ["batch", "example"])
def test_a_dataclass_batch_with_strings_first_is_counted_and_echoed(kind: str) -> None:
    model = CustomModel()
    echo = DataEchoing(factor=2, kind=kind, shuffle_buffer=16)
    make_trainer([echo]).fit(model, DataLoader(Records(), batch_size=BATCH, collate_fn=collate_custom))
    assert echo.fresh_samples == N and len(model.steps) == 16
    for names, xs in model.steps:  # each name stays with its row
        assert xs == [float(name.split("-")[1]) for name in names] and len(names) == BATCH


class Opaque:
    """A batch class that is not a container: its size cannot be told by looking at it."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def to(self, device: Any) -> "Opaque":
        return Opaque(self.x.to(device))


class OpaqueModel(BoringModel):
    def training_step(self, batch, batch_idx):
        return super().training_step(batch.x, batch_idx)


def _opaque_loader() -> DataLoader:
    return DataLoader(RandomDataset(FEATURES, N), batch_size=BATCH, collate_fn=lambda rows: Opaque(torch.stack(rows)))


def test_an_opaque_batch_counts_batches_with_a_warning_or_examples_with_batch_size_fn() -> None:
    echo = DataEchoing(factor=2)
    with pytest.warns(UserWarning, match="cannot tell the number of examples in a batch of type Opaque.*batch_size_fn"):
        make_trainer([echo]).fit(OpaqueModel(), _opaque_loader())
    assert (echo.steps, echo.fresh_batches, echo.fresh_samples) == (16, 8, 8)  # one "sample" per batch

    echo = DataEchoing(factor=2, batch_size_fn=lambda batch: batch.x.shape[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*cannot tell the number of examples.*")
        make_trainer([echo]).fit(OpaqueModel(), _opaque_loader())
    assert (echo.steps, echo.fresh_batches, echo.fresh_samples) == (16, 8, N)


@pytest.mark.parametrize(
    "echo, loader, model, message",
    [
        (
            lambda: DataEchoing(factor=2, kind="example"), _opaque_loader, OpaqueModel,
            r"^kind='example' is not allowed: cannot tell the number of examples in a batch of type Opaque: pass batch_size_fn",
        ),
        (
            lambda: DataEchoing(factor=2, kind="example"),
            lambda: DataLoader(Records(), batch_size=BATCH, collate_fn=lambda rows: {"x": torch.stack([r["x"] for r in rows]), "split": "train"}),
            BoringModel,
            r"^kind='example' is not allowed: cannot split batch\['split'\] \(a str\) into the batch's 8 examples",
        ),
        (
            lambda: DataEchoing(factor=2, max_fresh_samples=32), _opaque_loader, OpaqueModel,
            r"^max_fresh_samples=32 is not allowed: needs the number of examples in each batch.*batch_size_fn",
        ),
        (
            lambda: DataEchoing(factor=2, batch_size_fn=lambda batch: 0), _opaque_loader, OpaqueModel,
            r"^batch_size_fn\(batch\)=0 is not allowed",
        ),
    ],
    ids=["example-opaque", "example-per-batch-string", "sample-budget-opaque", "bad-batch-size-fn"],
)
def test_batches_that_cannot_be_echoed_as_asked_are_refused_in_one_line_before_any_step(
    echo: Callable[[], DataEchoing], loader: Callable[[], DataLoader], model: Callable[[], pl.LightningModule], message: str
) -> None:
    trainer = make_trainer([echo()])
    with pytest.raises(ConfigError, match=message) as caught:
        trainer.fit(model(), loader())
    assert "\n" not in str(caught.value) and trainer.global_step == 0


def test_a_batch_size_fn_that_is_not_callable_is_refused() -> None:
    with pytest.raises(ConfigError, match="^batch_size_fn=3 is not allowed"):
        DataEchoing(batch_size_fn=3)


# -- case 7: echoed optimizers are optimizers --------------------------------------------------------
def _prox(params) -> torch.optim.Optimizer:
    return EchoedProx(torch.optim.SGD(params, lr=0.2, momentum=0.9), gamma=0.5)


def _sgd(params) -> torch.optim.Optimizer:
    return EchoedSGD(params, lr=0.4, rule="inverse_k", echo_factor=2)  # applies 0.2


def _nesterov(params) -> torch.optim.Optimizer:
    return EchoedNesterov(params, lr=0.2)


def _stale(params) -> torch.optim.Optimizer:
    return StalenessAwareOptimizer(torch.optim.SGD(params, lr=0.2), "mishchenko", learners=2)


class Regression(pl.LightningModule):
    def __init__(self, make_optimizer: Callable) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.make_optimizer = make_optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.parameters())
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fit_regression(make_optimizer: Callable, max_steps: int, tmp_path: Path, ckpt_in=None, ckpt_out=None) -> pl.Trainer:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=generator)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    torch.manual_seed(0)
    trainer = make_trainer(
        [DataEchoing(factor=2), LearningRateMonitor(logging_interval="step")], max_epochs=None, max_steps=max_steps,
        gradient_clip_val=0.5, logger=CSVLogger(tmp_path, name="run"), log_every_n_steps=1,
    )
    model = Regression(make_optimizer)
    trainer.fit(model, DataLoader(data, batch_size=8), ckpt_path=ckpt_in)
    if ckpt_out is not None:
        trainer.save_checkpoint(ckpt_out)
    return trainer


@pytest.mark.parametrize("make_optimizer", [_prox, _sgd, _nesterov, _stale], ids=["prox", "sgd", "nesterov", "stale"])
def test_schedulers_lr_monitor_clipping_and_checkpoints_treat_echoed_optimizers_as_optimizers(
    make_optimizer: Callable, tmp_path: Path
) -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(params), torch.optim.Optimizer)
    full = _fit_regression(make_optimizer, 6, tmp_path / "full")
    optimizer = full.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5**6)  # StepLR drove the applied lr
    with open(Path(full.logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    lr_key = next(key for key in rows[0] if key.startswith("lr-"))
    logged = [float(row[lr_key]) for row in rows if row.get(lr_key)]
    assert logged == pytest.approx([0.2 * 0.5**k for k in range(6)])  # LearningRateMonitor saw every step's lr

    # Stopped in the middle of an echo group and resumed: the same weights as the uninterrupted run.
    ckpt = tmp_path / "mid.ckpt"
    _fit_regression(make_optimizer, 3, tmp_path / "first", ckpt_out=ckpt)
    resumed = _fit_regression(make_optimizer, 6, tmp_path / "resumed", ckpt_in=str(ckpt))
    for a, b in zip(full.lightning_module.parameters(), resumed.lightning_module.parameters()):
        torch.testing.assert_close(a, b)
    if isinstance(optimizer, EchoedProx):
        assert "echoed_prox" in torch.load(ckpt, weights_only=True)["optimizer_states"][0]


def test_echoed_prox_shares_the_wrapped_optimizers_groups_and_state_and_follows_added_groups() -> None:
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.SGD([a], lr=0.1, momentum=0.9)
    prox = EchoedProx(inner, gamma=0.5)
    assert prox.param_groups is inner.param_groups and prox.state is inner.state and prox.defaults is inner.defaults
    prox.add_param_group({"params": [b]})  # e.g. a fine-tuning callback unfreezing a backbone
    assert inner.param_groups[1]["gamma"] == 0.5 and [p.shape for p in prox.pivots[1]] == [b.shape]
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    prox.step()
    assert inner.state[b]["momentum_buffer"] is prox.state[b]["momentum_buffer"]


# -- case 8: code that reads the train loader or iterates it itself -------------------------------
def test_the_train_dataloader_exposes_the_wrapped_loaders_attributes() -> None:
    dataset = Records()
    read: dict[str, Any] = {}

    class ReadsItsLoader(DictModel):
        def on_train_start(self):
            loader = self.trainer.train_dataloader  # e.g. class weights from the dataset
            read.update(dataset=loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler)

    make_trainer([DataEchoing(factor=2)]).fit(ReadsItsLoader(), DataLoader(dataset, batch_size=BATCH))
    assert read["dataset"] is dataset and read["batch_size"] == BATCH and isinstance(read["sampler"], SequentialSampler)


def test_overfit_batches_with_a_shuffled_loader_still_turns_shuffling_off() -> None:
    seen: list[float] = []

    class Recording(BoringModel):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0, 0].item())
            return super().training_step(batch, batch_idx)

    dataset = RandomDataset(FEATURES, N)
    trainer = make_trainer([DataEchoing(factor=2)], overfit_batches=2, max_epochs=2)
    trainer.fit(Recording(), DataLoader(dataset, batch_size=BATCH, shuffle=True))
    assert isinstance(trainer.train_dataloader.sampler, SequentialSampler)
    first_two = [dataset[0][0].item()] * 2 + [dataset[BATCH][0].item()] * 2  # overfit_batches counts fresh batches
    assert seen == first_two * 2  # the first two batches, in the loader's order, every epoch


@pytest.mark.parametrize("per_step", [1, 2])
def test_a_training_step_on_dataloader_iter_counts_every_batch_it_takes(per_step: int) -> None:
    seen: list[dict[str, Any]] = []

    class IteratingModel(BoringModel):
        def training_step(self, dataloader_iter):
            batches = [next(dataloader_iter)[0] for _ in range(per_step)]
            for batch in batches:
                labels = batch.pop("labels")  # each echo has its own containers here too
                seen.append({"ids": list(batch["id"]), "x": (2 * batch["x"][:, 0]).tolist(), "labels": labels.tolist()})
            return super().training_step(torch.cat([b["x"] for b in batches]), 0)

    echo = DataEchoing(factor=3)
    trainer = make_trainer([echo])
    trainer.fit(IteratingModel(), DataLoader(Records(), batch_size=BATCH))
    steps = 24 // per_step
    assert trainer.global_step == steps and echo.steps == steps and len(seen) == 24
    assert (echo.fresh_batches, echo.fresh_samples) == (8, N)
    # Groups of 3 serves: with 2 per step, one step in three takes two echoes (no fresh example).
    assert echo.echoed_steps == (16 if per_step == 1 else 4)
    assert all(step == _expected_step(step["ids"]) for step in seen)
    assert len(trainer.train_dataloader.served) == 0  # nothing queued up for a transfer that never comes


def test_a_plain_batch_class_is_copied_per_serve_so_reassigning_a_field_does_not_compound() -> None:
    seen: list[float] = []

    class Rescaling(OpaqueModel):
        def training_step(self, batch, batch_idx):
            seen.append(batch.x[0, 0].item())
            batch.x = batch.x * 2  # reassigns the attribute of this serve's object only
            return super().training_step(batch, batch_idx)

    echo = DataEchoing(factor=2, batch_size_fn=lambda batch: batch.x.shape[0])
    make_trainer([echo]).fit(Rescaling(), _opaque_loader())
    assert echo.echoed_steps == 8 and len(seen) == 16
    assert seen[1::2] == seen[0::2]  # each echo starts from the fresh batch's values, not twice them


class NormalizedBoring(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.BatchNorm1d(FEATURES), torch.nn.Linear(FEATURES, 2))


def test_optimizer_steps_are_counted_where_they_happen_not_per_batch() -> None:
    # StochasticWeightAveraging adds a forward-only epoch to update the batch-norm statistics: no step.
    echo = DataEchoing(factor=2)
    swa = pl.callbacks.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)
    trainer = make_trainer([echo, swa], max_epochs=3)
    trainer.fit(NormalizedBoring(), DataLoader(RandomDataset(FEATURES, N), batch_size=BATCH))
    # 3 epochs of 16 steps; the batch-norm epoch's 16 batches take at most Lightning's one closing step
    assert 48 <= trainer.global_step <= 49 and echo.steps == trainer.global_step
    assert echo.effective_factor == pytest.approx(echo.steps / echo.fresh_batches)
    # gradient accumulation: one optimizer step per two batches
    progress = TrainingProgress()
    accumulating = make_trainer([progress], accumulate_grad_batches=2)
    accumulating.fit(BoringModel(), DataLoader(RandomDataset(FEATURES, N), batch_size=BATCH))
    assert accumulating.global_step == 4 and progress.ledger.steps == 4 and progress.fresh_batches == 8
