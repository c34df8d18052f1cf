"""Base LightningDataModule for datasets that fit in memory as tensors."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_echo.data.background import ThrottleSpec
from lightning_echo.data.lifetime import ThreadedLoaders
from lightning_echo.data.pipeline import throttled_loader
from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import ConfigError
from lightning_echo.lightning_namespace import pl
from lightning_echo.validation import non_negative_int, positive_int

DATA_ENV_VAR = "LIGHTNING_ECHO_DATA"


@dataclass
class ArraySplits:
    """Train and validation tensors; ``x`` is float, ``y`` is int64 labels or float targets."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def data_dir_candidates(root: Optional[str], folder: str, extra: Sequence[Path] = ()) -> list[Path]:
    """Directories searched for a dataset's files, in order.

    ``root`` (or the ``LIGHTNING_ECHO_DATA`` environment variable when ``root`` is None) is a
    directory with one folder per dataset: ``<root>/<folder>`` is searched first, then ``<root>``
    itself, then any ``extra`` system locations (e.g. where a Debian package installs files).
    """
    base = root if root is not None else os.environ.get(DATA_ENV_VAR)
    candidates: list[Path] = []
    if base:
        base_path = Path(base).expanduser()
        candidates += [base_path / folder, base_path]
    candidates += [Path(p) for p in extra]
    return candidates


def download_dir(root: Optional[str], folder: str) -> Path:
    """Directory a download writes into: ``<root>/<folder>`` (root or ``LIGHTNING_ECHO_DATA``)."""
    base = root if root is not None else os.environ.get(DATA_ENV_VAR)
    if not base:
        raise ConfigError("root", root, f"a data directory is needed to download into; set data.root or {DATA_ENV_VAR}")
    return Path(base).expanduser() / folder


class ArrayDataModule(pl.LightningDataModule, abc.ABC):
    """In-memory dataset with a train and a validation split.

    Subclasses implement :meth:`_load` (return :class:`ArraySplits`) and :attr:`spec`;
    file-backed datasets also implement :meth:`check_files`, which must be cheap (no loading)
    and raise :class:`~lightning_echo.errors.DataFileError` with a one-line message.
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        max_train_examples: Optional[int] = None,
        max_val_examples: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.batch_size = positive_int("batch_size", batch_size)
        self.val_batch_size = positive_int("val_batch_size", val_batch_size) if val_batch_size is not None else None
        self.num_workers = non_negative_int("num_workers", num_workers)
        self.seed = non_negative_int("seed", seed)
        self.max_train_examples = (
            positive_int("max_train_examples", max_train_examples) if max_train_examples is not None else None
        )
        self.max_val_examples = (
            positive_int("max_val_examples", max_val_examples) if max_val_examples is not None else None
        )
        self._splits: Optional[ArraySplits] = None
        # Set to simulate a slow loader: train_dataloader() then returns a throttled DataPipeline.
        self.throttle: Optional[ThrottleSpec] = None
        # Set to get the same stateful pipeline unthrottled (simulated learners simulate their loaders' time).
        self.unthrottled_pipeline = False
        self._threaded_loaders = ThreadedLoaders()

    @property
    @abc.abstractmethod
    def spec(self) -> DataSpec:
        """Shape of the examples, known without loading the data."""

    @abc.abstractmethod
    def _load(self) -> ArraySplits:
        """Read or generate the full train and validation tensors."""

    def check_files(self) -> None:
        """Raise DataFileError if a needed file is missing; generated datasets need none."""

    # -- Lightning hooks ---------------------------------------------------------------
    @override
    def setup(self, stage: Optional[str] = None) -> None:
        if self._splits is None:
            splits = self._load()
            if self.max_train_examples is not None:
                splits.x_train = splits.x_train[: self.max_train_examples]
                splits.y_train = splits.y_train[: self.max_train_examples]
            if self.max_val_examples is not None:
                splits.x_val = splits.x_val[: self.max_val_examples]
                splits.y_val = splits.y_val[: self.max_val_examples]
            self._splits = splits

    @property
    def splits(self) -> ArraySplits:
        """The loaded tensors (loads them on first access)."""
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits

    @property
    def train_dataset(self) -> TensorDataset:
        """Map-style training dataset of ``(x, y)`` pairs."""
        return TensorDataset(self.splits.x_train, self.splits.y_train)

    @property
    def val_dataset(self) -> TensorDataset:
        """Map-style validation dataset of ``(x, y)`` pairs."""
        return TensorDataset(self.splits.x_val, self.splits.y_val)

    @override
    def train_dataloader(self) -> Any:
        if self.throttle is not None:
            spec = self.throttle
            return self._threaded_loaders.add(throttled_loader(
                self.train_dataset,
                self.batch_size,
                seed=self.seed,
                seconds_per_batch=spec.seconds_per_batch,
                slowdown=spec.slowdown,
                jitter=spec.jitter,
                jitter_param=spec.jitter_param,
                queue_size=spec.queue_size,
            ))
        if self.unthrottled_pipeline:
            return self._threaded_loaders.add(throttled_loader(self.train_dataset, self.batch_size, seed=self.seed))
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def on_exception(self, exception: BaseException) -> None:
        # Stop the throttled loader's producer thread also when fit fails during validation.
        self._threaded_loaders.close_all()

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_dataset,
            batch_size=self.val_batch_size or max(self.batch_size, 256),
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
