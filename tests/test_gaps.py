import math

import pytest
import torch
from torch import nn

import pyro
import pyro.distributions as dist

from pyro_vae.gaps import GAP_COLUMNS, inference_gaps, summarize_gaps
from pyro_vae.importance import log_likelihood, log_weights

import linear_gaussian

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # many small operations


class LinearGaussianVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I) with orthogonal columns of W, so that the exact
    posterior N(m(x), S) has a diagonal S and a diagonal Gaussian q* can match it exactly. The
    amortized encoder is a (deliberately poor) linear map with a fixed scale."""

    def __init__(self, d=6, latent=3, sigma=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, latent, generator=g, dtype=F64))
        self.w = nn.Parameter(q * torch.tensor([2.0, 1.0, 0.5], dtype=F64)[:latent])
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=F64))
        self.sigma, self.d, self.latent_dim = sigma, d, latent
        # encoder: the exact posterior mean map shrunk and shifted, with a too-wide scale
        self.enc = nn.Linear(d, latent).double()
        with torch.no_grad():
            var = self._posterior_var()
            a = self.w * var / sigma ** 2  # loc = (x - b) @ a
            self.enc.weight.copy_(0.8 * a.T)
            self.enc.bias.copy_(-self.b @ a + 0.2)
        self.log_scale = nn.Parameter((1.5 * var.sqrt()).log())

    def _posterior_var(self):
        return 1.0 / (1.0 + (self.w ** 2).sum(0) / self.sigma ** 2)  # diagonal of S

    def posterior(self, x):
        var = self._posterior_var()
        return (x - self.b) @ self.w * var / self.sigma ** 2, var.sqrt().expand(x.shape[0], -1)

    def model(self, x):
        pyro.module("lgvae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent_dim, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T + self.b, self.sigma).to_event(1), obs=x)

    def encode(self, x):
        return self.enc(x), self.log_scale.exp().expand(x.shape[0], -1)

    def guide(self, x):
        pyro.module("lgvae", self)
        loc, scale = self.encode(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def log_px(self, x):
        return linear_gaussian.log_px(x, self.w, self.b, self.sigma)

    def sample(self, n, seed=1):
        return linear_gaussian.sample(n, self.w, self.b, self.sigma, seed)


@pytest.fixture
def lgvae():
    return LinearGaussianVAE()


def _kl_diag(loc_q, scale_q, loc_p, scale_p):
    return (torch.log(scale_p / scale_q) + (scale_q ** 2 + (loc_q - loc_p) ** 2) / (2 * scale_p ** 2)
            - 0.5).sum(-1)


def test_linear_gaussian_gaps_match_analytic_values(lgvae):
    with torch.no_grad():
        x = lgvae.sample(30)
        truth = lgvae.log_px(x)
        loc_q, scale_q = lgvae.encode(x)
        loc_p, scale_p = lgvae.posterior(x)
        kl_amortized = _kl_diag(loc_q, scale_q, loc_p, scale_p)  # = true inference gap
    df = inference_gaps(lgvae, x, num_samples=2000, steps=300, lr=0.05, seed=0)
    assert list(df.columns) == list(GAP_COLUMNS)
    assert len(df) == 30
    t = lambda c: torch.tensor(df[c].to_numpy())  # noqa: E731
    # log p(x) by importance sampling is within its Monte Carlo error of the truth
    assert ((t("log_px") - truth).abs() < 4 * t("log_px_mc_stderr") + 1e-3).all()
    # q* is exact here: no approximation gap, ELBO[q*] = log p(x)
    assert t("approximation_gap").abs().max() < 0.05
    assert abs(float(t("approximation_gap").mean())) < 0.01
    assert (t("elbo_optimized") - truth).abs().max() < 0.05
    # the amortization gap is KL(q(z|x) || p(z|x)) (up to Monte Carlo error of ELBO[q])
    assert float(kl_amortized.min()) > 0.5
    # Monte Carlo error of ELBO[q] from the spread of independent log-weights under q; 0.03 nats
    # allowed for ELBO[q*] (its Monte Carlo error and the residual of the optimization)
    sd = log_weights(lgvae.model, lgvae.guide, x, 2000).detach().std(0) / math.sqrt(2000)
    err = t("amortization_gap") - kl_amortized
    assert (err.abs() < 4 * sd + 0.03).all()
    assert abs(float(err.mean())) < 4 * float(sd.pow(2).sum().sqrt()) / 30 + 0.01
    # the parts add up
    assert torch.allclose(t("inference_gap"), t("approximation_gap") + t("amortization_gap"))
    assert torch.allclose(t("inference_gap"), t("log_px") - t("elbo_amortized"))


def test_summary(lgvae):
    x = lgvae.sample(12).detach()
    df = inference_gaps(lgvae, x, num_samples=100, steps=20, lr=0.05, seed=0)
    summary = summarize_gaps(df)
    assert list(summary.index) == [c for c in GAP_COLUMNS if c != "log_px_mc_stderr"]
    assert list(summary.columns) == ["mean", "stderr", "n"]
    g = df["amortization_gap"]
    assert summary.loc["amortization_gap", "mean"] == pytest.approx(g.mean())
    assert summary.loc["amortization_gap", "stderr"] == pytest.approx(g.std(ddof=1) / math.sqrt(12))
    assert df.attrs["summary"]["log_px"]["mean"] == pytest.approx(df["log_px"].mean())
    assert df.attrs["summary"]["log_px"]["stderr"] == pytest.approx(summary.loc["log_px", "stderr"])
    with pytest.raises(ValueError, match="columns"):
        summarize_gaps(df[["log_px"]])


def test_model_parameters_param_store_and_rng_are_left_alone(lgvae):
    x = lgvae.sample(10).detach()
    before = {k: v.detach().clone() for k, v in lgvae.state_dict().items()}
    pyro.param("existing", torch.zeros(1))
    lgvae.train()
    rng = torch.get_rng_state()
    a = inference_gaps(lgvae, x, num_samples=50, steps=30, lr=0.05, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in lgvae.state_dict().items())
    assert all(p.grad is None for p in lgvae.parameters())
    assert list(pyro.get_param_store().keys()) == ["existing"]
    assert lgvae.training
    b = inference_gaps(lgvae, x, num_samples=50, steps=30, lr=0.05, seed=3)
    assert a.equals(b)
    c = inference_gaps(lgvae, x, num_samples=50, steps=30, lr=0.05, seed=4)
    assert not a.equals(c)


def test_data_batches_give_the_same_kind_of_answer(lgvae):
    """Chunking the data changes the random draws only: each datapoint's gaps are per datapoint."""
    x = lgvae.sample(9).detach()
    whole = inference_gaps(lgvae, x, num_samples=1000, steps=200, lr=0.05, seed=0)
    chunks = inference_gaps(lgvae, x, num_samples=1000, steps=200, lr=0.05, seed=0, data_batch_size=4)
    assert len(chunks) == 9
    t = lambda df, c: torch.tensor(df[c].to_numpy())  # noqa: E731
    # two independent estimates of the same numbers: within their Monte Carlo errors
    se = (t(whole, "log_px_mc_stderr") ** 2 + t(chunks, "log_px_mc_stderr") ** 2).sqrt()
    assert ((t(whole, "log_px") - t(chunks, "log_px")).abs() < 4 * se).all()
    sd = log_weights(lgvae.model, lgvae.guide, x, 2000).detach().std(0) / math.sqrt(1000)
    assert ((t(whole, "elbo_amortized") - t(chunks, "elbo_amortized")).abs() < 4 * math.sqrt(2) * sd).all()
    # q* of each datapoint is the exact posterior here, whichever draws optimized it
    assert ((t(whole, "elbo_optimized") - t(chunks, "elbo_optimized")).abs() < 0.03).all()


