import math

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.distributions import (BernoulliEvent, NormalEvent, NormalMixtureEvent, gaussian_marginals,
                                    noise_spec, sample_from_noise)

F64 = torch.float64


def _normal_params(g, batch=(5, 3), d=4):
    loc = (2 * torch.randn(batch + (d,), generator=g, dtype=F64)).requires_grad_()
    scale = (0.05 + torch.rand(batch + (d,), generator=g, dtype=F64) * 3).requires_grad_()
    return loc, scale


def _same_values_and_gradients(ours, ref, value, params, g):
    lp, lp_ref = ours.log_prob(value), ref.log_prob(value)
    assert lp.shape == lp_ref.shape
    torch.testing.assert_close(lp, lp_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(lp.shape, generator=g, dtype=F64)
    grads = torch.autograd.grad((w * lp).sum(), params)
    grads_ref = torch.autograd.grad((w * lp_ref).sum(), params)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_normal_event_equals_normal_to_event():
    g = torch.Generator().manual_seed(0)
    loc, scale = _normal_params(g)
    ours, ref = NormalEvent(loc, scale), dist.Normal(loc, scale).to_event(1)
    assert ours.batch_shape == (5, 3) and ours.event_shape == (4,)
    # a value with an extra leading (particle) dimension, and one broadcast over the batch
    for value in (torch.randn(2, 5, 3, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)):
        _same_values_and_gradients(ours, ref, value, (loc, scale), g)
    # a scalar scale broadcasts as in Normal
    _same_values_and_gradients(NormalEvent(loc, 0.7), dist.Normal(loc, 0.7).to_event(1),
                               torch.randn(5, 3, 4, generator=g, dtype=F64), (loc,), g)


def test_normal_event_behaves_as_the_distribution_it_stands_for():
    g = torch.Generator().manual_seed(1)
    loc, scale = _normal_params(g)
    d = NormalEvent(loc, scale)
    assert isinstance(d, torch.distributions.Independent) and isinstance(d.base_dist, torch.distributions.Normal)
    assert d.has_rsample and d.rsample((2,)).shape == (2, 5, 3, 4)
    torch.testing.assert_close(d.mean, loc)
    torch.testing.assert_close(d.variance, scale.square())
    big = d.expand((7, 5, 3))
    assert isinstance(big, NormalEvent) and big.batch_shape == (7, 5, 3)
    x = torch.randn(5, 3, 4, generator=g, dtype=F64)
    torch.testing.assert_close(big.log_prob(x), dist.Normal(loc, scale).to_event(1).expand((7, 5, 3)).log_prob(x))
    mask = torch.tensor([True, False, True])
    torch.testing.assert_close(d.mask(mask).log_prob(x), d.log_prob(x) * mask)
    torch.testing.assert_close(d.to_event(1).log_prob(x), d.log_prob(x).sum(-1))
    # the analytic KL registered for Independent(Normal) pairs still applies
    other = NormalEvent(torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64))
    kl = torch.distributions.kl_divergence(d, other)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                            torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl, ref)


def test_normal_event_validates_its_arguments():
    with pytest.raises(ValueError):
        NormalEvent(torch.zeros(3), -torch.ones(3), validate_args=True)


def _mixture_params(g, batch=(), k=6, d=4, dtype=F64):
    logits = torch.randn(batch + (k,), generator=g, dtype=dtype).requires_grad_()
    loc = (2 * torch.randn(batch + (k, d), generator=g, dtype=dtype)).requires_grad_()
    scale = (0.05 + torch.rand(batch + (k, d), generator=g, dtype=dtype) * 2).requires_grad_()
    return logits, loc, scale


def _generic_mixture(logits, loc, scale):
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))


def test_normal_mixture_event_equals_mixture_same_family():
    g = torch.Generator().manual_seed(10)
    for batch, values in [((), [(4,), (7, 4), (2, 7, 4)]), ((3,), [(3, 4), (5, 3, 4), (4,)])]:
        for shape in values:
            params = _mixture_params(g, batch)
            value = (2 * torch.randn(shape, generator=g, dtype=F64)).requires_grad_()
            ours, ref = NormalMixtureEvent(*params), _generic_mixture(*params)
            assert ours.batch_shape == ref.batch_shape and ours.event_shape == (4,)
            _same_values_and_gradients(ours, ref, value, (value,) + params, g)


