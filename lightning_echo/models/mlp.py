"""A fully connected network (multi-layer perceptron)."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import ConfigError
from lightning_echo.models.supervised import OptimizerFactory, SupervisedModule
from lightning_echo.validation import fraction, positive_int


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
