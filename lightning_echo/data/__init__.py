"""Datasets (LightningDataModules) and data-pipeline stages."""

from lightning_echo.data.modules.array import ArrayDataModule, ArraySplits
from lightning_echo.data.modules.cifar10 import CIFAR10DataModule
from lightning_echo.data.modules.covtype import CovtypeDataModule
from lightning_echo.data.modules.mnist import FashionMNISTDataModule, MNISTDataModule
from lightning_echo.data.modules.synthetic import (
    LeastSquaresDataModule,
    SyntheticDataModule,
)
from lightning_echo.data.spec import DataSpec

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
