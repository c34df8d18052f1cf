"""Data echoing (Choi et al. 2019; Agarwal et al. 2020): echo nodes, the echo loader, the
``DataEchoing`` callback. Method card: README.md here.

The echoed optimizers live in :mod:`lightning_echo.echoed_optim`; they are re-exported here so
that ``from lightning_echo.echo import EchoedSGD`` keeps working.
"""

from lightning_echo.echo.callback import DataEchoing
from lightning_echo.echo.labels import echo_label
from lightning_echo.echo.loader import EchoLoader
from lightning_echo.echo.node import BatchEcho, EchoInfo, ExampleEcho
from lightning_echo.echoed_optim import (
    EchoedNesterov,
    EchoedProx,
    EchoedSGD,
    EchoIterateAveraging,
    EvaluateAtIterates,
)

__all__ = [
    "BatchEcho",
    "DataEchoing",
    "EchoInfo",
    "EchoIterateAveraging",
    "EchoLoader",
    "EchoedNesterov",
    "EchoedProx",
    "EchoedSGD",
    "EvaluateAtIterates",
    "ExampleEcho",
    "echo_label",
]