def test_zero_steps_means_q_star_is_the_encoder(lgvae):
    x = lgvae.sample(8).detach()
    df = inference_gaps(lgvae, x, num_samples=300, steps=0, seed=0)
    # q* = q, and ELBO[q] and ELBO[q*] use the same draws: equal up to float rounding (the guide
    # scores with Normal(...).to_event(1), q* with the library's NormalEvent)
    assert (df["amortization_gap"].abs() < 1e-12).all()
    assert (df["elbo_optimized"] - df["elbo_amortized"]).abs().max() < 1e-12
    # ... and the ELBO is the one of the guide program, by log_likelihood's estimator
    ref = log_likelihood(lgvae.model, lgvae.guide, x, 20000, seed=1).elbo
    sd = log_weights(lgvae.model, lgvae.guide, x, 2000).detach().std(0)
    assert ((torch.tensor(df["elbo_amortized"].to_numpy()) - ref).abs()
            < 4 * sd * (1 / 300 + 1 / 20000) ** 0.5).all()


@pytest.mark.parametrize("guide", ["diagonal", "full", "iaf"])
def test_zero_steps_means_q_star_is_q_for_every_family(guide):
    from pyro_vae.vae import VAE

    vae = VAE(16, latent_dim=3, hidden=(8,), seed=0, guide=guide).double()
    with torch.no_grad():  # the full and flow parts start at zero: give them weights
        for name, p in vae.q.named_parameters():
            if not name.startswith("encoder."):
                p.normal_(0.0, 0.4)
    x = torch.bernoulli(torch.full((6, 16), 0.3), generator=torch.Generator().manual_seed(0)).double()
    df = inference_gaps(vae, x, num_samples=100, steps=0, seed=0)
    if guide == "iaf":  # the per-datapoint flows are evaluated batched by vmap: rounding differs
        assert (df["amortization_gap"].abs() < 1e-10).all()
    else:  # the same distribution, the same draws, the same floats
        assert (df["amortization_gap"] == 0).all()
        assert (df["elbo_optimized"] == df["elbo_amortized"]).all()
    assert (df["elbo_amortized"] < df["log_px"]).all()


