"""Straggler-tolerant SGD (Dutta et al. 2018; Mishchenko et al. 2022; Tyurin and Richtarik 2023;
Maranjyan et al. 2025): simulated learners as a Lightning strategy, and staleness-aware step
sizes as an optimizer wrapper. Method card: README.md here."""

from lightning_echo.core.step_sizes import RULES, StepSizeRule
from lightning_echo.stale.labels import stale_label
from lightning_echo.stale.optim import StalenessAwareOptimizer
from lightning_echo.stale.strategy import STRATEGY_NAME, SimulatedLearnersStrategy

__all__ = [
    "RULES",
    "STRATEGY_NAME",
    "SimulatedLearnersStrategy",
    "StalenessAwareOptimizer",
    "StepSizeRule",
    "stale_label",
]
