"""Small LightningModules used by the recipes (the library works on any LightningModule)."""

from lightning_echo.models.cnn import CNN
from lightning_echo.models.linear import LinearRegression, LogisticRegression
from lightning_echo.models.mlp import MLP
from lightning_echo.models.supervised import SupervisedModule

__all__ = ["CNN", "MLP", "LinearRegression", "LogisticRegression", "SupervisedModule"]
