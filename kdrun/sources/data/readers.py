"""Readers for the on-disk formats of the standard datasets: IDX and CIFAR pickles.

Both return numpy arrays and refuse malformed input with a ValueError that
names the file, instead of returning garbage or running code.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib

import numpy as np

try:
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray, numeric as _numeric

# IDX type byte -> element type (multi-byte types are big-endian on disk).
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed (`.gz`)."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: malformed IDX file: cannot decompress it ({exc})") from exc

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file: magic number is {raw[:4].hex() or 'missing'}, "
            f"expected 0000 then a type byte ({', '.join(f'{t:02x}' for t in _IDX_DTYPES)}) and the rank"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: malformed IDX file: header declares {ndim} dimensions but is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: malformed IDX file: header declares shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} bytes of data"
        )
    # astype copies into a writable, native-endian array (frombuffer's view is read-only).
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# The only globals a CIFAR batch needs: numpy arrays. Everything else (os.system,
# builtins.eval, ...) is refused, so a crafted file cannot run code when loaded.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,  # the original files
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,  # re-saved by numpy >= 2
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR batch holds only numpy arrays, lists and bytes"
            ) from None


def read_cifar_batch(path: str | os.PathLike, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: images uint8 (N, 3, 32, 32) and labels int64 (N,).

    `label_key` is b"labels" for CIFAR-10 and b"fine_labels" for CIFAR-100.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()  # the files come from Python 2
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable CIFAR batch: {exc}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: not a CIFAR batch: expected a dict with keys b'data' and {label_key!r}")
    data = batch[b"data"]
    labels = np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: malformed CIFAR batch: b'data' must be a uint8 array of shape (N, 3072)")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise ValueError(
            f"{path}: malformed CIFAR batch: {label_key!r} must hold one integer per image "
            f"({len(data)} images, {labels.size} labels)"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
