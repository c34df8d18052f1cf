"""Asynchronous SGD with stale gradients (Dutta et al. 2018; Mishchenko et al. 2022; Koloskova et al. 2022)."""

from lightning_echo.core.step_sizes import RULES, StepSizeRule
from lightning_echo.stale.optim import StalenessAwareOptimizer

__all__ = [
    "RULES",
    "StalenessAwareOptimizer",
    "StepSizeRule",
]
