"""Round trips and malformed-file errors of the IDX, LIBSVM and CIFAR-10 readers (real files on disk)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_echo.data.formats.cifar_pickle import read_cifar_batch, write_cifar_batch
from lightning_echo.data.formats.idx import read_idx, write_idx
from lightning_echo.data.formats.libsvm import read_libsvm, write_libsvm
from lightning_echo.errors import DataFileError


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


# -- IDX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "tensor",
    [
        torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8),
        torch.randint(0, 10, (7,), dtype=torch.uint8),
        torch.randint(-128, 128, (3, 4), dtype=torch.int8),
        torch.randint(-30000, 30000, (2, 3, 4), dtype=torch.int16),
        torch.randint(-(2**31), 2**31 - 1, (6,), dtype=torch.int32),
        torch.randn(4, 5, dtype=torch.float32),
        torch.randn(3, dtype=torch.float64),
    ],
    ids=["uint8-3d", "uint8-1d", "int8", "int16", "int32", "float32", "float64"],
)
def test_idx_round_trip(tmp_path: Path, tensor: torch.Tensor, suffix: str) -> None:
    path = write_idx(tmp_path / f"data-idx{suffix}", tensor)
    if suffix == ".gz":
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzipped
    loaded = read_idx(path)
    assert loaded.dtype == tensor.dtype
    assert torch.equal(loaded, tensor)


def test_idx_header_is_big_endian_standard_layout(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels-idx1-ubyte", torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert path.read_bytes() == bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + bytes([1, 2, 3])


IDX_HEADER_3D = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 2, 3, 3)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "not an IDX file"),
        (b"\x00\x00", "not an IDX file"),
        (bytes([1, 2, 0x08, 1]) + struct.pack(">I", 1) + b"\x00", "magic number 0x01020801"),
        (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00", "unknown IDX dtype code 0x07"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2), "truncated IDX header"),
        (IDX_HEADER_3D + bytes(17), "18 bytes of data"),
        (IDX_HEADER_3D + bytes(19), "file has 19 bytes after the header"),
        (bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + bytes(7), "(8 bytes of data)"),
    ],
    ids=["empty", "short", "magic", "dtype", "ndim", "header", "payload-short", "payload-long", "int32-size"],
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_malformed_files_raise_one_line_error(tmp_path: Path, content: bytes, fragment: str, suffix: str) -> None:
    path = tmp_path / f"bad-idx{suffix}"
    if suffix == ".gz":
        with gzip.open(path, "wb") as stream:
            stream.write(content)
    else:
        path.write_bytes(content)
    with pytest.raises(DataFileError) as excinfo:
        read_idx(path)
    assert_one_line_error(excinfo, path, fragment)


def test_idx_broken_gzip_raises_one_line_error(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good-idx.gz", torch.zeros(100, 28, 28, dtype=torch.uint8)).read_bytes()
    not_gzip = tmp_path / "plain-bytes-idx.gz"
    not_gzip.write_bytes(b"this is not gzip data at all")
    truncated = tmp_path / "truncated-idx.gz"
    truncated.write_bytes(good[: len(good) // 2])
    for path in (not_gzip, truncated):
        with pytest.raises(DataFileError) as excinfo:
            read_idx(path)
        assert_one_line_error(excinfo, path, "cannot read or decompress")


def test_idx_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent-idx"
    with pytest.raises(DataFileError) as excinfo:
        read_idx(path)
    assert_one_line_error(excinfo, path)


# -- LIBSVM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_libsvm_round_trip(tmp_path: Path, suffix: str) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 12, generator=generator)
    x[torch.rand(50, 12, generator=generator) < 0.6] = 0.0
    x[3] = 0.0  # a row with no features at all
    y = torch.randint(0, 2, (50,), generator=generator).double() * 2 - 1  # raw labels -1 / +1
    path = write_libsvm(tmp_path / f"data.libsvm{suffix}", x, y)
    x_read, y_read = read_libsvm(path, 12)
    assert x_read.dtype == torch.float32 and x_read.shape == (50, 12)
    assert torch.equal(x_read, x)
    assert torch.equal(y_read, y)


def test_libsvm_reads_wider_than_file_and_tolerates_layout(tmp_path: Path) -> None:
    path = tmp_path / "layout.libsvm"
    path.write_bytes(
        b"# a comment line\n"
        b"2 1:0.5   3:-1e-2\t5:7\r\n"
        b"\n"
        b"   \n"
        b"1\n"
        b"+1 4:1 2:2.5 # trailing comment\n"
    )
    x, y = read_libsvm(path, 6)
    assert y.tolist() == [2.0, 1.0, 1.0]
    expected = torch.zeros(3, 6)
    expected[0, [0, 2, 4]] = torch.tensor([0.5, -0.01, 7.0])
    expected[2, [3, 1]] = torch.tensor([1.0, 2.5])
    assert torch.equal(x, expected)


def test_libsvm_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.libsvm"
    path.write_bytes(b"")
    x, y = read_libsvm(path, 4)
    assert x.shape == (0, 4) and y.shape == (0,)


@pytest.mark.parametrize(
    "content, line, fragment",
    [
        (b"1 1:1\nabc 1:2\n", 2, "label 'abc' is not a number"),
        (b"1 1:1\n1 2:1 3\n", 2, "expected index:value, got '3'"),
        (b"1 1:1\n1 1:2:3\n", 2, "expected index:value, got '1:2:3'"),
        (b"1 1:1\n1 x:2\n", 2, "expected index:value, got 'x:2'"),
        (b"1 1:1\n1 2:y\n", 2, "expected index:value, got '2:y'"),
        (b"1 1:1\n1 2:\n", 2, "expected index:value, got '2:'"),
        (b"1 1:1\n1 :4\n", 2, "expected index:value, got ':4'"),
        # an extra colon on line 2 and a missing one on line 3 keep the totals right: still caught
        (b"1 1:1\n1 1:2:3\n1 4 2:2\n", 2, "got '1:2:3'"),
        (b"1 1:1\n\n1 0:5\n", 3, "feature index 0 is outside 1..4"),
        (b"1 1:1\n1 5:5\n", 2, "feature index 5 is outside 1..4"),
        (b"1 1:1\n1 1.5:5\n", 2, "feature index 1.5 is outside 1..4"),
    ],
    ids=["label", "no-colon", "two-colons", "index-text", "value-text", "no-value", "no-index", "cancel-out",
         "index-zero", "index-too-big", "index-fraction"],
)
@pytest.mark.parametrize("suffix", ["", ".bz2"])
def test_libsvm_malformed_lines_name_file_and_line(
    tmp_path: Path, content: bytes, line: int, fragment: str, suffix: str
) -> None:
    path = tmp_path / f"bad.libsvm{suffix}"
    if suffix == ".bz2":
        import bz2

        path.write_bytes(bz2.compress(content))
    else:
        path.write_bytes(content)
    with pytest.raises(DataFileError) as excinfo:
        read_libsvm(path, 4)
    assert_one_line_error(excinfo, path, f"line {line}:", fragment)


def test_libsvm_broken_bz2(tmp_path: Path) -> None:
    path = tmp_path / "broken.libsvm.bz2"
    path.write_bytes(b"BZh9 definitely not bzip2")
    with pytest.raises(DataFileError) as excinfo:
        read_libsvm(path, 4)
    assert_one_line_error(excinfo, path, "cannot read or decompress")


# -- CIFAR-10 -------------------------------------------------------------------------------


def test_cifar_batch_round_trip(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (20,))
    path = write_cifar_batch(tmp_path / "data_batch_1", images, labels)
    x, y = read_cifar_batch(path)
    assert x.dtype == torch.uint8 and x.shape == (20, 3, 32, 32)
    assert y.dtype == torch.int64
    assert torch.equal(x, images) and torch.equal(y, labels)


def test_cifar_batch_channel_layout(tmp_path: Path) -> None:
    # Row layout of the real files: 1024 red values, then 1024 green, then 1024 blue.
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    path = write_cifar_batch(tmp_path / "test_batch", row[None, :], [3])
    x, _ = read_cifar_batch(path)
    assert x[0, :, 5, 7].tolist() == [10, 20, 30]


def _pickle_to(path: Path, obj: object) -> Path:
    with open(path, "wb") as stream:
        pickle.dump(obj, stream, protocol=2)
    return path


class _Sneaky:
    def __reduce__(self):  # would call os.getcwd() if the reader trusted the pickle
        return (os.getcwd, ())


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p.write_bytes(b"not a pickle") and p, "not a CIFAR-10 python batch"),
        (lambda p: _pickle_to(p, [1, 2, 3]), "expected a dict with b'data' and b'labels'"),
        (lambda p: _pickle_to(p, {b"data": np.zeros((2, 3072), np.uint8)}), "expected a dict"),
        (lambda p: _pickle_to(p, {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}), "[N, 3072]"),
        (lambda p: _pickle_to(p, {b"data": np.zeros((2, 3072), np.int32), b"labels": [0, 1]}), "uint8"),
        (lambda p: _pickle_to(p, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "1 labels for 2 images"),
        (lambda p: _pickle_to(p, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "0..9"),
        (lambda p: _pickle_to(p, {b"data": _Sneaky(), b"labels": [0]}), "refusing to load"),
    ],
    ids=["garbage", "list", "no-labels", "width", "dtype", "count", "range", "unsafe-global"],
)
def test_cifar_malformed_batches(tmp_path: Path, make, fragment: str) -> None:
    path = tmp_path / "data_batch_1"
    make(path)
    with pytest.raises(DataFileError) as excinfo:
        read_cifar_batch(path)
    assert_one_line_error(excinfo, path, fragment)
