import copy
import math

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.importance import vectorized_importance_weights

from pyro_vae.importance import ImportanceEstimate, chunk_sizes, log_likelihood, log_weights, program_dtype
from pyro_vae.noise import DatapointNoise

import linear_gaussian

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # many small operations


@pytest.fixture
def lg():
    return linear_gaussian.PyroModel()


# ----------------------------------------------------------------------------- exactness
def test_exact_guide_gives_exact_log_px_with_one_sample(lg):
    x = lg.sample(40)
    truth = lg.log_px(x)
    for seed in (0, 1, 2):  # zero variance: every seed gives the truth
        est = log_likelihood(lg.model, lg.exact_guide, x, num_samples=1, seed=seed)
        assert isinstance(est, ImportanceEstimate)
        assert est.per_datapoint.shape == (40,)
        assert torch.allclose(est.per_datapoint, truth, atol=1e-10, rtol=0)
        assert torch.allclose(est.elbo, truth, atol=1e-10, rtol=0)
        assert torch.isnan(est.mc_stderr).all()  # no variance estimate from one sample
    est = log_likelihood(lg.model, lg.exact_guide, x, num_samples=20, seed=0, particle_batch_size=7)
    assert torch.allclose(est.per_datapoint, truth, atol=1e-10, rtol=0)
    assert torch.allclose(est.ess, torch.full_like(est.ess, 20.0), rtol=1e-9)
    assert est.mc_stderr.abs().max() < 1e-6


def test_perturbed_guide_bias_shrinks_with_k_and_large_k_is_within_3_stderr(lg):
    x = lg.sample(50)
    truth = lg.log_px(x)
    biases = []
    for k in (1, 4, 16, 64):  # bias averaged over 4 runs of 50 datapoints each
        runs = [log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=k, seed=10 * k + r).per_datapoint
                for r in range(4)]
        biases.append(float((torch.stack(runs) - truth).mean()))
    assert biases[0] < -1.0  # a poor guide: one sample is far below
    assert biases[0] < biases[1] < biases[2] < biases[3] < 0
    est = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=20000, seed=5)
    err = est.per_datapoint - truth
    assert abs(float(err.mean())) < 3 * est.mean_mc_stderr
    # the per-datapoint Monte Carlo standard errors are calibrated
    assert float((err.abs() < 3 * est.mc_stderr).double().mean()) >= 0.9
    assert 0 < float(est.ess.min()) and float(est.ess.max()) < 20000


def test_estimate_is_at_least_the_elbo(lg):
    x = lg.sample(30)
    truth = lg.log_px(x)
    # per datapoint and per run, by Jensen's inequality for the same samples
    est = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=50, seed=0)
    assert (est.per_datapoint >= est.elbo).all()
    # on average over runs: E[log p^_K] increases with K towards log p(x); the ELBO is E[log p^_1]
    means = {}
    for k in (1, 5, 50):
        runs = [log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=k, seed=s).per_datapoint
                for s in range(20)]
        means[k] = float(torch.stack(runs).mean())
    assert means[1] < means[5] < means[50] < float(truth.mean())


def test_elbo_field_matches_analytic_elbo(lg):
    # ELBO = log p(x) - KL(q(z|x) || p(z|x)), both Gaussian
    x = lg.sample(20)

    def guide(x):
        return lg.perturbed_guide(x, shift=0.05, stretch=1.2)

    est = log_likelihood(lg.model, guide, x, num_samples=4000, seed=0)
    loc = lg.post_loc(x) + 0.05
    q = dist.MultivariateNormal(loc, covariance_matrix=torch.diag(1.44 * lg.post_cov.diagonal()))
    post = dist.MultivariateNormal(lg.post_loc(x), covariance_matrix=lg.post_cov)
    kl = torch.distributions.kl_divergence(q, post)
    assert float(kl.min()) > 0.1
    analytic = lg.log_px(x) - kl
    # Monte Carlo error of a mean of K log-weights, from an independent set of weights
    sd = log_weights(lg.model, guide, x, 4000).std(0) / math.sqrt(4000)
    assert ((est.elbo - analytic).abs() < 4 * sd).all()
    assert abs(float((est.elbo - analytic).mean())) < 4 * float(sd.pow(2).sum().sqrt()) / 20


