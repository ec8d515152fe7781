import pytest
import torch

from pyro_vae.data import train_test_split


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
    # the held-out rows are the first entries of the seeded permutation
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(5))
    assert torch.equal(lte, perm[:10]) and torch.equal(ltr, perm[10:])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_train_test_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match="between 0 and 1"):
        train_test_split(torch.zeros(10, 2), test_fraction=fraction)


def test_train_test_split_too_few_rows_and_bad_labels():
    with pytest.raises(ValueError, match="at least 2 rows"):
        train_test_split(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        train_test_split(torch.zeros(10, 2), labels=torch.zeros(9))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"test_fraction": "0.1"}, TypeError, "test_fraction must be a number"),
    ({"seed": 1.0}, TypeError, "seed must be an integer"),
    ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
])
def test_train_test_split_wrong_types_and_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        train_test_split(torch.zeros(10, 2), **kwargs)
