"""lightning_echo: data echoing and straggler-tolerant SGD for PyTorch Lightning.

The main entry points::

    from lightning_echo import DataEchoing, TrainingProgress, throttle, throttled_loader
"""

from lightning_echo.callbacks.progress import TrainingProgress
from lightning_echo.core.smoothness import estimate_smoothness
from lightning_echo.data.pipeline import DataPipeline, throttle, throttled_loader
from lightning_echo.echo.callback import DataEchoing
from lightning_echo.echoed_optim import (
    EchoedNesterov,
    EchoedProx,
    EchoedSGD,
    EchoIterateAveraging,
)

__version__ = "0.1.0"

__all__ = [
    "DataEchoing",
    "DataPipeline",
    "EchoIterateAveraging",
    "EchoedNesterov",
    "EchoedProx",
    "EchoedSGD",
    "TrainingProgress",
    "__version__",
    "estimate_smoothness",
    "throttle",
    "throttled_loader",
]
