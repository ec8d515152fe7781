"""Tests of pyro_vae.mixture.initialization: k-means++, Lloyd, random inits, given parameters.

References: the generating clustering of well-separated data, the best of many runs, explicit
nearest-center assignments, and the in-memory fit of the rows an initialization reads.
"""

import numpy as np
import pytest
import torch

from gaussian_mixtures import F64, TRUE_MEANS, fit_quietly, mixture_data, overlapping_data, random_parameters
from pyro_vae.mixture import INIT_METHODS, GaussianMixture
from pyro_vae.mixture import initialization as I
from pyro_vae.mixture import sources


def test_n_init_keeps_the_best_run_and_random_state_is_reproducible():
    x = overlapping_data(n=300, d=2, seed=9)
    kwargs = dict(init_params="random_from_data", random_state=3, tol=1e-4, max_iter=100)
    one = fit_quietly(GaussianMixture(4, n_init=1, **kwargs), x)
    many = fit_quietly(GaussianMixture(4, n_init=3, **kwargs), x)
    again = fit_quietly(GaussianMixture(4, n_init=3, **kwargs), x)
    assert many.lower_bound_ >= one.lower_bound_  # the first of the 3 runs is the single run
    assert again.lower_bound_ == many.lower_bound_
    assert torch.equal(again.means_, many.means_)
    # numpy random states, as scikit-learn takes them: a seed is drawn from them
    short = dict(kwargs, max_iter=3, tol=0.0, n_init=2)
    a = fit_quietly(GaussianMixture(4, **{**short, "random_state": np.random.RandomState(5)}), x)
    b = fit_quietly(GaussianMixture(4, **{**short, "random_state": np.random.RandomState(5)}), x)
    c = fit_quietly(GaussianMixture(4, **{**short, "random_state": np.random.default_rng(5)}), x)
    d = fit_quietly(GaussianMixture(4, **{**short, "random_state": np.random.default_rng(5)}), x)
    assert torch.equal(a.means_, b.means_) and torch.equal(c.means_, d.means_)
    assert not torch.equal(a.means_, c.means_)


@pytest.mark.parametrize("init", INIT_METHODS)
def test_initializations_reach_the_optimum_on_separated_data(init):
    x, labels = mixture_data(600, seed=10)
    best = GaussianMixture(3, n_init=3, random_state=0, tol=1e-8).fit(x).lower_bound_
    n_init = 1 if init == "random" else 3
    gm = GaussianMixture(3, init_params=init, random_state=1, n_init=n_init, tol=1e-6, max_iter=300).fit(x)
    assert gm.lower_bound_ <= best + 1e-9
    if init != "random":  # random responsibilities start all components near the data mean
        assert gm.lower_bound_ == pytest.approx(best, abs=1e-5)
        # the clustering is the generating one, up to relabelling
        pred = gm.predict(x)
        agree = sum(int(torch.bincount(pred[labels == c], minlength=3).max()) for c in range(3))
        assert agree >= 0.97 * len(x)


def test_scikit_learn_spellings_of_the_methods_are_the_same_methods():
    x = overlapping_data(n=200, d=2)
    for alias, name in I.INIT_ALIASES.items():
        a = GaussianMixture(3, init_params=alias, random_state=2, max_iter=0).fit(x)
        b = GaussianMixture(3, init_params=name, random_state=2, max_iter=0).fit(x)
        assert torch.equal(a.means_, b.means_)


def test_kmeans_plusplus_and_lloyd_find_separated_centers():
    x, labels = mixture_data(300, seed=4)
    g = torch.Generator().manual_seed(0)
    seeds = I.kmeans_plusplus(x, 3, g)
    # the seeds are distinct rows of the data, in three different clusters
    rows = [int(torch.nonzero((x == s).all(1))[0]) for s in seeds]
    assert sorted(labels[rows].tolist()) == [0, 1, 2]
    centers = I.lloyd(x, seeds)
    # a fixed point of Lloyd's iteration: each center is the mean of the points nearest to it
    nearest = torch.cdist(x, centers).argmin(1)
    for k in range(3):
        torch.testing.assert_close(centers[k], x[nearest == k].mean(0), rtol=0, atol=1e-12)
    order = torch.argsort(centers[:, 0] * 10 + centers[:, 1])
    truth = torch.argsort(TRUE_MEANS[:, 0] * 10 + TRUE_MEANS[:, 1])
    torch.testing.assert_close(centers[order], TRUE_MEANS[truth], atol=0.35, rtol=0)


