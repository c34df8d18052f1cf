"""A plain supervised LightningModule: network + loss + optimizer factory.

It logs ``train/loss`` every step and ``val/loss`` (and ``val/acc`` for classification).
It knows nothing about echoing or asynchrony: the library's callbacks and strategies work on it
exactly as on any user's LightningModule.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from lightning_echo.data.spec import DataSpec
from lightning_echo.lightning_namespace import pl
from lightning_echo.metric_names import Loss

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def default_optimizer() -> OptimizerFactory:
    """Plain SGD with learning rate 0.1."""
    return partial(torch.optim.SGD, lr=0.1)


class SupervisedModule(pl.LightningModule):
    """Trains ``network`` on ``(x, y)`` batches with cross-entropy or half squared error."""

    def __init__(self, network: nn.Module, spec: DataSpec, optimizer: Optional[OptimizerFactory] = None) -> None:
        super().__init__()
        self.network = network
        self.spec = spec
        self.optimizer_factory = optimizer or default_optimizer()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (classification) or mean of ``(output - y)^2 / 2`` (regression)."""
        if self.spec.num_classes is None:
            return 0.5 * F.mse_loss(output.squeeze(-1), y.to(output.dtype))
        return F.cross_entropy(output, y)

    def penalty(self) -> torch.Tensor:
        """Regulariser added to the training objective (none here; see ``LogisticRegression.l2``)."""
        return torch.zeros((), device=self.device)

    def objective(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What training minimises: ``loss + penalty``."""
        return self.loss(output, y) + self.penalty()

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.objective(self(x), y)
        self.log(Loss.TRAIN, loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        output = self(x)
        self.log(Loss.VAL, self.loss(output, y), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if self.spec.num_classes is not None:
            accuracy = (output.argmax(dim=-1) == y).float().mean()
            self.log(Loss.VAL_ACC, accuracy, on_step=False, on_epoch=True, sync_dist=True)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test/loss", self.loss(self(x), y), on_step=False, on_epoch=True, sync_dist=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
