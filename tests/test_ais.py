import math

import pytest
import torch

import pyro
import pyro.distributions as dist

from pyro_vae.ais import AISEstimate, BDMCResult, ais_log_likelihood, annealing_schedule, bdmc
from pyro_vae.importance import ImportanceEstimate, log_likelihood

import linear_gaussian

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # many small operations


# ----------------------------------------------------------------------------- reference models
class NormalGamma:
    """Two latent sites per datapoint, one with positive support and one depending on it:
    tau ~ Gamma(a0, b0), m | tau ~ N(mu0, 1/(kappa0 tau)), x_j | m, tau ~ N(m, 1/tau), j < D.
    The posterior is Normal-Gamma again and log p(x) is closed-form (conjugacy)."""

    a0, b0, mu0, kappa0 = 3.0, 2.0, 0.5, 2.0

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            tau = pyro.sample("tau", dist.Gamma(torch.tensor(self.a0, dtype=F64), self.b0))
            m = pyro.sample("m", dist.Normal(self.mu0, (self.kappa0 * tau).rsqrt()))
            loc = m.unsqueeze(-1).expand(m.shape + x.shape[-1:])
            pyro.sample("x", dist.Normal(loc, tau.rsqrt().unsqueeze(-1)).to_event(1), obs=x)

    def posterior(self, x):
        d, xbar = x.shape[-1], x.mean(-1)
        kn = self.kappa0 + d
        an = self.a0 + d / 2
        bn = (self.b0 + 0.5 * (x - xbar[:, None]).square().sum(-1)
              + self.kappa0 * d * (xbar - self.mu0) ** 2 / (2 * kn))
        return kn, (self.kappa0 * self.mu0 + d * xbar) / kn, an, bn

    def log_px(self, x):
        d = x.shape[-1]
        kn, _, an, bn = self.posterior(x)
        return (math.lgamma(an) - math.lgamma(self.a0) + self.a0 * math.log(self.b0) - an * bn.log()
                + 0.5 * (math.log(self.kappa0) - math.log(kn)) - d / 2 * math.log(2 * math.pi))

    def exact_guide(self, x):
        kn, mn, an, bn = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            tau = pyro.sample("tau", dist.Gamma(torch.full_like(bn, an), bn))
            pyro.sample("m", dist.Normal(mn, (kn * tau).rsqrt()))

    def poor_guide(self, x):
        kn, mn, an, bn = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("tau", dist.LogNormal((an / bn).log() + 0.5, 0.3))
            pyro.sample("m", dist.Normal(mn + 0.3, 0.15))

    def sample(self, n, d=4, seed=1):
        g = torch.Generator().manual_seed(seed)
        tau = dist.Gamma(torch.full((n,), self.a0, dtype=F64), self.b0).sample()  # global RNG, seeded per test
        m = self.mu0 + torch.randn(n, generator=g, dtype=F64) / (self.kappa0 * tau).sqrt()
        return m[:, None] + torch.randn(n, d, generator=g, dtype=F64) / tau.sqrt()[:, None]


@pytest.fixture
def lg():
    return linear_gaussian.PyroModel()


@pytest.fixture
def ng():
    return NormalGamma()


def budget(num_steps, num_chains, num_leapfrog_steps):
    """Evaluations of log p(x, z) per datapoint of an AIS run."""
    return num_chains * (num_steps + (num_steps - 1) * num_leapfrog_steps)


# ----------------------------------------------------------------------------- exactness
def test_exact_posterior_guide_makes_every_weight_log_px(lg):
    """q = p(z|x): every intermediate density is q times p(x)^beta, so each chain's log-weight
    is log p(x) exactly, whatever the transitions do."""
    x = lg.sample(20)
    truth = lg.log_px(x)
    est = ais_log_likelihood(lg.model, lg.exact_guide, x, num_steps=8, num_chains=4,
                             num_leapfrog_steps=3, seed=0)
    assert isinstance(est, AISEstimate) and isinstance(est, ImportanceEstimate)
    assert est.per_datapoint.shape == (20,) and est.per_datapoint.dtype == F64
    assert torch.allclose(est.per_datapoint, truth, atol=1e-10, rtol=0)
    assert torch.allclose(est.elbo, truth, atol=1e-10, rtol=0)  # every single chain
    assert torch.allclose(est.ess, torch.full_like(est.ess, 4.0), rtol=1e-9)
    assert est.mc_stderr.max() < 1e-6
    assert ((est.acceptance_rate > 0.05) & (est.acceptance_rate <= 1)).all()  # the chains did move


