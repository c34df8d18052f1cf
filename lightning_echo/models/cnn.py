"""A small convolutional image classifier."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import ConfigError, IncompatibleDataError
from lightning_echo.models.supervised import OptimizerFactory, SupervisedModule
from lightning_echo.validation import positive_int


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