def test_normal_mixture_event_expands_without_copying_and_samples_as_the_mixture():
    g = torch.Generator().manual_seed(11)
    params = _mixture_params(g)
    ours = NormalMixtureEvent(*params).expand((5, 2))
    ref = _generic_mixture(*params).expand((5, 2))
    assert isinstance(ours, NormalMixtureEvent) and ours.batch_shape == (5, 2)
    for shape in [(5, 2, 4), (3, 5, 2, 4), (4,), (2, 4)]:
        value = torch.randn(shape, generator=g, dtype=F64)
        torch.testing.assert_close(ours.log_prob(value), ref.log_prob(value), rtol=1e-12, atol=1e-12)
    assert ours.sample((3,)).shape == (3, 5, 2, 4)
    torch.testing.assert_close(ours.mean, ref.mean)
    # the draws are the mixture's: the same generator state gives the same draws
    torch.manual_seed(0)
    a = ours.sample((4,))
    torch.manual_seed(0)
    torch.testing.assert_close(a, ref.sample((4,)))


def test_normal_mixture_event_keeps_float32_accurate_where_scales_are_small():
    # terms of about 1e6 per dimension cancel to a few nats: formed in float32 they would lose
    # most of a nat; the float64 products keep the float32 result at the reference's rounding
    g = torch.Generator().manual_seed(12)
    logits, loc, scale = (p.detach() for p in _mixture_params(g, k=5, d=8))
    loc = loc + 3.0
    scale = torch.full_like(scale, 3e-3)
    value = loc[2] + scale[2] * torch.randn(10, 8, generator=g, dtype=F64)
    params32 = (logits.float(), loc.float(), scale.float())
    ours = NormalMixtureEvent(*params32).log_prob(value.float())
    assert ours.dtype == torch.float32
    # the reference in float64 from the same float32 inputs: only the result's rounding differs
    exact = _generic_mixture(*(p.double() for p in params32)).log_prob(value.float().double())
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=1e-5)


def test_mixture_priors_use_the_fast_mixture():
    from pyro_vae.priors import make_prior
    from pyro_vae.networks import Encoder

    encoder = Encoder(6, 3, hidden=(5,))
    for spec in [("mixture", {"n_components": 4}), "vamp"]:
        prior = make_prior(spec, 3, encoder=encoder, data_dim=6)
        d = prior()
        assert isinstance(d, NormalMixtureEvent)
        comp = d.component_distribution
        ref = dist.MixtureSameFamily(d.mixture_distribution, dist.Normal(comp.loc, comp.scale).to_event(1))
        z = torch.randn(7, 3)
        torch.testing.assert_close(d.log_prob(z), ref.log_prob(z), rtol=1e-5, atol=1e-5)


def test_bernoulli_event_equals_bernoulli_to_event():
    g = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(5, 3, 6, generator=g, dtype=F64)).requires_grad_()
    ours, ref = BernoulliEvent(logits), dist.Bernoulli(logits=logits).to_event(1)
    x = torch.bernoulli(torch.full((3, 6), 0.4, dtype=F64), generator=g)  # broadcast over the 5
    _same_values_and_gradients(ours, ref, x, (logits,), g)
    big = ours.expand((2, 5, 3))
    assert isinstance(big, BernoulliEvent) and big.batch_shape == (2, 5, 3)
    torch.testing.assert_close(big.log_prob(x), ref.expand((2, 5, 3)).log_prob(x))
    mask = torch.tensor([True, False, True])
    torch.testing.assert_close(ours.mask(mask).log_prob(x), ours.log_prob(x) * mask)
    torch.testing.assert_close(ours.mean, torch.sigmoid(logits))
    assert ours.sample((4,)).shape == (4, 5, 3, 6)
    with pytest.raises(ValueError):
        BernoulliEvent(logits.detach(), validate_args=True).log_prob(torch.full((3, 6), 0.5, dtype=F64))


