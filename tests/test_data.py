import gzip
import math
import os
import pickle
import struct

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_vae.data import (
    CsvChunks,
    Data,
    MixtureData,
    binarize,
    find_mnist_dir,
    load_data,
    load_mnist_10k,
    make_gaussian_mixture,
    read_idx,
    threshold,
    train_test_split,
)

MNIST_DIR = "/work/shared/data/mnist"


def _write_idx(path, array):
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


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 3))


# ---------------------------------------------------------------------------------------
# in-memory sources
# ---------------------------------------------------------------------------------------
def test_tensor_and_array_sources_keep_values(table):
    d = load_data(table, dtype=torch.float64)
    assert isinstance(d, Data) and d.labels is None and d.shape is None and len(d) == 7
    assert torch.equal(d.x, torch.from_numpy(table))
    t = torch.from_numpy(table)
    assert torch.equal(load_data(t, dtype=torch.float64).x, t)
    assert load_data(t).x.dtype == torch.float32


def test_array_columns_and_label_column(table):
    a = np.concatenate([table, np.array([[0, 1, 2, 0, 1, 2, 0]]).T], axis=1)
    d = load_data(a, label_column=3, dtype=torch.float64)
    assert torch.equal(d.x, torch.from_numpy(table))
    assert d.labels.dtype == torch.long and d.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    d2 = load_data(a, columns=[2, 0], dtype=torch.float64)
    assert torch.equal(d2.x, torch.from_numpy(table[:, [2, 0]]))


def test_dataframe_numeric_columns_and_text_labels():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6], "kind": ["y", "x", "y"]})
    d = load_data(frame, label_column="kind", dtype=torch.float64)
    assert torch.equal(d.x, torch.tensor([[1.0, 4], [2, 5], [3, 6]], dtype=torch.float64))
    assert d.labels.tolist() == [1, 0, 1] and d.label_names == ("x", "y")
    with pytest.raises(ValueError, match="'kind'.*not numeric.*columns="):
        load_data(frame)
    assert load_data(frame, columns=["b"]).x.reshape(-1).tolist() == [4, 5, 6]


def test_uint8_pixels_are_scaled_and_scale_options():
    px = torch.tensor([[0, 51, 255], [255, 102, 0]], dtype=torch.uint8)
    assert torch.allclose(load_data(px).x, px.float() / 255)
    assert torch.equal(load_data(px, scale=None).x, px.float())
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [2.0, 10.0]])
    # non-image float data are left alone by "auto"
    assert torch.equal(load_data(x).x, x)
    assert torch.equal(load_data(x, scale="minmax").x, torch.tensor([[0.0, 0], [1, 0], [0.5, 0]]))
    assert torch.equal(load_data(x, scale=2).x, x / 2)
    with pytest.raises(ValueError, match="scale must be"):
        load_data(x, scale="log")


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------
def test_csv_roundtrip_with_and_without_header(tmp_path, table):
    p = tmp_path / "with_header.csv"
    frame = pd.DataFrame(table, columns=["u", "v", "w"])
    frame["label"] = [0, 1, 0, 1, 0, 1, 2]
    frame.to_csv(p, index=False, float_format="%.17g")
    d = load_data(p, label_column="label", dtype=torch.float64)
    assert torch.equal(d.x, torch.from_numpy(table))
    assert d.labels.tolist() == [0, 1, 0, 1, 0, 1, 2]
    assert d.name == "with_header.csv"

    q = tmp_path / "no_header.csv"
    np.savetxt(q, table, delimiter=",", fmt="%.17g")
    assert torch.equal(load_data(str(q), dtype=torch.float64).x, torch.from_numpy(table))


