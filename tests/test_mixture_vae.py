import math
import warnings

import pytest
import torch
from torch import nn

import pyro
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO

from pyro_vae import MixtureVAE, fit, log_likelihood
from pyro_vae.networks import MIN_SCALE
from pyro_vae.program_pair import BASELINE_STATE_PREFIX
from pyro_vae.training import guide_for_objective

F64 = torch.float64


def inv_softplus(y):
    return y + torch.log(-torch.expm1(-y))


# --------------------------------------------------------------------------- an exact reference
# A linear-Gaussian mixture: y ~ Cat(pi), z | y ~ N(mu_y, s_z^2 I), x | z ~ N(W z + b, s_x^2 I).
# Then p(x | y) = N(W mu_y + b, C) with C = s_z^2 W W^T + s_x^2 I (the same for every y), so
# log p(y | x) is linear in x, and p(z | x, y) = N(S (mu_y / s_z^2 + W^T (x - b) / s_x^2), S) with
# S = (I / s_z^2 + W^T W / s_x^2)^-1, diagonal when W has orthogonal columns. Networks without
# hidden layers express both exactly.
W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=F64)
B = torch.tensor([0.5, -0.3, 0.2], dtype=F64)
MU = torch.tensor([[2.0, -1.0], [-1.5, 0.5]], dtype=F64)
PI = torch.tensor([0.3, 0.7], dtype=F64)
SZ, SX = 0.8, 0.5


def exact_log_px(x):
    c = SZ ** 2 * W @ W.T + SX ** 2 * torch.eye(3, dtype=F64)
    comp = torch.distributions.MultivariateNormal(MU @ W.T + B, c)
    return torch.logsumexp(PI.log() + comp.log_prob(x[:, None, :]), -1)


def exact_model(**kwargs):
    """A MixtureVAE whose model is the linear-Gaussian mixture and whose guide is its exact posterior."""
    m = MixtureVAE(3, 2, 2, hidden=(), likelihood=("gaussian", {"scale": SX}), seed=0, **kwargs).double()
    c = SZ ** 2 * W @ W.T + SX ** 2 * torch.eye(3, dtype=F64)
    prec = torch.linalg.inv(c)
    means_x = MU @ W.T + B                                          # (K, D)
    s = torch.linalg.inv(torch.eye(2, dtype=F64) / SZ ** 2 + W.T @ W / SX ** 2)
    assert torch.equal(s, torch.diag(torch.diagonal(s)))            # diagonal: the guide family holds it
    with torch.no_grad():
        m.prior.logits.copy_(PI.log())
        m.prior.means.copy_(MU)
        m.prior.raw_scales.fill_(inv_softplus(torch.tensor(SZ - m.prior.min_scale, dtype=F64)))
        dec = m.decoder.net[0]
        dec.weight.copy_(W)
        dec.bias.copy_(B)
        ye = m.y_encoder[0]
        ye.weight.copy_(means_x @ prec)
        ye.bias.copy_(PI.log() - 0.5 * ((means_x @ prec) * means_x).sum(-1))
        # z encoder on [x, onehot(y)]: loc = S W^T x / s_x^2 + S (mu_y / s_z^2 - W^T b / s_x^2)
        ze = m.z_encoder.net[0]
        ze.weight.zero_()
        ze.bias.zero_()
        ze.weight[:2, :3] = s @ W.T / SX ** 2
        ze.weight[:2, 3:] = (s @ (MU.T / SZ ** 2 - (W.T @ B / SX ** 2)[:, None]))
        ze.bias[2:] = inv_softplus(torch.diagonal(s).sqrt() - MIN_SCALE)
    return m