def test_elbos_see_the_same_densities_as_with_to_event():
    """Trace_ELBO and TraceMeanField_ELBO (analytic KL) give the same loss with either form."""
    g = torch.Generator().manual_seed(4)
    x = torch.bernoulli(torch.full((8, 6), 0.3, dtype=F64), generator=g)
    w = torch.randn(2, 6, generator=g, dtype=F64)
    q_loc, q_scale = torch.randn(8, 2, generator=g, dtype=F64), torch.rand(8, 2, generator=g, dtype=F64) + 0.2

    def programs(fast):
        def model(x):
            with pyro.plate("data", x.shape[0]):
                zero, one = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)
                prior = NormalEvent(zero, one) if fast else dist.Normal(zero, one).to_event(1)
                z = pyro.sample("z", prior)
                logits = z @ w
                lik = BernoulliEvent(logits) if fast else dist.Bernoulli(logits=logits).to_event(1)
                pyro.sample("x", lik, obs=x)

        def guide(x):
            with pyro.plate("data", x.shape[0]):
                q = NormalEvent(q_loc, q_scale) if fast else dist.Normal(q_loc, q_scale).to_event(1)
                pyro.sample("z", q)
        return model, guide

    for elbo in (Trace_ELBO(max_plate_nesting=1), TraceMeanField_ELBO(max_plate_nesting=1)):
        losses = []
        for fast in (True, False):
            pyro.set_rng_seed(0)
            losses.append(elbo.loss(*programs(fast), x))
        assert losses[0] == pytest.approx(losses[1], rel=1e-12)


# ----------------------------------------------------------------------------- samples from given noise
def _noise(fn, g, *sample_shape):
    spec = noise_spec(fn)
    return torch.randn(tuple(sample_shape) + tuple(spec.shape), generator=g, dtype=spec.dtype)


def test_normal_families_are_loc_plus_scale_times_the_noise():
    g = torch.Generator().manual_seed(0)
    loc, scale = _normal_params(g, batch=(3,), d=4)
    eps = torch.randn(3, 4, generator=g, dtype=F64)
    for fn in (dist.Normal(loc, scale), dist.Normal(loc, scale).to_event(1), NormalEvent(loc, scale),
               dist.Normal(loc, scale).to_event(1).mask(torch.tensor([True, False, True]))):
        spec = noise_spec(fn)
        assert spec.shape == (3, 4) and spec.dtype == F64 and spec.device == loc.device
        assert torch.equal(sample_from_noise(fn, eps), loc + scale * eps)
    # reparameterized: d value / d loc = 1, d value / d scale = eps
    value = sample_from_noise(NormalEvent(loc, scale), eps)
    grad_loc, grad_scale = torch.autograd.grad(value.sum(), (loc, scale))
    assert torch.equal(grad_loc, torch.ones_like(loc)) and torch.equal(grad_scale, eps)
    # broadcast over particles by a plate (expand), and Pyro's ExpandedDistribution
    for fn in (NormalEvent(loc, scale).expand((5, 3)), dist.ExpandedDistribution(dist.Normal(loc, scale), (5, 3, 4))):
        eps5 = _noise(fn, g)
        assert eps5.shape == (5, 3, 4)
        assert torch.equal(sample_from_noise(fn, eps5), loc + scale * eps5)


def test_multivariate_normals_from_noise():
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    tril = (torch.randn(3, 4, 4, generator=g, dtype=F64).tril(-1) + torch.diag_embed(
        0.5 + torch.rand(3, 4, generator=g, dtype=F64))).requires_grad_()
    fn = dist.MultivariateNormal(loc, scale_tril=tril).expand((6, 3))  # particles x datapoints
    eps = _noise(fn, g)
    assert eps.shape == (6, 3, 4)
    naive = torch.stack([torch.stack([loc[i] + tril[i] @ eps[k, i] for i in range(3)]) for k in range(6)])
    value = sample_from_noise(fn, eps)
    torch.testing.assert_close(value, naive, rtol=1e-12, atol=1e-12)
    assert value.requires_grad
    # one scale_tril shared by the batch
    shared = dist.MultivariateNormal(loc, scale_tril=tril[0])
    torch.testing.assert_close(sample_from_noise(shared, eps), loc + eps @ tril[0].T, rtol=1e-12, atol=1e-12)
    # low rank: loc + W eps_1 + sqrt(D) eps_2
    w = torch.randn(4, 2, generator=g, dtype=F64)
    diag = 0.1 + torch.rand(4, generator=g, dtype=F64)
    low = dist.LowRankMultivariateNormal(loc, w, diag)
    eps = _noise(low, g)
    assert eps.shape == (3, 6)
    torch.testing.assert_close(sample_from_noise(low, eps), loc + eps[:, :2] @ w.T + diag.sqrt() * eps[:, 2:],
                               rtol=1e-12, atol=1e-12)


