import math

import numpy as np
import pytest
import torch

from pyro_vae.data import MixtureData, make_gaussian_mixture


def test_mixture_is_deterministic_by_seed():
    a = make_gaussian_mixture(n_samples=300, n_components=4, dim=3, seed=7, weights="dirichlet")
    b = make_gaussian_mixture(n_samples=300, n_components=4, dim=3, seed=7, weights="dirichlet")
    c = make_gaussian_mixture(n_samples=300, n_components=4, dim=3, seed=8, weights="dirichlet")
    assert isinstance(a, MixtureData)
    for field in ("x", "labels", "weights", "means", "covariances"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.means, c.means)
    assert not torch.equal(a.weights, c.weights)
    assert a.x.dtype == torch.float32 and a.means.dtype == torch.float64
    assert a.x.shape == (300, 3) and a.labels.shape == (300,) and a.weights.shape == (4,)
    assert a.means.shape == (4, 3) and a.covariances.shape == (4, 3, 3)
    assert math.isclose(float(a.weights.sum()), 1.0, rel_tol=1e-12)
    assert len(set(a.weights.tolist())) == 4  # dirichlet weights differ


def test_dirichlet_weights_have_the_moments_of_dirichlet_5():
    """Over many seeds, each weight has mean 1/K and variance a(a0 - a) / (a0^2 (a0 + 1)) of
    Dirichlet(5, ..., 5) (K = 4: 0.25 and 5 * 15 / (400 * 21))."""
    w = torch.stack([make_gaussian_mixture(n_samples=1, n_components=4, dim=1, seed=s,
                                           weights="dirichlet", covariance="identity",
                                           separation=0.0).weights for s in range(600)])
    var = 5 * 15 / (400 * 21)
    se_mean = math.sqrt(var / 600)
    assert ((w.mean(0) - 0.25).abs() <= 4 * se_mean).all()
    # the sample variance of 600 draws is within ~15% of the truth (4 standard errors ~ 4 * sqrt(2/599))
    assert ((w.var(0) / var - 1).abs() <= 4 * math.sqrt(2 / 599)).all()


def test_weights_sequence_and_uniform_consume_no_dirichlet_draw():
    """Uniform and given weights are exact; the data of uniform weights do not depend on the
    Dirichlet sampler."""
    u = make_gaussian_mixture(n_samples=20, n_components=2, seed=3)
    g = make_gaussian_mixture(n_samples=20, n_components=2, seed=3, weights=[1, 1])
    assert torch.equal(u.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    for field in ("x", "labels", "means", "covariances"):
        assert torch.equal(getattr(u, field), getattr(g, field))


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
    ({"n_components": 0}, "n_components must be a positive integer"),
    ({"separation": -1}, "separation must be a number >= 0"),
    ({"covariance": "tied"}, "covariance must be one of"),
    ({"weights": [0.5, 0.5]}, "weights must be 3 non-negative numbers"),
    ({"weights": "skewed"}, "weights must be 'uniform', 'dirichlet'"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_mixture_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_gaussian_mixture(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 2.5}, "dim must be an integer"),
    ({"n_samples": np.float64(10)}, "n_samples must be an integer"),
    ({"seed": "0"}, "seed must be an integer"),
    ({"separation": "far"}, "separation must be a number"),
])
def test_mixture_bad_types(kwargs, message):
    with pytest.raises(TypeError, match=message):
        make_gaussian_mixture(**kwargs)
