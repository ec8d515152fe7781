"""Data files written by hand for the tests of pyro_vae.data: IDX files, .npy headers, and a
folder of fake MNIST test files."""

import contextlib
import gzip
import os
import struct
import tracemalloc

import numpy as np

# the real MNIST test digits: $PYRO_VAE_MNIST_DIR, else ../shared/data/mnist beside the repository
MNIST_DIR = os.environ.get("PYRO_VAE_MNIST_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "data", "mnist"))


def write_idx(path, array):
    """Write an IDX file by hand: 0x00 0x00, type code, ndim, big-endian sizes, data."""
    array = np.asarray(array)
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    dt = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, codes[np.dtype(dt)], array.ndim]) + b"".join(
        struct.pack(">I", s) for s in array.shape)
    payload = header + array.astype(dt).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)


def write_fake_mnist(folder, n=3):
    """A folder with t10k-images-idx3-ubyte.gz (n random 28x28 digits) and its label file."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"),
              rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
    write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"), np.arange(n, dtype=np.uint8) % 10)
    return folder


def npy_header(shape, descr="<f8"):
    """The header numpy.save writes (format 1.0) for an array of this shape and dtype."""
    text = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


@contextlib.contextmanager
def memory_peak():
    """Trace Python and numpy allocations in the block; ``peak["bytes"]`` is their peak after it."""
    peak = {}
    tracemalloc.start()
    try:
        yield peak
        peak["bytes"] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