def test_per_datapoint_estimate_differs_from_pyro_joint_estimate(lg):
    x = lg.sample(100)
    truth = float(lg.log_px(x).mean())
    k = 200
    pyro.set_rng_seed(3)
    joint_logw = vectorized_importance_weights(lg.model, lg.perturbed_guide, x, num_samples=k,
                                               max_plate_nesting=1)[0]
    pyro.set_rng_seed(3)
    logw = log_weights(lg.model, lg.perturbed_guide, x, k)  # without a seed: Pyro's own draws
    assert logw.shape == (k, 100)
    # same samples: Pyro's joint weight is the product of the per-datapoint weights
    assert torch.allclose(logw.sum(-1), joint_logw, rtol=1e-10)
    joint = float((torch.logsumexp(joint_logw, 0) - math.log(k)) / x.shape[0])
    est = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=k, seed=3)
    logw = log_weights(lg.model, lg.perturbed_guide, x, k, seed=3)  # log_likelihood's draws
    assert torch.equal(est.per_datapoint, torch.logsumexp(logw, 0) - math.log(k))
    # the joint estimate over 100 datapoints is far looser than the per-datapoint one
    assert abs(est.mean - truth) < 0.1
    assert joint < truth - 1.0
    assert abs(est.mean - truth) < abs(joint - truth) / 10


# ----------------------------------------------------------------------------- chunking and bookkeeping
def test_chunked_accumulation_matches_naive_computation(lg):
    """Record every sample drawn and recompute the estimates from the full (K, N) matrix."""
    x = lg.sample(23)
    recorded = []

    def guide(x_chunk):
        with pyro.plate("data", x_chunk.shape[0]):
            z = pyro.sample("z", dist.Normal(lg.post_loc(x_chunk) + 0.3, 0.4).to_event(1))
        recorded.append((x_chunk, z))

    est = log_likelihood(lg.model, guide, x, num_samples=50, particle_batch_size=7, data_batch_size=10,
                         seed=0)
    recorded = [(x_chunk, z) for x_chunk, z in recorded if z.dim() == 3]  # the vectorized passes
    assert [tuple(z.shape[:2]) for _, z in recorded][:8] == [(7, 10)] * 7 + [(1, 10)]
    rows = []
    for x_chunk, z in recorded:
        logp = (dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1).log_prob(z)
                + dist.Normal(z @ lg.w.T + lg.b, lg.sigma).to_event(1).log_prob(x_chunk))
        logq = dist.Normal(lg.post_loc(x_chunk) + 0.3, 0.4).to_event(1).log_prob(z)
        rows.append((x_chunk, logp - logq))
    # group particle chunks by data chunk (data chunks come in order)
    per_chunk = {}
    for x_chunk, lw in rows:
        per_chunk.setdefault(x_chunk.data_ptr(), []).append(lw)
    logw = torch.cat([torch.cat(v, 0) for v in per_chunk.values()], 1)  # (K, N)
    assert logw.shape == (50, 23)
    naive = torch.logsumexp(logw, 0) - math.log(50)
    w = torch.softmax(logw, 0)
    assert torch.allclose(est.per_datapoint, naive, rtol=1e-12)
    assert torch.allclose(est.elbo, logw.mean(0), rtol=1e-12)
    assert torch.allclose(est.ess, 1.0 / (w ** 2).sum(0), rtol=1e-9)
    wn = torch.exp(logw - logw.max(0).values)
    rel = wn.std(0, unbiased=True) / wn.mean(0) / math.sqrt(50)
    assert torch.allclose(est.mc_stderr, rel, rtol=1e-9)


def test_summary_statistics_and_frame(lg):
    x = lg.sample(30)
    est = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=100, seed=0)
    v = est.per_datapoint
    assert est.mean == pytest.approx(float(v.mean()))
    assert est.stderr == pytest.approx(float(v.std(unbiased=True)) / math.sqrt(30))
    assert est.mean_mc_stderr == pytest.approx(float(est.mc_stderr.pow(2).sum().sqrt()) / 30)
    df = est.to_frame()
    assert list(df.columns) == ["log_px", "elbo", "gap", "ess", "mc_stderr"]
    assert len(df) == 30
    assert df["gap"].to_numpy() == pytest.approx((v - est.elbo).numpy())
    d = est.to_dict()
    assert d["num_samples"] == 100 and d["num_datapoints"] == 30 and d["mean"] == est.mean
    assert "log p(x)" in str(est)


def test_seed_reproducible_and_global_rng_restored(lg):
    x = lg.sample(10)
    state = torch.get_rng_state()
    a = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=30, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    b = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=30, seed=4)
    c = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=30, seed=5)
    assert torch.equal(a.per_datapoint, b.per_datapoint)
    assert not torch.equal(a.per_datapoint, c.per_datapoint)


def test_progress_bar_on_a_terminal(lg, capsys, monkeypatch):
    import sys

    x = lg.sample(10)
    quiet = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=30, seed=1, particle_batch_size=10)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = log_likelihood(lg.model, lg.perturbed_guide, x, num_samples=30, seed=1, particle_batch_size=10,
                           progress=True)
    assert torch.equal(quiet.per_datapoint, shown.per_datapoint)
    assert "log p(x)" in capsys.readouterr().err


