import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.distributions import BernoulliEvent, NormalEvent

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
