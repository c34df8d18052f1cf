"""Reader and writer for the IDX format of MNIST and Fashion-MNIST (plain or gzipped).

An IDX file is: two zero bytes, a dtype code, the number of dimensions ``n``, ``n`` big-endian
uint32 sizes, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch

from lightning_echo.data.files import read_bytes
from lightning_echo.errors import DataFileError

# dtype code -> (big-endian numpy dtype of the payload, native torch dtype)
IDX_DTYPES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_CODE_OF_TORCH_DTYPE = {torch_dtype: code for code, (_, torch_dtype) in IDX_DTYPES.items()}


def parse_idx(data: bytes, source: str) -> torch.Tensor:
    """Decode the bytes of an IDX file; ``source`` names the file in error messages."""
    if len(data) < 4:
        raise DataFileError(f"{source}: not an IDX file: only {len(data)} bytes, shorter than the 4-byte header")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataFileError(
            f"{source}: not an IDX file: magic number 0x{data[:4].hex()} does not start with two zero bytes"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataFileError(f"{source}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataFileError(f"{source}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataFileError(
            f"{source}: truncated IDX header: {ndim} dimensions need {header_size} bytes, file has {len(data)}"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    numpy_dtype, torch_dtype = IDX_DTYPES[code]
    itemsize = np.dtype(numpy_dtype).itemsize
    expected = math.prod(shape) * itemsize
    payload = len(data) - header_size
    if payload != expected:
        raise DataFileError(
            f"{source}: IDX header says shape {shape} of {np.dtype(numpy_dtype).name} "
            f"({expected} bytes of data) but the file has {payload} bytes after the header"
        )
    values = np.frombuffer(data, dtype=numpy_dtype, offset=header_size).reshape(shape)
    # astype copies into native byte order and a writable array torch can own.
    return torch.from_numpy(values.astype(values.dtype.newbyteorder("="))).to(torch_dtype)


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (gzipped when the name ends in ``.gz``) into a tensor of its dtype."""
    return parse_idx(read_bytes(Path(path)), str(path))


def encode_idx(tensor: torch.Tensor) -> bytes:
    """The IDX bytes of ``tensor`` (uint8, int8, int16, int32, float32 or float64; at least 1-D)."""
    if tensor.dtype not in _CODE_OF_TORCH_DTYPE:
        raise ValueError(f"IDX cannot store dtype {tensor.dtype}")
    if tensor.dim() == 0 or tensor.dim() > 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got {tensor.dim()}")
    code = _CODE_OF_TORCH_DTYPE[tensor.dtype]
    header = bytes([0, 0, code, tensor.dim()]) + np.asarray(tensor.shape, dtype=">u4").tobytes()
    payload = tensor.detach().cpu().contiguous().numpy().astype(IDX_DTYPES[code][0]).tobytes()
    return header + payload


def write_idx(path: Path, tensor: torch.Tensor) -> Path:
    """Write ``tensor`` as an IDX file, gzipped when ``path`` ends in ``.gz``; returns ``path``."""
    path = Path(path)
    data = encode_idx(tensor)
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=6) as stream:
            stream.write(data)
    else:
        path.write_bytes(data)
    return path
