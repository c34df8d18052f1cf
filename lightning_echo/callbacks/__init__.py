"""Lightning callbacks of lightning_echo."""
from lightning_echo.callbacks.progress import TrainingProgress
from lightning_echo.callbacks.target import TargetLoss

__all__ = ["TargetLoss", "TrainingProgress"]
