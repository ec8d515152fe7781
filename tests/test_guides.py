import math

import pytest
import torch
from torch import nn

import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.guides import (CholeskyNormal, DiagonalGuide, FullCovarianceGuide, IAFGuide, LocalPosterior, PerDatapointIAF,
                             check_guide, make_guide)
from pyro_vae.networks import Encoder
from pyro_vae.training import OBJECTIVES, fit
from pyro_vae.vae import VAE, AmortizedGuide

pytestmark = pytest.mark.usefixtures("one_thread")  # many small operations

D, L = 12, 3


def _x(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, D), 0.3), generator=g)


def _vae(guide, seed=0, **kw):
    return VAE(D, L, hidden=(8,), guide=guide, seed=seed, **kw)


def _perturb(module, sd=0.5, seed=7):
    """Random weights everywhere (the full and flow parts start at zero, i.e. as the diagonal
    guide; tests of those parts need them away from zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(sd * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ----------------------------------------------------------------------------- the full-covariance family
def test_full_guide_is_torchs_multivariate_normal_with_the_encoders_cholesky_factor():
    vae = _vae("full").double()
    _perturb(vae.q.lower)
    x = _x().double()
    q = vae.posterior(x)
    assert isinstance(q, dist.MultivariateNormal)
    assert q.batch_shape == (6,) and q.event_shape == (L,)
    # the same parameters by hand: diagonal from the encoder's scale, the strictly lower triangle
    # filled row by row from the linear map of the encoder's features
    h = vae.encoder.features(x)
    loc, scale = vae.encoder.head(h)
    values = vae.q.lower(h) / math.sqrt(L)
    tril = torch.zeros(6, L, L, dtype=torch.float64)
    k = 0
    for i in range(L):
        tril[:, i, i] = scale[:, i]
        for j in range(i):
            tril[:, i, j] = values[:, k]
            k += 1
    assert k == values.shape[1] == L * (L - 1) // 2
    torch.testing.assert_close(q.scale_tril, tril)
    assert (tril[:, 0, 1:].abs() > 0).sum() == 0 and (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert (tril[:, 1:, 0].abs() > 1e-3).all()  # a real off-diagonal part
    reference = torch.distributions.MultivariateNormal(loc, covariance_matrix=tril @ tril.transpose(-1, -2))
    z = torch.randn(5, 6, L, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z), rtol=1e-10, atol=1e-10)
    # encode gives the mean and the marginal standard deviations
    m, s = vae.encode(x)
    torch.testing.assert_close(m, loc)
    torch.testing.assert_close(s, reference.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt())


def test_cholesky_normal_scores_its_own_draws_from_their_noise():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(4, 5, dtype=torch.float64, generator=g)
    tril = torch.randn(4, 5, 5, dtype=torch.float64, generator=g).tril(-1) + torch.diag_embed(
        torch.rand(4, 5, dtype=torch.float64, generator=g) + 0.5)
    q = CholeskyNormal(loc, scale_tril=tril)
    torch.manual_seed(1)
    z = q.rsample((3,))
    torch.manual_seed(1)
    eps = torch.randn(3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(z, loc + (tril @ eps.unsqueeze(-1)).squeeze(-1))
    reference = torch.distributions.MultivariateNormal(loc, scale_tril=tril)
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.log_prob(z.clone()), reference.log_prob(z), rtol=1e-12, atol=1e-12)
    e = q.expand((2, 4))
    assert isinstance(e, CholeskyNormal) and e.rsample().shape == (2, 4, 5)
    # a badly conditioned factor (off-diagonal entries of random sign, twice the diagonal): the
    # solve of the general formula is off by orders of magnitude in float32, the noise is exact
    n = 50
    signs = torch.randint(0, 2, (n, n), generator=g).float() * 2 - 1
    bad = (0.6 * signs).tril(-1) + 0.3 * torch.eye(n)
    assert torch.linalg.cond(bad.double()) > 1e10
    q = CholeskyNormal(torch.zeros(n), scale_tril=bad)
    torch.manual_seed(2)
    z = q.rsample()
    torch.manual_seed(2)
    eps = torch.randn(n)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum() - bad.diagonal().log().sum()
    torch.testing.assert_close(q.log_prob(z), expected)
    assert abs(torch.distributions.MultivariateNormal(torch.zeros(n), scale_tril=bad).log_prob(z) - expected) > 100


def test_full_and_iaf_start_as_the_diagonal_guide_of_the_same_seed():
    x = _x()
    diagonal = _vae("diagonal", seed=4)
    z = torch.randn(7, 6, L)
    expected = diagonal.posterior(x).log_prob(z)
    for guide in ("full", "iaf"):
        vae = _vae(guide, seed=4)
        shared = {k: v for k, v in vae.state_dict().items() if k in diagonal.state_dict()}
        assert set(shared) == set(diagonal.state_dict())
        assert all(torch.equal(v, diagonal.state_dict()[k]) for k, v in shared.items())
        torch.testing.assert_close(vae.posterior(x).log_prob(z), expected)


# ----------------------------------------------------------------------------- the IAF family
def test_iaf_with_zero_flows_is_the_diagonal_guide():
    x = _x()
    iaf, diagonal = _vae(("iaf", {"num_flows": 0}), seed=3), _vae("diagonal", seed=3)
    assert iaf.config()["guide"] == {"name": "iaf", "num_flows": 0, "hidden": [2 * L]}
    sa, sb = iaf.state_dict(), diagonal.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    qa, qb = iaf.posterior(x), diagonal.posterior(x)
    z = torch.randn(4, 6, L)
    assert torch.equal(qa.log_prob(z), qb.log_prob(z))
    torch.manual_seed(5)
    za = qa.rsample((3,))
    torch.manual_seed(5)
    zb = qb.rsample((3,))
    assert torch.equal(za, zb)
    losses = []
    for vae in (iaf, diagonal):
        pyro.set_rng_seed(2)
        losses.append(Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1).loss(
            vae.model, vae.guide, x))
    assert losses[0] == losses[1]


def test_iaf_density_is_the_change_of_variables_of_its_flow():
    """log q(z) = log N(z0; loc, scale) - log|det dz/dz0|, with the Jacobian from autograd."""
    vae = _vae(("iaf", {"num_flows": 2}), seed=1).double()
    _perturb(vae.q.flow, sd=0.4)
    x = _x(4).double()
    q = vae.posterior(x)
    assert isinstance(q, dist.TransformedDistribution) and len(q.transforms) == 2
    assert q.batch_shape == (4,) and q.event_shape == (L,)
    h = vae.encoder.features(x)
    loc, scale = vae.encoder.head(h)
    z0 = loc + scale * torch.randn(4, L, dtype=torch.float64)
    for i in range(4):
        def forward(u, i=i):
            return vae.q.flow(u, h[i])[0]

        jac = torch.autograd.functional.jacobian(forward, z0[i])
        z = forward(z0[i]).detach().clone()  # a fresh tensor: log_prob inverts the flow
        expected = (torch.distributions.Normal(loc[i], scale[i]).log_prob(z0[i]).sum()
                    - torch.linalg.slogdet(jac)[1])
        assert abs(jac[0, 1]) + abs(jac[0, 2]) > 0  # the second flow reverses the order: not triangular
        torch.testing.assert_close(q.log_prob(z.expand(4, L))[i], expected, rtol=1e-10, atol=1e-10)


def test_iaf_flows_are_pyro_transforms_in_alternating_order():
    vae = _vae(("iaf", {"num_flows": 3, "hidden": [7]}))
    ts = vae.q.flow.transforms
    assert len(ts) == 3 and all(isinstance(t, dist.transforms.ConditionalAffineAutoregressive) for t in ts)
    assert [t.nn.permutation.tolist() for t in ts] == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    assert [layer.out_features for layer in ts[0].nn.layers] == [7, 2 * L]
    assert ts[0].nn.context_dim == vae.encoder.feature_dim == 8


def test_per_datapoint_iaf_with_the_guides_weights_is_the_guide():
    vae = _vae("iaf").double()
    _perturb(vae.q.flow, sd=0.4)
    x = _x(5).double()
    q = vae.posterior(x)
    local = vae.local_posterior(x)
    assert isinstance(local, LocalPosterior) and local.num_datapoints == 5
    assert local.params["flow.transforms.0.nn.layers.0.weight"].shape == (5,) + tuple(
        vae.q.flow.transforms[0].nn.layers[0].weight.shape)
    d = local.distribution()
    assert isinstance(d, PerDatapointIAF)
    torch.manual_seed(0)
    zq = q.rsample((3,))
    lq = q.log_prob(zq)
    torch.manual_seed(0)
    zd = d.rsample((3,))
    torch.testing.assert_close(zd, zq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.log_prob(zd), lq, rtol=1e-12, atol=1e-12)  # cached
    fresh = torch.randn(3, 5, L, dtype=torch.float64)
    torch.testing.assert_close(d.log_prob(fresh), q.log_prob(fresh), rtol=1e-12, atol=1e-12)  # inverted
    # Pyro's plates expand the distribution over particles
    e = d.expand((4, 5))
    assert e.rsample().shape == (4, 5, L) and e.batch_shape == (4, 5)


def test_per_datapoint_parameters_are_independent():
    """Each datapoint's member of the family depends only on its own row of every parameter."""
    for guide in ("diagonal", "full", "iaf"):
        vae = _vae(guide).double()
        if guide != "diagonal":
            _perturb(vae.q.flow if guide == "iaf" else vae.q.lower, sd=0.4)
        local = vae.local_posterior(_x(4).double())
        d = local.distribution()
        z = d.rsample((2,))
        lp = d.log_prob(z)  # (2, 4)
        grads = torch.autograd.grad(lp[:, 1].sum(), list(local.params.values()), allow_unused=True)
        for name, g in zip(local.params, grads):
            if g is None:
                continue
            others = torch.cat([g[:1], g[2:]])
            assert others.abs().max() == 0, (guide, name)
        assert any(g is not None and g[1].abs().max() > 0 for g in grads)


