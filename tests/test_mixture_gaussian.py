"""Tests of pyro_vae.mixture.gaussian: parameter conversions, the centered and gram numerics, collapse.

References: naive per-component torch.distributions computations, explicit loops over samples
and components, and matrix inverses and Cholesky factors computed directly.
"""

import math

import pytest
import torch

from gaussian_mixtures import F64, naive_weighted_log_prob, overlapping_data, precisions_to_covariances, random_parameters
from pyro_vae.mixture import COVARIANCE_TYPES, GaussianMixture
from pyro_vae.mixture import gaussian as G


def _params(x, k, covariance_type, seed):
    """MixtureParams from random_parameters (means relative to the origin 0)."""
    w, m, prec = random_parameters(x, k, covariance_type, seed)
    pc = G.prec_chol_from_precisions(prec, covariance_type)
    return G.MixtureParams(w, m, None, pc), prec


def _naive_scatter(x, resp, means):
    """sum_n r_nk (x_n - m_k)(x_n - m_k)^T by an explicit sum over components, (K, d, d)."""
    return torch.stack([((resp[:, k, None] * (x - means[k])).T @ (x - means[k]))
                        for k in range(means.shape[0])])


# ----------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_attributes_are_consistent(covariance_type):
    x = overlapping_data()
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(x)
    pc, prec, cov = gm.precisions_cholesky_, gm.precisions_, gm.covariances_
    if covariance_type in ("full", "tied"):
        assert torch.equal(pc, pc.triu())  # upper triangular, as in scikit-learn
        torch.testing.assert_close(pc @ pc.transpose(-1, -2), prec)
        torch.testing.assert_close(prec @ cov, torch.eye(3, dtype=F64).expand_as(cov), atol=1e-10, rtol=0)
    else:
        torch.testing.assert_close(pc ** 2, prec)
        torch.testing.assert_close(prec * cov, torch.ones_like(cov))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_conversions_between_covariances_precisions_and_their_factors(covariance_type):
    x = overlapping_data(n=50, d=3)
    k, d = 3, 3
    params, prec = _params(x, k, covariance_type, seed=1)
    pc = params.prec_chol
    cov = G.cov_from_prec_chol(pc, covariance_type)
    torch.testing.assert_close(G.precisions_from_prec_chol(pc, covariance_type), prec, rtol=1e-12, atol=1e-12)
    full_cov = precisions_to_covariances(prec, covariance_type, k, d)
    as_full = {"full": cov, "tied": cov.expand(k, d, d) if cov.dim() == 2 else cov,
               "diag": torch.diag_embed(cov) if cov.dim() == 2 else cov,
               "spherical": cov[:, None, None] * torch.eye(d, dtype=F64)}[covariance_type]
    torch.testing.assert_close(as_full, full_cov, rtol=1e-12, atol=1e-12)
    # back from the covariances: the same factor
    torch.testing.assert_close(G.prec_chol_from_cov(cov, covariance_type), pc, rtol=1e-10, atol=1e-12)
    if covariance_type in ("full", "tied"):
        assert torch.equal(pc, pc.triu())
    # log det U = half the log-determinant of the precision
    logdet = torch.logdet(torch.linalg.inv(full_cov))
    torch.testing.assert_close(G.log_det_prec_chol(pc, covariance_type, k, d), 0.5 * logdet, rtol=1e-12, atol=1e-12)
    # not positive definite: None
    assert G.prec_chol_from_precisions(-prec, covariance_type) is None
    assert G.prec_chol_from_cov(-cov, covariance_type) is None


