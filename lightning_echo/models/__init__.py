"""Small LightningModules used by the recipes (the library works on any LightningModule)."""

from lightning_echo.models.networks import CNN, MLP, LinearRegression, LogisticRegression
from lightning_echo.models.supervised import SupervisedModule

__all__ = ["CNN", "MLP", "LinearRegression", "LogisticRegression", "SupervisedModule"]
