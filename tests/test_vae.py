import math

import pytest
import torch
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro import poutine

from pyro_vae.networks import ConvDecoder, ConvEncoder
from pyro_vae.vae import VAE, AmortizedGuide

import linear_gaussian as lg


# ----------------------------------------------------------------------------- linear-Gaussian model
# p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I); W has orthogonal columns so the exact posterior
# N(m(x), S) has a diagonal covariance S = (I + W^T W / s^2)^-1 and a diagonal-Gaussian guide can
# represent it exactly.
D, L, SIGMA = 5, 2, 0.75  # exactly representable in float32, where sigma is first stored


def _linear_gaussian(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
    w = q * torch.tensor([2.0, 0.5], dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    return w, b


class _ExactPosteriorEncoder(nn.Module):
    """q(z|x) = p(z|x) for the linear-Gaussian model, optionally with perturbed moments."""

    def __init__(self, w, b, shift=0.0, stretch=1.0):
        super().__init__()
        self.w, self.b, self.shift, self.stretch = w, b, shift, stretch
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        wtw = self.w.T @ self.w
        var = 1.0 / (1.0 + torch.diagonal(wtw) / SIGMA**2)  # diagonal because W^T W is diagonal
        loc = (x - self.b) @ self.w * var / SIGMA**2
        return loc + self.shift + 0 * self.dummy, (var.sqrt() * self.stretch).expand_as(loc)


def _exact_log_px(x, w, b):
    return lg.log_px(x, w, b, SIGMA)


def _vae(w, b, **enc):
    return VAE(D, L, likelihood={"name": "gaussian", "scale": SIGMA}, prior="normal",
               encoder=_ExactPosteriorEncoder(w, b, **enc), decoder=lg.LinearDecoder(w, b)).double()


def _data(w, b, n=64, seed=1):
    return lg.sample(n, w, b, SIGMA, seed)


def test_elbo_equals_log_px_with_exact_posterior():
    w, b = _linear_gaussian()
    vae, x = _vae(w, b), _data(w, b)
    truth = _exact_log_px(x, w, b).sum().item()
    for _ in range(3):  # every single-sample estimate is exact: log p(x,z) - log q(z|x) = log p(x)
        elbo = -Trace_ELBO().loss(vae.model, vae.guide, x)
        assert elbo == pytest.approx(truth, rel=1e-10)


@pytest.mark.parametrize("enc", [{"shift": 0.3}, {"stretch": 1.5}, {"shift": -0.2, "stretch": 0.6}])
def test_elbo_below_log_px_by_the_kl_to_the_posterior(enc):
    w, b = _linear_gaussian()
    vae, x = _vae(w, b, **enc), _data(w, b)
    truth = _exact_log_px(x, w, b)
    # analytic ELBO = log p(x) - KL(q || p(z|x))
    exact = _ExactPosteriorEncoder(w, b)
    p_loc, p_scale = exact(x)
    q_loc, q_scale = vae.encoder(x)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(q_loc, q_scale), torch.distributions.Normal(p_loc, p_scale)).sum(-1)
    assert (kl > 1e-3).all()
    analytic = (truth - kl).sum().item()
    mc = -Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1).loss(
        vae.model, vae.guide, x)
    assert mc < truth.sum().item()
    assert mc == pytest.approx(analytic, abs=0.05 * x.shape[0] ** 0.5)
    # mean-field ELBO: analytic KL(q || prior), so only the likelihood term is Monte Carlo
    mf = -TraceMeanField_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1).loss(
        vae.model, vae.guide, x)
    assert mf == pytest.approx(analytic, abs=0.05 * x.shape[0] ** 0.5)


def test_minibatch_plate_is_scaled_to_the_full_dataset():
    w, b = _linear_gaussian()
    vae, x = _vae(w, b), _data(w, b, n=40)
    n_full = 1000
    per_point = _exact_log_px(x, w, b)
    est = -Trace_ELBO().loss(vae.model, vae.guide, x[:10], num_data=n_full)
    assert est == pytest.approx(per_point[:10].sum().item() * n_full / 10, rel=1e-10)


def test_beta_scales_only_the_kl_term():
    w, b = _linear_gaussian()
    vae, x = _vae(w, b, shift=0.4), _data(w, b)
    tr = poutine.trace(vae.guide).get_trace(x)
    mt = poutine.trace(poutine.replay(vae.model, trace=tr)).get_trace(x)
    ll = mt.nodes["x"]["fn"].log_prob(x).sum()
    log_pz = mt.nodes["z"]["fn"].log_prob(tr.nodes["z"]["value"]).sum()
    log_qz = tr.nodes["z"]["fn"].log_prob(tr.nodes["z"]["value"]).sum()
    vae.beta = 0.25
    elbo = Trace_ELBO()
    loss = elbo.loss(poutine.replay(vae.model, trace=tr), poutine.replay(vae.guide, trace=tr), x)
    assert -loss == pytest.approx((ll + 0.25 * (log_pz - log_qz)).item(), rel=1e-10)