# ----------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("guide", ["full", "iaf"])
@pytest.mark.parametrize("prior", ["normal", "mixture", "vamp"])
def test_meanfield_uses_the_monte_carlo_kl_where_no_analytic_one_exists(guide, prior):
    """No KL(MultivariateNormal || prior) or KL(TransformedDistribution || prior) is registered:
    Pyro's TraceMeanField_ELBO must then score log p(z) - log q(z) at the sampled z, i.e. give
    Trace_ELBO's value and gradients for the same draws."""
    vae = _vae(guide, prior=prior)
    _perturb(vae.q.flow if guide == "iaf" else vae.q.lower, sd=0.3)
    x = _x(8)
    results = []
    for elbo_cls, g in ((Trace_ELBO, vae.guide), (TraceMeanField_ELBO, vae.guide),
                        (TraceMeanField_ELBO, AmortizedGuide(vae))):
        pyro.set_rng_seed(3)
        elbo = elbo_cls(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
        loss = elbo.differentiable_loss(vae.model, g, x, num_data=40)
        results.append((loss, torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)))
    (ref, ref_grads), *others = results
    for loss, grads in others:
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)
        for a, b in zip(grads, ref_grads):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_meanfield_keeps_the_analytic_kl_of_the_diagonal_guide():
    """The comparison above can fail: with an analytic KL the two objectives differ."""
    vae = _vae("diagonal", prior="normal")
    x = _x(8)
    losses = []
    for elbo_cls in (Trace_ELBO, TraceMeanField_ELBO):
        pyro.set_rng_seed(3)
        losses.append(elbo_cls().loss(vae.model, vae.guide, x))
    assert abs(losses[0] - losses[1]) > 1e-3


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("guide", ["diagonal", "full", "iaf"])
def test_every_family_trains_with_every_objective(guide, objective):
    x = _x(48, seed=1)
    vae = _vae(guide)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    history = fit(vae, x, epochs=8, batch_size=12, lr=0.02, objective=objective,
                  num_particles=2 if objective == "iwae" else 1, quiet=True, seed=0)
    elbo = history["train_elbo"].to_numpy()
    assert all(math.isfinite(v) for v in elbo)
    assert elbo[-3:].mean() > elbo[:3].mean() + 0.2  # the loss decreased on average
    # the family's own parts were trained too
    changed = {k for k, v in vae.state_dict().items() if not torch.equal(v, before[k])}
    if guide == "full":
        assert "q.lower.weight" in changed
    if guide == "iaf":
        assert "q.flow.transforms.0.nn.layers.1.weight" in changed


