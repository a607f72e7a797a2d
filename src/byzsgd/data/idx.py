"""Reader for the IDX file format of MNIST and Fashion-MNIST.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, one byte for the
element type, one byte for the number of dimensions d, then d big-endian uint32 sizes, then
the elements in row-major (C) order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

# Element type codes of the IDX format, mapped to big-endian numpy types.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file."""


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into an array of its shape and type."""
    if len(data) < 4:
        raise IdxFormatError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _DTYPES:
        raise IdxFormatError(f"{source}: not an IDX file (magic bytes {data[:4].hex()}; "
                             f"expected 0000 then a type code in "
                             f"{sorted(f'{c:02x}' for c in _DTYPES)} and the rank)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{source}: truncated header ({len(data)} bytes for rank {ndim})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IdxFormatError(f"{source}: header says shape {shape} of {dtype} "
                             f"({expected} bytes of data) but the file holds "
                             f"{len(data) - header} bytes after the header")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # Native byte order and a writable copy detached from the (possibly large) bytes object.
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not (detected from the content, not the name)."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(2)
    try:
        if head == _GZIP_MAGIC:
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise IdxFormatError(f"{path}: corrupted gzip stream ({err})") from err
    return parse_idx(data, str(path))
