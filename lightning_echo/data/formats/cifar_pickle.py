"""Reader and writer for the CIFAR-10 "python version" batches (``cifar-10-batches-py/``).

Each batch file is a pickled dict with ``b"data"`` (uint8 ``[N, 3072]``: 1024 red, then 1024 green,
then 1024 blue values of a 32x32 image, row-major) and ``b"labels"`` (N integers in 0..9).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lightning_echo.errors import DataFileError, one_line

CIFAR10_IMAGE_SHAPE = (3, 32, 32)
CIFAR10_NUM_CLASSES = 10
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"

# Pickles can run arbitrary code; a batch only needs numpy's array reconstruction.
_ALLOWED_GLOBALS = {
    (module, name)
    for package in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{package}.multiarray", "_reconstruct"),
        (f"{package}.multiarray", "scalar"),
        (f"{package}.numeric", "_frombuffer"),
    )
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # _codecs: bytes in protocol-2 pickles


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one batch: images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]``."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            batch = _ArraysOnlyUnpickler(stream, encoding="bytes").load()
    except OSError as error:
        raise DataFileError(f"{path}: cannot read: {one_line(error.strerror or error)}") from error
    except Exception as error:  # unpickling fails with many exception types on corrupt input
        raise DataFileError(f"{path}: not a CIFAR-10 python batch: {one_line(error)}") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataFileError(f"{path}: not a CIFAR-10 python batch: expected a dict with b'data' and b'labels', got {keys}")
    data = np.asarray(batch[b"data"])
    pixels = int(np.prod(CIFAR10_IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise DataFileError(f"{path}: b'data' must be uint8 of shape [N, {pixels}], got {data.dtype} {tuple(data.shape)}")
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataFileError(f"{path}: b'labels' is not a list of integers: {one_line(error)}") from error
    if labels.shape[0] != data.shape[0]:
        raise DataFileError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= CIFAR10_NUM_CLASSES):
        raise DataFileError(
            f"{path}: labels must lie in 0..{CIFAR10_NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}"
        )
    images = torch.from_numpy(data.reshape(-1, *CIFAR10_IMAGE_SHAPE).copy())
    return images, torch.from_numpy(labels)


def write_cifar_batch(path: Path, images: torch.Tensor | np.ndarray, labels: Sequence[int] | torch.Tensor) -> Path:
    """Write uint8 images (``[N, 3, 32, 32]`` or ``[N, 3072]``) and labels as a CIFAR-10 batch file."""
    path = Path(path)
    data = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    label_list = [int(v) for v in np.asarray(labels).reshape(-1)]
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": label_list,
        b"data": data,
        b"filenames": [f"image_{i}.png".encode() for i in range(len(label_list))],
    }
    with open(path, "wb") as stream:
        pickle.dump(batch, stream, protocol=4)
    return path