def test_exact_posterior_with_constrained_and_dependent_latent_sites(ng):
    x = ng.sample(15)
    truth = ng.log_px(x)
    est = ais_log_likelihood(ng.model, ng.exact_guide, x, num_steps=6, num_chains=3,
                             num_leapfrog_steps=2, seed=1)
    assert torch.allclose(est.per_datapoint, truth, atol=1e-9, rtol=0)
    assert torch.allclose(est.elbo, truth, atol=1e-9, rtol=0)
    assert (est.acceptance_rate > 0.05).all()


def test_one_step_is_importance_sampling_with_the_same_samples(lg):
    x = lg.sample(12)
    ais = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=1, num_chains=30, seed=3)
    imp = log_likelihood(lg.model, lg.poor_guide, x, num_samples=30, seed=3)
    for field in ("per_datapoint", "elbo", "ess", "mc_stderr"):
        assert torch.allclose(getattr(ais, field), getattr(imp, field), rtol=1e-12, atol=0), field
    assert torch.isnan(ais.acceptance_rate).all()  # no transitions


def test_chunks_are_put_back_in_order(lg):
    x = lg.sample(23)
    est = ais_log_likelihood(lg.model, lg.exact_guide, x, num_steps=3, num_chains=2,
                             num_leapfrog_steps=1, data_batch_size=7, seed=0)
    assert torch.allclose(est.per_datapoint, lg.log_px(x), atol=1e-10, rtol=0)
    assert est.step_size.shape == (23,)


def test_nested_plates_and_inferred_plate_nesting(lg):
    """A model with the data plate at dim -2 and a feature plate at dim -1."""
    x = lg.sample(6)

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))
            with pyro.plate("features", lg.d, dim=-1):
                pyro.sample("x", dist.Normal(z.squeeze(-2) @ lg.w.T + lg.b, lg.sigma), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.MultivariateNormal(lg.post_loc(x).unsqueeze(-2), covariance_matrix=lg.post_cov))

    for mpn in (2, None):
        est = ais_log_likelihood(model, guide, x, num_steps=3, num_chains=2, num_leapfrog_steps=2,
                                 seed=0, max_plate_nesting=mpn)
        assert torch.allclose(est.per_datapoint, lg.log_px(x), atol=1e-10)
    with pytest.raises(ValueError, match="max_plate_nesting"):
        ais_log_likelihood(model, guide, x, num_steps=3, num_chains=2, max_plate_nesting=1)


# ----------------------------------------------------------------------------- accuracy with a poor guide
@pytest.mark.slow
def test_poor_guide_ais_is_within_monte_carlo_error_where_is_is_biased(lg):
    x = lg.sample(40)
    truth = lg.log_px(x)
    est = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=100, num_chains=64,
                             num_leapfrog_steps=5, seed=0)
    imp = log_likelihood(lg.model, lg.poor_guide, x, num_samples=budget(100, 64, 5), seed=0)
    err = est.per_datapoint - truth
    assert abs(float(err.mean())) < 3 * est.mean_mc_stderr
    assert float((err.abs() < 3 * est.mc_stderr).double().mean()) >= 0.85
    # importance sampling with as many evaluations of the model (38,080 per datapoint) is far off
    bias = float((imp.per_datapoint - truth).mean())
    assert bias < -2.0 and bias < -20 * imp.mean_mc_stderr
    assert (est.per_datapoint > imp.per_datapoint).double().mean() > 0.95


