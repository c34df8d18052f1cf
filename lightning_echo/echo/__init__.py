"""Data echoing (Choi et al. 2019; Agarwal et al. 2020): nodes, loader and the Lightning callback."""

from lightning_echo.echo.callback import DataEchoing
from lightning_echo.echo.loader import EchoLoader
from lightning_echo.echo.node import BatchEcho, EchoInfo, ExampleEcho

__all__ = ["BatchEcho", "DataEchoing", "EchoInfo", "EchoLoader", "ExampleEcho"]
