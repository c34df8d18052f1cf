"""Datasets (LightningDataModules) and data-pipeline stages."""

from lightning_echo.data.array_datamodule import ArrayDataModule, ArraySplits
from lightning_echo.data.cifar10 import CIFAR10DataModule
from lightning_echo.data.covtype import CovtypeDataModule
from lightning_echo.data.mnist import FashionMNISTDataModule, MNISTDataModule
from lightning_echo.data.spec import DataSpec
from lightning_echo.data.synthetic import LeastSquaresDataModule, SyntheticDataModule

__all__ = [
    "ArrayDataModule",
    "ArraySplits",
    "CIFAR10DataModule",
    "CovtypeDataModule",
    "DataSpec",
    "FashionMNISTDataModule",
    "LeastSquaresDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
]
