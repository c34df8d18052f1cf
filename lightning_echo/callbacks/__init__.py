"""Lightning callbacks of lightning_echo."""
from lightning_echo.callbacks.divergence import DivergenceGuard
from lightning_echo.callbacks.progress import TrainingProgress
from lightning_echo.callbacks.target import TargetLoss

__all__ = ["DivergenceGuard", "TargetLoss", "TrainingProgress"]