def _data(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(PI, n, replacement=True, generator=g)
    z = MU[y] + SZ * torch.randn(n, 2, generator=g, dtype=F64)
    return z @ W.T + B + SX * torch.randn(n, 3, generator=g, dtype=F64)


def test_with_the_exact_posterior_every_estimator_gives_log_px_exactly():
    """q(y|x) q(z|x,y) = p(y, z|x): every importance weight is p(x), so each ELBO estimate and
    the importance-sampled log p(x) equal the analytic log p(x), draw by draw."""
    m = exact_model()
    x = _data()
    want = exact_log_px(x)
    assert torch.allclose(m.predict_proba(x).log(), want.new_tensor(0.0) + _exact_log_posterior(x), atol=1e-10)
    for elbo, objective in ((Trace_ELBO(), "trace"), (TraceGraph_ELBO(), "tracegraph"),
                            (TraceEnum_ELBO(max_plate_nesting=1), "enum")):
        got = -elbo.loss(m.model, guide_for_objective(m.guide, objective), x) / len(x)
        assert got == pytest.approx(float(want.mean()), abs=1e-9), type(elbo).__name__
    est = log_likelihood(m.model, m.guide, x, num_samples=50, seed=0)
    assert torch.allclose(est.per_datapoint.double(), want, atol=1e-8)
    assert float(est.mc_stderr.max()) < 1e-8


def _exact_log_posterior(x):
    c = SZ ** 2 * W @ W.T + SX ** 2 * torch.eye(3, dtype=F64)
    comp = torch.distributions.MultivariateNormal(MU @ W.T + B, c)
    joint = PI.log() + comp.log_prob(x[:, None, :])
    return joint - torch.logsumexp(joint, -1, keepdim=True)


# --------------------------------------------------------------------------- the programs
def _small(**kw):
    return MixtureVAE(4, 2, 3, hidden=(8,), likelihood="gaussian_feature", seed=0, **kw)


def test_sites_lie_in_the_subsampled_data_plate_and_y_is_marked():
    m = _small(baseline="neural")
    x = torch.randn(5, 4)
    guide_tr = poutine.trace(m.guide).get_trace(x, num_data=50)
    model_tr = poutine.trace(poutine.replay(m.model, trace=guide_tr)).get_trace(x, num_data=50)
    for tr, names in ((guide_tr, ("y", "z")), (model_tr, ("y", "z", "x"))):
        for name in names:
            frame = [f for f in tr.nodes[name]["cond_indep_stack"] if f.name == "data"][0]
            assert (frame.size, frame.full_size) == (5, 50)
    y = guide_tr.nodes["y"]
    assert y["infer"]["enumerate"] == "parallel"
    assert y["infer"]["baseline"]["use_decaying_avg_baseline"] is True
    assert y["infer"]["baseline"]["nn_baseline_input"] is x
    assert y["value"].shape == (5,) and guide_tr.nodes["z"]["value"].shape == (5, 2)
    assert model_tr.nodes["x"]["is_observed"]


def test_enumerated_y_gives_one_z_per_component_and_the_enum_elbo_is_the_explicit_sum():
    m = _small().double()
    x = torch.randn(6, 4, dtype=F64)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(3)
    got = -elbo.loss(m.model, m.guide, x)
    # the same draws, by hand: the guide enumerated as TraceEnum_ELBO runs it
    pyro.set_rng_seed(3)
    tr = poutine.trace(poutine.enum(m.guide, first_available_dim=-2)).get_trace(x)
    z = tr.nodes["z"]["value"]                                       # (K, N, L)
    assert tr.nodes["y"]["value"].shape == (3, 1) and z.shape == (3, 6, 2)
    with torch.no_grad():
        logq_y = torch.log_softmax(m.y_encoder(x), -1).T              # (K, N)
        ks = torch.arange(3)[:, None]
        logq_z = m.latent_posterior(x, ks).log_prob(z)
        logp_y = torch.log_softmax(m.prior.logits, -1)[:, None]
        logp_z = torch.distributions.Normal(m.prior.means[:, None, :], m.prior.scales[:, None, :]).log_prob(z).sum(-1)
        logp_x = m.likelihood(m.decoder(z)).log_prob(x)
        want = (logq_y.exp() * (logp_y + logp_z + logp_x - logq_y - logq_z)).sum()
    assert got == pytest.approx(float(want), rel=1e-12)


def test_baseline_guide_changes_only_the_baseline():
    m = _small()
    x = torch.randn(5, 4)
    for baseline in (None, "decaying", "neural"):
        tr = poutine.trace(m.baseline_guide(baseline)).get_trace(x)
        options = tr.nodes["y"]["infer"].get("baseline")
        assert (options is None) == (baseline is None)
        assert (options is not None and "nn_baseline" in options) == (baseline == "neural")
    assert set(m.gradient_estimators()) == {"trace", "tracegraph", "tracegraph_decaying", "tracegraph_neural", "enum"}
    with pytest.raises(ValueError, match="baseline"):
        m.baseline_guide("running")
    with pytest.raises(ValueError, match="baseline"):
        m.baseline = "avg"


def test_the_decaying_average_is_one_number_for_any_minibatch_size():
    """Pyro keeps one average per position in the minibatch, which fails on a smaller last
    minibatch; the guide folds it to one value first, so that 50 points in batches of 16 train."""
    m = _small(baseline="decaying")
    x = torch.randn(50, 4)
    hist = fit(m, x, epochs=2, batch_size=16, objective="tracegraph", quiet=True)
    assert hist["train_elbo"].notna().all()
    avg = pyro.get_param_store()[BASELINE_STATE_PREFIX + "y"]
    assert avg.shape == (2,)                          # written by the last minibatch (50 = 3 * 16 + 2)
    pyro.get_param_store()[BASELINE_STATE_PREFIX + "y"] = torch.tensor([1.0, 3.0])
    tr = poutine.trace(m.guide).get_trace(x[:4])
    assert tr.nodes["y"]["infer"]["baseline"]["use_decaying_avg_baseline"]
    assert torch.equal(pyro.get_param_store()[BASELINE_STATE_PREFIX + "y"], torch.full((4,), 2.0))


@pytest.mark.parametrize("objective", ["trace", "tracegraph", "enum"])
def test_fit_short_form_trains_with_each_estimator(objective):
    """Two clusters: each estimator raises the held-out ELBO and moves q(y|x) and the mixing
    weights, which only the y site's gradient reaches."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    x = torch.where(labels[:, None] == 1, 3.0, -3.0) + 0.5 * torch.randn(200, 4, generator=g)
    m = MixtureVAE(4, 2, 2, hidden=(16,), likelihood="gaussian_feature", baseline="decaying", seed=0)
    before = [p.detach().clone() for p in list(m.y_encoder.parameters()) + [m.prior.logits]]
    with pyro.validation_enabled(True), warnings.catch_warnings():
        warnings.simplefilter("error")   # no warning about the enumeration mark under trace / tracegraph
        hist = fit(m, x, val_data=x, epochs=15, batch_size=50, lr=1e-2, objective=objective, quiet=True)
    assert hist["val_elbo"].iloc[-1] > hist["val_elbo"].iloc[0] + 1.0
    after = list(m.y_encoder.parameters()) + [m.prior.logits]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))


def test_fit_short_form_converts_and_checks_the_data():
    m = MixtureVAE(4, 2, 2, hidden=(8,), likelihood="bernoulli", seed=0)
    x = torch.rand(20, 4, dtype=F64).round()
    hist = fit(m, x.numpy(), epochs=1, batch_size=10, objective="enum", quiet=True)  # float64 numpy -> float32
    assert hist["train_elbo"].notna().all()
    with pytest.raises(ValueError, match="support|binary|0 and 1|\\{0, 1\\}"):
        fit(m, torch.rand(20, 4) * 3, epochs=1, objective="enum", quiet=True)
    with pytest.raises(ValueError, match="own model and guide"):
        fit(m, x, x, epochs=1, quiet=True)


# --------------------------------------------------------------------------- conveniences
def test_predict_encode_and_reconstruct_agree_with_the_networks():
    m = _small()
    x = torch.randn(7, 4)
    probs, loc, scale = m.encode(x)
    assert probs.shape == (7, 3) and loc.shape == scale.shape == (7, 3, 2)
    assert torch.allclose(probs, torch.softmax(m.y_encoder(x), -1))
    assert torch.equal(m.predict(x), probs.argmax(-1))
    for k in range(3):
        q = m.latent_posterior(x, torch.full((7,), k))
        assert torch.allclose(loc[:, k], q.loc, atol=1e-6) and torch.allclose(scale[:, k], q.scale, atol=1e-6)
    rec = m.reconstruct(x)
    want = m.likelihood.mean(m.decoder(loc[torch.arange(7), probs.argmax(-1)]))
    assert torch.allclose(rec, want, atol=1e-6)


def test_sample_draws_from_the_given_component():
    m = _small()
    n = 6
    got = m.sample(n, seed=5, component=2)
    torch.manual_seed(5)
    z = m.prior.means[2] + m.prior.scales[2] * torch.randn(n, 2)
    with torch.no_grad():
        want = m.likelihood.mean(m.decoder(z))
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(m.sample(n, seed=5), m.sample(n, seed=5))
    assert m.sample(n, seed=5, mean=False).shape == (n, 4)
    with pytest.raises(ValueError, match="component"):
        m.sample(3, component=3)
    with pytest.raises(TypeError, match="component"):
        m.sample(3, component=1.0)


def test_sample_follows_the_mixing_weights():
    m = MixtureVAE(2, 1, 3, hidden=(), likelihood=("gaussian", {"scale": 1.0}), seed=0)
    with torch.no_grad():
        m.prior.logits.copy_(torch.tensor([0.0, math.log(3.0), -30.0]))
        m.prior.means.copy_(torch.tensor([[-100.0], [100.0], [0.0]]))
        m.prior.raw_scales.fill_(-20.0)
        m.decoder.net[0].weight.fill_(1.0)
        m.decoder.net[0].bias.zero_()
    x = m.sample(4000, seed=0)
    share = (x[:, 0] > 0).float().mean().item()
    assert share == pytest.approx(0.75, abs=0.03)


def test_config_round_trip_and_the_same_seed_gives_the_same_weights():
    m = MixtureVAE(5, 3, 4, hidden=(6, 7), likelihood="gaussian_feature", baseline="neural", seed=3)
    again = MixtureVAE.from_config(m.config())
    assert again.config() == m.config()
    same = MixtureVAE(5, 3, 4, hidden=(6, 7), likelihood="gaussian_feature", baseline=None, seed=3)
    for (k, a), (_, b) in zip(m.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), k
    import json

    json.dumps(m.config())
    with pytest.raises(ValueError, match="mixture_vae"):
        MixtureVAE.from_config({**m.config(), "model": "vae"})
    user = MixtureVAE(5, 3, 4, likelihood=lambda out: pyro.distributions.Normal(out, 1.0).to_event(1))
    with pytest.raises(ValueError, match="user-declared"):
        user.config()


def test_wrong_inputs_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="n_components"):
        MixtureVAE(4, 2, 0)
    with pytest.raises(TypeError, match="latent_dim"):
        MixtureVAE(4, 2.5, 3)
    with pytest.raises(ValueError, match="baseline_beta"):
        MixtureVAE(4, 2, 3, baseline_beta=1.0)
    with pytest.raises(ValueError, match="activation"):
        MixtureVAE(4, 2, 3, activation="sigmoidal")
    m = _small()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        m.guide(torch.randn(3, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m.model([[0.0] * 4])
    with pytest.raises(ValueError, match="z must have shape"):
        m.decode(torch.randn(3, 5))


def test_parameter_groups_cover_every_parameter_but_the_baseline_once():
    m = _small()
    grouped = [p for ps in m.parameter_groups().values() for p in ps]
    assert len({id(p) for p in grouped}) == len(grouped)
    base = {id(p) for p in m.baseline_parameters()}
    assert {id(p) for p in grouped} | base == {id(p) for p in m.parameters()}
    assert not base & {id(p) for p in grouped}
    assert isinstance(m.y_encoder, nn.Module)