# ----------------------------------------------------------------------------- E step
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_centered_and_gram_log_densities_equal_the_naive_ones(covariance_type):
    x = overlapping_data(n=60, d=3)
    k, d = 4, 3
    params, prec = _params(x, k, covariance_type, seed=2)
    naive = naive_weighted_log_prob(x, params.weights, params.means,
                                    precisions_to_covariances(prec, covariance_type, k, d))
    # blocks of 7 rows: the chunked loop, with a last block of uneven size
    centered = G.weighted_log_prob_centered(x, params, covariance_type, rows=7)
    torch.testing.assert_close(centered, naive, rtol=1e-12, atol=1e-12)
    kind = G.scatter_kind(covariance_type)
    features = G.gram_features(x, kind, torch.empty(60, G.n_gram_features(kind, d), dtype=F64))
    gram = features @ G.gram_log_prob_coefficients(params, covariance_type)
    torch.testing.assert_close(gram, naive, rtol=1e-11, atol=1e-11)


def test_normalize_gives_log_sum_exp_and_responsibilities_and_drops_subnormal_ratios():
    wlp = torch.tensor([[0.0, -1.0, -2.0], [-1000.0, 3.0, -400.0]], dtype=F64)
    expected_lse = torch.logsumexp(wlp, 1)
    expected = torch.softmax(wlp, 1)
    out = torch.empty_like(wlp)
    lse = G.normalize_(wlp.clone(), out)
    torch.testing.assert_close(lse, expected_lse, rtol=0, atol=1e-14)
    # exp(-403) is about 1e-175, below sqrt(tiny): exactly zero, not a subnormal product later
    assert out[1, 2] == 0.0 and out[1, 0] == 0.0 and expected[1, 2] > 0
    torch.testing.assert_close(out, expected.masked_fill(expected < 1e-154, 0.0), rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------- M step
@pytest.mark.parametrize("kind", ["matrix", "vector"])
def test_centered_scatter_and_gram_moments_equal_explicit_sums(kind):
    x = overlapping_data(n=80, d=3)
    g = torch.Generator().manual_seed(3)
    resp = torch.softmax(torch.randn(80, 4, generator=g, dtype=F64), 1)
    centers = torch.randn(4, 3, generator=g, dtype=F64)
    naive = _naive_scatter(x, resp, centers)
    scatter = G.scatter_centered(x, resp, centers, kind, rows=9)
    want = naive if kind == "matrix" else torch.diagonal(naive, dim1=-2, dim2=-1)
    torch.testing.assert_close(scatter, want, rtol=1e-12, atol=1e-12)
    # the gram statistics: counts, sums and the scatter about the weighted means
    features = G.gram_features(x, kind, torch.empty(80, G.n_gram_features(kind, 3), dtype=F64))
    nk, sums, scatter = G.moments_from_gram(resp.T @ features, kind, 3)
    torch.testing.assert_close(nk, resp.sum(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(sums, resp.T @ x, rtol=1e-13, atol=1e-13)
    naive = _naive_scatter(x, resp, sums / G.effective_counts(nk)[:, None])
    want = naive if kind == "matrix" else torch.diagonal(naive, dim1=-2, dim2=-1)
    torch.testing.assert_close(scatter, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_is_the_weighted_maximum_likelihood_estimate(covariance_type):
    x = overlapping_data(n=90, d=2)
    g = torch.Generator().manual_seed(4)
    resp = torch.softmax(torch.randn(90, 3, generator=g, dtype=F64), 1)
    nk, sums = resp.sum(0), resp.T @ x
    means = sums / nk[:, None]
    scatter = _naive_scatter(x, resp, means)
    kind = G.scatter_kind(covariance_type)
    given = scatter if kind == "matrix" else torch.diagonal(scatter, dim1=-2, dim2=-1)
    new = G.m_step(nk, sums, given, covariance_type, 1e-3, lambda m: torch.zeros_like(m))
    per_component = scatter / nk[:, None, None] + 1e-3 * torch.eye(2, dtype=F64)
    want = {"full": per_component,
            "tied": scatter.sum(0) / 90 + 1e-3 * torch.eye(2, dtype=F64),
            "diag": torch.diagonal(per_component, dim1=-2, dim2=-1),
            "spherical": torch.diagonal(scatter / nk[:, None, None], dim1=-2, dim2=-1).mean(1) + 1e-3}
    torch.testing.assert_close(new.cov, want[covariance_type], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(new.means, means, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(new.weights, nk / 90, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(G.cov_from_prec_chol(new.prec_chol, covariance_type), new.cov,
                               rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- collapse
def test_a_variance_of_rounding_noise_counts_as_collapsed():
    origin = torch.zeros(2, dtype=F64)
    mean_square = torch.tensor([1.3, 1.3], dtype=F64)
    means = torch.tensor([[8.0, 8.0], [0.0, 0.0]], dtype=F64)
    floor = G.resolution(means, origin, mean_square)
    # a component shrunk onto the point (8, 8) has a variance of about (10 eps 8)^2 = 3e-28
    noise = torch.tensor([[3.2e-28, 3.2e-28], [1.0, 1.0]], dtype=F64)
    assert G.collapsed(noise, "diag", floor)[0] is None
    assert G.collapsed(noise.mean(1), "spherical", floor)[0] is None
    assert G.collapsed(torch.diag_embed(noise), "full", floor)[0] is None
    pc, bad = G.collapsed(noise.clone().fill_(1e-18), "diag", floor)   # tiny but resolved
    assert pc is not None and not bad.any()
    torch.testing.assert_close(pc, torch.full((2, 2), 1e9, dtype=F64))
    # full: a covariance of rounding noise that happens to be positive definite
    noise = torch.tensor([[3e-28, 1e-28], [1e-28, 2e-28]], dtype=F64)
    assert torch.linalg.cholesky_ex(noise)[1] == 0    # a Cholesky factorization alone accepts it
    cov = torch.stack([noise, torch.eye(2, dtype=F64)])
    pc, bad = G.collapsed(cov, "full", floor)
    assert pc is None and bad.tolist() == [True, False]
    # the gram form resolves less: sqrt(eps) relative
    assert (G.resolution(means, origin, mean_square, "gram") > 1e3 * floor).all()


def test_gram_error_estimate_bounds_the_actual_error():
    g = torch.Generator().manual_seed(6)
    x = torch.cat([torch.randn(100, 2, generator=g, dtype=F64),
                   1e3 + 1e-2 * torch.randn(100, 2, generator=g, dtype=F64)])
    x = x - x.mean(0)
    w = torch.tensor([0.5, 0.5], dtype=F64)
    m = x[[0, 150]].clone()
    prec = torch.stack([torch.eye(2, dtype=F64), 1e4 * torch.eye(2, dtype=F64)])
    params = G.MixtureParams(w, m, None, G.prec_chol_from_precisions(prec, "full"))
    estimate = G.gram_error(params, "full")
    assert estimate > 1e3 * G.GRAM_TOLERANCE          # this one would switch to the centered form
    features = G.gram_features(x, "matrix", torch.empty(200, G.n_gram_features("matrix", 2), dtype=F64))
    gram = features @ G.gram_log_prob_coefficients(params, "full")
    centered = G.weighted_log_prob_centered(x, params, "full")
    actual = float((gram - centered).abs().max())
    assert 0 < actual <= 10 * estimate
    assert actual > 1e-3 * estimate                     # the estimate is not absurdly loose
    assert G.gram_error(params, "full") == estimate     # cached
    tame = G.MixtureParams(w, torch.zeros(2, 2, dtype=F64), None,
                           G.prec_chol_from_precisions(torch.eye(2, dtype=F64).expand(2, 2, 2), "full"))
    assert G.gram_error(tame, "full") < 1e-14


def test_empty_components_do_not_divide_by_zero():
    nk = torch.tensor([3.0, 0.0], dtype=F64)
    n_eff = G.effective_counts(nk)
    assert (n_eff > 0).all() and n_eff[0] == pytest.approx(3.0, rel=1e-14)
    assert n_eff[1] < 1e-14 and math.isfinite(float(1.0 / n_eff[1]))
