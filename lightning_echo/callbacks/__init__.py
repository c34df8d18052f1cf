"""Lightning callbacks of lightning_echo."""
from lightning_echo.callbacks.progress import TrainingProgress

__all__ = ["TrainingProgress"]