@pytest.mark.parametrize("guide,prior,beta",
                         [("diagonal", p, b) for p in ("normal", "mixture", "vamp") for b in (1.0, 0.5)]
                         + [(g, "normal", 1.0) for g in ("full", "iaf")] + [(g, "vamp", 0.5) for g in ("full", "iaf")])
@pytest.mark.parametrize("elbo", [Trace_ELBO(max_plate_nesting=1),
                                  Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
                                  Trace_ELBO(num_particles=2, max_plate_nesting=1),
                                  TraceMeanField_ELBO(num_particles=3, vectorize_particles=True,
                                                      max_plate_nesting=1)],
                         ids=["trace", "trace-vectorized", "trace-loop", "meanfield"])
def test_effect_guide_gives_the_guide_programs_elbo_and_gradients(guide, prior, beta, elbo):
    """fit trains with AmortizedGuide; for the same draws it must be vae.guide exactly."""
    vae = VAE(12, 3, hidden=(8,), prior=prior, likelihood="bernoulli", beta=beta, seed=0, guide=guide)
    with torch.no_grad():  # the full and flow parts start at zero (the diagonal guide): move them
        for p in vae.q.parameters():
            if p not in set(vae.encoder.parameters()):
                p.normal_(0.0, 0.3)
    x = torch.bernoulli(torch.full((10, 12), 0.3))
    results = []
    for guide in (vae.guide, AmortizedGuide(vae)):
        pyro.set_rng_seed(1)
        with pyro.validation_enabled(True):
            loss = elbo.differentiable_loss(vae.model, guide, x, num_data=100)
        grads = torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)
        results.append((loss, grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-4)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)


def test_effect_guide_refuses_a_site_it_has_no_distribution_for():
    class WithGlobal(VAE):
        def model(self, x, num_data=None):
            super().model(x, num_data)
            pyro.sample("w", dist.Normal(0.0, 1.0))

    guide = AmortizedGuide(WithGlobal(6, 2, hidden=(4,), likelihood="gaussian", seed=0))
    with pytest.raises(ValueError, match="'w'"):
        guide(torch.zeros(3, 6))


# ----------------------------------------------------------------------------- shapes and helpers
@pytest.mark.parametrize("prior", ["normal", "learned_normal", "laplace", "studentt", "mixture", "vamp"])
def test_model_and_guide_run_with_every_prior(prior):
    vae = VAE(12, 3, hidden=(8,), prior=prior, likelihood="bernoulli", seed=0)
    x = torch.bernoulli(torch.full((7, 12), 0.3))
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    assert math.isfinite(loss)
    tr = poutine.trace(vae.guide).get_trace(x)
    assert tr.nodes["z"]["value"].shape == (7, 3)
    mt = poutine.trace(poutine.replay(vae.model, trace=tr)).get_trace(x)
    assert mt.nodes["x"]["fn"].event_shape == (12,)
    assert mt.nodes["z"]["fn"].batch_shape == (7,)


def test_user_declared_prior_and_likelihood():
    laplace = lambda: dist.Laplace(torch.zeros(4), 1.0).to_event(1)  # noqa: E731

    def studentt_likelihood(out):
        return dist.StudentT(4.0, out[..., :6], torch.nn.functional.softplus(out[..., 6:]) + 1e-3).to_event(1)

    vae = VAE(6, 4, hidden=(16,), prior=laplace, likelihood=studentt_likelihood,
              likelihood_outputs=2, seed=0)
    x = torch.randn(5, 6)
    assert vae.decoder(torch.zeros(1, 4)).shape == (1, 12)
    tr = poutine.trace(vae.model).get_trace(x)
    z, prior_site, lik_site = tr.nodes["z"]["value"], tr.nodes["z"]["fn"], tr.nodes["x"]["fn"]
    # the model's z site is the user's Laplace (not the default Normal) ...
    base = prior_site
    while not isinstance(base, (dist.Laplace, dist.Normal)):
        base = base.base_dist
    assert type(base) is dist.Laplace
    assert prior_site.batch_shape == (5,) and prior_site.event_shape == (4,)
    torch.testing.assert_close(prior_site.log_prob(z), torch.distributions.Laplace(0.0, 1.0).log_prob(z).sum(-1))
    # ... and its x site the user's Student-t on the decoder output
    out = vae.decoder(z)
    expected = torch.distributions.StudentT(4.0, out[..., :6], torch.nn.functional.softplus(out[..., 6:]) + 1e-3)
    torch.testing.assert_close(lik_site.log_prob(x), expected.log_prob(x).sum(-1))
    assert math.isfinite(Trace_ELBO().loss(vae.model, vae.guide, x))


def test_beta_is_checked_when_set():
    """A KL weight that cannot give a finite objective is refused at construction."""
    for bad in (math.inf, -0.5, math.nan):
        with pytest.raises(ValueError, match="beta"):
            VAE(6, 2, likelihood="gaussian", beta=bad)
    with pytest.raises(TypeError, match="beta"):
        VAE(6, 2, likelihood="gaussian", beta="0.5")
    vae = VAE(6, 2, likelihood="gaussian", beta=0.0)
    with pytest.raises(ValueError, match="beta must be finite"):
        vae.beta = math.inf
    assert vae.beta == 0.0


