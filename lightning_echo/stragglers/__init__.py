"""Straggler-tolerant SGD (Dutta et al. 2018; Mishchenko et al. 2022; Tyurin and Richtarik 2023;
Maranjyan et al. 2025): one family of variants and step-size rules, two backends.

- :class:`StragglerSettings` (``settings.py``): the variant, K, delay model, step-size rule and
  seed, validated once, whatever runs them;
- :class:`StalenessAwareOptimizer` (``optim.py``): the step-size rules as an optimizer wrapper;
- :class:`SimulatedLearnersStrategy` (``simulated/``): P learners simulated on one device and a
  virtual clock;
- :class:`ParameterServerStrategy` (``processes/``): a parameter server and P learner processes on
  torch.distributed, on the wall clock;
- ``base.py``: what both strategies share. Method card: README.md here; design of the parameter
  server: ``processes/README.md``.
"""

from lightning_echo.core.step_sizes import RULES, StepSizeRule
from lightning_echo.stragglers.optim import StalenessAwareOptimizer
from lightning_echo.stragglers.processes.strategy import ParameterServerStrategy
from lightning_echo.stragglers.settings import BACKENDS, StragglerSettings
from lightning_echo.stragglers.simulated.strategy import SimulatedLearnersStrategy

__all__ = [
    "BACKENDS",
    "RULES",
    "ParameterServerStrategy",
    "SimulatedLearnersStrategy",
    "StalenessAwareOptimizer",
    "StepSizeRule",
    "StragglerSettings",
]
