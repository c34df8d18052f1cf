"""Data echoing (Choi et al. 2019; Agarwal et al. 2020): nodes, loader, callbacks, echoed optimizers."""

from lightning_echo.echo.averaging import EchoIterateAveraging, EvaluateAtIterates
from lightning_echo.echo.callback import DataEchoing
from lightning_echo.echo.loader import EchoLoader
from lightning_echo.echo.node import BatchEcho, EchoInfo, ExampleEcho
from lightning_echo.echo.optim import EchoedNesterov, EchoedProx, EchoedSGD

__all__ = [
    "BatchEcho",
    "DataEchoing",
    "EchoInfo",
    "EchoIterateAveraging",
    "EvaluateAtIterates",
    "EchoLoader",
    "EchoedNesterov",
    "EchoedProx",
    "EchoedSGD",
    "ExampleEcho",
]
