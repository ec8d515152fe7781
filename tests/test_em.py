"""Tests of pyro_vae.em.GaussianMixture against exact references.

References: naive per-component torch.distributions computations, scikit-learn's
GaussianMixture from identical initial parameters, the generating parameters of synthetic data,
closed-form identities (ELBO = log p(x) - KL, importance weights = p(x) under the exact posterior).
"""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import pyro
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_vae import em
from pyro_vae.em import COVARIANCE_TYPES, ConvergenceWarning, GaussianMixture

F64 = torch.float64


# ----------------------------------------------------------------------------- data and helpers
TRUE_MEANS = torch.tensor([[-4.0, 0.0], [3.0, 3.0], [3.0, -3.0]], dtype=F64)
TRUE_COVS = torch.tensor([[[1.0, 0.6], [0.6, 0.8]],
                          [[0.5, 0.0], [0.0, 0.3]],
                          [[1.2, -0.4], [-0.4, 0.4]]], dtype=F64)
TRUE_WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)


def mixture_data(n, seed=0, means=TRUE_MEANS, covs=TRUE_COVS, weights=TRUE_WEIGHTS):
    """Samples of a known Gaussian mixture, shape (n, d), and their components."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    noise = torch.randn(n, means.shape[1], generator=g, dtype=F64)
    chol = torch.linalg.cholesky(covs)
    x = means[labels] + torch.einsum("nij,nj->ni", chol[labels], noise)
    return x, labels


def overlapping_data(n=400, d=3, seed=1):
    """Three overlapping clusters: EM needs many iterations, so its path is a real test."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, d, generator=g, dtype=F64) * 1.5
    scales = torch.rand(3, d, generator=g, dtype=F64) + 0.5
    labels = torch.arange(n) % 3
    return centers[labels] + torch.randn(n, d, generator=g, dtype=F64) * scales[labels]


def random_parameters(x, k, covariance_type, seed):
    """Weights on the simplex, k data points as means, random positive-definite precisions."""
    g = torch.Generator().manual_seed(seed)
    n, d = x.shape
    weights = torch.rand(k, generator=g, dtype=F64) + 0.5
    weights = weights / weights.sum()
    means = x[torch.randperm(n, generator=g)[:k]].clone()
    a = torch.randn(k, d, d, generator=g, dtype=F64) * 0.3
    prec_full = a @ a.transpose(-1, -2) + torch.eye(d, dtype=F64)
    prec = {"full": prec_full, "tied": prec_full[0],
            "diag": torch.rand(k, d, generator=g, dtype=F64) + 0.5,
            "spherical": torch.rand(k, generator=g, dtype=F64) + 0.5}[covariance_type]
    return weights, means, prec


def full_covariances(gm):
    """Covariance matrices (K, d, d) of any covariance type."""
    k, d = gm.means_.shape
    cov = gm.covariances_
    if gm.covariance_type == "full":
        return cov
    if gm.covariance_type == "tied":
        return cov.expand(k, d, d)
    if gm.covariance_type == "diag":
        return torch.diag_embed(cov)
    return cov[:, None, None] * torch.eye(d, dtype=cov.dtype)


def naive_weighted_log_prob(x, weights, means, covs):
    """log w_k + log N(x | mu_k, Sigma_k), one torch.distributions object per component."""
    cols = [torch.log(weights[k]) + torch.distributions.MultivariateNormal(means[k], covs[k]).log_prob(x)
            for k in range(len(weights))]
    return torch.stack(cols, dim=1)


def precisions_to_covariances(prec, covariance_type, k, d):
    if covariance_type == "full":
        return torch.linalg.inv(prec)
    if covariance_type == "tied":
        return torch.linalg.inv(prec).expand(k, d, d)
    if covariance_type == "diag":
        return torch.diag_embed(1.0 / prec)
    return (1.0 / prec)[:, None, None] * torch.eye(d, dtype=F64)


