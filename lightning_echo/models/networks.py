"""The recipes' models: logistic regression, least squares, MLP and a small CNN."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import ConfigError, IncompatibleDataError
from lightning_echo.models.supervised import OptimizerFactory, SupervisedModule
from lightning_echo.validation import fraction, non_negative_float, positive_int


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


class MLP(SupervisedModule):
    """Fully connected network with ReLU activations on flattened inputs."""

    def __init__(
        self,
        spec: DataSpec,
        optimizer: Optional[OptimizerFactory] = None,
        hidden_sizes: Sequence[int] = (128,),
        dropout: float = 0.0,
    ) -> None:
        hidden_sizes = list(hidden_sizes)
        if not hidden_sizes:
            raise ConfigError("hidden_sizes", hidden_sizes, "must list at least one layer width")
        for width in hidden_sizes:
            positive_int("hidden_sizes", width)
        fraction("dropout", dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = spec.num_features
        for width in hidden_sizes:
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        layers.append(nn.Linear(width_in, spec.num_classes or 1))
        super().__init__(nn.Sequential(*layers), spec, optimizer)


class CNN(SupervisedModule):
    """Small convolutional classifier for ``(channels, height, width)`` images."""

    def __init__(self, spec: DataSpec, optimizer: Optional[OptimizerFactory] = None, channels: Sequence[int] = (16, 32)) -> None:
        if not spec.is_image:
            raise IncompatibleDataError(
                f"the CNN needs image inputs (channels, height, width), but {spec.describe()}; use model=logreg or model=mlp"
            )
        if spec.num_classes is None:
            raise IncompatibleDataError(f"the CNN is a classifier, but {spec.describe()}")
        channels = list(channels)
        if not channels:
            raise ConfigError("channels", channels, "must list at least one convolution width")
        layers: list[nn.Module] = []
        width_in = spec.input_shape[0]
        for width in channels:
            positive_int("channels", width)
            layers += [nn.Conv2d(width_in, width, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            width_in = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width_in, spec.num_classes)]
        super().__init__(nn.Sequential(*layers), spec, optimizer)
