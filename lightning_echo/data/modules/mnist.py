"""MNIST and Fashion-MNIST from their IDX files (plain or ``.gz``).

The 60,000 training images are the train split, the 10,000 ``t10k`` images the validation split.
Checksums are sha256 of the *decompressed* files, so any faithful (re)compression is accepted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import torch

from lightning_echo.data.download import download_file
from lightning_echo.data.files import read_bytes
from lightning_echo.data.formats.idx import parse_idx
from lightning_echo.data.modules.array import ArraySplits
from lightning_echo.data.modules.file_backed import VERIFY_HINT, FileDataModule
from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import DataFileError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
VAL_IMAGES = "t10k-images-idx3-ubyte"
VAL_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, VAL_IMAGES, VAL_LABELS)

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# sha256 of the original (decompressed) LeCun et al. files.
MNIST_SHA256 = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    VAL_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    VAL_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Where Debian's dataset-fashion-mnist package installs the four .gz files.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Computed from the files of dataset-fashion-mnist 0.0~git20200523.55506a9-1 (Debian recompresses
# them, so the .gz bytes differ from the publisher's but the decompressed bytes are the same).
FASHION_MNIST_SHA256 = {
    TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    VAL_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    VAL_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10


class IdxImageDataModule(FileDataModule):
    """Shared code of MNIST-like datasets: four IDX files, 28x28 grey images, 10 classes."""

    dataset_name: ClassVar[str]
    sha256: ClassVar[dict[str, str]]
    required_files = IDX_FILES
    suffixes = ("", ".gz")

    @property
    def spec(self) -> DataSpec:
        return DataSpec(self.dataset_name, (1, *IMAGE_SIZE), NUM_CLASSES)

    def _download(self, target: Path, missing: list[str]) -> None:
        base = self.url.rstrip("/")
        for name in missing:
            download_file(
                f"{base}/{name}.gz",
                target / f"{name}.gz",
                sha256=self.sha256[name] if self.verify_checksums else None,
                sha256_of_decompressed=True,
                mismatch_hint=VERIFY_HINT,
            )

    def _read(self, name: str, path: Path) -> torch.Tensor:
        data = read_bytes(path)
        if self.verify_checksums:
            got = hashlib.sha256(data).hexdigest()
            if got != self.sha256[name]:
                raise DataFileError(
                    f"{self.dataset_name}: {path} has unexpected content: sha256 of its decompressed bytes is {got}, "
                    f"expected {self.sha256[name]} ({name}){VERIFY_HINT}"
                )
        return parse_idx(data, str(path))

    def _split(self, files: dict[str, Path], images_name: str, labels_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        images_path, labels_path = files[images_name], files[labels_name]
        images, labels = self._read(images_name, images_path), self._read(labels_name, labels_path)
        if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SIZE:
            raise DataFileError(
                f"{self.dataset_name}: {images_path}: images must be uint8 of shape [N, 28, 28], "
                f"got {images.dtype} {list(images.shape)}"
            )
        if labels.dtype != torch.uint8 or labels.dim() != 1:
            raise DataFileError(
                f"{self.dataset_name}: {labels_path}: labels must be uint8 of shape [N], "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        if labels.shape[0] != images.shape[0]:
            raise DataFileError(
                f"{self.dataset_name}: {labels_path} has {labels.shape[0]} labels "
                f"but {images_path} has {images.shape[0]} images"
            )
        if labels.numel() and int(labels.max()) >= NUM_CLASSES:
            raise DataFileError(
                f"{self.dataset_name}: {labels_path}: labels must lie in 0..{NUM_CLASSES - 1}, "
                f"found {int(labels.max())}"
            )
        return images.unsqueeze(1).float().div_(255.0), labels.long()

    def _load(self) -> ArraySplits:
        files = self.files()
        x_train, y_train = self._split(files, TRAIN_IMAGES, TRAIN_LABELS)
        x_val, y_val = self._split(files, VAL_IMAGES, VAL_LABELS)
        return ArraySplits(x_train, y_train, x_val, y_val)


class MNISTDataModule(IdxImageDataModule):
    """Handwritten digits (LeCun et al.) from ``<root>/mnist`` (or ``<root>``); inputs in [0, 1], (1, 28, 28).

    ``url`` is the base URL of the four ``.gz`` files, used with ``download=True``.
    """

    dataset_name = "mnist"
    folder = "mnist"
    sha256 = MNIST_SHA256
    default_url = MNIST_URL


class FashionMNISTDataModule(IdxImageDataModule):
    """Zalando's Fashion-MNIST from ``<root>/fashion_mnist``, ``<root>`` or Debian's dataset-fashion-mnist.

    Same format and shapes as :class:`MNISTDataModule`; ``url`` is the base URL of the ``.gz`` files.
    """

    dataset_name = "fashion_mnist"
    folder = "fashion_mnist"
    sha256 = FASHION_MNIST_SHA256
    extra_dirs = (FASHION_MNIST_DEBIAN_DIR,)
    missing_hint = " (on Debian/Ubuntu: apt-get install dataset-fashion-mnist)"
    default_url = FASHION_MNIST_URL
