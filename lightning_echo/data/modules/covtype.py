"""Forest CoverType, binary version from the LIBSVM datasets page (581,012 examples, 54 features).

There is no official test split: a fixed fraction of the examples, chosen with ``seed``, is
held out for validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from lightning_echo.data.download import download_file
from lightning_echo.data.formats.libsvm import read_libsvm
from lightning_echo.data.modules.array import ArraySplits
from lightning_echo.data.modules.file_backed import VERIFY_HINT, FileDataModule
from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import DataFileError
from lightning_echo.validation import fraction

COVTYPE_FILE = "covtype.libsvm.binary.scale"
COVTYPE_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/covtype.libsvm.binary.scale.bz2"
# md5 of covtype.libsvm.binary.scale.bz2 as downloaded. LIBSVM publishes no checksums; this value
# comes from a third-party loader (github.com/epfml/pax, pax/tasks/datasets/libsvm.py) and could not
# be checked against the file offline. It is only used to verify a download.
COVTYPE_BZ2_MD5 = "d95f45e15c284005c2c7a4c82e4be102"
NUM_FEATURES = 54

# Label conventions of binary LIBSVM files; the smaller label becomes class 0.
_BINARY_LABEL_SETS = ({1.0, 2.0}, {-1.0, 1.0}, {0.0, 1.0})


def binary_labels(y: torch.Tensor, source: str) -> torch.Tensor:
    """Map raw labels {1, 2}, {-1, +1} or {0, 1} to int64 {0, 1}; anything else raises DataFileError."""
    found = {float(v) for v in torch.unique(y).tolist()}
    for labels in _BINARY_LABEL_SETS:
        if found <= labels:
            return (y == max(labels)).long()
    shown = ", ".join(f"{v:g}" for v in sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
    raise DataFileError(f"{source}: expected two classes labelled {{1, 2}}, {{-1, +1}} or {{0, 1}}, found labels {shown}")


class CovtypeDataModule(FileDataModule):
    """CoverType (binary) from ``covtype.libsvm.binary.scale`` (plain, ``.bz2`` or ``.gz``) in ``<root>/covtype``.

    ``val_fraction`` of the examples (a seeded permutation) form the validation split.
    ``download=True`` fetches ``url`` (the LIBSVM ``.bz2`` file). Checksums: LIBSVM publishes none.
    With ``verify_checksums=True`` a downloaded ``.bz2`` is checked against an md5 taken from a
    third-party loader and not confirmed offline (see ``COVTYPE_BZ2_MD5``); a mismatch says to set
    ``data.verify_checksums=false``. Files already on disk are not checksummed (they may be stored
    decompressed): they are only parsed and checked for 54 features and two classes.
    """

    folder = "covtype"
    required_files = (COVTYPE_FILE,)
    suffixes = ("", ".bz2", ".gz")
    default_url = COVTYPE_URL

    def __init__(
        self,
        root: Optional[str] = None,
        download: bool = False,
        verify_checksums: bool = True,
        val_fraction: float = 0.1,
        url: Optional[str] = None,
        batch_size: int = 64,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        max_train_examples: Optional[int] = None,
        max_val_examples: Optional[int] = None,
    ) -> None:
        super().__init__(
            root, download, verify_checksums, url,
            batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed,
            max_train_examples=max_train_examples, max_val_examples=max_val_examples,
        )  # fmt: skip
        self.val_fraction = fraction("val_fraction", val_fraction, allow_zero=False)

    @property
    def spec(self) -> DataSpec:
        return DataSpec("covtype", (NUM_FEATURES,), 2)

    def _download(self, target: Path, missing: list[str]) -> None:
        # Keep the URL's compression suffix so the reader decompresses the file the right way.
        suffix = next((s for s in (".bz2", ".gz") if self.url.endswith(s)), "")
        md5 = COVTYPE_BZ2_MD5 if self.verify_checksums and suffix == ".bz2" else None
        download_file(self.url, target / f"{COVTYPE_FILE}{suffix}", md5=md5, mismatch_hint=VERIFY_HINT)

    def _load(self) -> ArraySplits:
        path = self.files()[COVTYPE_FILE]
        x, raw_y = read_libsvm(path, NUM_FEATURES)
        y = binary_labels(raw_y, str(path))
        n = x.shape[0]
        n_val = max(1, round(n * self.val_fraction))
        if n - n_val < 1:
            raise DataFileError(f"covtype: {path} has {n} examples, too few for a train and a validation split")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val, train = order[:n_val], order[n_val:]
        return ArraySplits(x[train], y[train], x[val], y[val])
