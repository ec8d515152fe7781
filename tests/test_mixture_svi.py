import math

import pytest
import torch

import pyro
from pyro.infer import TraceEnum_ELBO

from pyro_vae.mixture import GaussianMixture, GaussianMixtureSVI


def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]], dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=g)
    a = torch.tensor([[1.0, 0.0], [0.6, 0.5]], dtype=torch.float64)
    return centers[labels] + torch.randn(n, 2, generator=g, dtype=torch.float64) @ a.T


def _from_em(x, covariance_type):
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(x)
    svi = GaussianMixtureSVI(3, covariance_type=covariance_type, dtype=torch.float64, seed=0)
    return gm, svi.set_from_gaussian_mixture(gm)


def _pyro_elbo(model, guide, x):
    """The ELBO summed over ``x`` as TraceEnum_ELBO computes it (the component summed out)."""
    return -float(TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_elbo_with_the_exact_posterior_equals_the_em_log_likelihood(covariance_type):
    x = _data()
    gm, svi = _from_em(x, covariance_type)
    exact = torch.as_tensor(gm.score_samples(x))
    assert torch.allclose(svi.score_samples(x), exact, atol=1e-10, rtol=0)
    # the Pyro model with q(z|x) = p(z|x) (GaussianMixture's guide, the E step): ELBO = log p(x)
    assert _pyro_elbo(svi.model, gm.guide, x) == pytest.approx(float(exact.sum()), abs=1e-6)


def test_elbo_and_gap_of_the_amortized_posterior_match_pyro_and_an_independent_kl():
    x = _data()
    gm, svi = _from_em(x, "full")  # the network of q(z|x) is untrained: q differs from p(z|x)
    q = svi.predict_proba(x)
    p = torch.as_tensor(gm.predict_proba(x))
    # logits, not probs: torch clamps probs to eps before taking logs, and p(z|x) reaches 1e-29 here
    kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=q.log()),
                                           torch.distributions.Categorical(logits=p.log()))
    assert float(kl.mean()) > 0.05
    assert torch.allclose(svi.gap(x), kl, atol=1e-8)
    # ELBO = log p(x) - KL, and the closed form equals Pyro's sum over the enumerated site
    elbo = svi.elbo(x)
    assert torch.allclose(elbo, torch.as_tensor(gm.score_samples(x)) - kl, atol=1e-8)
    assert _pyro_elbo(svi.model, svi.guide, x) == pytest.approx(float(elbo.sum()), abs=1e-6)
    # a naive per-point sum for the first datapoint
    wlp = [math.log(float(svi.weights_[k])) + float(svi.component_distribution().log_prob(x[0])[k].detach())
           for k in range(3)]
    naive = sum(float(q[0, k]) * (wlp[k] - math.log(float(q[0, k]))) for k in range(3))
    assert float(elbo[0]) == pytest.approx(naive, abs=1e-9)


@pytest.mark.slow
def test_fit_by_svi_comes_close_to_em():
    x = _data(400)
    test = _data(200, seed=1)
    gm = GaussianMixture(3, random_state=0).fit(x)
    svi = GaussianMixtureSVI(3, objective="enum", epochs=40, batch_size=100, lr=0.03, seed=0).fit(x)
    assert svi.history_.shape[0] == 40
    assert svi.score(test) > gm.score(test) - 0.05
    # the amortized posterior has learned the exact one: a small gap, the same assignments
    assert float(svi.gap(test).mean()) < 0.05
    assert (svi.predict(test) == svi.posterior_proba(test).argmax(1)).float().mean() > 0.95


@pytest.mark.slow
def test_fit_by_tracegraph_improves_on_the_initialization():
    x = _data(400)
    start = GaussianMixtureSVI(3, objective="tracegraph", epochs=1, batch_size=100, lr=0.03, seed=0).fit(x)
    svi = GaussianMixtureSVI(3, objective="tracegraph", epochs=20, batch_size=100, lr=0.03, seed=0).fit(x)
    assert svi.score(x) > start.score(x) + 0.05
    assert float(svi.gap(x).mean()) < float(start.gap(x).mean())


def test_fit_is_reproducible_with_a_seed_and_refits_cleanly():
    x = _data(120)
    a = GaussianMixtureSVI(2, covariance_type="diag", epochs=3, batch_size=64, seed=3).fit(x)
    means = a.means_
    b = GaussianMixtureSVI(2, covariance_type="diag", epochs=3, batch_size=64, seed=3).fit(x)
    assert torch.equal(means, b.means_)
    assert a.covariances_.shape == (2, 2) and b.weights_.sum().item() == pytest.approx(1.0)
    assert a.n_parameters() == 2 * 2 + 2 * 2 + 1


def test_parameters_round_trip_and_sampling():
    svi = GaussianMixtureSVI(2, dtype=torch.float64)
    cov = torch.tensor([[[2.0, 0.3], [0.3, 0.5]], [[1.0, -0.2], [-0.2, 1.0]]], dtype=torch.float64)
    means = torch.tensor([[0.0, 1.0], [5.0, -1.0]], dtype=torch.float64)
    svi.set_parameters(torch.tensor([0.25, 0.75]), means, cov)
    assert torch.allclose(svi.covariances_, cov, atol=1e-12)
    assert torch.allclose(svi.weights_, torch.tensor([0.25, 0.75], dtype=torch.float64))
    s = svi.sample(20000, seed=0)
    assert torch.equal(s, svi.sample(20000, seed=0))
    assert torch.allclose(s.mean(0), 0.25 * means[0] + 0.75 * means[1], atol=0.05)


def test_input_checks():
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianMixtureSVI(2, covariance_type="tied")
    with pytest.raises(ValueError, match="objective"):
        GaussianMixtureSVI(2, objective="em")
    svi = GaussianMixtureSVI(2)
    with pytest.raises(ValueError, match="not fitted"):
        svi.score_samples(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="n_components"):
        svi.fit(torch.zeros(1, 2))
    fitted = GaussianMixtureSVI(2, epochs=1, seed=0).fit(_data(40))
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        fitted.score_samples(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="weights"):
        fitted.set_parameters(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2))
    gm = GaussianMixture(2, covariance_type="diag", random_state=0).fit(_data(40))
    with pytest.raises(ValueError, match="does not fit"):
        fitted.set_from_gaussian_mixture(gm)
    pyro.clear_param_store()
