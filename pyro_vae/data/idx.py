"""IDX files (the MNIST format), raw or gzipped, and folders of MNIST-style IDX files.

An IDX file starts with the bytes ``0x00 0x00``, a type code and the number of dimensions, then
one big-endian 4-byte size per dimension, then the values. :func:`read_idx` checks the data
the header declares against what the file holds *before* allocating: a raw file by its size,
a gzipped file by decompressing the stream in blocks and stopping as soon as it holds more than
the header declares. A small ``.gz`` file that would expand to far more data than its header
states is refused after reading one byte past the declared end.
"""

import gzip
import logging
import math
import os
import re
import struct
import zlib

import numpy as np
import torch

from pyro_vae.data.files import check_readable

__all__ = ["read_idx", "is_idx_name", "load_idx_images", "find_idx_images", "load_idx_folder"]

log = logging.getLogger(__name__)

# type code -> stored dtype (big-endian where it matters)
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_NAME = re.compile(r"(idx[1-9]-ubyte|\.idx[1-9]?)$", re.IGNORECASE)
_BLOCK = 1 << 20  # bytes decompressed at a time

_FORMAT = ("IDX files start with bytes 0x00 0x00, a type code and the number of dimensions, then "
           "one 4-byte size per dimension")


def is_idx_name(name):
    """Whether a file name looks like an IDX file (``...-idx3-ubyte``, ``.idx``; ``.gz`` allowed)."""
    lower = os.path.basename(os.fspath(name)).lower()
    stem = lower[:-3] if lower.endswith(".gz") else lower
    return _IDX_NAME.search(stem) is not None


def _read_exact(f, n, base):
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{base}: not a valid IDX file (the header ends early); {_FORMAT}")
    return data


def read_idx(path):
    """Read one IDX file, raw or ``.gz``.

    :param str path: the file.
    :returns: the tensor stored in it, with its stored dtype (``uint8``, ``int8``, ``int16``,
        ``int32``, ``float32`` or ``float64``) and shape (1 to 3 dimensions).
    :raises ValueError: a bad header, data of another size than the header declares, or a
        damaged gzip stream.
    :raises PermissionError: the file may not be read.
    """
    path = os.fspath(path)
    base = os.path.basename(path)
    check_readable(path)
    gz = path.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = _read_exact(f, 4, base)
            if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES or not 1 <= head[3] <= 3:
                raise ValueError(f"{base}: not a valid IDX file (bad header); {_FORMAT}")
            dtype, ndim = _IDX_TYPES[head[2]], head[3]
            shape = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, base))
            needed = math.prod(shape) * dtype.itemsize
            if gz:
                payload = _read_declared(f, needed, base, shape)
            else:
                available = os.path.getsize(path) - 4 - 4 * ndim
                if available != needed:
                    raise ValueError(f"{base}: not a valid IDX file: the header declares {needed} bytes "
                                     f"of data (shape {shape}) but the file holds {available}")
                payload = f.read(needed)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, PermissionError):
            raise
        if gz:
            raise ValueError(f"{base}: cannot decompress ({e}); the file is not valid gzip") from None
        raise ValueError(f"{base}: cannot read the file ({e})") from None
    a = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return torch.from_numpy(a.astype(dtype.newbyteorder("="), copy=True))


def _read_declared(f, needed, base, shape):
    """Exactly ``needed`` decompressed bytes, read in blocks; refuse a stream of another length."""
    buf = bytearray()
    while len(buf) < needed:
        block = f.read(min(_BLOCK, needed - len(buf)))
        if not block:
            raise ValueError(f"{base}: not a valid IDX file: the header declares {needed} bytes of "
                             f"data (shape {shape}) but the decompressed file holds {len(buf)}")
        buf += block
    if f.read(1):
        raise ValueError(f"{base}: not a valid IDX file: the decompressed stream holds more data than "
                         f"its header declares ({needed} bytes for shape {shape}); the file is "
                         "damaged or not an IDX file")
    return bytes(buf)


def _labels_path(images_path):
    """The ``...-labels-idx1-ubyte[.gz]`` file next to an images file, or None."""
    folder, base = os.path.split(images_path)
    if "images-idx3" not in base:
        return None
    cand = base.replace("images-idx3", "labels-idx1")
    for name in (cand, cand[:-3] if cand.endswith(".gz") else cand + ".gz"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def load_idx_images(path):
    """An IDX file and, for an images file, the labels file next to it.

    :param str path: an IDX file such as ``t10k-images-idx3-ubyte.gz``.
    :returns: ``(x, labels)``: the stored tensor, and the labels ``(N,)`` from the matching
        ``...-labels-idx1-ubyte[.gz]`` file or ``None``.
    :raises ValueError: unreadable files, or a label count that differs from the image count.
    """
    x = read_idx(path)
    labels = None
    lp = _labels_path(os.fspath(path))
    if lp is not None and x.dim() == 3:
        labels = read_idx(lp)
        if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"{os.path.basename(lp)}: expected {x.shape[0]} labels for "
                             f"{os.path.basename(path)}, got shape {tuple(labels.shape)}")
    return x, labels


def _find_split(folder, prefix):
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-images-idx3-ubyte.gz"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def find_idx_images(folders, train):
    """The images file of a split in the first folder that holds it.

    :param folders: folders to look in, in order.
    :param train: ``True`` the ``train`` files, ``False`` the ``t10k`` files, ``None`` the
        training files when present and otherwise the test files (with a logged warning).
    :returns: ``(path, split)`` with ``split`` ``"train"`` or ``"t10k"``, or ``(None, None)``.
    """
    prefixes = {True: ["train"], False: ["t10k"], None: ["train", "t10k"]}[train]
    for prefix in prefixes:
        for folder in folders:
            p = _find_split(folder, prefix)
            if p is not None:
                if train is None and prefix == "t10k":
                    log.warning("no training files in %s; using the test split (t10k)", folder)
                return p, prefix
    return None, None


def load_idx_folder(folder, train):
    """Images (and labels) of a folder of MNIST-style IDX files.

    :param str folder: holds ``train-images-idx3-ubyte[.gz]`` and/or ``t10k-images-idx3-ubyte[.gz]``
        with their label files.
    :param train: which split (see :func:`find_idx_images`).
    :returns: ``(x, labels, name)``: images ``(N, H, W)``, labels or ``None``, and a name.
    :raises FileNotFoundError: the split's images file is absent.
    :raises PermissionError: the folder may not be listed.
    """
    if not os.access(folder, os.R_OK | os.X_OK):
        raise PermissionError(f"cannot read the folder {folder}: permission denied; check its "
                              "permissions")
    path, split = find_idx_images([folder], train)
    if path is None:
        want = {True: "train", False: "t10k", None: "train or t10k"}[train]
        raise FileNotFoundError(
            f"{folder}: no {want}-images-idx3-ubyte[.gz] file; a data folder must hold MNIST-style "
            "IDX files (pass train=False for the t10k test files)")
    x, labels = load_idx_images(path)
    return x, labels, f"{os.path.basename(os.path.normpath(folder))} ({split})"
