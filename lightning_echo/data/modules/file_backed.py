"""Base class of datamodules read from files: lookup, the missing-file message, and download."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar, Optional

from typing_extensions import override

from lightning_echo.data.files import find_file, missing_files_error
from lightning_echo.data.modules.array import (
    ArrayDataModule,
    data_dir_candidates,
    download_dir,
)
from lightning_echo.errors import ConfigError, DataFileError
from lightning_echo.validation import writable_directory

VERIFY_HINT = "; set data.verify_checksums=false to accept a custom file"


class FileDataModule(ArrayDataModule):
    """An :class:`ArrayDataModule` whose data lives in ``required_files`` under a data directory.

    Files are looked up in ``data_dir_candidates(root, folder, extra_dirs)``, each name with any of
    ``suffixes``. With ``download=True``, :meth:`prepare_data` fetches the missing files into
    ``download_dir(root, folder)``; nothing else ever writes into a data directory.
    """

    folder: ClassVar[str]
    required_files: ClassVar[tuple[str, ...]]
    suffixes: ClassVar[tuple[str, ...]] = ("", ".gz")
    extra_dirs: ClassVar[tuple[Path, ...]] = ()
    missing_hint: ClassVar[str] = ""
    default_url: ClassVar[str] = ""  # where download=True fetches from unless `url` is given

    def __init__(
        self,
        root: Optional[str] = None,
        download: bool = False,
        verify_checksums: bool = True,
        url: Optional[str] = None,
        batch_size: int = 64,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        max_train_examples: Optional[int] = None,
        max_val_examples: Optional[int] = None,
    ) -> None:
        super().__init__(batch_size, val_batch_size, num_workers, seed, max_train_examples, max_val_examples)
        url = self.default_url if url is None else url
        for key, value in (("download", download), ("verify_checksums", verify_checksums)):
            if not isinstance(value, bool):
                raise ConfigError(key, value, "must be true or false")
        if root is not None and not isinstance(root, (str, Path)):
            raise ConfigError("root", root, "must be a directory path or null")
        if not isinstance(url, str) or not url:
            raise ConfigError("url", url, "must be a non-empty URL")
        self.root = None if root is None else str(root)
        self.download = download
        self.verify_checksums = verify_checksums
        self.url = url

    @property
    def data_dirs(self) -> list[Path]:
        """Directories searched for the files, in order."""
        return data_dir_candidates(self.root, self.folder, self.extra_dirs)

    def locate(self) -> tuple[dict[str, Path], list[str]]:
        """Paths of the files found (by required name) and the names not found; reads nothing."""
        found: dict[str, Path] = {}
        missing: list[str] = []
        for name in self.required_files:
            path = find_file(self.data_dirs, name, self.suffixes)
            if path is None:
                missing.append(name)
            else:
                found[name] = path
        return found, missing

    def _display(self, name: str) -> str:
        alternatives = "/".join(s for s in self.suffixes if s)
        return f"{name}({alternatives})" if alternatives else name

    def _missing_error(self, missing: list[str]) -> DataFileError:
        return missing_files_error(
            self.spec.name, [self._display(n) for n in missing], self.data_dirs, self.root, self.folder, self.missing_hint
        )

    def check_files(self) -> None:
        """Raise DataFileError when a file is missing and ``download`` is off, ConfigError when it is
        on but the download directory cannot be written (cheap: reads nothing)."""
        _, missing = self.locate()
        if not missing:
            return
        if self.download:
            # ConfigError when there is nowhere to download to, or it cannot be written
            writable_directory("root", self.root, download_dir(self.root, self.folder))
            return
        raise self._missing_error(missing)

    @override
    def prepare_data(self) -> None:
        """Lightning hook: with ``download=True``, fetch missing files into ``<root>/<folder>``."""
        if not self.download:
            return
        _, missing = self.locate()
        if missing:
            self._download(download_dir(self.root, self.folder), missing)

    def files(self) -> dict[str, Path]:
        """Paths of all required files, downloading them first if allowed; raises if any is missing."""
        self.prepare_data()
        found, missing = self.locate()
        if missing:
            raise self._missing_error(missing)
        return found

    @abc.abstractmethod
    def _download(self, target: Path, missing: list[str]) -> None:
        """Fetch the ``missing`` required files into ``target``, verifying checksums if enabled."""
