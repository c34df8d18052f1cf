"""What a dataset gives a model: input shape and target kind."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DataSpec:
    """Shape of one example and its target.

    ``num_classes=None`` means a regression target (one real number per example).
    Image inputs have shape ``(channels, height, width)``; feature vectors ``(features,)``.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: Optional[int]

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return "regression" if self.num_classes is None else "classification"

    @property
    def num_features(self) -> int:
        """Number of input values per example (product of the input shape)."""
        return math.prod(self.input_shape)

    @property
    def is_image(self) -> bool:
        """True when examples are ``(channels, height, width)`` images."""
        return len(self.input_shape) == 3

    def describe(self) -> str:
        """Short human description, used in error messages."""
        target = "regression targets" if self.num_classes is None else f"{self.num_classes} classes"
        return f"{self.name}: inputs of shape {self.input_shape}, {target}"