# ----------------------------------------------------------------------------- correlated posterior
# p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I) with nearly parallel columns of W: the posterior
# N(m(x), S) has correlation -0.77, so the diagonal family cannot hold it while the full one can.
D, L, SIGMA = 5, 2, 0.75


def _correlated_model():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=F64))
    w = torch.stack([1.5 * q[:, 0], 1.5 * q[:, 0] + 0.5 * q[:, 1]], 1)
    b = torch.randn(D, generator=g, dtype=F64)
    return w, b


def _correlated_vae(guide, w, b):
    from pyro_vae.vae import VAE

    # the encoder is an untrained MLP: a poor amortized q, and q* starts far from the posterior
    return VAE(D, L, hidden=(8,), prior="normal", likelihood={"name": "gaussian", "scale": SIGMA},
               decoder=linear_gaussian.LinearDecoder(w, b), guide=guide, seed=0).double()


def test_full_covariance_q_star_is_the_exact_posterior():
    w, b = _correlated_model()
    x = linear_gaussian.sample(6, w, b, SIGMA, seed=1)
    truth = linear_gaussian.log_px(x, w, b, SIGMA)
    cov = linear_gaussian.posterior(x, w, b, SIGMA)[1]
    assert cov[0, 1] / cov.diagonal().prod().sqrt() < -0.7
    df = inference_gaps(_correlated_vae("full", w, b), x, num_samples=2000, steps=300, lr=0.05, seed=0)
    t = lambda c: torch.tensor(df[c].to_numpy())  # noqa: E731
    # the family contains p(z|x): the optimized ELBO is log p(x) (exact for q* = p(z|x), whatever
    # the draws; what is left is the residual of the optimization) ...
    assert ((truth - t("elbo_optimized")).abs() < 0.02).all()
    # ... so the approximation gap vanishes, up to the Monte Carlo error of log p(x)
    assert t("approximation_gap").abs().max() < 0.05
    assert abs(float(t("approximation_gap").mean())) < 0.02
    assert ((t("log_px") - truth).abs() < 4 * t("log_px_mc_stderr") + 1e-3).all()
    assert (t("amortization_gap") > 0.5).all()  # the untrained encoder is far off


def test_diagonal_q_star_leaves_the_analytic_mean_field_gap():
    """The best diagonal Gaussian (reverse KL) for N(m, S) has precisions diag(S^-1); its KL to
    the posterior, the approximation gap, is (sum log diag(S^-1) - log det S^-1) / 2 for every x."""
    w, b = _correlated_model()
    x = linear_gaussian.sample(6, w, b, SIGMA, seed=1)
    precision = torch.linalg.inv(linear_gaussian.posterior(x, w, b, SIGMA)[1])
    gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    assert gap > 0.4
    df = inference_gaps(_correlated_vae("diagonal", w, b), x, num_samples=2000, steps=300, lr=0.05, seed=0)
    truth = linear_gaussian.log_px(x, w, b, SIGMA)
    elbo_star = torch.tensor(df["elbo_optimized"].to_numpy())
    assert ((truth - elbo_star) - gap).abs().max() < 0.05
    assert abs(float(df["approximation_gap"].mean()) - float(gap)) < 0.05


