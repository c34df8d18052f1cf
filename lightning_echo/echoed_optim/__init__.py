"""Echoed optimizers (Agarwal et al. 2020): echoed SGD, proximal and Nesterov, and the callbacks
that give their outputs (the average iterate, the final iterate), and ``TargetLoss``, which measures
steps and fresh samples to a target training loss as the paper's experiments do. Method card:
README.md here."""

from lightning_echo.echoed_optim.averaging import (
    EchoIterateAveraging,
    EvaluateAtIterates,
    parameters_at_iterates,
)
from lightning_echo.echoed_optim.optimizers import (
    STEP_RULES,
    EchoedNesterov,
    EchoedProx,
    EchoedSGD,
)
from lightning_echo.echoed_optim.target import TargetLoss

__all__ = [
    "STEP_RULES",
    "EchoIterateAveraging",
    "EchoedNesterov",
    "EchoedProx",
    "EchoedSGD",
    "EvaluateAtIterates",
    "TargetLoss",
    "parameters_at_iterates",
]