@pytest.mark.slow
def test_poor_guide_with_positive_support_needs_the_jacobian(ng):
    """The Gamma site moves in log space; AIS lands on the analytic log p(x) only with the
    log-Jacobian of the transform in the intermediate densities (without it, +0.6 nats)."""
    x = ng.sample(40)
    truth = ng.log_px(x)
    est = ais_log_likelihood(ng.model, ng.poor_guide, x, num_steps=100, num_chains=32,
                             num_leapfrog_steps=5, seed=0)
    err = est.per_datapoint - truth
    assert abs(float(err.mean())) < 3 * est.mean_mc_stderr
    assert float((err.abs() < 3 * est.mc_stderr).double().mean()) >= 0.85
    imp = log_likelihood(ng.model, ng.poor_guide, x, num_samples=budget(100, 32, 5), seed=0)
    assert float((imp.per_datapoint - truth).mean()) < -5 * abs(float(err.mean()))


def test_library_vae_with_a_mixture_prior_agrees_with_quadrature():
    """A 2-d latent space, where log p(x) = log of the integral of p(z) p(x|z) on a fine grid."""
    from pyro_vae.vae import VAE

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((20, 12), 0.3), generator=g)
    vae = VAE(12, latent_dim=2, hidden=(16,), prior="mixture", seed=0).eval()
    h = 0.05
    axis = torch.arange(-7, 7 + h / 2, h)
    grid = torch.cartesian_prod(axis, axis)  # (G, 2)
    with torch.no_grad():
        log_joint = vae.prior().log_prob(grid)[:, None] + vae.decode(grid[:, None, :]).log_prob(x)  # (G, N)
    exact = (torch.logsumexp(log_joint.double(), 0) + 2 * math.log(h)).float()
    est = ais_log_likelihood(vae.model, vae.guide, x, num_steps=40, num_chains=8,
                             num_leapfrog_steps=5, seed=0)
    imp = log_likelihood(vae.model, vae.guide, x, num_samples=budget(40, 8, 5), seed=0)
    err = est.per_datapoint - exact
    assert abs(float(err.mean())) < 3 * est.mean_mc_stderr + 1e-3
    assert float((err.abs() < 3 * est.mc_stderr + 1e-3).double().mean()) >= 0.85
    assert float(err.abs().mean()) < float((imp.per_datapoint - exact).abs().mean())


# ----------------------------------------------------------------------------- step sizes
def test_step_size_adapts_toward_the_target_acceptance(lg):
    x = lg.sample(10)
    runs = {target: ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=60, num_chains=8,
                                       num_leapfrog_steps=3, target_accept=target, seed=0)
            for target in (0.3, 0.9)}
    low, high = runs[0.3], runs[0.9]
    assert (low.step_size > high.step_size).all()
    assert low.mean_acceptance_rate < 0.55 < 0.75 < high.mean_acceptance_rate
    # a fixed step size stays fixed
    fixed = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=5, num_chains=2, step_size=0.05,
                               adapt_step_size=False, step_size_jitter=0.0, seed=0)
    assert torch.equal(fixed.step_size, torch.full((10,), 0.05, dtype=F64))
    # the rule: log eps moves by adapt_rate * (acceptance - target) after every transition; a
    # step size so small that (nearly) every proposal is accepted grows by exp(0.2 * 0.35) each time
    tiny = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=60, num_chains=8, step_size=1e-5,
                              num_leapfrog_steps=3, adapt_rate=0.2, seed=0)
    assert (tiny.acceptance_rate > 0.99).all()
    assert torch.allclose(tiny.step_size, torch.full((10,), 1e-5 * math.exp(0.2 * 59 * 0.35), dtype=F64),
                          rtol=0.01)


# ----------------------------------------------------------------------------- BDMC
@pytest.mark.slow
def test_bdmc_sandwiches_the_analytic_log_px(lg):
    results = {t: bdmc(lg.model, lg.poor_guide, (30, 5), num_steps=t, num_chains=4,
                       num_leapfrog_steps=5, seed=0, dtype=F64) for t in (10, 100)}
    short, long = results[10], results[100]
    assert isinstance(long, BDMCResult)
    assert long.lower.bound == "lower" and long.upper.bound == "upper"
    assert torch.equal(short.data, long.data)  # same seed, same simulated data
    truth = float(lg.log_px(long.data).mean())
    # with few steps both bounds are loose, well apart from the truth on either side
    assert short.lower.mean < truth - 0.3 and short.upper.mean > truth + 0.3
    # with more steps they close in, each within its Monte Carlo error of its side of the truth
    assert truth - 0.3 < long.lower.mean <= truth + 3 * long.lower.mean_mc_stderr
    assert truth - 3 * long.upper.mean_mc_stderr <= long.upper.mean < truth + 0.3
    assert 0 < long.mean_gap < short.mean_gap / 3
    assert (long.upper.elbo >= long.upper.per_datapoint - 1e-9).all()  # single-chain bounds are looser
    assert (long.lower.elbo <= long.lower.per_datapoint + 1e-9).all()