def test_scales_from_num_data_and_beta_are_ignored(lg):
    """Subsampling scale and a KL weight must not change log p(x)."""
    x = lg.sample(10)

    def model(x, num_data=None, beta=1.0):
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=7.0 if num_data else 1.0):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.w.T + lg.b, lg.sigma).to_event(1), obs=x)

    def guide(x, num_data=None, beta=1.0):
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=beta):
            pyro.sample("z", dist.MultivariateNormal(lg.post_loc(x), covariance_matrix=lg.post_cov))

    est = log_likelihood(model, guide, x, num_samples=3, seed=0,
                         model_kwargs={"num_data": 70, "beta": 0.25})
    assert torch.allclose(est.per_datapoint, lg.log_px(x), atol=1e-10)


def test_mask_is_applied(lg):
    """Masked-out observations drop out of the likelihood: with every feature masked except the
    first two, log p(x) is the marginal of those two features."""
    x = lg.sample(8)
    keep = torch.tensor([True, True, False, False, False])

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))
            with pyro.plate("features", lg.d, dim=-1), poutine.mask(mask=keep):
                pyro.sample("x", dist.Normal(z.squeeze(-2) @ lg.w.T + lg.b, lg.sigma), obs=x)

    def prior_guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))

    w2, b2 = lg.w[:2], lg.b[:2]
    cov2 = w2 @ w2.T + lg.sigma ** 2 * torch.eye(2, dtype=F64)
    truth = dist.MultivariateNormal(b2, cov2).log_prob(x[:, :2])
    est = log_likelihood(model, prior_guide, x, num_samples=20000, seed=0, max_plate_nesting=2)
    assert torch.allclose(est.per_datapoint, truth, atol=4 * float(est.mc_stderr.max()) + 1e-3)


def test_nested_plates_and_inferred_plate_nesting(lg):
    """A model with the data plate at dim -2 and a feature plate at dim -1 (summed)."""
    x = lg.sample(12)

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))  # (..., N, 1, L)
            with pyro.plate("features", lg.d, dim=-1):
                pyro.sample("x", dist.Normal(z.squeeze(-2) @ lg.w.T + lg.b, lg.sigma), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            loc = lg.post_loc(x).unsqueeze(-2)  # (N, 1, L)
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=lg.post_cov))

    for mpn in (2, None):
        est = log_likelihood(model, guide, x, num_samples=2, seed=0, max_plate_nesting=mpn)
        assert torch.allclose(est.per_datapoint, lg.log_px(x), atol=1e-10)
    with pytest.raises(ValueError, match="max_plate_nesting"):
        log_likelihood(model, guide, x, num_samples=2, max_plate_nesting=1)


# ----------------------------------------------------------------------------- discrete latents
class TinyMixture:
    """A 1-D Gaussian mixture with a discrete assignment z and its exact posterior as guide."""

    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    means = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)
    scales = torch.tensor([0.7, 1.0, 0.5], dtype=F64)

    def joint(self, x):  # (N, C)
        return self.weights.log() + dist.Normal(self.means, self.scales).log_prob(x)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(self.weights))
            pyro.sample("x", dist.Normal(self.means[z], self.scales[z]), obs=x[:, 0])

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Categorical(logits=self.joint(x)))


def test_discrete_latent_with_exact_posterior_is_exact():
    gm = TinyMixture()
    x = torch.linspace(-4, 5, 25, dtype=F64).unsqueeze(-1)
    truth = torch.logsumexp(gm.joint(x), -1)
    for seed in (0, 1):
        est = log_likelihood(gm.model, gm.guide, x, num_samples=1, seed=seed)
        assert torch.allclose(est.per_datapoint, truth, atol=1e-12)
    est = log_likelihood(gm.model, gm.guide, x, num_samples=64, seed=0)
    assert torch.allclose(est.per_datapoint, truth, atol=1e-12)
    assert est.mc_stderr.max() < 1e-6


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_em_gaussian_mixture_exact_posterior_gives_score_samples(covariance_type):
    from pyro_vae.mixture import GaussianMixture

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(60, 2, generator=g, dtype=F64) - 3,
                   torch.randn(60, 2, generator=g, dtype=F64) * 0.5 + 3])
    gm = GaussianMixture(n_components=3, covariance_type=covariance_type, random_state=0).fit(x)
    truth = gm.score_samples(x)
    for k in (1, 16):  # exact posterior as proposal: exact with any K, zero variance
        est = log_likelihood(gm.model, gm.guide, x, num_samples=k, seed=k)
        assert torch.allclose(est.per_datapoint, truth, atol=1e-10, rtol=0)
    assert est.mc_stderr.max() < 1e-6


# ----------------------------------------------------------------------------- the same draws whatever the chunking
def _mvn_guide(lg):
    """A full-covariance Gaussian guide that is not the posterior."""
    cov = 2.0 * lg.post_cov + 0.1 * torch.eye(3, dtype=F64)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(lg.post_loc(x) + 0.2, covariance_matrix=cov))
    return guide


