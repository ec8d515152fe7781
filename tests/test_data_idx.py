import gzip
import struct

import numpy as np
import pytest
import torch

from data_files import memory_peak, write_idx
from pyro_vae.data import load_data, read_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_and_labels(tmp_path, suffix):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels)

    raw = read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}")
    assert raw.dtype == torch.uint8 and torch.equal(raw, torch.from_numpy(images))

    d = load_data(tmp_path / f"t10k-images-idx3-ubyte{suffix}", dtype=torch.float64)
    assert d.shape == (4, 3) and d.x.shape == (5, 12)
    assert torch.equal(d.x, torch.from_numpy(images.reshape(5, 12)).double() / 255)
    assert d.labels.tolist() == [3, 1, 4, 1, 5]

    # the folder holding the files, and a named dataset whose root holds them
    for loaded in (load_data(tmp_path, dtype=torch.float64),
                   load_data("fashion-mnist", root=tmp_path, train=False, dtype=torch.float64)):
        assert torch.equal(loaded.x, d.x) and torch.equal(loaded.labels, d.labels)
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_data(tmp_path, train=True)


def test_idx_two_dimensional_int32(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(4, 3)
    write_idx(tmp_path / "table.idx", a)
    d = load_data(tmp_path / "table.idx", dtype=torch.float64)
    assert d.shape is None and torch.equal(d.x, torch.from_numpy(a).double())


def test_idx_float32_is_read_in_native_byte_order(tmp_path):
    a = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "f.idx.gz", a)
    t = read_idx(tmp_path / "f.idx.gz")
    assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(a))


def test_corrupt_idx_is_a_value_error(tmp_path):
    p = tmp_path / "broken-images-idx3-ubyte"
    images = np.zeros((4, 2, 2), dtype=np.uint8)
    write_idx(p, images)
    p.write_bytes(p.read_bytes()[:-3])  # truncated
    with pytest.raises(ValueError, match="not a valid IDX file"):
        load_data(p)
    g = tmp_path / "fake-images-idx3-ubyte.gz"
    g.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        load_data(g)
    h = tmp_path / "bad-header-images-idx3-ubyte"
    h.write_bytes(bytes([1, 2, 3, 4]) + bytes(16))
    with pytest.raises(ValueError, match="not a valid IDX file"):
        load_data(h)


def test_small_gzip_idx_that_expands_beyond_its_header_is_refused_without_reading_it(tmp_path):
    """A 200 KB file that decompresses to 64 MB but declares 8 bytes: refused after reading one
    byte past the declared data, with little memory."""
    p = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.open(p, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 2, 2) + bytes(8))
        block = bytes(1 << 20)
        for _ in range(64):
            f.write(block)
    assert p.stat().st_size < 1_000_000
    with memory_peak() as peak:
        with pytest.raises(ValueError, match=r"more data than its header declares \(8 bytes for shape \(2, 2, 2\)\)"):
            read_idx(p)
    assert peak["bytes"] < 8_000_000


def test_idx_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    raw = tmp_path / "big-images-idx3-ubyte"
    raw.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 60000, 4000, 4000) + bytes(100))
    gz = tmp_path / "big-images-idx3-ubyte.gz"
    with gzip.open(gz, "wb") as f:
        f.write(raw.read_bytes())
    with memory_peak() as peak:
        with pytest.raises(ValueError, match=r"header declares 960000000000 bytes of data.*the file holds 100$"):
            read_idx(raw)
        with pytest.raises(ValueError, match=r"header declares 960000000000 bytes.*decompressed file holds 100$"):
            read_idx(gz)
    assert peak["bytes"] < 8_000_000
