import pytest
import torch

from pyro_vae.data import binarize, threshold


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
    with pytest.raises(TypeError, match="seed must be an integer"):
        binarize(torch.tensor([0.5]), seed=1.5)


def test_threshold():
    x = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])
    assert threshold(x).tolist() == [0, 0, 0, 1, 1]
    assert threshold(x, level=0.2).tolist() == [0, 1, 1, 1, 1]
    with pytest.raises(TypeError, match="level must be a number"):
        threshold(x, level="0.5")
    with pytest.raises(ValueError, match="level must be finite"):
        threshold(x, level=float("inf"))