def test_transformed_distributions_push_the_base_sample_through_the_transforms():
    from pyro.distributions.transforms import AffineTransform, affine_autoregressive

    g = torch.Generator().manual_seed(2)
    loc, scale = _normal_params(g, batch=(5,), d=3)
    lognormal = dist.LogNormal(loc, scale)
    eps = _noise(lognormal, g)
    torch.testing.assert_close(sample_from_noise(lognormal, eps), (loc + scale * eps).exp())
    torch.manual_seed(0)
    iaf = affine_autoregressive(3, hidden_dims=[8]).double()
    base = NormalEvent(loc, scale)
    flow = dist.TransformedDistribution(base, [iaf, AffineTransform(1.0, 2.0, event_dim=1)]).expand((2, 5))
    assert flow.batch_shape == (2, 5) and flow.event_shape == (3,)
    eps = _noise(flow, g)
    assert eps.shape == (2, 5, 3)
    torch.testing.assert_close(sample_from_noise(flow, eps), 1.0 + 2.0 * iaf(loc + scale * eps))


def test_discrete_families_by_inverse_cdf():
    g = torch.Generator().manual_seed(3)
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3], [0.25, 0.25, 0.25, 0.25]], dtype=F64)
    eps = torch.randn(20000, 2, generator=g, dtype=F64)
    u = torch.special.ndtr(eps)
    cat = dist.Categorical(probs=probs).expand((20000, 2))
    assert noise_spec(cat).shape == (20000, 2)
    value = sample_from_noise(cat, eps)
    # the category whose CDF interval holds u = Phi(eps)
    edges = probs.cumsum(-1)
    naive = (u.unsqueeze(-1) >= edges).sum(-1)
    assert torch.equal(value, naive)
    assert not bool((value[:, 0] == 1).any())  # probability 0 never drawn
    freq = torch.stack([(value == c).double().mean(0) for c in range(4)], -1)
    assert (freq - probs).abs().max() < 4 * math.sqrt(0.25 / 20000)
    onehot = sample_from_noise(dist.OneHotCategorical(probs=probs).expand((20000, 2)), eps)
    assert torch.equal(onehot.argmax(-1), value) and torch.equal(onehot.sum(-1), torch.ones(20000, 2, dtype=F64))
    p = torch.tensor([0.1, 0.7], dtype=F64)
    flips = sample_from_noise(dist.Bernoulli(probs=p).expand((20000, 2)), eps)
    assert torch.equal(flips, (u < p).double())
    assert (flips.mean(0) - p).abs().max() < 4 * math.sqrt(0.25 / 20000)


def test_univariate_distributions_with_an_icdf_and_mixtures():
    g = torch.Generator().manual_seed(4)
    rate = torch.tensor([0.5, 2.0], dtype=F64)
    eps = torch.randn(4, 2, generator=g, dtype=F64)
    torch.testing.assert_close(sample_from_noise(dist.Exponential(rate), eps),
                               -torch.log1p(-torch.special.ndtr(eps)) / rate)
    # a mixture: the component by inverse CDF of the first noise, then the component's own rule
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    locs = torch.tensor([[-5.0, 0.0], [5.0, 1.0]], dtype=F64)
    mixture = dist.MixtureSameFamily(dist.Categorical(weights), NormalEvent(locs, 0.5)).expand((3,))
    eps = _noise(mixture, g)
    assert eps.shape == (3, 3)
    value = sample_from_noise(mixture, eps)
    component = (torch.special.ndtr(eps[:, 0]) >= 0.3).long()
    torch.testing.assert_close(value, locs[component] + 0.5 * eps[:, 1:])