@pytest.mark.parametrize("model", ["linear_gaussian", "normal_gamma"])
def test_bdmc_with_the_exact_posterior_closes_the_gap(model, lg, ng):
    """Forward and reverse weights are then all exactly log p(x) and -log p(x)."""
    m, shape = (lg, (12, 5)) if model == "linear_gaussian" else (ng, (12, 4))
    r = bdmc(m.model, m.exact_guide, shape, num_steps=5, num_chains=2, num_reverse_chains=3,
             num_leapfrog_steps=2, seed=1, dtype=F64)
    truth = m.log_px(r.data)
    for est in (r.lower, r.upper):
        assert torch.allclose(est.per_datapoint, truth, atol=1e-9, rtol=0)
        assert torch.allclose(est.elbo, truth, atol=1e-9, rtol=0)
        assert (est.acceptance_rate > 0.05).all()
    assert r.lower.num_chains == 2 and r.upper.num_chains == 3
    assert r.gap.abs().max() < 1e-8


def test_bdmc_chunks_keep_each_datapoint_with_its_latents(lg):
    """Reverse chains started from another datapoint's latents miss by up to 15 nats here."""
    r = bdmc(lg.model, lg.poor_guide, (13, 5), num_steps=20, num_chains=4, num_leapfrog_steps=3,
             data_batch_size=5, seed=0, dtype=F64)
    truth = lg.log_px(r.data)
    assert (r.lower.per_datapoint - truth).abs().max() < 4
    assert (r.upper.per_datapoint - truth).abs().max() < 4


def test_bdmc_simulates_from_the_model(lg):
    r = bdmc(lg.model, lg.exact_guide, (3000, 5), num_steps=1, num_chains=1, seed=2, dtype=F64)
    assert r.data.shape == (3000, 5) and r.latents["z"].shape == (3000, 3)
    z, x = r.latents["z"], r.data
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.03
    noise = x - (z @ lg.w.T + lg.b)  # the data come from these latents
    assert abs(float(noise.std()) - lg.sigma) < 0.02
    cov = lg.w @ lg.w.T + lg.sigma ** 2 * torch.eye(5, dtype=F64)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.1 * float(cov.diagonal().max()))
    assert torch.allclose(r.lower.per_datapoint, lg.log_px(x), atol=1e-10)


def test_bdmc_refuses_models_it_cannot_simulate(lg):
    def two_observations(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.w.T + lg.b, lg.sigma).to_event(1), obs=x)
            pyro.sample("y", dist.Normal(z.sum(-1), 1.0), obs=x[:, 0])

    with pytest.raises(ValueError, match="exactly one observed site"):
        bdmc(two_observations, lg.exact_guide, (4, 5), num_steps=2, dtype=F64)

    def first_column(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    with pytest.raises(ValueError, match="obs=x"):
        bdmc(first_column, lg.exact_guide, (4, 5), num_steps=2)
    with pytest.raises(TypeError, match="data_shape"):
        bdmc(lg.model, lg.exact_guide, 100)


# ----------------------------------------------------------------------------- refusals and arguments
class TinyMixture:
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    means = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(self.weights))
            pyro.sample("x", dist.Normal(self.means[z], 1.0), obs=x[:, 0])

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Categorical(self.weights))


def test_discrete_latent_is_refused():
    gm = TinyMixture()
    x = torch.linspace(-3, 3, 5, dtype=F64).unsqueeze(-1)
    with pytest.raises(ValueError, match=r"latent site 'z' is discrete.*log_likelihood"):
        ais_log_likelihood(gm.model, gm.guide, x, num_steps=3, num_chains=2)
    with pytest.raises(ValueError, match="discrete"):
        bdmc(gm.model, gm.guide, (5, 1), num_steps=3, dtype=F64)


