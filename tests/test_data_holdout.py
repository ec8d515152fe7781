import os

import numpy as np
import pandas as pd
import pytest
import torch

from data_files import MNIST_DIR
from pyro_vae.data import (MNIST_10K_TEST_SEED, SplitData, load_data, load_mnist_10k, load_split,
                           make_gaussian_mixture, resolve_data_location, train_test_split)


def test_synthetic_split_is_the_mixture_split_by_its_own_seed():
    s = load_split("synthetic", n_samples=300, n_components=2, dim=3, seed=4, split_seed=9,
                   test_fraction=0.2)
    assert isinstance(s, SplitData) and s.shape is None
    m = make_gaussian_mixture(n_samples=300, n_components=2, dim=3, seed=4)
    tr, te, ltr, lte = train_test_split(m.x, test_fraction=0.2, seed=9, labels=m.labels)
    assert torch.equal(s.train_x, tr) and torch.equal(s.test_x, te)
    assert torch.equal(s.train_labels, ltr) and torch.equal(s.test_labels, lte)
    assert torch.equal(s.mixture.means, m.means)
    # the data seed and the split seed are separate: another split of the same data
    other = load_split("synthetic", n_samples=300, n_components=2, dim=3, seed=4, split_seed=10,
                       test_fraction=0.2)
    assert torch.equal(other.mixture.x, m.x) and not torch.equal(other.test_x, s.test_x)
    # and other data under the same split
    assert not torch.equal(load_split("synthetic", n_samples=300, n_components=2, dim=3, seed=5,
                                      split_seed=9, test_fraction=0.2).mixture.x, m.x)
    assert torch.equal(load_split(None, n_samples=300, n_components=2, dim=3, seed=4, split_seed=9,
                                  test_fraction=0.2).test_x, s.test_x)


def test_mixture_data_and_tables_with_labels(tmp_path):
    m = make_gaussian_mixture(n_samples=100, seed=1)
    s = load_split(m, test_fraction=0.25, split_seed=2)
    assert s.mixture is m and torch.equal(s.test_labels, m.split(test_fraction=0.25, seed=2)[3])

    frame = pd.DataFrame(m.x.double().numpy(), columns=["u", "v"])
    frame["kind"] = np.where(m.labels.numpy() == 0, "zero", "other")
    p = tmp_path / "points.csv"
    frame.to_csv(p, index=False, float_format="%.17g")
    s = load_split(str(p), label_column="kind", test_fraction=0.25, split_seed=2, dtype=torch.float64)
    # text labels are coded in sorted order: "other" 0, "zero" 1
    tr, te, ltr, lte = train_test_split(torch.tensor(frame[["u", "v"]].to_numpy()), test_fraction=0.25,
                                        seed=2, labels=(m.labels == 0).long())
    assert torch.equal(s.train_x, tr) and torch.equal(s.test_x, te)
    assert torch.equal(s.test_labels, lte) and s.mixture is None and s.name == "points.csv"
    assert torch.equal(s.train_labels, ltr)

    # labels given with data win over none; they must fit the rows
    x = m.x.numpy()
    s = load_split(x, labels=m.labels.numpy(), test_fraction=0.25, split_seed=2)
    assert torch.equal(s.test_labels, m.split(test_fraction=0.25, seed=2)[3])
    with pytest.raises(ValueError, match=r"labels must have shape \(100,\)"):
        load_split(x, labels=np.zeros(99))
    with pytest.raises(ValueError, match="synthetic data come with their own labels"):
        load_split("synthetic", labels=np.zeros(2000))
    with pytest.raises(ValueError, match="MNIST-10k digits come with their own labels"):
        load_split("mnist10k", labels=np.zeros(10000))
    with pytest.raises(ValueError, match="MixtureData comes with its own labels"):
        load_split(m, labels=m.labels)


def test_binarize_binarizes_only_the_held_out_part_once(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 6, generator=g)
    s = load_split(x, binarize=True, test_fraction=0.25, split_seed=3)
    tr, te = train_test_split(x, test_fraction=0.25, seed=3)
    assert torch.equal(s.train_x, tr)  # grey levels, for dynamic binarization
    expected = torch.bernoulli(te, generator=torch.Generator().manual_seed(MNIST_10K_TEST_SEED))
    assert torch.equal(s.test_x, expected)
    with pytest.raises(TypeError, match="binarize must be True or False"):
        load_split(x, binarize="yes")


def test_values_too_large_for_float32_are_refused_at_the_split():
    with pytest.raises(ValueError, match="too large for torch.float32"):
        load_split(torch.tensor([[1e300, 0.0], [1.0, 2.0]], dtype=torch.float64))


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="real MNIST folder absent")
def test_mnist10k_is_the_protocol_split():
    s = load_split("mnist10k", root=MNIST_DIR, test_fraction=0.5, split_seed=7)
    train_x, test_x, train_y, test_y = load_mnist_10k(MNIST_DIR)
    assert torch.equal(s.train_x, train_x) and torch.equal(s.test_x, test_x)
    assert torch.equal(s.test_labels, test_y) and s.shape == (28, 28)


def test_resolve_data_location_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("a\n1\n2\n")
    source, root = resolve_data_location("x.csv")
    assert source == os.path.join(os.getcwd(), "x.csv") and root is None
    assert torch.equal(load_data(source).x, load_data("x.csv").x)
    assert resolve_data_location("synthetic") == ("synthetic", None)
    assert resolve_data_location("synthetic", "sub") == ("synthetic", os.path.join(os.getcwd(), "sub"))
    monkeypatch.delenv("PYRO_VAE_DATA_DIR", raising=False)
    assert resolve_data_location("kmnist") == ("kmnist", os.path.join(os.getcwd(), "data"))
    monkeypatch.delenv("PYRO_VAE_MNIST_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="MNIST test files"):
        resolve_data_location("mnist10k")
    t = torch.zeros(3, 2)
    assert resolve_data_location(t)[0] is t