@pytest.mark.parametrize("make", [
    lambda: dist.Normal(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)),
    lambda: dist.MultivariateNormal(torch.tensor([1.0, -1.0], dtype=F64),
                                    covariance_matrix=torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=F64)),
    lambda: dist.LowRankMultivariateNormal(torch.zeros(2, dtype=F64), torch.tensor([[1.0], [0.5]], dtype=F64),
                                           torch.tensor([0.2, 0.3], dtype=F64)),
    lambda: dist.LogNormal(torch.tensor(0.2, dtype=F64), 0.4),
    lambda: dist.Laplace(torch.tensor(1.0, dtype=F64), 2.0),
    lambda: dist.Gumbel(torch.tensor(1.0, dtype=F64), 2.0),
    lambda: dist.Uniform(torch.tensor(-1.0, dtype=F64), 3.0),
    lambda: dist.Categorical(torch.tensor([0.1, 0.6, 0.3], dtype=F64)),
    lambda: dist.MixtureSameFamily(dist.Categorical(torch.tensor([0.4, 0.6], dtype=F64)),
                                   dist.Normal(torch.tensor([-2.0, 3.0], dtype=F64), 1.0)),
], ids=["normal", "mvn", "lowrank", "lognormal", "laplace", "gumbel", "uniform", "categorical", "mixture"])
def test_draws_from_standard_noise_have_the_distributions_moments(make):
    fn = make()
    g = torch.Generator().manual_seed(5)
    n = 40000
    value = sample_from_noise(fn.expand((n,) + fn.batch_shape), _noise(fn.expand((n,) + fn.batch_shape), g))
    value = value.double()
    if isinstance(fn, dist.Categorical):  # torch gives no moments of the index
        support = torch.arange(3, dtype=F64)
        mean = (fn.probs * support).sum()
        var = (fn.probs * (support - mean) ** 2).sum()
    else:
        mean, var = fn.mean, fn.variance
    assert value.shape == (n,) + fn.batch_shape + fn.event_shape
    assert ((value.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    # the variance's own standard error, from the fourth moment
    m4 = ((value - value.mean(0)) ** 4).mean(0)
    assert ((value.var(0) - var).abs() <= 5 * ((m4 - var ** 2) / n).sqrt()).all()
    if isinstance(fn, dist.MultivariateNormal):
        cov = torch.cov(value.T)
        assert abs(float(cov[0, 1]) - 0.8) < 0.05


def test_families_without_a_noise_sampler():
    for fn in (dist.Gamma(torch.tensor(2.0), 1.0), dist.Beta(torch.tensor(2.0), 3.0),
               dist.Poisson(torch.tensor(3.0)), dist.Gamma(torch.ones(3), 1.0).to_event(1)):
        assert noise_spec(fn) is None
        with pytest.raises(ValueError, match="no sampler from standard noise"):
            sample_from_noise(fn, torch.zeros(3))
    assert noise_spec(dist.Delta(torch.zeros(3))) is None


def test_gaussian_marginals_over_subsets_of_coordinates():
    g = torch.Generator().manual_seed(6)
    d = 6
    loc = torch.randn(d, generator=g, dtype=F64)
    a = torch.randn(d, d, generator=g, dtype=F64)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=F64)
    index = torch.tensor([[4, 0], [1, 5], [3, 2]])
    value = torch.randn(7, d, generator=g, dtype=F64)  # 7 particles
    w = torch.randn(d, 2, generator=g, dtype=F64)
    diag = 0.1 + torch.rand(d, generator=g, dtype=F64)
    full = dist.MultivariateNormal(loc, covariance_matrix=cov)
    cases = [(full.expand((7,)), cov),
             (dist.LowRankMultivariateNormal(loc, w, diag), w @ w.T + torch.diag(diag)),
             (dist.Normal(loc, diag.sqrt()).to_event(1), torch.diag(diag))]
    for fn, sigma in cases:
        marginals = gaussian_marginals(fn, index)
        lp = marginals.log_prob(value[..., index])
        assert lp.shape == (7, 3)
        for m, rows in enumerate(index):
            ref = dist.MultivariateNormal(loc[rows], covariance_matrix=sigma[rows][:, rows]).log_prob(value[:, rows])
            torch.testing.assert_close(lp[:, m], ref, rtol=1e-10, atol=1e-10)
    # the marginals of disjoint subsets of independent coordinates add up to the joint density
    diagonal = dist.Normal(loc, diag.sqrt()).to_event(1)
    torch.testing.assert_close(gaussian_marginals(diagonal, index).log_prob(value[..., index]).sum(-1),
                               diagonal.log_prob(value), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"marginals of Independent\(Gamma\)"):
        gaussian_marginals(dist.Gamma(torch.ones(d), 1.0).to_event(1), index)


def test_a_distribution_with_its_own_noise_rule_is_used():
    from pyro_vae.distributions import NoiseSpec, noise_spec, sample_from_noise

    class Shifted(dist.TorchDistribution):
        """x = 3 + eps, with its own rule."""
        arg_constraints = {}
        support = dist.constraints.real

        def __init__(self):
            super().__init__(torch.Size([2]), torch.Size())

        def noise_spec(self):
            return NoiseSpec(self.batch_shape, torch.float32, torch.device("cpu"))

        def from_noise(self, noise):
            return 3.0 + noise

    d = Shifted()
    assert noise_spec(d).shape == (2,)
    assert noise_spec(d.to_event(1)).shape == (2,)  # wrappers reach the rule too
    eps = torch.tensor([0.5, -1.0])
    assert torch.equal(sample_from_noise(d, eps), torch.tensor([3.5, 2.0]))
    assert torch.equal(sample_from_noise(d.to_event(1), eps), torch.tensor([3.5, 2.0]))