def _flow_guide(lg):
    """An inverse autoregressive flow conditioned on x (Pyro's transforms) on a standard normal,
    then shifted towards the posterior: a TransformedDistribution."""
    from pyro.distributions.transforms import AffineTransform, conditional_affine_autoregressive

    torch.manual_seed(0)
    iaf = conditional_affine_autoregressive(3, context_dim=lg.d, hidden_dims=[8]).double()

    def guide(x):
        pyro.module("iaf", iaf)
        base = dist.Normal(torch.zeros(x.shape[0], 3, dtype=F64), 1.0).to_event(1)
        shift = AffineTransform(lg.post_loc(x), 0.5 * lg.post_cov.diagonal().sqrt(), event_dim=1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.TransformedDistribution(base, [iaf.condition(x), shift]))
    return guide


def _programs(kind, lg):
    if kind == "diagonal":
        return lg.model, lg.perturbed_guide, lg.sample(23)
    if kind == "full":
        return lg.model, _mvn_guide(lg), lg.sample(23)
    if kind == "flow":
        return lg.model, _flow_guide(lg), lg.sample(23)
    gm = TinyMixture()

    def guide(x):  # a discrete guide that is not the posterior
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Categorical(logits=0.5 * gm.joint(x)))
    return gm.model, guide, torch.linspace(-4, 5, 23, dtype=F64).unsqueeze(-1)


@pytest.mark.parametrize("kind", ["diagonal", "full", "flow", "discrete"])
def test_the_same_seed_gives_the_same_numbers_whatever_the_chunking(lg, kind):
    """Datapoint i's particle k is the same draw for every chunking, so the estimates agree to
    float rounding (1e-12 here in float64: the programs' own batched arithmetic may round the last
    bit differently for another number of rows); a draw that followed the chunking would move
    them by a tenth of a nat or more."""
    model, guide, x = _programs(kind, lg)
    ref = log_likelihood(model, guide, x, num_samples=40, seed=5)
    for particles, datapoints in ((1, 23), (7, 10), (40, 1), (33, 5), (5, 4)):
        est = log_likelihood(model, guide, x, num_samples=40, seed=5, particle_batch_size=particles,
                             data_batch_size=datapoints)
        for field in ("per_datapoint", "elbo", "ess"):
            torch.testing.assert_close(getattr(est, field), getattr(ref, field), rtol=1e-12, atol=1e-12)
    # the draws do follow the seed: the estimates change with it (all but the datapoints whose
    # discrete posterior is almost certain)
    other = log_likelihood(model, guide, x, num_samples=40, seed=6, particle_batch_size=7, data_batch_size=10)
    change = (other.per_datapoint - ref.per_datapoint).abs()
    assert float((change > 1e-6).double().mean()) > 0.8 and float(change.max()) > 1e-2


def test_library_vae_estimates_do_not_depend_on_the_chunking():
    from pyro_vae.vae import VAE

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((30, 20), 0.4), generator=g)
    vae = VAE(20, latent_dim=4, hidden=(16,), seed=0)
    ref = log_likelihood(vae.model, vae.guide, x, num_samples=100, seed=1)
    for particles, datapoints in ((7, 10), (1, 30), (100, 1), (33, 7)):
        est = log_likelihood(vae.model, vae.guide, x, num_samples=100, seed=1,
                             particle_batch_size=particles, data_batch_size=datapoints)
        # float32: agreement to rounding of the float32 networks
        torch.testing.assert_close(est.per_datapoint, ref.per_datapoint, rtol=1e-6, atol=1e-5)
    other = log_likelihood(vae.model, vae.guide, x, num_samples=100, seed=2)
    assert float((other.per_datapoint - ref.per_datapoint).abs().max()) > 1e-2