def test_programs_that_do_not_fit_are_refused(lg):
    x = lg.sample(5)

    def empty_guide(x):
        pass

    with pytest.raises(ValueError, match="not sampled by the guide"):
        ais_log_likelihood(lg.model, empty_guide, x, num_steps=2, num_chains=2)

    def extra_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(lg.post_loc(x), covariance_matrix=lg.post_cov))
            pyro.sample("u", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="does not have"):
        ais_log_likelihood(lg.model, extra_guide, x, num_steps=2, num_chains=2)

    with pytest.raises(ValueError, match="pyro.plate"):
        ais_log_likelihood(lg.global_model, lg.global_guide, x, num_steps=2, num_chains=2)


@pytest.mark.parametrize("kwargs, error, needle", [
    ({"num_steps": 0}, ValueError, "num_steps"),
    ({"num_steps": 2.5}, TypeError, "num_steps"),
    ({"num_chains": "4"}, TypeError, "num_chains"),
    ({"num_leapfrog_steps": 0}, ValueError, "num_leapfrog_steps"),
    ({"schedule": "cosine"}, ValueError, "schedule"),
    ({"schedule": [0.0, 0.5, 1.0]}, ValueError, "num_steps \\+ 1"),
    ({"schedule": [0.0, 0.6, 0.4, 1.0]}, ValueError, "non-decreasing"),
    ({"step_size": -1.0}, ValueError, "step_size"),
    ({"target_accept": 1.0}, ValueError, "target_accept"),
    ({"step_size_jitter": 1.0}, ValueError, "step_size_jitter"),
    ({"adapt_step_size": "yes"}, TypeError, "adapt_step_size"),
    ({"data_batch_size": 0}, ValueError, "data_batch_size"),
    ({"max_plate_nesting": 0}, ValueError, "max_plate_nesting"),
    ({"seed": -1}, ValueError, "seed"),
    ({"model_kwargs": [1]}, TypeError, "model_kwargs"),
])
def test_bad_arguments(lg, kwargs, error, needle):
    args = {"num_steps": 3, "num_chains": 2, **kwargs}
    with pytest.raises(error, match=needle):
        ais_log_likelihood(lg.model, lg.exact_guide, lg.sample(4), **args)


def test_bad_data_and_programs(lg):
    x = lg.sample(4)
    with pytest.raises(TypeError, match="callable"):
        ais_log_likelihood("model", lg.exact_guide, x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ais_log_likelihood(lg.model, lg.exact_guide, x.tolist())
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN \(first in row 1\)"):
        ais_log_likelihood(lg.model, lg.exact_guide, x)
    with pytest.raises(ValueError, match="num_reverse_chains"):
        bdmc(lg.model, lg.exact_guide, (4, 5), num_reverse_chains=0)


# ----------------------------------------------------------------------------- schedule
def test_annealing_schedules():
    s = annealing_schedule(100)
    assert s.shape == (101,) and s.dtype == F64 and s[0] == 0 and s[-1] == 1
    assert (s[1:] > s[:-1]).all()
    assert torch.allclose(s + s.flip(0), torch.ones(101, dtype=F64), atol=1e-12)  # symmetric
    d = s.diff()
    assert d[0] < d[50] / 5 and d[-1] < d[50] / 5  # denser at both ends
    raw = torch.sigmoid(4.0 * (2 * torch.arange(101, dtype=F64) / 100 - 1))
    assert torch.allclose(s, (raw - raw[0]) / (raw[-1] - raw[0]), atol=1e-12)
    assert torch.allclose(annealing_schedule(4, "linear"), torch.tensor([0, .25, .5, .75, 1], dtype=F64))
    assert torch.equal(annealing_schedule(1), torch.tensor([0.0, 1.0], dtype=F64))
    assert torch.equal(annealing_schedule(2, [0, 0.3, 1]), torch.tensor([0, 0.3, 1], dtype=F64))


def test_custom_schedule_is_used(lg):
    """A linear schedule given as numbers gives the same run as the name."""
    x = lg.sample(5)
    a = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=4, num_chains=3, schedule="linear", seed=0)
    b = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=4, num_chains=3,
                           schedule=[0, 0.25, 0.5, 0.75, 1], seed=0)
    c = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=4, num_chains=3, seed=0)
    assert torch.equal(a.per_datapoint, b.per_datapoint)
    assert not torch.equal(a.per_datapoint, c.per_datapoint)


