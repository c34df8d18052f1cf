"""CIFAR-10 from the python batches: 50,000 training and 10,000 validation (test batch) images."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from lightning_echo.data.download import download_file, extract_tar
from lightning_echo.data.formats.cifar_pickle import (
    CIFAR10_IMAGE_SHAPE,
    CIFAR10_NUM_CLASSES,
    CIFAR10_TEST_BATCH,
    CIFAR10_TRAIN_BATCHES,
    read_cifar_batch,
)
from lightning_echo.data.modules.array import ArraySplits
from lightning_echo.data.modules.file_backed import VERIFY_HINT, FileDataModule
from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import DataFileError

BATCHES_DIR = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
# md5 of cifar-10-python.tar.gz published on https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


class CIFAR10DataModule(FileDataModule):
    """CIFAR-10 from ``<root>/cifar10/cifar-10-batches-py/`` (or ``<root>/cifar-10-batches-py/``).

    Inputs are float32 in [0, 1] of shape (3, 32, 32). ``download=True`` fetches ``url`` (the
    ``.tar.gz`` archive, md5-checked when ``verify_checksums``), extracts it and deletes the archive.
    Batch files on disk are checked for shape and labels, not checksummed.
    """

    folder = "cifar10"
    required_files = tuple(f"{BATCHES_DIR}/{name}" for name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH))
    suffixes = ("",)
    default_url = CIFAR10_URL

    @property
    def spec(self) -> DataSpec:
        return DataSpec("cifar10", CIFAR10_IMAGE_SHAPE, CIFAR10_NUM_CLASSES)

    def _download(self, target: Path, missing: list[str]) -> None:
        archive = download_file(
            self.url,
            target / CIFAR10_ARCHIVE,
            md5=CIFAR10_ARCHIVE_MD5 if self.verify_checksums else None,
            mismatch_hint=VERIFY_HINT,
        )
        # Extract next to the destination, then move files into place, so that an interrupted
        # extraction never leaves truncated batch files where they would be found.
        scratch = Path(tempfile.mkdtemp(prefix=".cifar10-extract-", dir=target))
        try:
            extract_tar(archive, scratch)
            extracted = scratch / BATCHES_DIR
            if not extracted.is_dir():
                raise DataFileError(f"{archive}: the archive has no {BATCHES_DIR}/ folder")
            for name in missing:
                source = scratch / name
                if not source.is_file():
                    raise DataFileError(f"{archive}: the archive has no {name}")
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                source.replace(target / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            archive.unlink(missing_ok=True)

    def _load(self) -> ArraySplits:
        files = self.files()
        train = [read_cifar_batch(files[f"{BATCHES_DIR}/{name}"]) for name in CIFAR10_TRAIN_BATCHES]
        x_val, y_val = read_cifar_batch(files[f"{BATCHES_DIR}/{CIFAR10_TEST_BATCH}"])
        x_train = torch.cat([x for x, _ in train])
        y_train = torch.cat([y for _, y in train])
        return ArraySplits(x_train.float().div_(255.0), y_train, x_val.float().div_(255.0), y_val)
