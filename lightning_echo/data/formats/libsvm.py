"""Reader and writer for LIBSVM text files: ``label index:value index:value ...``, 1-based indices.

Files may be plain, ``.gz`` or ``.bz2``. The reader parses all numbers of the file with numpy at once
and falls back to a line-by-line pass only to report where a malformed file goes wrong.
"""

from __future__ import annotations

import bz2
import gzip
import re
import warnings
from pathlib import Path
from typing import IO, Optional, Sequence

import numpy as np
import torch

from lightning_echo.data.files import read_bytes
from lightning_echo.errors import DataFileError

_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[list(b" \t\r\v\f")] = True
_TOKEN_WITH_TWO_COLONS = re.compile(rb":[^\s:]*:")


def read_libsvm(path: Path, num_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a LIBSVM file into dense ``x`` (float32, ``[n, num_features]``) and raw labels ``y`` (float64).

    Blank lines and ``#`` comments are ignored. A malformed line, an index outside
    ``1..num_features``, or a label or value that is NaN, infinite or beyond float32 raises a
    one-line DataFileError naming the file and the line number.
    """
    path = Path(path)
    source = str(path)
    line_numbers, labels, rests = _split_lines(read_bytes(path))
    n = len(labels)
    counts = np.fromiter((rest.count(b":") for rest in rests), dtype=np.int64, count=n)

    parsed = _parse_fast(labels, rests, counts)
    if parsed is None:
        _raise_first_malformed_line(source, line_numbers, labels, rests)
        raise DataFileError(f"{source}: malformed LIBSVM data (could not locate the bad line)")
    y, pairs = parsed

    rows = np.repeat(np.arange(n), counts)
    indices, values = pairs[0::2], pairs[1::2]
    bad = (indices != np.floor(indices)) | (indices < 1) | (indices > num_features)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataFileError(
            f"{source}: line {line_numbers[rows[first]]}: feature index {indices[first]:g} is outside "
            f"1..{num_features} (indices are 1-based integers)"
        )
    _check_finite(source, line_numbers, y, values, rows)
    x = np.zeros((n, num_features), dtype=np.float32)
    x[rows, indices.astype(np.int64) - 1] = values
    return torch.from_numpy(x), torch.from_numpy(y)


def _check_finite(source: str, line_numbers: list[int], y: np.ndarray, values: np.ndarray, rows: np.ndarray) -> None:
    """Refuse NaN or infinite labels and feature values, and values that overflow float32 (which
    would train to NaN)."""
    bad_labels = ~np.isfinite(y)
    if bad_labels.any():
        first = int(np.argmax(bad_labels))
        raise DataFileError(f"{source}: line {line_numbers[first]}: label {y[first]} is not a finite number")
    bad_values = ~np.isfinite(values) | (np.abs(values) > np.finfo(np.float32).max)
    if bad_values.any():
        first = int(np.argmax(bad_values))
        raise DataFileError(
            f"{source}: line {line_numbers[rows[first]]}: feature value {values[first]:g} is not a finite "
            f"float32 number (|value| <= {np.finfo(np.float32).max:.4g})"
        )


def _split_lines(data: bytes) -> tuple[list[int], list[bytes], list[bytes]]:
    """1-based line numbers, label tokens and feature parts of the non-blank lines."""
    has_comments = b"#" in data
    line_numbers: list[int] = []
    labels: list[bytes] = []
    rests: list[bytes] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if has_comments:
            line = line.partition(b"#")[0]
        parts = line.split(None, 1)
        if not parts:
            continue
        line_numbers.append(number)
        labels.append(parts[0])
        rests.append(parts[1] if len(parts) == 2 else b"")
    return line_numbers, labels, rests


def _parse_numbers(text: bytes, expected: int) -> Optional[np.ndarray]:
    """Whitespace-separated numbers of ``text`` if there are exactly ``expected`` of them."""
    if expected == 0:
        return np.zeros(0, dtype=np.float64) if not text.strip() else None
    try:
        with warnings.catch_warnings():
            # numpy warns (instead of raising) when it stops at text that is not a number.
            warnings.simplefilter("error")
            numbers = np.fromstring(text, dtype=np.float64, sep=" ")
    except (ValueError, DeprecationWarning):
        return None
    return numbers if numbers.size == expected else None


def _count_tokens(text: bytes) -> int:
    """Number of whitespace-separated tokens in ``text`` (vectorised, creates no Python objects)."""
    if not text:
        return 0
    is_space = _IS_SPACE[np.frombuffer(text, dtype=np.uint8)]
    starts = ~is_space[1:] & is_space[:-1]
    return int(np.count_nonzero(starts)) + int(not is_space[0])


def _parse_fast(labels: list[bytes], rests: list[bytes], counts: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Labels and the flat ``[index, value, index, value, ...]`` array, or None if anything is off."""
    y = _parse_numbers(b" ".join(labels), len(labels))
    if y is None:
        return None
    joined = b" ".join(rests)
    total = int(counts.sum())
    # Every token must be exactly ``a:b``: as many tokens as colons and no token with two colons;
    # otherwise a line with a missing colon and one with an extra colon could cancel out.
    if _count_tokens(joined) != total or _TOKEN_WITH_TWO_COLONS.search(joined):
        return None
    pairs = _parse_numbers(joined.replace(b":", b" "), 2 * total)
    if pairs is None:
        return None
    return y, pairs


def _raise_first_malformed_line(source: str, line_numbers: list[int], labels: list[bytes], rests: list[bytes]) -> None:
    """Slow path: check each line and raise a DataFileError at the first malformed one."""
    for number, label, rest in zip(line_numbers, labels, rests):
        where = f"{source}: line {number}"
        try:
            float(label)
        except ValueError:
            raise DataFileError(f"{where}: label {_show(label)} is not a number") from None
        for token in rest.split():
            index, colon, value = token.partition(b":")
            try:
                if not colon or b":" in value:
                    raise ValueError
                int(index)
                float(value)
            except ValueError:
                raise DataFileError(f"{where}: expected index:value, got {_show(token)}") from None


def _show(token: bytes) -> str:
    return repr(token.decode("utf-8", errors="replace")[:40])


def _open_for_writing(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "wb")
    if path.suffix == ".bz2":
        return bz2.open(path, "wb")
    return open(path, "wb")


def write_libsvm(path: Path, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | Sequence[float]) -> Path:
    """Write rows of ``x`` with labels ``y`` in LIBSVM format (zeros omitted; ``.gz``/``.bz2`` compress)."""
    path = Path(path)
    x_array = np.asarray(x, dtype=np.float64)
    y_array = np.asarray(y, dtype=np.float64).reshape(-1)
    if x_array.ndim != 2 or x_array.shape[0] != y_array.shape[0]:
        raise ValueError(f"x must be [n, features] with n = len(y); got {x_array.shape} and {y_array.shape}")
    with _open_for_writing(path) as stream:
        for row, label in zip(x_array, y_array):
            (nonzero,) = np.nonzero(row)
            features = " ".join(f"{i + 1}:{row[i]:.9g}" for i in nonzero)
            label_text = str(int(label)) if float(label).is_integer() else f"{label:.17g}"
            stream.write(f"{label_text} {features}".rstrip().encode() + b"\n")
    return path