# ----------------------------------------------------------------------------- bookkeeping
def test_seed_reproducible_and_global_rng_restored(lg):
    x = lg.sample(6)
    state = torch.get_rng_state()
    a = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=5, num_chains=3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    b = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=5, num_chains=3, seed=4)
    c = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=5, num_chains=3, seed=5)
    for field in ("per_datapoint", "elbo", "ess", "acceptance_rate", "step_size"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.per_datapoint, c.per_datapoint)
    r1 = bdmc(lg.model, lg.poor_guide, (4, 5), num_steps=4, num_chains=2, seed=3, dtype=F64)
    r2 = bdmc(lg.model, lg.poor_guide, (4, 5), num_steps=4, num_chains=2, seed=3, dtype=F64)
    assert torch.equal(r1.data, r2.data) and torch.equal(r1.gap, r2.gap)
    assert torch.equal(torch.get_rng_state(), state)


def test_no_gradients_reach_parameters_and_param_store_is_kept(lg):
    net = linear_gaussian.LinearNet(5, 3).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = lg.sample(6)
    pyro.param("existing", torch.ones(2))
    est = ais_log_likelihood(net.model, net.guide, x, num_steps=5, num_chains=2, num_leapfrog_steps=2, seed=0)
    assert torch.isfinite(est.per_datapoint).all()
    assert list(pyro.get_param_store().keys()) == ["existing"]
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not est.per_datapoint.requires_grad
    r = bdmc(net.model, net.guide, (6, 5), num_steps=3, num_chains=2, seed=0, dtype=F64)
    assert torch.isfinite(r.gap).all() and all(p.grad is None for p in net.parameters())
    assert list(pyro.get_param_store().keys()) == ["existing"]


def test_summaries_and_frames(lg):
    x = lg.sample(10)
    est = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=4, num_chains=3, seed=0)
    v = est.per_datapoint
    assert est.mean == pytest.approx(float(v.mean()))
    assert est.stderr == pytest.approx(float(v.std()) / math.sqrt(10))
    assert est.num_chains == 3 and est.num_steps == 4 and est.num_leapfrog_steps == 10
    df = est.to_frame()
    assert list(df.columns) == ["log_px", "mean_log_weight", "ess", "mc_stderr", "acceptance_rate", "step_size"]
    assert len(df) == 10 and df["log_px"].to_numpy() == pytest.approx(v.numpy())
    d = est.to_dict()
    assert d["method"] == "ais" and d["num_chains"] == 3 and d["mean"] == est.mean
    assert d["mean_acceptance_rate"] == pytest.approx(float(est.acceptance_rate.mean()))
    assert "AIS" in str(est) and "log p(x)" in str(est)

    r = bdmc(lg.model, lg.poor_guide, (8, 5), num_steps=4, num_chains=2, seed=0, dtype=F64)
    frame = r.to_frame()
    assert list(frame.columns)[:3] == ["lower", "upper", "gap"] and len(frame) == 8
    assert frame["gap"].to_numpy() == pytest.approx((frame["upper"] - frame["lower"]).to_numpy())
    s = r.to_dict()
    assert s["mean_gap"] == pytest.approx(r.mean_gap) and s["lower"] == r.lower.mean
    assert "<= log p(x) <=" in str(r)


def test_progress_bar_only_on_a_terminal(lg, capsys, monkeypatch):
    import sys

    x = lg.sample(4)
    quiet = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=3, num_chains=2, seed=1)
    assert "AIS" not in capsys.readouterr().err  # stderr is not a terminal under pytest
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=3, num_chains=2, seed=1)
    assert torch.equal(quiet.per_datapoint, shown.per_datapoint)
    assert "AIS" in capsys.readouterr().err
    ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=3, num_chains=2, seed=1, progress=False)
    assert "AIS" not in capsys.readouterr().err
