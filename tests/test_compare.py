import math

import numpy as np
import pytest
import torch

from pyro_vae.compare import COLUMNS, adjusted_rand_index, compare_vae_em, run_comparison


def test_adjusted_rand_index_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.integers(0, 4, 200)
        b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 5, 200))
        assert adjusted_rand_index(a, b) == pytest.approx(sklearn_metrics.adjusted_rand_score(a, b), abs=1e-12)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 3, 3]) == 1.0


def test_comparison_on_synthetic_mixture():
    comp = run_comparison(None, n_components=3, n_samples=1200, epochs=8, num_samples=64, seed=0, svi_epochs=20)
    t = comp.table
    assert list(t.columns) == COLUMNS
    assert t["method"].tolist() == ["em", "gmm_svi", "vae_normal", "vae_mixture", "mixture_vae", "oracle"]
    rows = t.set_index("method")
    # EM: exact posterior, so ELBO == log-likelihood and the gap is zero
    assert rows.loc["em", "gap"] == pytest.approx(0.0, abs=1e-6)
    assert rows.loc["em", "heldout_elbo"] == pytest.approx(rows.loc["em", "heldout_log_likelihood"], abs=1e-6)
    # the EM and oracle rows against a naive evaluation of each mixture with scipy, and their
    # ARI against scikit-learn's on the most probable component of each held-out point
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    x, labels = comp.test_x.double().numpy(), comp.test_labels.numpy()
    em_lp, em_assign = _naive_mixture(x, comp.em.weights_, comp.em.means_, comp.em.covariances_)
    oracle_lp, oracle_assign = _naive_mixture(x, comp.mixture.weights, comp.mixture.means, comp.mixture.covariances)
    assert rows.loc["em", "heldout_log_likelihood"] == pytest.approx(em_lp.mean(), rel=1e-9)
    assert rows.loc["oracle", "heldout_log_likelihood"] == pytest.approx(oracle_lp.mean(), rel=1e-9)
    se = lambda v: v.std(ddof=1) / math.sqrt(len(v))  # noqa: E731
    assert rows.loc["em", "heldout_log_likelihood_se"] == pytest.approx(se(em_lp), rel=1e-6)
    assert rows.loc["oracle", "heldout_log_likelihood_se"] == pytest.approx(se(oracle_lp), rel=1e-6)
    assert rows.loc["em", "ari"] == pytest.approx(sklearn_metrics.adjusted_rand_score(labels, em_assign), abs=1e-12)
    assert rows.loc["oracle", "ari"] == pytest.approx(
        sklearn_metrics.adjusted_rand_score(labels, oracle_assign), abs=1e-12)
    # well-separated clusters: EM finds them
    assert rows.loc["em", "ari"] > 0.9 and rows.loc["oracle", "ari"] > 0.9
    # VAEs: importance-sampled log p(x) is above their ELBO (a positive gap)
    for m in ("vae_normal", "vae_mixture", "mixture_vae"):
        assert rows.loc[m, "gap"] > 0
        assert rows.loc[m, "heldout_log_likelihood_se"] > 0
        assert rows.loc[m, "iterations"] == 8
    assert math.isnan(rows.loc["vae_normal", "ari"])
    # gmm_svi: the same model as EM, scored exactly; its gap is the KL to the exact posterior
    svi, x = comp.svi, comp.test_x
    assert rows.loc["gmm_svi", "heldout_log_likelihood"] == pytest.approx(svi.score(x), rel=1e-6)  # float32
    q, p = svi.predict_proba(x).double(), svi.posterior_proba(x).double()
    kl = (q * (q.log() - p.clamp_min(1e-300).log())).sum(1)
    assert rows.loc["gmm_svi", "gap"] == pytest.approx(float(kl.mean()), abs=1e-5)
    assert rows.loc["gmm_svi", "heldout_elbo"] == pytest.approx(
        rows.loc["gmm_svi", "heldout_log_likelihood"] - rows.loc["gmm_svi", "gap"], abs=1e-5)
    assert rows.loc["gmm_svi", "iterations"] == 20 and rows.loc["gmm_svi", "ari"] > 0.9
    # the columns that split inference from model
    assert rows.loc["gmm_svi", "family"] == rows.loc["em", "family"] == "gaussian_mixture"
    assert rows.loc["gmm_svi", "inference"] == rows.loc["vae_normal", "inference"] != rows.loc["em", "inference"]
    assert rows.loc["vae_normal", "vs_em"] == pytest.approx(
        rows.loc["vae_normal", "heldout_log_likelihood"] - rows.loc["em", "heldout_log_likelihood"], abs=1e-12)


def _naive_mixture(x, weights, means, covariances):
    """Per-point log density of a full-covariance Gaussian mixture, one scipy density per
    component, and each point's most probable component."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    w, mu, cov = (np.asarray(torch.as_tensor(v).double().cpu()) for v in (weights, means, covariances))
    joint = np.stack([np.log(w[k]) + multivariate_normal(mu[k], cov[k]).logpdf(x) for k in range(len(w))], 1)
    return logsumexp(joint, axis=1), joint.argmax(1)


def test_compare_accepts_user_arrays_without_labels():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(150, 3, generator=g), torch.randn(150, 3, generator=g) + 6])
    t = compare_vae_em(x.numpy(), n_components=2, epochs=2, num_samples=16, seed=0, svi_epochs=2)
    assert "oracle" not in t["method"].tolist()
    assert t["ari"].isna().all()


def test_em_reaches_the_oracle_on_the_demo_data():
    """The README's claim about `pyro-vae demo`: EM's held-out log-likelihood is within 0.02 nats
    per point of the generating mixture's (the VAEs are trained for one epoch only here)."""
    t = run_comparison(epochs=1, num_samples=4, seed=0, svi_epochs=1, mixture_vae=False).table.set_index("method")
    diff = t.loc["oracle", "heldout_log_likelihood"] - t.loc["em", "heldout_log_likelihood"]
    assert 0 <= diff < 0.02
    assert t.loc["em", "iterations"] > 3  # the demo's initialization leaves EM real work to do


def test_vae_rows_by_ais_are_the_ais_estimates_of_the_trained_vaes():
    from pyro_vae import ais_log_likelihood, log_likelihood

    comp = run_comparison(n_samples=240, epochs=2, num_samples=8, svi_epochs=None, mixture_vae=False,
                          log_px_method="ais", ais_steps=4, ais_chains=3, seed=0)
    t = comp.table.set_index("method")
    for name in ("vae_normal", "vae_mixture"):
        vae = comp.vaes[name]
        ais = ais_log_likelihood(vae.model, vae.guide, comp.test_x, 4, 3, seed=0, progress=False)
        assert t.loc[name, "heldout_log_likelihood"] == pytest.approx(float(ais.per_datapoint.double().mean()),
                                                                      rel=1e-12)
        # the ELBO stays importance sampling's, and the gap is log p(x) by AIS minus it
        est = log_likelihood(vae.model, vae.guide, comp.test_x, 8, seed=0)
        assert t.loc[name, "heldout_elbo"] == pytest.approx(float(est.elbo.double().mean()), rel=1e-12)
        assert t.loc[name, "gap"] == pytest.approx(float((ais.per_datapoint.double() - est.elbo.double()).mean()),
                                                   rel=1e-9)
    with pytest.raises(ValueError, match="log_px_method"):
        run_comparison(n_samples=240, epochs=1, log_px_method="exact")