def test_library_vae():
    from pyro_vae.vae import VAE

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((10, 16), 0.3), generator=g)
    vae = VAE(16, latent_dim=2, hidden=(8,), seed=0)
    df = inference_gaps(vae, x, num_samples=200, steps=100, lr=0.05, seed=0)
    assert df.notna().all().all()
    # optimizing each datapoint's Gaussian improves its ELBO; log p(x) is above both ELBOs
    assert df["amortization_gap"].mean() > 0
    assert (df["log_px"] > df["elbo_amortized"]).all()
    assert df["approximation_gap"].mean() > 0


def test_bad_arguments(lgvae):
    x = lgvae.sample(4).detach()
    with pytest.raises(TypeError, match="encode"):
        inference_gaps(object(), x)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        inference_gaps(lgvae, x.reshape(2, 2, -1))
    with pytest.raises(ValueError, match="steps"):
        inference_gaps(lgvae, x, steps=-1)
    with pytest.raises(ValueError, match="lr"):
        inference_gaps(lgvae, x, lr=0)
    with pytest.raises(ValueError, match="num_samples"):
        inference_gaps(lgvae, x, num_samples=0)
    with pytest.raises(TypeError, match="seed"):
        inference_gaps(lgvae, x, seed=None)


def test_defensive_mixture_draws_from_noise_have_the_mixture_distribution():
    from pyro_vae.distributions import noise_spec, sample_from_noise
    from pyro_vae.gaps import DefensiveMixture

    a = dist.Normal(torch.tensor([[-2.0]]), 0.5).to_event(1)
    b = dist.MultivariateNormal(torch.tensor([[10.0]]), scale_tril=torch.tensor([[[1.0]]]))
    m = DefensiveMixture(a, b).expand((20000, 1))
    spec = noise_spec(m)
    assert spec.shape == (20000, 1, 3)
    z = sample_from_noise(m, torch.randn(spec.shape, generator=torch.Generator().manual_seed(0)))
    assert z.shape == (20000, 1, 1)
    left = (z < 0.5).double().mean()
    assert abs(left - 0.5) < 0.02  # each component half the time
    assert abs(z[z < 0.5].mean() + 2.0) < 0.02 and abs(z[z < 0.5].std() - 0.5) < 0.02
    assert abs(z[z >= 0.5].mean() - 10.0) < 0.05


def test_log_px_by_ais_takes_the_larger_estimate_and_reaches_the_analytic_value(lgvae):
    """steps=0 leaves q* = q, a poor proposal: with 1 sample importance sampling is biased low,
    while AIS from the same q lands on the analytic log p(x)."""
    with torch.no_grad():
        x = lgvae.sample(12, seed=3)
        truth = lgvae.log_px(x)
    df = inference_gaps(lgvae, x, num_samples=1, steps=0, seed=0, log_px_method="ais",
                        ais_steps=200, ais_chains=8)
    assert list(df.columns) == list(GAP_COLUMNS) + ["log_px_is", "log_px_ais"]
    t = lambda c: torch.tensor(df[c].to_numpy())  # noqa: E731
    assert torch.equal(t("log_px"), torch.maximum(t("log_px_is"), t("log_px_ais")))
    assert float((truth - t("log_px_is")).mean()) > 0.2  # IS with 1 sample: the KL below
    ais_error = t("log_px_ais") - truth
    assert abs(float(ais_error.mean())) < 0.05 and float(ais_error.abs().max()) < 0.3
    # the gaps use the chosen log p(x)
    torch.testing.assert_close(t("inference_gap"), t("log_px") - t("elbo_amortized"))
    # the importance-sampling column is what log_px is without AIS (same seeds)
    plain = inference_gaps(lgvae, x, num_samples=1, steps=0, seed=0)
    assert plain["log_px"].tolist() == df["log_px_is"].tolist()


def test_log_px_method_is_checked(lgvae):
    x = lgvae.sample(2).detach()
    with pytest.raises(ValueError, match="log_px_method"):
        inference_gaps(lgvae, x, steps=0, log_px_method="hmc")
    with pytest.raises(ValueError, match="ais_steps"):
        inference_gaps(lgvae, x, steps=0, log_px_method="ais", ais_steps=0)
