"""lightning_echo: data echoing and straggler-tolerant SGD for PyTorch Lightning.

The main entry points::

    from lightning_echo import DataEchoing, TrainingProgress, throttle, throttled_loader
    from lightning_echo import SimulatedLearnersStrategy, ParameterServerStrategy, StalenessAwareOptimizer

It builds on ``pytorch_lightning`` or on ``lightning.pytorch``, whichever the process imported
first (see :mod:`lightning_echo.lightning_namespace`).
"""

from lightning_echo import lightning_namespace  # noqa: F401  (first: it picks the Lightning package)
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
from lightning_echo.stragglers import (
    ParameterServerStrategy,
    SimulatedLearnersStrategy,
    StalenessAwareOptimizer,
    StragglerSettings,
)

__version__ = "0.1.0"

__all__ = [
    "DataEchoing",
    "DataPipeline",
    "EchoIterateAveraging",
    "EchoedNesterov",
    "EchoedProx",
    "EchoedSGD",
    "ParameterServerStrategy",
    "SimulatedLearnersStrategy",
    "StalenessAwareOptimizer",
    "StragglerSettings",
    "TrainingProgress",
    "__version__",
    "estimate_smoothness",
    "throttle",
    "throttled_loader",
]