# ----------------------------------------------------------------------------- user modules
class _StudentTGuide(nn.Module):
    """q(z|x): independent Student-t coordinates from a linear map of x."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, 2 * L)

    def forward(self, x):
        loc, raw = self.lin(x).split(L, -1)
        return dist.StudentT(5.0, loc, nn.functional.softplus(raw) + 1e-3).to_event(1)


def test_a_users_guide_module_is_accepted_trained_and_refused_by_config():
    from pyro_vae.gaps import inference_gaps

    user = _StudentTGuide()
    vae = VAE(D, L, hidden=(8,), guide=user, seed=0)
    assert vae.q is user and vae.encoder is None and vae.guide_family == "user"
    assert any(p is user.lin.weight for p in vae.parameters())
    x = _x(16)
    tr = poutine.trace(vae.guide).get_trace(x)
    assert isinstance(tr.nodes["z"]["fn"].base_dist, dist.StudentT)
    w0 = user.lin.weight.detach().clone()
    fit(vae, x, epochs=2, batch_size=8, quiet=True)
    assert not torch.equal(user.lin.weight, w0)
    # encode: the distribution's mean and standard deviation
    loc, scale = vae.encode(x)
    q = user(x)
    torch.testing.assert_close(loc, q.mean)
    torch.testing.assert_close(scale, q.stddev)
    with pytest.raises(ValueError, match="user-declared guide"):
        VAE.from_config(vae.config())
    with pytest.raises(TypeError, match="local_posterior"):
        inference_gaps(vae, x, steps=1, num_samples=2)
    Trace_ELBO().loss_and_grads(vae.model, vae.guide, x)
    assert any(n.startswith("vae_guide$$$lin") for n in pyro.get_param_store().keys())


def test_bad_guide_modules_are_refused_with_what_to_change():
    class NoEvent(nn.Module):
        def forward(self, x):
            return dist.Normal(torch.zeros(x.shape[0], L), 1.0)

    class WrongBatch(nn.Module):
        def forward(self, x):
            return dist.Normal(torch.zeros(L), 1.0).to_event(1)

    class NotADistribution(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], L)

    class Broken(nn.Module):
        def forward(self, x):
            return dist.Normal(x @ torch.zeros(D + 1, L), 1.0).to_event(1)

    with pytest.raises(ValueError, match=r"event shape \(3,\).*to_event\(1\)"):
        VAE(D, L, guide=NoEvent())
    with pytest.raises(ValueError, match=r"batch shape \(N,\)"):
        VAE(D, L, guide=WrongBatch())
    with pytest.raises(TypeError, match="must return a distribution"):
        VAE(D, L, guide=NotADistribution())
    with pytest.raises(ValueError, match=r"calling it on zeros of shape \(2, 12\) failed"):
        VAE(D, L, guide=Broken())
    with pytest.raises(TypeError, match="nn.Module"):
        check_guide(lambda x: None, D, L)
    with pytest.raises(ValueError, match="vamp"):
        VAE(D, L, guide=_StudentTGuide(), prior="vamp")
    with pytest.raises(ValueError, match="one or the other"):
        VAE(D, L, guide=_StudentTGuide(), encoder=Encoder(D, L, (8,)))


def test_bad_guide_specs_are_refused():
    with pytest.raises(ValueError, match="unknown guide 'flow'"):
        _vae("flow")
    with pytest.raises(ValueError, match="num_flows is an option of guide='iaf'"):
        _vae("diagonal", num_flows=2)
    with pytest.raises(ValueError, match="at least latent_dim=3"):
        _vae(("iaf", {"hidden": [2]}))
    with pytest.raises(ValueError, match="num_flows must be a non-negative integer"):
        _vae("iaf", num_flows=-1)
    with pytest.raises(ValueError, match="given twice"):
        _vae(("iaf", {"num_flows": 1}), num_flows=2)
    with pytest.raises(TypeError, match="guide must be one of"):
        _vae(3)

    class PlainEncoder(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], L), torch.ones(x.shape[0], L)

    with pytest.raises(ValueError, match="features"):
        VAE(D, L, guide="full", encoder=PlainEncoder())
    vae = VAE(D, L, guide="diagonal", encoder=PlainEncoder())  # the diagonal family needs only (loc, scale)
    assert vae.encode(_x())[1].eq(1).all()


# ----------------------------------------------------------------------------- config and state
@pytest.mark.parametrize("guide", ["full", ("iaf", {"num_flows": 3, "hidden": [5]})])
def test_config_round_trip_keeps_the_family(guide):
    vae = _vae(guide, prior="vamp")
    _perturb(vae, sd=0.2)
    rebuilt = VAE.from_config(vae.config())
    assert rebuilt.config() == vae.config()
    rebuilt.load_state_dict(vae.state_dict())
    x = _x()
    z = torch.randn(2, 6, L)
    torch.testing.assert_close(rebuilt.posterior(x).log_prob(z), vae.posterior(x).log_prob(z))


def test_state_dicts_written_before_the_guide_families_still_load():
    vae = _vae("diagonal", seed=1)
    old_layout = {k.replace("q.encoder.", "encoder.", 1): v for k, v in vae.state_dict().items()}
    assert any(k.startswith("encoder.") for k in old_layout)
    fresh = _vae("diagonal", seed=2)
    fresh.load_state_dict(old_layout)
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_make_guide_builds_the_families_on_a_given_encoder():
    enc = Encoder(D, L, (8,))
    assert isinstance(make_guide("diagonal", enc, L), DiagonalGuide)
    assert isinstance(make_guide({"name": "full"}, enc, L), FullCovarianceGuide)
    iaf = make_guide("iaf", enc, L, num_flows=1)
    assert isinstance(iaf, IAFGuide) and iaf.num_flows == 1
    # the guide owns the encoder: its parameters are all of q's
    assert {id(p) for p in enc.parameters()} <= {id(p) for p in iaf.parameters()}
    # center: the base mean pushed through the flow
    _perturb(iaf.flow, sd=0.4)
    x = _x()
    h = enc.features(x)
    torch.testing.assert_close(iaf.center(x), iaf.flow(enc.head(h)[0], h)[0])
    assert not torch.allclose(iaf.center(x), enc(x)[0])


def test_each_parameter_enters_pyros_param_store_once():
    for guide in ("full", "iaf"):
        pyro.clear_param_store()
        vae = _vae(guide, prior="mixture")
        Trace_ELBO().loss_and_grads(vae.model, vae.guide, _x())
        store = pyro.get_param_store()
        assert len(store.keys()) == len({id(p) for p in vae.parameters()})
        part = "vae_guide_lower" if guide == "full" else "vae_guide_flow"
        assert any(n.startswith(part + "$$$") for n in store.keys())
        assert any(n.startswith("vae_encoder$$$") for n in store.keys())


@pytest.mark.parametrize("guide", ["full", "iaf"])
def test_training_resumes_exactly_with_every_family(guide, tmp_path):
    """The full and flow families draw their noise from torch's generator, whose state the
    checkpoint keeps: an interrupted run resumed gives the weights of the uninterrupted one."""
    x = _x(40, seed=2)
    straight = _vae(guide)
    fit(straight, x, epochs=3, batch_size=16, lr=0.02, quiet=True, seed=1)
    resumed = _vae(guide)
    path = str(tmp_path / "ck.pt")
    fit(resumed, x, epochs=2, batch_size=16, lr=0.02, quiet=True, seed=1, checkpoint=path)
    torch.manual_seed(123)  # the global generator moves on in between
    again = _vae(guide)
    fit(again, x, epochs=3, batch_size=16, lr=0.02, quiet=True, seed=1, checkpoint=path, resume=True)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