def test_sites_without_a_noise_sampler_are_named_in_a_warning():
    """A Gamma guide site has no inverse CDF in torch: Pyro samples it, and the user is told that
    its draws then follow the chunking."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=F64), 1.0))
            pyro.sample("x", dist.Exponential(rate), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("rate", dist.Gamma(2.0 + torch.ones_like(x[:, 0]), 1.0 + x[:, 0]))

    x = torch.linspace(0.1, 3, 8, dtype=F64).unsqueeze(-1)
    # the exact posterior of the rate: every weight is p(x)
    truth = torch.log(torch.tensor(2.0, dtype=F64)) - 3 * torch.log1p(x[:, 0])
    with pytest.warns(UserWarning, match=r"'rate' \(Gamma\).*depend on particle_batch_size"):
        est = log_likelihood(model, guide, x, num_samples=20, seed=0, particle_batch_size=5)
    assert torch.allclose(est.per_datapoint, truth, atol=1e-10)


# ----------------------------------------------------------------------------- log_weights / IWAE
def test_log_weights_are_differentiable_and_agree_with_estimator(lg):
    x = lg.sample(15)
    shift = torch.tensor(0.5, dtype=F64, requires_grad=True)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(lg.post_loc(x) + shift, 0.5).to_event(1))

    logw = log_weights(lg.model, guide, x, 64, seed=11)
    bound = (torch.logsumexp(logw, 0) - math.log(64)).sum()
    bound.backward()
    assert shift.grad is not None and float(shift.grad) < 0  # the bound improves by moving the shift to 0
    est = log_likelihood(lg.model, guide, x, num_samples=64, seed=11)
    assert torch.equal(est.per_datapoint, torch.logsumexp(logw.detach(), 0) - math.log(64))


def test_iwae_training_objective_agrees_with_estimator():
    """fit(objective="iwae") records as train ELBO of one full-batch step the IWAE bound at the
    initial weights. fit draws its Monte Carlo noise from its own generator (after shuffling);
    given the same noise, log_weights (without a seed: Pyro's draws, under the caller's
    handlers) gives the same bound."""
    from pyro_vae.data_parallel import SharedNoise
    from pyro_vae.training import fit
    from pyro_vae.vae import VAE

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((20, 12), 0.3), generator=g)
    vae = VAE(12, latent_dim=3, hidden=(8,), seed=0)
    initial = copy.deepcopy(vae)
    k, seed = 7, 3
    history = fit(vae, x, epochs=1, batch_size=20, objective="iwae", num_particles=k, seed=seed, quiet=True)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(20, generator=gen)  # fit's shuffling, then its noise
    with SharedNoise(gen, None, 20), torch.no_grad():
        logw = log_weights(initial.model, initial.guide, x[perm], k)
    bound = float((torch.logsumexp(logw, 0) - math.log(k)).mean())
    assert history["train_elbo"].iloc[0] == pytest.approx(bound, rel=1e-6)
    # and a different draw gives a different value: the agreement is not a coincidence
    other = log_likelihood(initial.model, initial.guide, x[perm], num_samples=k, seed=seed)
    assert abs(other.mean - bound) > 1e-3


# ----------------------------------------------------------------------------- autoguides and per-datapoint parameters
class LogScaleModel:
    """Per datapoint a real latent z of size 2 and a positive latent s ~ LogNormal(0, 1). In
    u = (z, log s) ~ N(0, I) this is the linear-Gaussian model x = W u + b + sigma eps, so log p(x)
    and the Gaussian posterior of u are exact. Pyro's autoguides work in u (the unconstrained
    coordinates): one of them holding the exact posterior gives exact weights only if log q of s
    includes the log-Jacobian of s = exp(log s). With ``orthogonal`` columns of W (W^T W = 2.25 I)
    the posterior covariance of u is c I, which a diagonal guide can hold."""

    def __init__(self, n=6, orthogonal=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(4, 3, generator=g, dtype=F64)
        if orthogonal:
            w = 1.5 * torch.linalg.qr(w)[0]
        self.w, self.b, self.sigma = w, torch.randn(4, generator=g, dtype=F64), 0.6
        self.x = linear_gaussian.sample(n, self.w, self.b, self.sigma, seed=seed + 1)
        self.post_mean, self.post_cov = linear_gaussian.posterior(self.x, self.w, self.b, self.sigma)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=F64), 1.0))
            u = torch.cat([z, s.log().unsqueeze(-1)], -1)
            pyro.sample("x", dist.Normal(u @ self.w.T + self.b, self.sigma).to_event(1), obs=x)

    def log_px(self):
        return linear_gaussian.log_px(self.x, self.w, self.b, self.sigma)

    def values(self, u):
        """The model's latent values for unconstrained coordinates u (N, 3)."""
        return {"z": u[:, :2], "s": u[:, 2].exp()}


def _set_params(**values):
    """Set an autoguide's PyroParams (its scales; AutoNormal's locs too) in the param store, where
    the guide reads them when it runs. (AutoDiagonalNormal's and AutoMultivariateNormal's loc are
    plain nn.Parameters: set them with init_loc_fn.)"""
    store = pyro.get_param_store()
    for name, value in values.items():
        assert name in store, name
        store[name] = value


