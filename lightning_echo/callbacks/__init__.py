"""The run's own Lightning callbacks: the one owner of training progress and the divergence guard
(every method builds on them; methods' own callbacks live in their packages)."""
from lightning_echo.callbacks.divergence import DivergenceGuard
from lightning_echo.callbacks.progress import TrainingProgress

__all__ = ["DivergenceGuard", "TrainingProgress"]
