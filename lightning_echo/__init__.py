"""lightning_echo: data echoing and straggler-tolerant SGD for PyTorch Lightning.

The main entry points::

    from lightning_echo import DataEchoing, TrainingProgress, throttle, throttled_loader
"""

from lightning_echo.callbacks.progress import TrainingProgress
from lightning_echo.data.pipeline import DataPipeline, throttle, throttled_loader
from lightning_echo.echo.callback import DataEchoing

__version__ = "0.1.0"

__all__ = ["DataEchoing", "DataPipeline", "TrainingProgress", "__version__", "throttle", "throttled_loader"]