@pytest.mark.parametrize("cls", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
def test_autoguides_holding_the_exact_posterior_are_exact(cls):
    m = LogScaleModel(orthogonal=True)
    c = float(m.post_cov[0, 0])
    assert torch.allclose(m.post_cov, c * torch.eye(3, dtype=F64))
    # a fresh autoguide, set up inside log_likelihood on the data passed
    guide = cls(m.model, init_loc_fn=init_to_value(values=m.values(m.post_mean)), init_scale=math.sqrt(c))
    for particles in (None, 1):
        est = log_likelihood(m.model, guide, m.x, num_samples=3, seed=0, particle_batch_size=particles)
        assert torch.allclose(est.per_datapoint, m.log_px(), atol=1e-10, rtol=0)


def test_auto_multivariate_normal_is_scored_by_each_datapoints_marginal():
    """An AutoMultivariateNormal whose joint correlates the datapoints, Sigma = C kron S with C a
    correlation matrix: every datapoint's marginal is its exact posterior, so the per-datapoint
    weights are exact (the joint density would not be)."""
    m = LogScaleModel(n=5)
    n = m.x.shape[0]
    corr = 0.6 * torch.eye(n, dtype=F64) + 0.4
    sigma = torch.kron(corr, m.post_cov.contiguous())  # u flattened datapoint by datapoint
    # Pyro's layout of the packed latent, read off an autoguide initialized at the positions
    positions = torch.arange(3 * n, dtype=F64).reshape(n, 3)
    order = AutoDiagonalNormal(m.model, init_loc_fn=init_to_value(values=m.values(positions)))
    order(m.x)
    order = pyro.param("AutoDiagonalNormal.loc").detach().round().long()
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(m.model, init_loc_fn=init_to_value(values=m.values(m.post_mean)))
    guide(m.x)
    chol = torch.linalg.cholesky(sigma[order][:, order])
    _set_params(**{"AutoMultivariateNormal.scale": chol.diagonal(),
                   "AutoMultivariateNormal.scale_tril": chol / chol.diagonal()[:, None]})
    posterior = poutine.trace(guide).get_trace(m.x).nodes["_AutoMultivariateNormal_latent"]["fn"]
    assert torch.allclose(posterior.loc, m.post_mean.flatten()[order])
    assert torch.allclose(posterior.covariance_matrix, sigma[order][:, order])
    est = log_likelihood(m.model, guide, m.x, num_samples=2, seed=0)
    assert torch.allclose(est.per_datapoint, m.log_px(), atol=1e-10, rtol=0)
    # the weights differ from datapoint to datapoint with a guide that is not exact
    _set_params(**{"AutoMultivariateNormal.scale": 1.3 * chol.diagonal()})
    est = log_likelihood(m.model, guide, m.x, num_samples=2, seed=0)
    assert float((est.per_datapoint - m.log_px()).abs().min()) > 1e-3


def _random_auto_normal(m, g):
    guide = AutoNormal(m.model)
    guide(m.x)
    n = m.x.shape[0]
    _set_params(**{"AutoNormal.locs.z": m.post_mean[:, :2] + 0.3 * torch.randn(n, 2, generator=g, dtype=F64),
                   "AutoNormal.scales.z": 0.2 + torch.rand(n, 2, generator=g, dtype=F64),
                   "AutoNormal.locs.s": m.post_mean[:, 2] + 0.3 * torch.randn(n, generator=g, dtype=F64),
                   "AutoNormal.scales.s": 0.2 + torch.rand(n, generator=g, dtype=F64)})
    return guide


def test_auto_normal_weights_equal_pyros_run_one_datapoint_at_a_time():
    """Reference: Pyro's vectorized_importance_weights on one datapoint with an AutoNormal holding
    that datapoint's row of the parameters, given the same noise (DatapointNoise at the
    datapoint's index, on Pyro's particle plate)."""
    m = LogScaleModel(n=4)
    g = torch.Generator().manual_seed(2)
    guide = _random_auto_normal(m, g)
    k, seed = 40, 7
    logw = log_weights(m.model, guide, m.x, k, seed=seed)
    assert torch.equal(guide.median(m.x)["s"], pyro.param("AutoNormal.locs.s").exp())  # the values set
    est = log_likelihood(m.model, guide, m.x, num_samples=k, seed=seed, particle_batch_size=9)
    torch.testing.assert_close(est.per_datapoint, torch.logsumexp(logw, 0) - math.log(k), rtol=1e-12, atol=1e-12)
    rows = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    for i in range(m.x.shape[0]):
        pyro.clear_param_store()
        guide_i = AutoNormal(m.model)
        guide_i(m.x[i:i + 1])
        _set_params(**{name: value[i:i + 1] for name, value in rows.items()})
        with DatapointNoise(seed, "data", "num_particles_vectorized", data_offset=i):
            ref = vectorized_importance_weights(m.model, guide_i, m.x[i:i + 1], num_samples=k,
                                                max_plate_nesting=1)[0]
        torch.testing.assert_close(logw[:, i], ref, rtol=1e-12, atol=1e-12)
        assert float(ref.detach().std()) > 0.1  # a guide that is not exact: the weights vary


@pytest.mark.parametrize("cls", [AutoNormal, AutoDiagonalNormal])
def test_autoguide_weights_sum_to_pyros_joint_weight(cls):
    """With Pyro's own draws (no seed), the per-datapoint log-weights of a diagonal autoguide
    sum to the joint log-weight of vectorized_importance_weights on all datapoints."""
    m = LogScaleModel(n=5)
    g = torch.Generator().manual_seed(3)
    if cls is AutoNormal:
        guide = _random_auto_normal(m, g)
    else:
        u = m.post_mean + 0.3 * torch.randn(5, 3, generator=g, dtype=F64)
        guide = AutoDiagonalNormal(m.model, init_loc_fn=init_to_value(values=m.values(u)))
        guide(m.x)
        _set_params(**{"AutoDiagonalNormal.scale": 0.2 + torch.rand(15, generator=g, dtype=F64)})
    pyro.set_rng_seed(3)
    logw = log_weights(m.model, guide, m.x, 30)
    pyro.set_rng_seed(3)
    joint = vectorized_importance_weights(m.model, guide, m.x, num_samples=30, max_plate_nesting=1)[0]
    torch.testing.assert_close(logw.sum(-1), joint, rtol=1e-10, atol=1e-10)


def _row_guide(loc):
    """A user guide with one parameter row per datapoint."""
    def guide(x):
        rows = pyro.param("loc", loc.clone())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(rows, 0.5).to_event(1))
    return guide


