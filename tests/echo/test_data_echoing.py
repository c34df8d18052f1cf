"""DataEchoing on real Trainer.fit runs, with LightningModules that know nothing of this library."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel, RandomDataset
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_echo.callbacks import TrainingProgress
from lightning_echo.data.pipeline import throttled_loader
from lightning_echo.echo import DataEchoing
from lightning_echo.errors import ConfigError


class CountingModel(BoringModel):
    """BoringModel that counts host-to-device transfers and the batches it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.train_transfers = 0
        self.val_transfers = 0
        self.trained_on: list[torch.Tensor] = []

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if self.trainer.training:
            self.train_transfers += 1
        else:
            self.val_transfers += 1
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch, batch_idx):
        self.trained_on.append(batch.detach().clone())
        return super().training_step(batch, batch_idx)


def make_trainer(callbacks, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **defaults)


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lightning_echo-") and t.is_alive()]


def wait_no_pipeline_threads(deadline_s: float = 5.0) -> list[threading.Thread]:
    end = time.monotonic() + deadline_s
    while pipeline_threads() and time.monotonic() < end:
        time.sleep(0.02)
    return pipeline_threads()


def test_boring_model_takes_factor_steps_per_fresh_batch_with_one_copy_each() -> None:
    model = CountingModel()
    echo = DataEchoing(factor=4)
    trainer = make_trainer([echo], max_epochs=1, limit_val_batches=0)
    trainer.fit(model, DataLoader(RandomDataset(32, 64), batch_size=8))
    assert trainer.global_step == 4 * 8
    assert echo.fresh_batches == 8 and echo.echoed_steps == 24 and echo.effective_factor == 4
    assert model.train_transfers == 8 == echo.device_copies
    # Each fresh batch is trained on 4 times in a row.
    for group in range(8):
        first = model.trained_on[4 * group]
        assert all(torch.equal(first, model.trained_on[4 * group + k]) for k in range(1, 4))
    assert not torch.equal(model.trained_on[0], model.trained_on[4])


def test_validation_loader_is_untouched() -> None:
    model = CountingModel()
    trainer = make_trainer([DataEchoing(factor=3)], max_epochs=1, limit_val_batches=5)
    trainer.fit(model, datamodule=_boring_datamodule())
    assert model.val_transfers == 5  # every validation batch once: no echo, no cached copy
    assert trainer.global_step == 3 * 8


def _boring_datamodule() -> pl.LightningDataModule:
    class DM(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(RandomDataset(32, 64), batch_size=8)

        def val_dataloader(self):
            return DataLoader(RandomDataset(32, 40), batch_size=8)

    return DM()


def test_non_integer_factor_gives_the_expected_mean() -> None:
    echo = DataEchoing(factor=2.5, seed=3)
    trainer = make_trainer([echo], max_epochs=1, limit_val_batches=0)
    trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 1600), batch_size=4))
    assert echo.fresh_batches == 400
    assert abs(echo.effective_factor - 2.5) < 0.1
    assert trainer.global_step == echo.steps


def test_max_steps_counts_echoed_steps() -> None:
    echo = DataEchoing(factor=4)
    trainer = make_trainer([echo], max_steps=10, limit_val_batches=0)
    trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 640), batch_size=8))
    assert trainer.global_step == 10
    assert echo.fresh_batches == 3  # 4 + 4 + 2 steps


@pytest.mark.parametrize("budget", [{"max_fresh_batches": 5}, {"max_fresh_samples": 40}])
def test_fresh_data_budget_stops_training(budget) -> None:
    echo = DataEchoing(factor=2, **budget)
    trainer = make_trainer([echo], max_epochs=100, limit_val_batches=0)
    trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 64), batch_size=8))
    assert echo.fresh_batches == 5 and echo.fresh_samples == 40
    assert trainer.global_step == 10