def test_csv_errors_name_columns_and_rows(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,city\n1,2,Paris\n3,4,Rome\n")
    with pytest.raises(ValueError, match="'city'.*not numeric"):
        load_data(p)
    q = tmp_path / "nan.csv"
    q.write_text("a,b\n1,2\n3,\n5,6\n,8\n")
    with pytest.raises(ValueError, match=r"NaN.*2 rows.*rows 1, 3"):
        load_data(q)
    e = tmp_path / "empty.csv"
    e.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_data(e)
    h = tmp_path / "header_only.csv"
    h.write_text("a,b\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_data(h)


def test_csv_chunks_read_the_file_in_blocks_on_every_pass(tmp_path, table):
    p = tmp_path / "with_header.csv"
    frame = pd.DataFrame(table, columns=["u", "v", "w"])
    frame["label"] = ["a", "b", "a", "b", "a", "b", "c"]
    frame.to_csv(p, index=False, float_format="%.17g")
    chunks = CsvChunks(p, 3, label_column="label")
    for _ in range(2):  # re-iterable: each pass reads the file again
        blocks = list(chunks)
        assert [b.shape for b in blocks] == [(3, 3), (3, 3), (1, 3)]
        assert torch.equal(torch.cat(blocks), load_data(p, label_column="label", dtype=torch.float64).x)
    q = tmp_path / "no_header.csv"
    np.savetxt(q, table, delimiter=",", fmt="%.17g")
    assert torch.equal(torch.cat(list(CsvChunks(q, 5, columns=[0, 2]))), torch.from_numpy(table[:, [0, 2]]))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4\n5,x\n")
    with pytest.raises(ValueError, match=r"data rows 2 to 2.*'b'.*not numeric"):
        list(CsvChunks(bad, 2))
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        CsvChunks(q, 0)
    with pytest.raises(FileNotFoundError):
        CsvChunks(tmp_path / "missing.csv", 10)


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


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_and_labels(tmp_path, suffix):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels)

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
    _write_idx(tmp_path / "table.idx", a)
    d = load_data(tmp_path / "table.idx", dtype=torch.float64)
    assert d.shape is None and torch.equal(d.x, torch.from_numpy(a).double())


def test_corrupt_idx_is_a_value_error(tmp_path):
    p = tmp_path / "broken-images-idx3-ubyte"
    images = np.zeros((4, 2, 2), dtype=np.uint8)
    _write_idx(p, images)
    p.write_bytes(p.read_bytes()[:-3])  # truncated
    with pytest.raises(ValueError, match="not a valid IDX file"):
        load_data(p)
    g = tmp_path / "fake-images-idx3-ubyte.gz"
    g.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        load_data(g)


def test_unknown_extension_and_missing_file(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_text("x")
    with pytest.raises(ValueError, match=r"unknown file type '\.xlsx'.*\.csv.*\.npy.*\.npz.*\.pt.*IDX"):
        load_data(p)
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        load_data(tmp_path / "missing.csv")


@pytest.mark.parametrize("bad, message", [
    (np.zeros(5), r"1-D.*reshape\(-1, 1\)"),
    (np.zeros((2, 3, 4)), r"3-D.*reshape\(len\(x\), -1\)"),
    (np.zeros((0, 3)), "empty"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), r"NaN or infinite.*rows 0"),
    (np.array([[1.0, 2.0], [np.inf, 1.0]]), r"NaN or infinite.*rows 1"),
    (np.array([["a", "b"]]), "not numeric"),
])
def test_bad_arrays(bad, message):
    with pytest.raises(ValueError, match=message):
        load_data(bad)


def test_named_dataset_without_files_asks_for_download(tmp_path, monkeypatch):
    """Without the files and with download=False, nothing touches the network: the error
    names the option that would download them."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("load_data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("mnist", "fashion-mnist", "kmnist"):
        with pytest.raises(FileNotFoundError, match="pass download=True"):
            load_data(name, root=tmp_path, download=False)


# ---------------------------------------------------------------------------------------
# real MNIST digits and the MNIST-10k protocol
# ---------------------------------------------------------------------------------------
needs_mnist = pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="real MNIST folder absent")


@needs_mnist
def test_real_mnist_test_digits():
    d = load_data(MNIST_DIR, train=False)
    assert d.x.shape == (10000, 784) and d.shape == (28, 28) and d.x.dtype == torch.float32
    assert d.x.min() == 0 and d.x.max() == 1
    assert d.labels.shape == (10000,) and sorted(d.labels.unique().tolist()) == list(range(10))
    # the first test digit is a 7, the second a 2 (the published file)
    assert d.labels[:2].tolist() == [7, 2]
    assert torch.equal(d.x, load_data(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")).x)


@needs_mnist
def test_mnist_10k_protocol():
    assert os.path.samefile(find_mnist_dir(MNIST_DIR), MNIST_DIR)
    train_x, test_x, train_y, test_y = load_mnist_10k(MNIST_DIR)
    assert train_x.shape == (9000, 784) and test_x.shape == (1000, 784)
    assert train_y.shape == (9000,) and test_y.shape == (1000,)
    assert train_x.min() >= 0 and train_x.max() <= 1
    # grey levels are kept in training
    assert ((train_x > 0) & (train_x < 1)).any()
    assert set(test_x.unique().tolist()) == {0.0, 1.0}
    full = load_data(MNIST_DIR, train=False)
    assert torch.equal(train_x, full.x[:9000]) and torch.equal(test_y, full.labels[9000:])
    expected = torch.bernoulli(full.x[9000:], generator=torch.Generator().manual_seed(1234))
    assert torch.equal(test_x, expected)
    again = load_mnist_10k(MNIST_DIR)
    assert torch.equal(again[1], test_x)
    held = load_data("mnist10k", root=MNIST_DIR, train=False)
    assert torch.equal(held.x, test_x) and held.shape == (28, 28)


def test_mnist_10k_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="PYRO_VAE_MNIST_DIR"):
        load_mnist_10k(tmp_path)


# ---------------------------------------------------------------------------------------
# binarization
# ---------------------------------------------------------------------------------------
def test_binarize_is_bernoulli_and_seeded():
    p = torch.linspace(0.0, 1.0, 11).repeat(20000, 1)
    b = binarize(p, seed=3)
    assert b.shape == p.shape and b.dtype == p.dtype
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    # column means match the probabilities within 4 standard errors
    se = (p[0] * (1 - p[0]) / p.shape[0]).sqrt()
    assert ((b.mean(0) - p[0]).abs() <= 4 * se + 1e-12).all()
    assert torch.equal(b[:, 0], torch.zeros(20000)) and torch.equal(b[:, -1], torch.ones(20000))
    assert torch.equal(b, binarize(p, seed=3))
    assert not torch.equal(b, binarize(p, seed=4))
    assert torch.equal(b, torch.bernoulli(p, generator=torch.Generator().manual_seed(3)))
    # one generator gives fresh draws each call, reproducibly
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    first, second = binarize(p[:100], generator=g1), binarize(p[:100], generator=g1)
    assert not torch.equal(first, second)
    assert torch.equal(first, binarize(p[:100], generator=g2))


def test_binarize_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        binarize(torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="not both"):
        binarize(torch.tensor([0.5]), seed=1, generator=torch.Generator())


def test_threshold():
    x = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])
    assert threshold(x).tolist() == [0, 0, 0, 1, 1]
    assert threshold(x, level=0.2).tolist() == [0, 1, 1, 1, 1]


# ---------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------
def test_train_test_split_is_a_seeded_partition():
    x = torch.arange(100.0).reshape(50, 2)
    labels = torch.arange(50)
    tr, te, ltr, lte = train_test_split(x, test_fraction=0.2, seed=5, labels=labels)
    assert tr.shape == (40, 2) and te.shape == (10, 2)
    rows = torch.cat([ltr, lte])
    assert sorted(rows.tolist()) == list(range(50))  # disjoint and complete
    assert torch.equal(tr, x[ltr]) and torch.equal(te, x[lte])  # labels follow their rows
    tr2, te2 = train_test_split(x, test_fraction=0.2, seed=5)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    assert not torch.equal(te, train_test_split(x, test_fraction=0.2, seed=6)[1])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_train_test_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match="between 0 and 1"):
        train_test_split(torch.zeros(10, 2), test_fraction=fraction)


def test_train_test_split_too_few_rows_and_bad_labels():
    with pytest.raises(ValueError, match="at least 2 rows"):
        train_test_split(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        train_test_split(torch.zeros(10, 2), labels=torch.zeros(9))


# ---------------------------------------------------------------------------------------
# synthetic Gaussian mixtures
# ---------------------------------------------------------------------------------------
def test_mixture_is_deterministic_by_seed():
    a = make_gaussian_mixture(n_samples=300, n_components=4, dim=3, seed=7, weights="dirichlet")
    b = make_gaussian_mixture(n_samples=300, n_components=4, dim=3, seed=7, weights="dirichlet")
    c = make_gaussian_mixture(n_samples=300, n_components=4, dim=3, seed=8, weights="dirichlet")
    assert isinstance(a, MixtureData)
    for field in ("x", "labels", "weights", "means", "covariances"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.means, c.means)
    assert a.x.dtype == torch.float32 and a.means.dtype == torch.float64
    assert a.x.shape == (300, 3) and a.labels.shape == (300,) and a.weights.shape == (4,)
    assert a.means.shape == (4, 3) and a.covariances.shape == (4, 3, 3)
    assert math.isclose(float(a.weights.sum()), 1.0, rel_tol=1e-12)
    assert len(set(a.weights.tolist())) == 4  # dirichlet weights differ


@pytest.mark.parametrize("covariance", ["random", "diag", "spherical", "identity"])
def test_mixture_parameters_are_valid_and_separated(covariance):
    for seed in range(5):
        m = make_gaussian_mixture(n_samples=10, n_components=5, dim=3, separation=3.0, seed=seed,
                                  covariance=covariance)
        eig = torch.linalg.eigvalsh(m.covariances)
        assert (eig >= 0.25 - 1e-9).all() and (eig <= 1 + 1e-9).all()
        assert torch.allclose(m.covariances, m.covariances.transpose(-1, -2))
        if covariance in ("diag", "spherical", "identity"):
            off = m.covariances - torch.diag_embed(torch.diagonal(m.covariances, dim1=-2, dim2=-1))
            assert (off == 0).all()
        dist = torch.cdist(m.means, m.means) + torch.eye(5) * 1e9
        max_std = eig.max().sqrt()
        assert dist.min() >= 3.0 * max_std
        assert dist.min() <= 3.0 * 3  # "roughly": the closest pair is not absurdly far


def test_mixture_sample_moments_match_parameters():
    m = make_gaussian_mixture(n_samples=60000, n_components=3, dim=2, seed=1, weights="dirichlet",
                              dtype=torch.float64)
    counts = torch.bincount(m.labels, minlength=3).double()
    n = m.x.shape[0]
    se_w = (m.weights * (1 - m.weights) / n).sqrt()
    assert ((counts / n - m.weights).abs() <= 4 * se_w).all()
    for k in range(3):
        xk = m.x[m.labels == k]
        mean = xk.mean(0)
        se_mean = (torch.diagonal(m.covariances[k]) / xk.shape[0]).sqrt()
        assert ((mean - m.means[k]).abs() <= 4 * se_mean).all()
        cov = torch.cov(xk.T)
        # sampling sd of a covariance entry is at most ~ sqrt(2) * max var / sqrt(n_k)
        tol = 4 * math.sqrt(2.0) * float(torch.diagonal(m.covariances[k]).max()) / math.sqrt(xk.shape[0])
        assert (cov - m.covariances[k]).abs().max() <= tol


def test_mixture_log_prob_equals_naive_computation():
    m = make_gaussian_mixture(n_samples=50, n_components=3, dim=2, seed=2, weights=[0.2, 0.3, 0.5])
    x = m.x.double()
    naive = torch.zeros(50, dtype=torch.float64)
    for i in range(50):
        total = 0.0
        for k in range(3):
            cov = m.covariances[k]
            diff = x[i] - m.means[k]
            quad = diff @ torch.linalg.solve(cov, diff)
            dens = math.exp(-0.5 * float(quad)) / math.sqrt((2 * math.pi) ** 2 * float(torch.det(cov)))
            total += float(m.weights[k]) * dens
        naive[i] = math.log(total)
    lp = m.log_prob(m.x)
    assert lp.shape == (50,) and lp.dtype == torch.float64
    assert torch.allclose(lp, naive, rtol=0, atol=1e-10)
    assert torch.allclose(m.log_prob(m.x.numpy()), naive, rtol=0, atol=1e-10)
    assert torch.allclose(m.weights, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(M, 2\)"):
        m.log_prob(torch.zeros(4, 3))


def test_mixture_split_and_fresh_samples():
    m = make_gaussian_mixture(n_samples=200, seed=0)
    tr, te, ltr, lte = m.split(test_fraction=0.25, seed=1)
    assert tr.shape == (150, 2) and te.shape == (50, 2) and ltr.shape == (150,)
    # labels travel with their rows, and train and test rows together are the whole data
    pairs = sorted((tuple(r), int(k)) for r, k in zip(m.x.tolist(), m.labels.tolist()))
    got = sorted((tuple(r), int(k)) for r, k in
                 zip(torch.cat([tr, te]).tolist(), torch.cat([ltr, lte]).tolist()))
    assert got == pairs
    x1, l1 = m.sample(100, seed=9)
    x2, l2 = m.sample(100, seed=9)
    assert torch.equal(x1, x2) and torch.equal(l1, l2) and x1.dtype == m.x.dtype
    # average log density of fresh samples is close to that of the training samples
    assert abs(float(m.log_prob(x1).mean() - m.log_prob(m.x).mean())) < 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"n_components": 0}, "n_components must be at least 1"),
    ({"dim": 2.5}, "dim must be an integer"),
    ({"separation": -1}, "separation must be a number >= 0"),
    ({"covariance": "tied"}, "covariance must be one of"),
    ({"weights": [0.5, 0.5]}, "weights must be 3 non-negative numbers"),
    ({"weights": "skewed"}, "weights must be 'uniform', 'dirichlet'"),
])
def test_mixture_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_gaussian_mixture(**kwargs)