def test_bad_prior_and_networks_are_refused():
    with pytest.raises(ValueError, match=r"\(4,\)"):
        VAE(6, 4, prior=lambda: dist.Normal(torch.zeros(4), 1.0), likelihood="gaussian")
    with pytest.raises(ValueError, match="decoder"):
        VAE(6, 4, likelihood="gaussian", decoder=nn.Linear(4, 5))
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(6, 0)
    vae = VAE(6, 2, likelihood="gaussian")
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        vae.model(torch.zeros(3, 5))


def test_encode_decode_sample_reconstruct_shapes_and_seed():
    vae = VAE(10, 3, hidden=(8,), likelihood="bernoulli", seed=0)
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (4, 3) and (scale > 0).all()
    assert vae.decode(loc).event_shape == (10,)
    assert vae.reconstruct(x).shape == (4, 10)
    s1, s2 = vae.sample(6, seed=3), vae.sample(6, seed=3)
    assert s1.shape == (6, 10) and torch.equal(s1, s2)
    assert ((s1 >= 0) & (s1 <= 1)).all()
    assert not torch.equal(s1, vae.sample(6, seed=4))


def test_same_seed_same_initial_weights_and_config_round_trip():
    a = VAE(10, 3, hidden=(8,), prior="mixture", likelihood="gaussian_feature", seed=5)
    b = VAE(10, 3, hidden=(8,), prior="mixture", likelihood="gaussian_feature", seed=5)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = VAE.from_config(a.config())
    assert c.config() == a.config()
    assert set(c.state_dict()) == set(a.state_dict())
    assert a.config()["guide"] == {"name": "diagonal"} and a.config()["network"] == {"name": "mlp"}
    # a config written before guides and networks were options describes the diagonal MLP VAE
    old = {k: v for k, v in a.config().items() if k not in ("guide", "network")}
    assert VAE.from_config(old).config() == a.config()


def test_convolutional_networks_are_selectable_and_survive_the_config():
    vae = VAE(784, 4, hidden=(16,), network=("conv", {"channels": 4}), guide="full", seed=0)
    assert isinstance(vae.encoder, ConvEncoder) and isinstance(vae.decoder, ConvDecoder)
    assert vae.config()["network"] == {"name": "conv", "channels": 4}
    rebuilt = VAE.from_config(vae.config())
    assert rebuilt.config() == vae.config()
    rebuilt.load_state_dict(vae.state_dict())
    x = torch.bernoulli(torch.full((3, 784), 0.2))
    torch.testing.assert_close(rebuilt.reconstruct(x), vae.reconstruct(x))
    assert math.isfinite(Trace_ELBO().loss(vae.model, vae.guide, x))
    assert VAE(784, 4, hidden=(16,), network="conv").config()["network"] == {"name": "conv", "channels": 32}
    with pytest.raises(ValueError, match="square"):
        VAE(30, 2, network="conv")
    with pytest.raises(ValueError, match="unknown network 'rnn'"):
        VAE(784, 2, network="rnn")


def test_learned_prior_and_likelihood_parameters_get_gradients_through_svi():
    vae = VAE(6, 2, hidden=(8,), prior="mixture", likelihood="gaussian_shared", seed=0)
    x = torch.randn(20, 6)
    Trace_ELBO().loss_and_grads(vae.model, vae.guide, x)
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for n, p in vae.named_parameters() if n.startswith("prior"))
    assert any(p.grad.abs().sum() > 0 for n, p in vae.named_parameters() if n.startswith("likelihood"))
    # the Pyro param store sees every parameter, so plain pyro.infer.SVI trains them too
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("vae_prior") for n in names) and any(n.startswith("vae_encoder") for n in names)
    # each parameter once: the guide's own parts and the encoder are registered under one name each
    assert len(names) == len({id(p) for p in vae.parameters()})


def test_both_vaes_decode_and_check_data_as_vae_base_writes_it():
    from pyro_vae.mixture_vae import MixtureVAE
    from pyro_vae.vae import VAEBase

    x = torch.bernoulli(torch.full((5, 4), 0.5))
    for model in (VAE(4, 2, hidden=(3,), seed=0), MixtureVAE(4, 2, 3, hidden=(3,), seed=0)):
        assert isinstance(model, VAEBase) and model.device == torch.device("cpu")
        z = torch.randn(5, 2)
        expected = model.likelihood(model.decoder(z)).log_prob(x)
        torch.testing.assert_close(model.decode(z).log_prob(x), expected)
        with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 2\); got \(5, 3\)"):
            model.decode(torch.randn(5, 3))
        with pytest.raises(ValueError, match=r"x must have shape \(N, 4\)"):
            model.reconstruct(torch.zeros(5, 3))
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            model.reconstruct(x.numpy())
