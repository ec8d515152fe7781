import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from data_files import memory_peak, npy_header
from pyro_vae.data import load_data
from pyro_vae.data.files import read_npy


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 3))


def test_npy_npz_pt_roundtrip(tmp_path, table):
    y = np.array([2, 0, 1, 1, 0, 2, 2])
    np.save(tmp_path / "a.npy", table)
    assert torch.equal(load_data(tmp_path / "a.npy", dtype=torch.float64).x, torch.from_numpy(table))

    np.savez(tmp_path / "b.npz", x=table, y=y)
    d = load_data(tmp_path / "b.npz", dtype=torch.float64)
    assert torch.equal(d.x, torch.from_numpy(table)) and d.labels.tolist() == y.tolist()
    np.savez(tmp_path / "c.npz", only=table)
    assert torch.equal(load_data(tmp_path / "c.npz", dtype=torch.float64).x, torch.from_numpy(table))
    np.savez(tmp_path / "d.npz", first=table, second=table)
    with pytest.raises(ValueError, match="name the data array 'x'"):
        load_data(tmp_path / "d.npz")

    t = torch.from_numpy(table)
    torch.save(t, tmp_path / "e.pt")
    assert torch.equal(load_data(tmp_path / "e.pt", dtype=torch.float64).x, t)
    torch.save({"x": t, "y": torch.from_numpy(y)}, tmp_path / "f.pt")
    d = load_data(tmp_path / "f.pt", dtype=torch.float64)
    assert torch.equal(d.x, t) and d.labels.tolist() == y.tolist()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_object_in_pt_file_is_refused(tmp_path):
    p = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (os.getcwd, ())

    with open(p, "wb") as f:
        pickle.dump(Boom(), f)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_data(p)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays are not accepted"):
        load_data(tmp_path / "obj.npy")


def test_npy_header_claiming_a_huge_shape_is_refused_before_allocating(tmp_path, monkeypatch):
    p = tmp_path / "huge.npy"
    p.write_bytes(npy_header((2 ** 40, 2 ** 20)) + bytes(64))
    loads = []
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a))
    with memory_peak() as peak:
        with pytest.raises(ValueError, match=r"header claims shape \(1099511627776, 1048576\) of float64 "
                                             r"\(9223372036854775808 bytes\) but the file holds 64 bytes"):
            load_data(p)
    assert peak["bytes"] < 1_000_000 and loads == []  # refused from the header, the array never read


def test_npy_of_another_size_than_its_header_is_refused(tmp_path):
    good = np.arange(6.0).reshape(3, 2)
    np.save(tmp_path / "a.npy", good)
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw[:-8])
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*48 bytes.*holds 40 bytes.*truncated"):
        load_data(tmp_path / "short.npy")
    (tmp_path / "long.npy").write_bytes(raw + raw)  # two arrays appended to one file
    with pytest.raises(ValueError, match=r"holds \d+ bytes of data"):
        load_data(tmp_path / "long.npy")
    assert np.array_equal(read_npy(tmp_path / "a.npy")[0], good)


def test_npz_member_with_a_huge_claimed_shape_is_refused(tmp_path):
    p = tmp_path / "huge.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", npy_header((2 ** 40, 2 ** 20)) + bytes(64))
    with pytest.raises(ValueError, match=r"huge.npz \(x.npy\).*header claims shape \(1099511627776, 1048576\)"):
        load_data(p)


@pytest.mark.parametrize("order", [">", "<"])
def test_npy_in_either_byte_order_loads_the_same_values(tmp_path, order):
    values = np.arange(6).reshape(3, 2)
    np.save(tmp_path / "f.npy", values.astype(f"{order}f8"))
    np.save(tmp_path / "i.npy", values.astype(f"{order}i4"))
    np.savez(tmp_path / "z.npz", x=values.astype(f"{order}f4"), y=np.array([1, 0, 1], dtype=f"{order}i8"))
    expected = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    for name in ("f.npy", "i.npy", "z.npz"):
        d = load_data(tmp_path / name, dtype=torch.float64)
        assert torch.equal(d.x, expected), name
    assert load_data(tmp_path / "z.npz").labels.tolist() == [1, 0, 1]
    assert read_npy(tmp_path / "f.npy")[0].dtype.isnative