def fit_quietly(gm, x):
    """Fit without the "did not converge" warning (ours or scikit-learn's) of tol=0 runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*did not converge")
        return gm.fit(x)


# ----------------------------------------------------------------------------- EM properties
@pytest.mark.parametrize("algorithm", ["auto", "centered"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_likelihood_never_decreases(covariance_type, algorithm):
    x = overlapping_data()
    w, m, prec = random_parameters(x, 3, covariance_type, seed=0)  # a poor start: EM has work to do
    gm = fit_quietly(GaussianMixture(3, covariance_type=covariance_type, reg_covar=0.0, tol=0.0,
                                     max_iter=40, weights_init=w, means_init=m, precisions_init=prec,
                                     algorithm=algorithm), x)
    ll = gm.history_["log_likelihood"].to_numpy()
    assert len(ll) == 40 and list(gm.history_["iteration"]) == list(range(1, 41))
    assert (np.diff(ll) >= -1e-10 * np.abs(ll[1:])).all()
    assert ll[-1] > ll[0] + 0.05  # EM actually moved: the check above is not vacuous
    assert np.all(np.diff(gm.history_["seconds"].to_numpy()) >= 0)
    assert gm.lower_bound_ == ll[-1]


@pytest.mark.parametrize("algorithm", ["gram", "centered"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_densities_equal_naive_multivariate_normal(covariance_type, algorithm):
    x = overlapping_data(n=300, d=3)
    k, d = 4, 3
    w, m, prec = random_parameters(x, k, covariance_type, seed=2)
    covs = precisions_to_covariances(prec, covariance_type, k, d)
    naive = naive_weighted_log_prob(x, w, m, covs)
    # one EM iteration: its E step evaluates the initial parameters (gram or centered form)
    gm = fit_quietly(GaussianMixture(k, covariance_type=covariance_type, max_iter=1, weights_init=w,
                                     means_init=m, precisions_init=prec, algorithm=algorithm), x)
    assert gm.lower_bound_ == pytest.approx(float(torch.logsumexp(naive, 1).mean()), rel=1e-12)
    # the fitted parameters, through the prediction methods
    naive = naive_weighted_log_prob(x, gm.weights_, gm.means_, full_covariances(gm))
    torch.testing.assert_close(gm.score_samples(x), torch.logsumexp(naive, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm.predict_proba(x), torch.softmax(naive, 1), rtol=1e-10, atol=1e-12)
    assert torch.equal(gm.predict(x), naive.argmax(1))
    assert gm.score(x) == pytest.approx(float(torch.logsumexp(naive, 1).mean()), rel=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_attributes_are_consistent(covariance_type):
    x = overlapping_data()
    gm = GaussianMixture(3, covariance_type=covariance_type, seed=0).fit(x)
    pc, prec, cov = gm.precisions_cholesky_, gm.precisions_, gm.covariances_
    if covariance_type in ("full", "tied"):
        assert torch.equal(pc, pc.triu())  # upper triangular, as in scikit-learn
        torch.testing.assert_close(pc @ pc.transpose(-1, -2), prec)
        torch.testing.assert_close(prec @ cov, torch.eye(3, dtype=F64).expand_as(cov), atol=1e-10, rtol=0)
    else:
        torch.testing.assert_close(pc ** 2, prec)
        torch.testing.assert_close(prec * cov, torch.ones_like(cov))


def test_parameters_are_recovered():
    x, _ = mixture_data(6000, seed=3)
    gm = GaussianMixture(3, seed=0, n_init=2, tol=1e-6).fit(x)
    order = torch.argsort(gm.means_[:, 0] * 10 + gm.means_[:, 1])  # (-4,0), (3,-3), (3,3)
    truth = torch.argsort(TRUE_MEANS[:, 0] * 10 + TRUE_MEANS[:, 1])
    torch.testing.assert_close(gm.means_[order], TRUE_MEANS[truth], atol=0.1, rtol=0)
    torch.testing.assert_close(gm.covariances_[order], TRUE_COVS[truth], atol=0.15, rtol=0)
    torch.testing.assert_close(gm.weights_[order], TRUE_WEIGHTS[truth], atol=0.03, rtol=0)
    assert gm.converged_


@pytest.mark.parametrize("algorithm", ["auto", "gram", "centered"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_agrees_with_scikit_learn_from_identical_initial_parameters(covariance_type, algorithm):
    sk_mixture = pytest.importorskip("sklearn.mixture")
    x = overlapping_data(n=400, d=3, seed=4)
    w, m, prec = random_parameters(x, 3, covariance_type, seed=5)
    inits = dict(weights_init=w.numpy(), means_init=m.numpy(), precisions_init=prec.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = sk_mixture.GaussianMixture(3, covariance_type=covariance_type, max_iter=40, tol=0.0,
                                        **inits).fit(x.numpy())
    ours = fit_quietly(GaussianMixture(3, covariance_type=covariance_type, max_iter=40, tol=0.0,
                                       algorithm=algorithm, **inits), x)
    assert ours.n_iter_ == sk.n_iter_ == 40
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-8)
    assert ours.score(x) == pytest.approx(sk.score(x.numpy()), rel=1e-8)
    np.testing.assert_allclose(ours.weights_.numpy(), sk.weights_, rtol=1e-7)
    np.testing.assert_allclose(ours.means_.numpy(), sk.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.covariances_.numpy(), sk.covariances_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.precisions_cholesky_.numpy(), sk.precisions_cholesky_,
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.predict_proba(x).numpy(), sk.predict_proba(x.numpy()), atol=1e-8)
    assert ours.bic(x) == pytest.approx(sk.bic(x.numpy()), rel=1e-8)
    assert ours.aic(x) == pytest.approx(sk.aic(x.numpy()), rel=1e-8)
    assert ours.n_parameters() == sk._n_parameters()


def test_same_stopping_iteration_as_scikit_learn_with_a_tolerance():
    sk_mixture = pytest.importorskip("sklearn.mixture")
    x = overlapping_data(n=400, d=3, seed=4)
    w, m, prec = random_parameters(x, 3, "full", seed=5)
    inits = dict(weights_init=w.numpy(), means_init=m.numpy(), precisions_init=prec.numpy())
    sk = sk_mixture.GaussianMixture(3, tol=1e-4, max_iter=500, **inits).fit(x.numpy())
    ours = GaussianMixture(3, tol=1e-4, max_iter=500, **inits).fit(x)
    assert ours.converged_ and sk.converged_
    assert ours.n_iter_ == sk.n_iter_ > 3
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-8)


def test_centered_path_is_used_where_the_gram_form_would_lose_precision():
    sk_mixture = pytest.importorskip("sklearn.mixture")
    g = torch.Generator().manual_seed(6)
    # a very tight cluster far from the data mean: the expanded quadratic form cancels badly
    x = torch.cat([torch.randn(200, 2, generator=g, dtype=F64),
                   1e4 + 1e-3 * torch.randn(200, 2, generator=g, dtype=F64)])
    w = torch.tensor([0.5, 0.5], dtype=F64)
    m = x[[0, 300]].clone()
    prec = torch.stack([torch.eye(2, dtype=F64), 1e6 * torch.eye(2, dtype=F64)])
    inits = dict(weights_init=w.numpy(), means_init=m.numpy(), precisions_init=prec.numpy())
    params = em._Params(w, m - x.mean(0), None, torch.linalg.cholesky(prec))
    assert em._gram_error(params, "full") > 1e3 * em.GRAM_TOLERANCE
    kwargs = dict(max_iter=20, tol=0.0, reg_covar=0.0, **inits)
    sk = fit_quietly(sk_mixture.GaussianMixture(2, **kwargs), x.numpy())
    auto = fit_quietly(GaussianMixture(2, **kwargs), x)
    centered = fit_quietly(GaussianMixture(2, algorithm="centered", **kwargs), x)
    assert auto.lower_bound_ == centered.lower_bound_
    assert auto.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-8)
    # forcing the gram form on these data loses many digits (or fails outright)
    try:
        gram = fit_quietly(GaussianMixture(2, algorithm="gram", **kwargs), x)
    except ValueError:
        return
    assert abs(gram.lower_bound_ - sk.lower_bound_) > 1e-8 * abs(sk.lower_bound_)


def test_chunked_and_uncached_computation_equals_the_default(monkeypatch):
    x = overlapping_data(n=500, d=3)
    w, m, prec = random_parameters(x, 3, "full", seed=7)
    inits = dict(weights_init=w, means_init=m, precisions_init=prec, max_iter=15, tol=0.0)
    results = {}
    for ct in ("full", "diag"):
        if ct == "diag":
            inits["precisions_init"] = torch.diagonal(prec, dim1=-2, dim2=-1).clone()
        results[ct] = fit_quietly(GaussianMixture(3, covariance_type=ct, **inits), x)
    monkeypatch.setattr(em, "_CHUNK_ELEMENTS", 40)        # many chunks, some of uneven size
    monkeypatch.setattr(em, "_FEATURE_CACHE_BYTES", 0)    # gram features recomputed per chunk
    for ct in ("full", "diag"):
        if ct == "diag":
            inits["precisions_init"] = torch.diagonal(prec, dim1=-2, dim2=-1).clone()
        else:
            inits["precisions_init"] = prec
        for algorithm in ("gram", "centered"):
            chunked = fit_quietly(GaussianMixture(3, covariance_type=ct, algorithm=algorithm, **inits), x)
            assert chunked.lower_bound_ == pytest.approx(results[ct].lower_bound_, rel=1e-13)
            torch.testing.assert_close(chunked.covariances_, results[ct].covariances_, rtol=1e-11, atol=1e-13)
            torch.testing.assert_close(chunked.score_samples(x), results[ct].score_samples(x), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- model selection
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_n_parameters_formula(covariance_type):
    k, d = 4, 3
    x = overlapping_data(n=200, d=d)
    gm = GaussianMixture(k, covariance_type=covariance_type, seed=0, max_iter=5)
    fit_quietly(gm, x)
    cov_params = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d,
                  "spherical": k}[covariance_type]
    assert gm.n_parameters() == cov_params + k * d + (k - 1)
    assert gm.bic(x) == pytest.approx(-2 * gm.score_samples(x).sum().item() + gm.n_parameters() * math.log(200))
    assert gm.aic(x) == pytest.approx(-2 * gm.score_samples(x).sum().item() + 2 * gm.n_parameters())


def test_bic_picks_the_true_number_of_components():
    x, _ = mixture_data(900, seed=8)
    bic = [GaussianMixture(k, seed=0, n_init=2).fit(x).bic(x) for k in range(1, 6)]
    assert int(np.argmin(bic)) + 1 == 3


def test_n_init_keeps_the_best_run_and_seed_is_reproducible():
    x = overlapping_data(n=300, d=2, seed=9)
    kwargs = dict(init="random_from_data", seed=3, tol=1e-4, max_iter=100)
    one = fit_quietly(GaussianMixture(4, n_init=1, **kwargs), x)
    many = fit_quietly(GaussianMixture(4, n_init=3, **kwargs), x)
    again = fit_quietly(GaussianMixture(4, n_init=3, **kwargs), x)
    assert many.lower_bound_ >= one.lower_bound_  # the first of the 3 runs is the single run
    assert again.lower_bound_ == many.lower_bound_
    assert torch.equal(again.means_, many.means_)


@pytest.mark.parametrize("init", em.INIT_METHODS)
def test_initializations_reach_the_optimum_on_separated_data(init):
    x, labels = mixture_data(600, seed=10)
    best = GaussianMixture(3, n_init=3, seed=0, tol=1e-8).fit(x).lower_bound_
    n_init = 1 if init == "random" else 3
    gm = GaussianMixture(3, init=init, seed=1, n_init=n_init, tol=1e-6, max_iter=300).fit(x)
    assert gm.lower_bound_ <= best + 1e-9
    if init != "random":  # random responsibilities start all components near the data mean
        assert gm.lower_bound_ == pytest.approx(best, abs=1e-5)
        # the clustering is the generating one, up to relabelling
        pred = gm.predict(x)
        agree = sum(int(torch.bincount(pred[labels == c], minlength=3).max()) for c in range(3))
        assert agree >= 0.97 * len(x)


def test_partial_initial_parameters_are_used():
    x, _ = mixture_data(300, seed=11)
    m = TRUE_MEANS.clone()
    gm = GaussianMixture(3, means_init=m, max_iter=0).fit(x)
    assert torch.equal(gm.means_, m) and gm.n_iter_ == 0
    w = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    gm = GaussianMixture(3, weights_init=w, max_iter=0, seed=0).fit(x)
    assert torch.equal(gm.weights_, w)


# ----------------------------------------------------------------------------- the ELBO view
def test_elbo_equals_log_likelihood_at_the_posterior_and_is_smaller_elsewhere():
    x = overlapping_data(n=200, d=3)
    gm = GaussianMixture(3, seed=0).fit(x)
    ll = gm.score_samples(x)
    torch.testing.assert_close(gm.elbo(x), ll, rtol=0, atol=1e-12)
    torch.testing.assert_close(gm.elbo(x, gm.predict_proba(x)), ll, rtol=0, atol=1e-12)
    # any other q: ELBO = log p(x) - KL(q || p(z|x)), computed here from its definition
    q = torch.softmax(torch.randn(200, 3, dtype=F64), 1)
    post = gm.predict_proba(x)
    kl = (q * (q.log() - post.log())).sum(1)
    torch.testing.assert_close(gm.elbo(x, q), ll - kl, rtol=0, atol=1e-10)
    assert (kl > 0).all()
    # hard assignments (zeros in q) are allowed: 0 log 0 = 0
    hard = torch.nn.functional.one_hot(gm.predict(x), 3).to(F64)
    e = gm.elbo(x, hard)
    assert torch.isfinite(e).all() and (e <= ll + 1e-12).all()


def test_elbo_rejects_bad_responsibilities():
    x = overlapping_data(n=50, d=2)
    gm = GaussianMixture(2, seed=0).fit(x)
    with pytest.raises(ValueError, match="shape"):
        gm.elbo(x, torch.full((50, 3), 1 / 3))
    with pytest.raises(ValueError, match="sum to 1"):
        gm.elbo(x, torch.full((50, 2), 0.4))
    with pytest.raises(ValueError, match="non-negative"):
        gm.elbo(x, torch.tensor([[1.5, -0.5]]).expand(50, 2))


# ----------------------------------------------------------------------------- Pyro model / guide
def per_datapoint_log_weight(gm, x, num_data=None):
    """log p(x, z) - log q(z|x) per datapoint for one z drawn from the guide."""
    guide_trace = poutine.trace(gm.guide).get_trace(x, num_data=num_data)
    model_trace = poutine.trace(poutine.replay(gm.model, trace=guide_trace)).get_trace(x, num_data=num_data)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    # per-datapoint log-densities, before the plate's num_data / batch scaling
    log_w = (model_trace.nodes["x"]["unscaled_log_prob"] + model_trace.nodes["z"]["unscaled_log_prob"]
             - guide_trace.nodes["z"]["unscaled_log_prob"])
    return log_w, guide_trace.nodes["z"]["value"]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_exact_posterior_guide_gives_zero_variance_importance_weights(covariance_type):
    x = overlapping_data(n=150, d=3)
    gm = GaussianMixture(3, covariance_type=covariance_type, seed=0).fit(x)
    truth = gm.score_samples(x)
    draws = []
    for _ in range(5):
        log_w, z = per_datapoint_log_weight(gm, x)
        assert log_w.shape == (150,)
        torch.testing.assert_close(log_w, truth, rtol=0, atol=1e-10)
        draws.append(z)
    assert not all(torch.equal(draws[0], z) for z in draws[1:])  # z really was random


def test_guide_samples_from_the_posterior():
    x = overlapping_data(n=4, d=3)
    gm = GaussianMixture(3, seed=0).fit(overlapping_data(n=300, d=3))
    with pyro.plate("particles", 20000, dim=-2):
        tr = poutine.trace(gm.guide).get_trace(x)
    z = tr.nodes["z"]["value"]
    assert z.shape == (20000, 4)
    freq = torch.stack([(z == k).double().mean(0) for k in range(3)], 1)
    torch.testing.assert_close(freq, gm.predict_proba(x), atol=0.015, rtol=0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_enumerating_z_in_the_model_gives_the_exact_log_likelihood(covariance_type):
    x = overlapping_data(n=100, d=3)
    gm = GaussianMixture(3, covariance_type=covariance_type, seed=0).fit(x)

    def empty_guide(x, num_data=None):
        pass

    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(gm.model), empty_guide, x)
    assert loss == pytest.approx(-gm.score_samples(x).sum().item(), rel=1e-12)


def test_num_data_scales_a_minibatch_to_the_full_data_set():
    x = overlapping_data(n=100, d=3)
    gm = GaussianMixture(3, seed=0).fit(x)
    batch = x[:10]
    log_w, _ = per_datapoint_log_weight(gm, batch, num_data=100)
    torch.testing.assert_close(log_w, gm.score_samples(batch), rtol=0, atol=1e-10)
    guide_trace = poutine.trace(gm.guide).get_trace(batch, num_data=100)
    model_trace = poutine.trace(poutine.replay(gm.model, trace=guide_trace)).get_trace(batch, num_data=100)
    estimate = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    assert model_trace.nodes["x"]["scale"] == pytest.approx(10.0)
    assert estimate.item() == pytest.approx(10 * gm.score_samples(batch).sum().item(), rel=1e-12)
    with pytest.raises(ValueError, match="num_data"):
        gm.model(batch, num_data=5)


def test_model_and_guide_check_their_input():
    gm = GaussianMixture(2, seed=0).fit(overlapping_data(n=50, d=2))
    with pytest.raises(ValueError, match="shape"):
        gm.model(torch.zeros(5, 3, dtype=F64))
    with pytest.raises(TypeError):
        gm.guide(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="not fitted"):
        GaussianMixture(2).model(torch.zeros(5, 2))


# ----------------------------------------------------------------------------- sampling, predict
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_samples_follow_the_fitted_mixture(covariance_type):
    x, _ = mixture_data(1000, seed=12)
    gm = GaussianMixture(3, covariance_type=covariance_type, seed=0).fit(x)
    s, labels = gm.sample(30000, seed=1)
    assert s.shape == (30000, 2) and labels.shape == (30000,) and s.dtype == F64
    torch.testing.assert_close(torch.bincount(labels, minlength=3).to(F64) / 30000.0, gm.weights_, atol=0.012, rtol=0)
    covs = full_covariances(gm)
    for k in range(3):
        sk = s[labels == k]
        torch.testing.assert_close(sk.mean(0), gm.means_[k], atol=0.06, rtol=0)
        torch.testing.assert_close(torch.cov(sk.T), covs[k], atol=0.08, rtol=0.05)
    again, _ = gm.sample(30000, seed=1)
    assert torch.equal(again, s)


def test_fit_predict_equals_predict_and_probabilities_sum_to_one():
    x, _ = mixture_data(300, seed=13)
    gm = GaussianMixture(3, seed=0)
    labels = gm.fit_predict(x)
    assert torch.equal(labels, gm.predict(x))
    torch.testing.assert_close(gm.predict_proba(x).sum(1), torch.ones(300, dtype=F64))


# ----------------------------------------------------------------------------- input handling
def test_numpy_torch_and_pandas_inputs_give_the_same_fit():
    x = overlapping_data(n=200, d=3)
    fits = [GaussianMixture(3, seed=0).fit(v) for v in
            (x, x.numpy(), pd.DataFrame(x.numpy(), columns=["a", "b", "c"]), x.tolist())]
    for gm in fits[1:]:
        assert gm.lower_bound_ == fits[0].lower_bound_
        assert torch.equal(gm.means_, fits[0].means_)
    frame = pd.DataFrame(x.numpy())
    torch.testing.assert_close(fits[0].score_samples(frame), fits[0].score_samples(x))


def test_float32_input_is_computed_in_float64_unless_asked():
    x = overlapping_data(n=300, d=3)
    x32 = x.float()
    a = GaussianMixture(3, seed=0).fit(x32)
    b = GaussianMixture(3, seed=0).fit(x32.double())
    assert a.means_.dtype == F64 and a.lower_bound_ == b.lower_bound_
    assert torch.equal(a.covariances_, b.covariances_)
    # float32 computation: same iterations, results equal to float32 precision
    w, m, prec = random_parameters(x, 3, "full", seed=1)
    kwargs = dict(max_iter=20, tol=0.0, weights_init=w, means_init=m, precisions_init=prec)
    a = fit_quietly(GaussianMixture(3, **kwargs), x32)
    c = fit_quietly(GaussianMixture(3, dtype=torch.float32, **kwargs), x32)
    assert c.means_.dtype == torch.float32 and c.score_samples(x32).dtype == torch.float32
    assert c.lower_bound_ == pytest.approx(a.lower_bound_, rel=1e-5)
    torch.testing.assert_close(c.score_samples(x32).double(), a.score_samples(x32), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), "NaN or infinite"),
    (np.array([[0.0, 1.0], [np.inf, 2.0], [1.0, 1.0]]), "NaN or infinite"),
    (np.arange(5.0), r"2-D .*reshape 1-D data with X.reshape\(-1, 1\)"),
    (np.zeros((4, 2, 2)), "2-D"),
    (np.zeros((2, 2)), "2 samples but n_components=3"),
    (pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": ["x", "y", "z", "w"]}), "non-numeric columns: b"),
    (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), "numbers"),
])
def test_bad_data_is_rejected_with_a_message(bad, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(3).fit(bad)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n_components": 0}, ValueError, "n_components must be >= 1"),
    ({"n_components": 2.5}, TypeError, "n_components must be an integer"),
    ({"covariance_type": "banana"}, ValueError, "unknown covariance_type 'banana'; use one of full"),
    ({"init": "banana"}, ValueError, "unknown init"),
    ({"algorithm": "fast"}, ValueError, "unknown algorithm"),
    ({"tol": -1.0}, ValueError, "tol must be"),
    ({"reg_covar": float("nan")}, ValueError, "reg_covar must be"),
    ({"max_iter": -1}, ValueError, "max_iter must be"),
    ({"n_init": 0}, ValueError, "n_init must be"),
    ({"dtype": torch.int64}, TypeError, "dtype"),
    ({"device": "gpu"}, ValueError, "device='gpu' is not a device"),
])
def test_bad_settings_are_rejected(kwargs, error, match):
    args = {"n_components": 2, **kwargs}
    with pytest.raises(error, match=match):
        GaussianMixture(**args)


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


def test_collapsing_component_without_regularization_says_what_to_do():
    g = torch.Generator().manual_seed(14)
    # 30 copies of one point: with reg_covar=0 a component shrinks onto it
    x = torch.cat([torch.randn(60, 2, generator=g, dtype=F64), torch.full((30, 2), 5.0, dtype=F64)])
    with pytest.raises(ValueError, match="increase reg_covar, reduce n_components, or rescale"):
        fit_quietly(GaussianMixture(2, reg_covar=0.0, seed=0, max_iter=200), x)
    gm = GaussianMixture(2, seed=0).fit(x)  # the default regularization handles it
    assert math.isfinite(gm.lower_bound_)


def test_prediction_checks_its_input():
    gm = GaussianMixture(2, seed=0)
    with pytest.raises(ValueError, match="not fitted"):
        gm.predict(np.zeros((3, 2)))
    gm.fit(overlapping_data(n=40, d=2))
    with pytest.raises(ValueError, match="3 features but the mixture was fitted on 2"):
        gm.score_samples(np.zeros((3, 3)))


def test_convergence_warning_when_max_iter_is_reached():
    x = overlapping_data(n=200, d=3)
    with pytest.warns(ConvergenceWarning, match="increase max_iter"):
        gm = GaussianMixture(3, max_iter=2, tol=0.0, seed=0).fit(x)
    assert not gm.converged_ and gm.n_iter_ == 2


# ----------------------------------------------------------------------------- data in chunks
class _LazyChunks:
    """Chunks made on the fly, never all in memory: an iterable that restarts on every pass."""

    def __init__(self, x, rows):
        self.x, self.rows, self.passes = x, rows, 0

    def __iter__(self):
        self.passes += 1
        for s in range(0, self.x.shape[0], self.rows):
            yield self.x[s:s + self.rows].numpy().copy()


@pytest.mark.parametrize("algorithm", ["auto", "centered"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_in_chunks_equals_the_in_memory_fit(covariance_type, algorithm):
    # shifted and scaled overlapping clusters, random initial responsibilities: many iterations
    x = overlapping_data(n=900, d=3) * 3.0 + 10.0
    kwargs = dict(covariance_type=covariance_type, init="random", seed=3, tol=1e-10, max_iter=300,
                  algorithm=algorithm)
    ref = fit_quietly(GaussianMixture(3, **kwargs), x)
    assert ref.n_iter_ > 15
    lazy = _LazyChunks(x, rows=128)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(900)), batch_size=200)
    for chunks in (list(x.split(250)), lazy, loader):
        gm = fit_quietly(GaussianMixture(3, **kwargs), chunks)
        assert gm.n_iter_ == ref.n_iter_ and gm.converged_ == ref.converged_
        assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
        torch.testing.assert_close(gm.weights_, ref.weights_, rtol=0, atol=1e-10)
        torch.testing.assert_close(gm.means_, ref.means_, rtol=0, atol=1e-10)
        torch.testing.assert_close(gm.covariances_, ref.covariances_, rtol=0, atol=1e-10)
        np.testing.assert_allclose(gm.history_["log_likelihood"], ref.history_["log_likelihood"],
                                   rtol=1e-12, atol=0)
    # one pass to count and center, one per EM iteration (the initialization reads the first rows)
    assert lazy.passes == 2 + ref.n_iter_


def test_fit_in_chunks_from_given_parameters_and_with_initialization_on_the_first_rows(monkeypatch):
    x = overlapping_data(n=600, d=2)
    w, m, prec = random_parameters(x, 3, "full", seed=2)
    kwargs = dict(weights_init=w, means_init=m, precisions_init=prec, tol=0.0, max_iter=25)
    ref = fit_quietly(GaussianMixture(3, **kwargs), x)
    gm = fit_quietly(GaussianMixture(3, **kwargs), [x[:100], x[100:101], x[101:]])
    assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
    torch.testing.assert_close(gm.covariances_, ref.covariances_, rtol=0, atol=1e-10)
    # k-means on the first 200 rows only: the in-memory fit of those rows starts identically
    monkeypatch.setattr(em, "_INIT_ROWS", 200)
    head = fit_quietly(GaussianMixture(3, seed=0, max_iter=0), x[:200])
    first = fit_quietly(GaussianMixture(3, seed=0, max_iter=0), [x[:150], x[150:]])
    shift = x[:200].mean(0) - x.mean(0)    # the chunked fit centers on the mean of all rows
    assert first.n_iter_ == head.n_iter_ == 0
    torch.testing.assert_close(first.means_, head.means_, rtol=0, atol=1e-12)
    assert (first.means_ - head.means_).abs().max() < 1e-9 < shift.abs().max()


def test_fit_in_chunks_rejects_bad_chunks():
    x = overlapping_data(n=60, d=2)
    with pytest.raises(ValueError, match="one-shot iterator.*list of arrays, a DataLoader"):
        GaussianMixture(2).fit(c for c in x.split(20))
    with pytest.raises(ValueError, match="chunk 1 of X has 3 features but the data has 2"):
        GaussianMixture(2).fit([x[:30], torch.zeros(5, 3, dtype=F64)])
    bad = x.clone()
    bad[45, 1] = float("nan")
    with pytest.raises(ValueError, match="chunk 2 of X contains NaN"):
        GaussianMixture(2).fit(list(bad.split(20)))
    with pytest.raises(ValueError, match="chunk 1 of X must be 2-D"):
        GaussianMixture(2).fit([x, np.zeros((2, 2, 2))])
    with pytest.raises(ValueError, match="X is empty"):
        GaussianMixture(2).fit([x[:0], x[:0]])
    with pytest.raises(ValueError, match="1 samples but n_components=2"):
        GaussianMixture(2).fit([x[:1], x[:0]])
    with pytest.raises(ValueError, match="fit_predict needs X in memory"):
        GaussianMixture(2).fit_predict(list(x.split(20)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_matches_cpu():
    x = overlapping_data(n=300, d=3)
    cpu = GaussianMixture(3, seed=0).fit(x)
    gpu = GaussianMixture(3, seed=0).fit(x.cuda())
    assert gpu.means_.is_cuda
    assert gpu.lower_bound_ == pytest.approx(cpu.lower_bound_, rel=1e-9)


# ----------------------------------------------------------------------------- plot and CLI
def test_plot_mixture_2d_draws_one_ellipse_per_component():
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    from pyro_vae.plots import plot_mixture_2d

    x, labels = mixture_data(300, seed=15)
    gm = GaussianMixture(3, seed=0).fit(x)
    fig = plot_mixture_2d(x, gm, labels=labels)
    assert isinstance(fig, Figure)
    ellipses = [p for p in fig.axes[0].patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 3
    # 2 standard deviations along the principal axes of each covariance
    for e in ellipses:
        k = int(np.argmin([np.hypot(*(np.array(e.center) - m)) for m in gm.means_.numpy()]))
        vals = np.linalg.eigvalsh(gm.covariances_[k].numpy())
        np.testing.assert_allclose(sorted([e.width, e.height]), 4 * np.sqrt(vals), rtol=1e-10)
    import matplotlib.pyplot as plt
    plt.close(fig)


def _write_csv(path, x):
    pd.DataFrame(np.asarray(x), columns=[f"f{i}" for i in range(np.asarray(x).shape[1])]).to_csv(path, index=False)


def test_cli_em_writes_the_run_folder(tmp_path, capsys):
    from pyro_vae.cli import main

    x, _ = mixture_data(300, seed=16)
    data = tmp_path / "points.csv"
    _write_csv(data, x.numpy())
    out = tmp_path / "run"
    code = main(["em", "--data", str(data), "--components", "3", "--covariance", "full",
                 "--out", str(out), "--seed", "1", "--json", "--quiet"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    for name in ("params.json", "history.csv", "mixture.png"):
        assert (out / name).is_file()
    params = json.loads((out / "params.json").read_text())
    gm = GaussianMixture(3, seed=1).fit(x)
    assert params["log_likelihood"] == pytest.approx(gm.score_samples(x).sum().item(), rel=1e-10)
    assert printed["log_likelihood_per_sample"] == pytest.approx(gm.score(x), rel=1e-10)
    assert printed["bic"] == pytest.approx(gm.bic(x), rel=1e-10)
    assert params["n_iter"] == gm.n_iter_ and params["converged"] is True
    np.testing.assert_allclose(np.array(params["means"]), gm.means_.numpy(), rtol=1e-12)
    assert np.array(params["covariances"]).shape == (3, 2, 2)
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["iteration", "log_likelihood", "seconds"]
    assert len(history) == gm.n_iter_

    # 3-D data: no plot; human-readable summary
    data3 = tmp_path / "points3.csv"
    _write_csv(data3, overlapping_data(n=100, d=3).numpy())
    code = main(["em", "--data", str(data3), "--components", "2", "--covariance", "diag",
                 "--out", str(tmp_path / "run3")])
    assert code == 0
    text = capsys.readouterr().out
    assert "log-likelihood" in text and "BIC" in text and "iterations" in text
    assert not (tmp_path / "run3" / "mixture.png").exists()


def test_cli_em_reads_a_csv_in_chunks(tmp_path, capsys):
    from pyro_vae.cli import main

    x, _ = mixture_data(300, seed=16)
    data = tmp_path / "points.csv"
    _write_csv(data, x.numpy())
    results = []
    for extra, out in (([], "whole"), (["--chunk-rows", "64"], "chunks")):
        code = main(["em", "--data", str(data), "--components", "3", "--out", str(tmp_path / out),
                     "--seed", "1", "--json", "--quiet", *extra])
        assert code == 0
        results.append(json.loads(capsys.readouterr().out))
        assert (tmp_path / out / "mixture.png").is_file()
    whole, chunks = results
    assert chunks["n_samples"] == 300 and chunks["n_iter"] == whole["n_iter"]
    for key in ("log_likelihood", "bic", "aic", "lower_bound"):
        assert chunks[key] == pytest.approx(whole[key], rel=1e-10), key
    means = [np.array(json.loads((tmp_path / o / "params.json").read_text())["means"]) for o in ("whole", "chunks")]
    np.testing.assert_allclose(means[1], means[0], rtol=0, atol=1e-9)
    assert main(["em", "--data", str(data), "--chunk-rows", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--chunk-rows must be" in capsys.readouterr().err
    npy = tmp_path / "points.npy"
    np.save(npy, x.numpy())
    assert main(["em", "--data", str(npy), "--chunk-rows", "10", "--out", str(tmp_path / "y")]) == 2
    assert "--chunk-rows reads CSV files" in capsys.readouterr().err


@pytest.mark.parametrize("content, args, match", [
    (None, [], "no file"),
    ("a,b\n1,x\n2,y\n3,z\n", [], "not numeric"),
    ("a,b\n1,2\n,3\n4,5\n", [], "missing values"),
    ("a,b\n1,2\n3,4\n", ["--components", "5"], "rows but --components 5"),
    ("a,b\n1,2\n3,4\n", ["--components", "0"], "--components must be"),
    ("a,b\n1,2\n3,4\n", ["--device", "gpu"], "--device 'gpu' is not a device"),
])
def test_cli_em_bad_input_exits_with_code_2(tmp_path, capsys, content, args, match):
    from pyro_vae.cli import main

    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    code = main(["em", "--data", str(path), "--out", str(tmp_path / "run"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