def test_adaptive_factor_echoes_up_to_the_cap_when_the_loader_is_very_slow() -> None:
    seen: list[torch.Tensor] = []

    class Recording(_UnpackingModel):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0].detach().clone())
            return super().training_step(batch, batch_idx)

    loader = throttled_loader(TensorDataset(torch.randn(24, 32)), batch_size=4, seconds_per_batch=0.5)
    echo = DataEchoing(factor="auto", max_factor=3)
    trainer = make_trainer([echo], max_epochs=1, limit_val_batches=0)
    trainer.fit(Recording(), loader)
    assert echo.fresh_batches == 6
    serves = _consecutive_group_sizes(seen)
    # The next batch is never ready sooner than 3 tiny steps: every batch is served the 3 times
    # allowed, except possibly the last, whose echoes stop once the end of the data is known.
    assert serves[:5] == [3, 3, 3, 3, 3] and 1 <= serves[5] <= 3
    assert not wait_no_pipeline_threads()


def _consecutive_group_sizes(batches: list[torch.Tensor]) -> list[int]:
    sizes: list[int] = []
    for i, batch in enumerate(batches):
        if i > 0 and torch.equal(batch, batches[i - 1]):
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def test_adaptive_factor_never_echoes_when_data_is_always_ready() -> None:
    # An in-memory source whose next batch is produced long before the (slow) step needs it.
    class SlowStep(_UnpackingModel):
        def on_train_start(self):
            time.sleep(0.3)  # let the producer fill its queue before the first echo decision

        def training_step(self, batch, batch_idx):
            time.sleep(0.05)
            return super().training_step(batch, batch_idx)

    loader = throttled_loader(TensorDataset(torch.randn(40, 32)), batch_size=4, seconds_per_batch=0.0)
    echo = DataEchoing(factor="auto", max_factor=4)
    trainer = make_trainer([echo], max_epochs=1, limit_val_batches=0)
    trainer.fit(SlowStep(), loader)
    assert echo.fresh_batches == 10
    assert echo.echoed_steps == 0


class _UnpackingModel(BoringModel):
    """BoringModel for (x,) tuple batches."""

    def training_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return super().training_step(x, batch_idx)


def test_progress_counts_only_fresh_samples(tmp_path: Path) -> None:
    progress = TrainingProgress()
    echo = DataEchoing(factor=3)
    trainer = make_trainer([echo, progress], max_epochs=1, limit_val_batches=0, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 64), batch_size=8))
    assert progress.fresh_samples == 64 and progress.fresh_batches == 8
    header = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("echo/fresh_batches", "echo/fresh_samples", "echo/echoed_steps", "echo/effective_factor", "echo/data_wait_s"):
        assert column in header
    assert "fresh" in trainer.progress_bar_metrics and "echoed" in trainer.progress_bar_metrics


def _augment_add_noise(batch, generator):
    (x,) = batch
    return (x + torch.randn(x.shape, generator=generator),)


@pytest.mark.parametrize("placement", ["after_augmentation", "before_augmentation"])
def test_echo_placement_relative_to_augmentation(placement: str) -> None:
    seen: list[torch.Tensor] = []

    class Recording(_UnpackingModel):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0].detach().clone())
            return super().training_step(batch, batch_idx)

    loader = throttled_loader(TensorDataset(torch.zeros(16, 32)), batch_size=4, augment=_augment_add_noise)
    echo = DataEchoing(factor=2, placement=placement)
    trainer = make_trainer([echo], max_epochs=1, limit_val_batches=0)
    trainer.fit(Recording(), loader)
    assert len(seen) == 8
    echoes_identical = all(torch.equal(seen[2 * i], seen[2 * i + 1]) for i in range(4))
    if placement == "after_augmentation":
        assert echoes_identical and echo.device_copies == 4
    else:
        assert not any(torch.equal(seen[2 * i], seen[2 * i + 1]) for i in range(4)) and echo.device_copies == 8


def test_example_echoing_with_trainer() -> None:
    echo = DataEchoing(factor=2, kind="example", shuffle_buffer=16)
    trainer = make_trainer([echo], max_epochs=1, limit_val_batches=0)
    trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 64), batch_size=8))
    assert echo.fresh_samples == 64
    assert trainer.global_step == 16  # 64 examples x 2 / batches of 8


def test_exception_in_pipeline_reaches_caller_and_no_thread_survives() -> None:
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, index):
            if index == 13:
                raise ValueError("corrupt record 13")
            return torch.randn(32)

    loader = throttled_loader(Broken(), batch_size=4, shuffle=False, seconds_per_batch=0.001)
    trainer = make_trainer([DataEchoing(factor="auto")], max_epochs=1, limit_val_batches=0)
    started = time.monotonic()
    with pytest.raises(ValueError, match="corrupt record 13"):
        trainer.fit(BoringModel(), loader)
    assert time.monotonic() - started < 60  # reached the caller instead of hanging
    assert not wait_no_pipeline_threads()