@pytest.mark.parametrize("method", INIT_METHODS)
def test_initial_responsibilities_are_distributions(method):
    x = overlapping_data(n=50, d=2)
    resp = I.initial_responsibilities(x, 4, method, torch.Generator().manual_seed(1))
    assert resp.shape == (50, 4) and (resp >= 0).all()
    torch.testing.assert_close(resp.sum(1), torch.ones(50, dtype=F64))
    if method != "random":   # hard assignments to the nearest center
        assert set(resp.unique().tolist()) == {0.0, 1.0}
    again = I.initial_responsibilities(x, 4, method, torch.Generator().manual_seed(1))
    assert torch.equal(resp, again)


def test_partial_initial_parameters_are_used():
    x, _ = mixture_data(300, seed=11)
    m = TRUE_MEANS.clone()
    gm = GaussianMixture(3, means_init=m, max_iter=0).fit(x)
    assert torch.equal(gm.means_, m) and gm.n_iter_ == 0
    w = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    gm = GaussianMixture(3, weights_init=w, max_iter=0, random_state=0).fit(x)
    assert torch.equal(gm.weights_, w)


def test_a_collapsed_initial_covariance_starts_from_the_data_covariance():
    g = torch.Generator().manual_seed(3)
    # k-means puts the 20 copies of one point in a cluster of their own: a zero covariance
    x = torch.cat([torch.randn(80, 2, generator=g, dtype=F64), torch.full((20, 2), 6.0, dtype=F64)])
    gm = GaussianMixture(2, covariance_type="diag", reg_covar=0.0, random_state=0, max_iter=0).fit(x)
    k = int(torch.argmax(gm.means_[:, 0]))
    torch.testing.assert_close(gm.means_[k], torch.full((2,), 6.0, dtype=F64), rtol=0, atol=1e-12)
    centered = x - x.mean(0)
    torch.testing.assert_close(gm.covariances_[k], (centered ** 2).mean(0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"weights_init": [0.5, 0.6]}, "sum to 1"),
    ({"weights_init": [0.5, 0.25, 0.25]}, r"shape \(2,\)"),
    ({"means_init": np.zeros((2, 3))}, r"shape \(2, 2\)"),
    ({"precisions_init": np.eye(2)}, r"shape \(2, 2, 2\)"),
    ({"precisions_init": np.stack([np.eye(2), -np.eye(2)])}, "positive definite"),
    ({"precisions_init": np.stack([np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])}, "symmetric"),
])
def test_bad_initial_parameters_are_rejected(kwargs, match):
    x = overlapping_data(n=20, d=2)
    with pytest.raises(ValueError, match=match):
        GaussianMixture(2, **kwargs).fit(x)


def test_fit_in_chunks_from_given_parameters_and_with_initialization_on_the_first_rows(monkeypatch):
    x = overlapping_data(n=600, d=2)
    w, m, prec = random_parameters(x, 3, "full", seed=2)
    kwargs = dict(weights_init=w, means_init=m, precisions_init=prec, tol=0.0, max_iter=25)
    ref = fit_quietly(GaussianMixture(3, **kwargs), x)
    gm = fit_quietly(GaussianMixture(3, **kwargs), [x[:100], x[100:101], x[101:]])
    assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
    torch.testing.assert_close(gm.covariances_, ref.covariances_, rtol=0, atol=1e-10)
    # k-means on the first 200 rows only: the in-memory fit of those rows starts identically
    monkeypatch.setattr(sources, "INIT_ROWS", 200)
    head = fit_quietly(GaussianMixture(3, random_state=0, max_iter=0), x[:200])
    first = fit_quietly(GaussianMixture(3, random_state=0, max_iter=0), [x[:150], x[150:]])
    shift = x[:200].mean(0) - x.mean(0)    # the chunked fit centers on the mean of all rows
    assert first.n_iter_ == head.n_iter_ == 0
    torch.testing.assert_close(first.means_, head.means_, rtol=0, atol=1e-12)
    assert (first.means_ - head.means_).abs().max() < 1e-9 < shift.abs().max()
