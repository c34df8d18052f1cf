"""Linear models (convex): multinomial logistic regression and least-squares regression."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import IncompatibleDataError
from lightning_echo.models.supervised import OptimizerFactory, SupervisedModule
from lightning_echo.validation import non_negative_float


class LogisticRegression(SupervisedModule):
    """Multinomial logistic regression (convex): one linear layer on flattened inputs.

    ``l2 > 0`` adds ``l2/2 * ||weight||^2`` (not the bias) to the training objective, which makes
    it strongly convex; ``train/loss`` then logs the regularised objective, ``val/loss`` the
    cross-entropy alone.
    """

    def __init__(self, spec: DataSpec, optimizer: Optional[OptimizerFactory] = None, bias: bool = True,
                 l2: float = 0.0) -> None:
        if spec.num_classes is None:
            raise IncompatibleDataError(
                f"logistic regression needs class labels, but {spec.describe()}; use model=linear or model=mlp"
            )
        l2 = non_negative_float("l2", l2)
        network = nn.Sequential(nn.Flatten(), nn.Linear(spec.num_features, spec.num_classes, bias=bias))
        super().__init__(network, spec, optimizer)
        self.l2 = l2

    def penalty(self) -> torch.Tensor:
        if self.l2 == 0:
            return super().penalty()
        weight = self.network[1].weight
        return 0.5 * self.l2 * weight.pow(2).sum()


class LinearRegression(SupervisedModule):
    """Least squares: one linear output on flattened inputs, loss ``mean((x.w - y)^2) / 2``."""

    def __init__(self, spec: DataSpec, optimizer: Optional[OptimizerFactory] = None, bias: bool = False) -> None:
        if spec.num_classes is not None:
            raise IncompatibleDataError(
                f"least-squares regression needs real-valued targets, but {spec.describe()}; use model=logreg"
            )
        network = nn.Sequential(nn.Flatten(), nn.Linear(spec.num_features, 1, bias=bias))
        super().__init__(network, spec, optimizer)
