"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or raw).

Layout: two zero bytes, a type code (0x08 = unsigned byte, ...), the number of dimensions ``d``,
then ``d`` big-endian 32-bit sizes, then the data in row-major order.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch


class DataError(RuntimeError):
    """A data file is missing, truncated or corrupt; the message names the file and the problem."""


_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                try:
                    return gzip.decompress(f.read())
                except (EOFError, OSError, zlib.error) as e:
                    raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an IDX file") from None


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file into a tensor, checking the header against the data length."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header announces {ndim} dimensions but the file is too short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header says shape {shape} ({expected} bytes of data), "
                        f"found {found} bytes")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("=")).copy())
