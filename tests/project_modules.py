"""LightningModules and a DataModule written the way third-party projects write them, not the
way this library's own models are: the lightning-hydra-template MNIST module (torchmetrics
objects logged as objects, ``MaxMetric`` of the best validation accuracy, ReduceLROnPlateau on
``val/loss``, ``self.trainer.model.parameters()``), its DDP-style DataModule (the per-device
batch is the batch size divided by ``trainer.world_size``), a one-cycle schedule sized by
``trainer.estimated_stepping_batches``, and a manually optimized module.

The data is MNIST-like and tiny (flattened 4 x 4 "digits" of four classes, prototypes plus
noise), so every fit takes seconds; everything is deterministic for a given seed.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification.accuracy import Accuracy

from lightning_echo.lightning_namespace import pl

FEATURES, CLASSES = 16, 4


def digits(rows: int, seed: int) -> TensorDataset:
    """``rows`` noisy copies of four fixed class prototypes, with their labels."""
    prototypes = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(rows) % CLASSES
    x = prototypes[labels] + 1.5 * torch.randn(rows, FEATURES, generator=generator)
    return TensorDataset(x, labels)


class DigitsDataModule(pl.LightningDataModule):
    """The template's MNISTDataModule, on :func:`digits`: ``setup`` divides the batch size by the
    number of devices, as DDP projects do, and refuses a batch size it cannot divide."""

    def __init__(self, batch_size: int = 8, train_rows: int = 96, val_rows: int = 32, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.batch_size_per_device = batch_size
        self.data_train: Optional[TensorDataset] = None
        self.data_val: Optional[TensorDataset] = None
        self.world_sizes_seen: list[int] = []

    def setup(self, stage: Optional[str] = None) -> None:
        if self.trainer is not None:
            self.world_sizes_seen.append(self.trainer.world_size)
            if self.hparams.batch_size % self.trainer.world_size != 0:
                raise RuntimeError(f"Batch size ({self.hparams.batch_size}) is not divisible by the number of "
                                   f"devices ({self.trainer.world_size}).")
            self.batch_size_per_device = self.hparams.batch_size // self.trainer.world_size
        if self.data_train is None:
            self.data_train = digits(self.hparams.train_rows, seed=1)
            self.data_val = digits(self.hparams.val_rows, seed=2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data_train, batch_size=self.batch_size_per_device, shuffle=True,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data_val, batch_size=self.batch_size_per_device, shuffle=False)


class DigitsLitModule(pl.LightningModule):
    """The template's MNISTLitModule: metrics are torchmetrics objects, logged as objects."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.0, scheduler: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES))
        self.criterion = torch.nn.CrossEntropyLoss()
        self.train_acc = Accuracy(task="multiclass", num_classes=CLASSES)
        self.val_acc = Accuracy(task="multiclass", num_classes=CLASSES)
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def model_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.forward(x)
        return self.criterion(logits, y), torch.argmax(logits, dim=1), y

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, preds, targets = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, preds, targets = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.val_acc_best(acc)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.trainer.model.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "frequency": 1}}


class OneCycleDigitsModule(DigitsLitModule):
    """A one-cycle schedule over the whole run, sized the way Lightning's docs show; records the
    estimate it was given and the lr of every optimizer step."""

    def __init__(self, max_lr: float = 0.1) -> None:
        super().__init__(lr=max_lr, scheduler=False)
        self.estimated_steps: Optional[float] = None
        self.lrs: list[float] = []

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        self.estimated_steps = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr,
                                                        total_steps=int(self.estimated_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


class ManualDigitsModule(DigitsLitModule):
    """Manual optimization as Lightning's docs write it."""

    def __init__(self) -> None:
        super().__init__(scheduler=False)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        loss, _, _ = self.model_step(batch)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log("train/loss", loss)
        return loss
