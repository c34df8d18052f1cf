"""lightning_echo: data echoing and straggler-tolerant SGD for PyTorch Lightning."""
__version__ = "0.1.0"