@pytest.mark.parametrize("kind", ["pyro.param", "AutoNormal", "AutoDiagonalNormal"])
def test_guides_with_a_parameter_row_per_datapoint_are_not_split(lg, kind):
    x = lg.sample(12)
    if kind == "pyro.param":
        guide = _row_guide(lg.post_loc(x) + 0.2)
    else:
        cls = AutoNormal if kind == "AutoNormal" else AutoDiagonalNormal
        guide = cls(lg.model, init_loc_fn=init_to_value(values={"z": lg.post_loc(x) + 0.2}), init_scale=0.5)
    # K = 5000 by default fits 6 datapoints per pass: the guide is found out and all 12 go together
    assert chunk_sizes(5000, 12, 5, None, None) == (5000, 6)
    est = log_likelihood(lg.model, guide, x, num_samples=5000, seed=0)
    ref = log_likelihood(lg.model, guide, x, num_samples=5000, seed=0, particle_batch_size=700,
                         data_batch_size=12)
    torch.testing.assert_close(est.per_datapoint, ref.per_datapoint, rtol=1e-12, atol=1e-12)
    assert abs(float((est.per_datapoint - lg.log_px(x)).mean())) < 3 * est.mean_mc_stderr
    with pytest.raises(ValueError, match=r"one parameter row per datapoint.*pass data_batch_size=None "
                                         r"\(all 12 datapoints in one chunk.*or data_batch_size=12"):
        log_likelihood(lg.model, guide, x, num_samples=10, data_batch_size=5)
    with pytest.raises(ValueError, match="fitted on"):
        log_likelihood(lg.model, guide, x[:7], num_samples=10)


# ----------------------------------------------------------------------------- validation
def test_models_that_cannot_be_estimated_per_datapoint_are_refused(lg):
    x = lg.sample(5)

    with pytest.raises(ValueError, match="not inside"):
        log_likelihood(lg.global_model, lg.global_guide, x, num_samples=2)

    def empty_guide(x):
        pass

    with pytest.raises(ValueError, match="not sampled by the guide"):
        log_likelihood(lg.model, empty_guide, x, num_samples=2)

    def extra_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(lg.post_loc(x), covariance_matrix=lg.post_cov))
            pyro.sample("u", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="does not have"):
        log_likelihood(lg.model, extra_guide, x, num_samples=2)

    def subsampled_model(x):
        with pyro.plate("data", x.shape[0], subsample_size=2) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.w.T + lg.b, lg.sigma).to_event(1), obs=x[idx])

    def subsampled_guide(x):
        with pyro.plate("data", x.shape[0], subsample_size=2):
            pyro.sample("z", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))

    with pytest.raises(ValueError, match="subsampling"):
        log_likelihood(subsampled_model, subsampled_guide, x, num_samples=2)