def test_no_thread_outlives_fit() -> None:
    loader = throttled_loader(TensorDataset(torch.randn(64, 32)), batch_size=8, slowdown=2.0)
    trainer = make_trainer([DataEchoing(factor="auto")], max_steps=12, limit_val_batches=0)
    trainer.fit(_UnpackingModel(), loader)
    assert not wait_no_pipeline_threads()


def _fit_logistic(tmp_path: Path, max_steps: int, ckpt_in=None, ckpt_out=None, served=None) -> torch.nn.Module:
    pl.seed_everything(0)
    x = torch.randn(96, 5, generator=torch.Generator().manual_seed(1))
    y = (x.sum(dim=1) > 0).long()
    loader = throttled_loader(TensorDataset(x, y), batch_size=8, seed=5)

    class Logistic(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(5, 2)

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            if served is not None:
                served.append(tuple(xb[:, 0].tolist()))
            return torch.nn.functional.cross_entropy(self.layer(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9)

    model = Logistic()
    trainer = make_trainer([DataEchoing(factor=2.5, seed=7)], max_steps=max_steps, limit_val_batches=0)
    trainer.fit(model, loader, ckpt_path=ckpt_in)
    if ckpt_out is not None:
        trainer.save_checkpoint(ckpt_out)
    return model


def test_resume_in_the_middle_of_an_echo_group_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    served_full: list = []
    full = _fit_logistic(tmp_path, 40, served=served_full)
    served_split: list = []
    ckpt = tmp_path / "mid.ckpt"
    _fit_logistic(tmp_path, 17, ckpt_out=ckpt, served=served_split)
    resumed = _fit_logistic(tmp_path, 40, ckpt_in=str(ckpt), served=served_split)
    assert served_split == served_full  # every fresh batch served the same number of times, in order
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"factor": 0.5}, "factor"),
        ({"factor": "sometimes"}, "factor"),
        ({"factor": "auto", "max_factor": 0}, "max_factor"),
        ({"kind": "bag"}, "kind"),
        ({"kind": "example", "factor": "auto"}, "factor"),
        ({"placement": "middle"}, "placement"),
        ({"max_fresh_samples": 0}, "max_fresh_samples"),
    ],
)
def test_bad_settings_are_rejected_with_the_setting_named(kwargs, key) -> None:
    with pytest.raises(ConfigError, match=f"^{key}="):
        DataEchoing(**kwargs)


def test_placement_before_augmentation_needs_a_lightning_echo_pipeline() -> None:
    trainer = make_trainer([DataEchoing(factor=2, placement="before_augmentation")], max_steps=2)
    with pytest.raises(ConfigError, match="^placement='before_augmentation'"):
        trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 64), batch_size=8))


def test_an_echo_loader_as_validation_loader_is_refused() -> None:
    from torchdata.nodes import IterableWrapper

    from lightning_echo.echo import BatchEcho, EchoLoader

    node = BatchEcho(IterableWrapper(DataLoader(RandomDataset(32, 16), batch_size=8)), factor=2)
    trainer = make_trainer([DataEchoing(factor=2)], max_steps=2)
    with pytest.raises(ConfigError, match="^val_dataloaders=.*train loader only"):
        trainer.fit(BoringModel(), DataLoader(RandomDataset(32, 64), batch_size=8), val_dataloaders=EchoLoader(node, node))


def test_manual_optimization_trains_on_every_echo() -> None:
    class Manual(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.calls = 0

        def training_step(self, batch, batch_idx):
            self.calls += 1
            optimizer = self.optimizers()
            optimizer.zero_grad()
            loss = self.step(batch)
            self.manual_backward(loss)
            optimizer.step()
            return loss

    model = Manual()
    echo = DataEchoing(factor=3)
    trainer = make_trainer([echo], max_epochs=1, limit_val_batches=0)
    trainer.fit(model, DataLoader(RandomDataset(32, 64), batch_size=8))
    assert model.calls == 24 and trainer.global_step == 24 and echo.fresh_batches == 8