def test_bad_arguments(lg):
    x = lg.sample(5)
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(lg.model, lg.exact_guide, x, num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        log_likelihood(lg.model, lg.exact_guide, x, num_samples=2.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        log_likelihood(lg.model, lg.exact_guide, x.tolist())
    with pytest.raises(ValueError, match="at least one datapoint"):
        log_likelihood(lg.model, lg.exact_guide, x[:0])
    with pytest.raises(TypeError, match="callable"):
        log_likelihood("model", lg.exact_guide, x)
    with pytest.raises(ValueError, match="particle_batch_size"):
        log_likelihood(lg.model, lg.exact_guide, x, particle_batch_size=0)
    with pytest.raises(ValueError, match="max_plate_nesting"):
        log_likelihood(lg.model, lg.exact_guide, x, max_plate_nesting=0)
    with pytest.raises(TypeError, match="model_kwargs"):
        log_likelihood(lg.model, lg.exact_guide, x, model_kwargs=[1])
    with pytest.raises(TypeError, match="seed"):
        log_likelihood(lg.model, lg.exact_guide, x, seed="1")


def test_nan_data_are_refused_at_the_entry(lg):
    x = lg.sample(4)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"data contains NaN \(first in row 2\)"):
        log_likelihood(lg.model, lg.exact_guide, x, num_samples=2)


def test_nan_log_weights_are_reported(lg):
    x = lg.sample(4)

    def nan_guide(x):
        loc = torch.zeros(x.shape[0], lg.w.shape[1], dtype=x.dtype)
        loc[2] = float("nan")  # a guide whose output breaks for one datapoint
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    pyro.enable_validation(False)
    try:
        with pytest.raises(ValueError, match=r"NaN for datapoints \[2\]"):
            log_likelihood(lg.model, nan_guide, x, num_samples=2)
    finally:
        pyro.enable_validation(True)


def test_float64_integer_and_numpy_data_are_converted_to_the_programs_type():
    """The library's VAE computes in float32: data of another type are converted (as fit does)
    and give the numbers of float32 data."""
    import numpy as np

    from pyro_vae.vae import VAE

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((10, 12), 0.4), generator=g)
    vae = VAE(12, latent_dim=3, hidden=(8,), seed=0)
    ref = log_likelihood(vae.model, vae.guide, x, num_samples=20, seed=0)
    for data in (x.double(), x.long(), x.bool(), x.double().numpy(), x.numpy().astype(np.uint8)):
        est = log_likelihood(vae.model, vae.guide, data, num_samples=20, seed=0)
        assert est.per_datapoint.dtype == torch.float32
        assert torch.equal(est.per_datapoint, ref.per_datapoint)
    logw = log_weights(vae.model, vae.guide, x.long(), 4, seed=0)
    assert logw.dtype == torch.float32
    assert torch.equal(logw, log_weights(vae.model, vae.guide, x, 4, seed=0))


def test_data_follow_the_parameters_the_programs_read():
    """Programs that are plain functions: the type of the parameters they read with pyro.param
    decides; without parameters, floating data keep their own type."""
    w = torch.tensor([[0.5, -1.0], [2.0, 0.3], [1.0, 1.0]])  # float32, (D, L)

    def model(x):
        weight = pyro.param("weight", w.clone())
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight.T, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.1 * x[:, :2], 0.8).to_event(1))

    x = torch.tensor([[0.5, 1.0, -1.0], [2.0, 0.0, 1.0]])
    ref = log_likelihood(model, guide, x, num_samples=10, seed=0)
    est = log_likelihood(model, guide, x.double(), num_samples=10, seed=0)
    assert est.per_datapoint.dtype == torch.float32 and torch.equal(est.per_datapoint, ref.per_datapoint)
    assert list(pyro.get_param_store().keys()) == []  # the probe left no parameter behind
    assert program_dtype(model, guide, x.double()) == torch.float32
    # float64 programs without parameters (the linear-Gaussian tests): float64 data stay float64
    lg = linear_gaussian.PyroModel()
    assert program_dtype(lg.model, lg.exact_guide, lg.sample(3)) is None


# ----------------------------------------------------------------------------- the library's VAE
def test_param_store_is_left_as_it_was(lg):
    """pyro.module registrations made during estimation are removed; existing params stay."""
    net = linear_gaussian.LinearNet(5, 3).double()
    x = lg.sample(6)
    pyro.param("existing", torch.ones(2))
    est = log_likelihood(net.model, net.guide, x, num_samples=10, seed=0)
    assert torch.isfinite(est.per_datapoint).all()
    assert list(pyro.get_param_store().keys()) == ["existing"]
    assert all(p.grad is None for p in net.parameters())


def test_library_vae_estimate_sits_between_elbo_and_finite():
    from pyro_vae.vae import VAE

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((30, 20), 0.4), generator=g)
    vae = VAE(20, latent_dim=4, hidden=(16,), seed=0)
    est = log_likelihood(vae.model, vae.guide, x, num_samples=500, seed=0)
    assert torch.isfinite(est.per_datapoint).all()
    assert (est.per_datapoint >= est.elbo).all()
    assert est.per_datapoint.max() < 0  # a probability of binary data
    # a KL weight does not change the estimate
    vae.beta = 0.1
    est2 = log_likelihood(vae.model, vae.guide, x, num_samples=500, seed=0)
    assert torch.allclose(est.per_datapoint, est2.per_datapoint)
