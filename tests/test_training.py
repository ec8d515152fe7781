"""fit on the library's VAE and on Pyro programs written as a user writes them.

Losses are compared with computations written out here: fit draws the Monte Carlo noise of the
Normal sites of the data plate from its training generator (seeded by ``seed``), right after the
epoch's permutation, so a test can draw the same noise and evaluate the objective by hand.
"""

import math
import os
import pickle

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO

from pyro_vae import storage
from pyro_vae.storage import load_checkpoint
from pyro_vae.training import DivergenceError, fit, kl_weight
from pyro_vae.vae import VAE

F64 = torch.float64


def _binary_data(n=120, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = (torch.rand(3, d, generator=g) > 0.5).float()
    labels = torch.randint(0, 3, (n,), generator=g)
    flip = torch.rand(n, d, generator=g) < 0.1
    return torch.where(flip, 1 - proto[labels], proto[labels])


def _vae(**kw):
    kw.setdefault("likelihood", "bernoulli")
    return VAE(16, 2, hidden=(16,), seed=0, **kw)


def _noise(seed, n, shape, dtype=F64):
    """fit's permutation of an epoch and the standard-normal noise of its first step."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    return perm, torch.randn(shape, generator=gen, dtype=dtype)


# --------------------------------------------------------------------------- user programs
class Encoder(nn.Module):
    """Pyro's VAE tutorial: x -> (z_loc, z_scale)."""

    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    """Pyro's VAE tutorial: z -> Bernoulli probabilities."""

    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, x_dim)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))


class TutorialVAE(nn.Module):
    """The model and guide as Pyro's VAE tutorial writes them (pyro.module, plate over the batch)."""

    def __init__(self, x_dim=16, z_dim=2, hidden_dim=16):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim, x_dim)
        self.decoder = Decoder(z_dim, hidden_dim, x_dim)
        self.z_dim = z_dim
        self.x_dim = x_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                        obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


# the linear-Gaussian model with an amortized linear guide, as a user writes it
W0 = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0]], dtype=F64)
B0 = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
A0 = torch.tensor([[0.4, 0.1], [-0.2, 0.3], [0.1, -0.5]], dtype=F64)
C0 = torch.tensor([0.05, -0.1], dtype=F64)
S0 = torch.tensor([0.6, 0.8], dtype=F64)
SIGMA0 = 0.7


def lg_model(x, prior="normal"):
    w = pyro.param("w", W0.clone())
    b = pyro.param("b", B0.clone())
    sigma = pyro.param("sigma", torch.tensor(SIGMA0, dtype=F64), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        zeros = x.new_zeros(x.shape[0], 2)
        p = {"normal": dist.Normal(zeros, 1.0), "laplace": dist.Laplace(zeros, 1.0),
             "studentt": dist.StudentT(3.0, zeros, 1.0)}[prior]
        z = pyro.sample("z", p.to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T + b, sigma).to_event(1), obs=x)


def lg_guide(x, prior="normal"):
    a = pyro.param("a", A0.clone())
    c = pyro.param("c", C0.clone())
    s = pyro.param("s", S0.clone(), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ a + c, s).to_event(1))


def _lg_data(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    return z @ W0.T + B0 + SIGMA0 * torch.randn(n, 3, generator=g, dtype=F64)


def _lg_terms(x, eps, prior="normal"):
    """log p(x|z), log p(z), log q(z|x) and the analytic KL(q || N(0, I)) at z = loc + s * eps."""
    loc = x @ A0 + C0
    z = loc + S0 * eps
    log_lik = torch.distributions.Normal(z @ W0.T + B0, SIGMA0).log_prob(x).sum(-1)
    zero, one = torch.zeros((), dtype=F64), torch.ones((), dtype=F64)
    p = {"normal": torch.distributions.Normal(zero, one), "laplace": torch.distributions.Laplace(zero, one),
         "studentt": torch.distributions.StudentT(3 * one, zero, one)}[prior]
    log_p = p.log_prob(z).sum(-1)
    q = torch.distributions.Normal(loc, S0)
    log_q = q.log_prob(z).sum(-1)
    if prior == "normal":  # KL(q || N(0, I)) written out
        kl = (0.5 * (S0 ** 2 + loc ** 2 - 1) - S0.log()).sum(-1)
    else:
        kl = torch.distributions.kl_divergence(q, p).sum(-1) if prior == "laplace" else None
    return log_lik, log_p, log_q, kl


@pytest.mark.parametrize("objective,particles,warmup", [
    ("trace", 1, 0), ("tracegraph", 1, 0), ("meanfield", 1, 0), ("enum", 1, 0), ("iwae", 4, 0),
    ("trace", 3, 0), ("trace", 1, 2)])
def test_each_objective_equals_a_hand_computation_on_the_linear_gaussian_model(objective, particles, warmup):
    """One full-batch step: the recorded train ELBO is the objective at the initial parameters,
    computed here from the same noise."""
    x = _lg_data()
    n, seed = x.shape[0], 4
    shape = (particles, n, 2) if particles > 1 else (n, 2)
    perm, eps = _noise(seed, n, shape)
    hist = fit(lg_model, lg_guide, x, epochs=1, batch_size=n, lr=1e-3, objective=objective,
               num_particles=particles, kl_warmup=warmup, seed=seed, quiet=True)
    log_lik, log_p, log_q, kl = _lg_terms(x[perm], eps)
    if objective == "iwae":
        logw = log_lik + log_p - log_q                                   # (K, n)
        want = (torch.logsumexp(logw, 0) - math.log(particles)).mean()
    elif objective == "meanfield":
        want = (log_lik - kl).mean()                                     # analytic KL
    else:
        beta = 0.5 if warmup else 1.0                                    # step 1 of 2 warm-up steps
        want = (log_lik + beta * (log_p - log_q)).mean()
    assert hist["train_elbo"].iloc[0] == pytest.approx(float(want), rel=1e-10, abs=1e-10)
    assert hist["beta"].iloc[0] == (0.5 if warmup else 1.0)


def lg_laplace_model(x):
    lg_model(x, prior="laplace")


def lg_studentt_model(x):
    lg_model(x, prior="studentt")


def test_meanfield_uses_the_analytic_kl_where_one_exists_and_the_monte_carlo_kl_elsewhere():
    x = _lg_data()
    n, seed = x.shape[0], 4
    perm, eps = _noise(seed, n, (n, 2))
    # KL(Normal || Laplace) is registered in torch: meanfield uses it
    hist = fit(lg_laplace_model, lg_guide, x, epochs=1, batch_size=n, objective="meanfield", seed=seed,
               quiet=True)
    log_lik, log_p, log_q, kl = _lg_terms(x[perm], eps, "laplace")
    assert hist["train_elbo"].iloc[0] == pytest.approx(float((log_lik - kl).mean()), rel=1e-10)
    # KL(Normal || StudentT) is not: meanfield falls back to log p(z) - log q(z) at the sampled z
    pyro.clear_param_store()
    hist = fit(lg_studentt_model, lg_guide, x, epochs=1, batch_size=n, objective="meanfield", seed=seed,
               quiet=True)
    log_lik, log_p, log_q, _ = _lg_terms(x[perm], eps, "studentt")
    want = (log_lik + log_p - log_q).mean()
    assert hist["train_elbo"].iloc[0] == pytest.approx(float(want), rel=1e-10)


@pytest.mark.parametrize("objective,particles", [("trace", 1), ("tracegraph", 1), ("meanfield", 1),
                                                 ("iwae", 3)])
def test_each_objective_on_the_vae_equals_a_hand_computation(objective, particles):
    """The VAE's fast path (guide as an effect handler, registration once) computes the same
    objective as the networks written out by hand."""
    x = _binary_data(20)
    vae = _vae()
    ref = _vae()
    seed, n = 2, 20
    shape = (particles, n, 2) if particles > 1 else (n, 2)
    perm, eps = _noise(seed, n, shape, torch.float32)
    hist = fit(vae, x, epochs=1, batch_size=n, objective=objective, num_particles=particles, seed=seed,
               quiet=True)
    with torch.no_grad():
        xp = x[perm]
        loc, scale = ref.encoder(xp)
        z = loc + scale * eps
        log_lik = ref.likelihood(ref.decoder(z)).log_prob(xp)
        log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        kl = (0.5 * (scale ** 2 + loc ** 2 - 1) - scale.log()).sum(-1)
    if objective == "iwae":
        want = (torch.logsumexp(log_lik + log_p - log_q, 0) - math.log(particles)).mean()
    elif objective == "meanfield":
        want = (log_lik - kl).mean()
    else:
        want = (log_lik + log_p - log_q).mean()
    assert hist["train_elbo"].iloc[0] == pytest.approx(float(want), rel=1e-5)


def test_every_objective_improves_the_elbo():
    x = _binary_data(80)
    for objective, particles in (("trace", 1), ("tracegraph", 1), ("meanfield", 1), ("enum", 1), ("iwae", 3)):
        hist = fit(_vae(), x, epochs=6, batch_size=40, lr=2e-2, objective=objective, num_particles=particles,
                   val_data=x[:40], quiet=True)
        assert hist["val_elbo"].notna().all()
        assert hist["train_elbo"].iloc[-2:].mean() > hist["train_elbo"].iloc[0] + 1.0, objective


# --------------------------------------------------------------------------- enumeration
MU = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], dtype=F64)
PI = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
GA = torch.tensor([[0.5, -0.3, 0.1], [0.2, 0.4, -0.6]], dtype=F64)


def mix_model(x):
    pi = pyro.param("pi", PI.clone(), constraint=constraints.simplex)
    mu = pyro.param("mu", MU.clone())
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(pi))
        pyro.sample("x", dist.Normal(mu[y], 1.0).to_event(1), obs=x)


def mix_guide(x):
    a = pyro.param("ga", GA.clone())
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Categorical(logits=x @ a), infer={"enumerate": "parallel"})


def _mix_data(n=30):
    g = torch.Generator().manual_seed(3)
    y = torch.multinomial(PI, n, replacement=True, generator=g)
    return MU[y] + torch.randn(n, 2, generator=g, dtype=F64)


def test_enum_elbo_is_the_explicit_sum_over_the_label():
    x = _mix_data()
    hist = fit(mix_model, mix_guide, x, epochs=1, batch_size=len(x), objective="enum", quiet=True)
    q = torch.softmax(x @ GA, -1)                                               # (N, 3)
    log_joint = PI.log() + torch.distributions.Normal(MU, 1.0).log_prob(x[:, None, :]).sum(-1)
    want = (q * (log_joint - q.log())).sum(-1).mean()
    assert hist["train_elbo"].iloc[0] == pytest.approx(float(want), rel=1e-12)


def mix_marginal_model(x):
    pi = pyro.param("pi", PI.clone(), constraint=constraints.simplex)
    mu = pyro.param("mu", MU.clone())
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Categorical(pi), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(mu[y], 1.0).to_event(1), obs=x)


def mix_empty_guide(x):
    pass


def test_enum_sums_out_a_label_the_model_enumerates_exactly():
    """Enumerated in the model, the label is marginalized: the ELBO is log p(x), exactly, and
    with minibatches the scaled losses of an epoch average to it (parameters barely move)."""
    x = _mix_data()
    exact = torch.logsumexp(PI.log() + torch.distributions.Normal(MU, 1.0).log_prob(x[:, None, :]).sum(-1), -1)
    hist = fit(mix_marginal_model, mix_empty_guide, x, epochs=1, batch_size=len(x), objective="enum", quiet=True)
    assert hist["train_elbo"].iloc[0] == pytest.approx(float(exact.mean()), rel=1e-12)
    with pytest.raises(ValueError, match="'y'.*objective='enum'"):
        fit(mix_marginal_model, mix_empty_guide, x, epochs=1, objective="trace", quiet=True)


# --------------------------------------------------------------------------- Pyro's tutorial VAE
class _Killed(Exception):
    pass


def _kill_after(monkeypatch, epoch):
    real_save = storage.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == epoch:
            raise _Killed

    monkeypatch.setattr(storage, "save_checkpoint", save_then_die)
    return real_save


def _store_values():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def test_pyro_tutorial_vae_trains_and_resumes_exactly(tmp_path, monkeypatch):
    x = _binary_data(90)
    kw = dict(epochs=4, batch_size=32, lr=1e-2, val_data=x[:30], seed=3, lr_schedule="cosine", quiet=True)
    torch.manual_seed(0)
    full = fit(*_tutorial(), x, **kw)
    assert full["train_elbo"].iloc[-1] > full["train_elbo"].iloc[0] + 1.0   # it learns
    assert full["val_elbo"].iloc[-1] > full["val_elbo"].iloc[0]
    want = _store_values()
    assert len(want) == 10  # the encoder's and decoder's weights and biases, by pyro.module names

    # the same run killed after the checkpoint of epoch 2, then resumed in a fresh session
    pyro.clear_param_store()
    ck = tmp_path / "ck.pt"
    real_save = _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        torch.manual_seed(0)
        fit(*_tutorial(), x, checkpoint=str(ck), **kw)
    monkeypatch.setattr(storage, "save_checkpoint", real_save)
    pyro.clear_param_store()
    torch.manual_seed(12345)  # other initial weights and another global RNG state: resume restores both
    resumed = fit(*_tutorial(), x, checkpoint=str(ck), resume=True, **kw)
    pd.testing.assert_frame_equal(full.drop(columns="seconds"), resumed.drop(columns="seconds"))
    got = _store_values()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the checkpoint holds the parameters by their param-store names and loads weights-only
    assert sorted(load_checkpoint(ck)["model"]) == sorted(want)


def _tutorial():
    vae = TutorialVAE()
    return vae.model, vae.guide


def test_a_param_store_left_from_another_module_is_refused():
    x = _binary_data(20)
    fit(*_tutorial(), x, epochs=1, quiet=True)
    with pytest.raises(ValueError, match="clear_param_store"):
        fit(*_tutorial(), x, epochs=1, quiet=True)   # new modules, the old tensors under their names


# --------------------------------------------------------------------------- a conditional VAE
class CVAE(nn.Module):
    """p(y) p(z) p(x | y, z) with the label observed and given to both networks."""

    def __init__(self, x_dim=16, z_dim=1, classes=3, hidden=24):
        super().__init__()
        self.classes = classes
        self.z_dim = z_dim
        self.dec = nn.Sequential(nn.Linear(z_dim + classes, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))
        self.enc = nn.Sequential(nn.Linear(x_dim + classes, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim))

    def model(self, x, y):
        pyro.module("cvae_decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=x.new_zeros(self.classes)), obs=y)
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            logits = self.dec(torch.cat([z, F.one_hot(y, self.classes).to(x.dtype)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("cvae_encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(torch.cat([x, F.one_hot(y, self.classes).to(x.dtype)], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))


def test_a_conditional_vae_trains_with_the_label_as_observed_input():
    g = torch.Generator().manual_seed(0)
    proto = (torch.rand(3, 16, generator=g) > 0.5).float()
    y = torch.randint(0, 3, (120,), generator=g)
    x = torch.where(torch.rand(120, 16, generator=g) < 0.05, 1 - proto[y], proto[y])
    cvae = CVAE()
    hist = fit(cvae.model, cvae.guide, (x, y), epochs=10, batch_size=60, lr=5e-2, val_data=(x[:30], y[:30]),
               kl_warmup=2, quiet=True)
    assert hist["train_elbo"].iloc[-1] > hist["train_elbo"].iloc[0] + 3.0
    assert hist["beta"].tolist()[:3] == [0.5, 1.0, 1.0]   # KL warm-up scaled the "z" sites
    # the label is used: the ELBO with the true labels beats the ELBO with wrong ones by far
    elbo = Trace_ELBO(num_particles=10)
    with torch.no_grad():
        pyro.set_rng_seed(1)
        right = -elbo.loss(cvae.model, cvae.guide, x, y) / len(x)
        wrong = -elbo.loss(cvae.model, cvae.guide, x, (y + 1) % 3) / len(x)
    assert right > wrong + 2.0
    assert right == pytest.approx(hist["val_elbo"].iloc[-1], abs=1.0)   # the recorded held-out ELBO agrees


# --------------------------------------------------------------------------- baselines
class BinaryLatent(nn.Module):
    """A sigmoid belief net with one binary latent per datapoint: tracegraph's score function."""

    def __init__(self, baseline):
        super().__init__()
        self.enc = nn.Linear(6, 1)
        self.dec = nn.Linear(1, 6)
        self.baseline_net = nn.Linear(6, 1)
        self.baseline = baseline

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(x.new_full((x.shape[0], 1), 0.5)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(c)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        if self.baseline == "nn":
            pyro.module("baseline", self.baseline_net)
            infer = {"baseline": {"nn_baseline": lambda inp: self.baseline_net(inp).squeeze(-1),
                                  "nn_baseline_input": x}}
        else:
            infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=self.enc(x)).to_event(1), infer=infer)


def _two_clusters(n=48):
    g = torch.Generator().manual_seed(5)
    c = torch.rand(n, 1, generator=g) < 0.5
    proto = torch.tensor([[1.0, 1, 1, 0, 0, 0]])
    return torch.where(c, proto, 1 - proto)


def test_tracegraph_trains_a_neural_baseline_and_trace_does_not():
    x = _two_clusters()
    for objective, moves in (("tracegraph", True), ("trace", False)):
        pyro.clear_param_store()
        torch.manual_seed(0)
        net = BinaryLatent("nn")
        before = net.baseline_net.weight.detach().clone()
        hist = fit(net.model, net.guide, x, epochs=3, batch_size=16, lr=5e-2, objective=objective, quiet=True)
        moved = not torch.equal(net.baseline_net.weight, before)
        assert moved == moves, objective   # only the baseline loss of tracegraph gives it a gradient
        assert "baseline$$$weight" in pyro.get_param_store()
        assert hist["train_elbo"].notna().all()


def test_decaying_average_baseline_is_kept_and_resumed_exactly(tmp_path, monkeypatch):
    x = _two_clusters()
    kw = dict(epochs=3, batch_size=16, lr=5e-2, objective="tracegraph", seed=1, quiet=True)

    def run(**extra):
        pyro.clear_param_store()
        torch.manual_seed(0)
        net = BinaryLatent("avg")
        return fit(net.model, net.guide, x, **kw, **extra)

    full = run()
    want = _store_values()
    avg = "__baseline_avg_downstream_cost_c"
    assert avg in want and want[avg].abs().sum() > 0
    ck = tmp_path / "ck.pt"
    real_save = _kill_after(monkeypatch, 1)
    with pytest.raises(_Killed):
        run(checkpoint=str(ck))
    monkeypatch.setattr(storage, "save_checkpoint", real_save)
    assert avg in load_checkpoint(ck)["objective_state"]
    resumed = run(checkpoint=str(ck), resume=True)
    pd.testing.assert_frame_equal(full.drop(columns="seconds"), resumed.drop(columns="seconds"))
    got = _store_values()
    for k in want:
        assert torch.equal(got[k], want[k]), k


# --------------------------------------------------------------------------- the VAE short form
def test_same_seed_gives_identical_history_and_weights():
    x = _binary_data()
    runs = []
    for _ in range(2):
        vae = _vae(prior="mixture")
        h = fit(vae, x, epochs=3, batch_size=32, seed=7, val_data=x[:30], binarize=False, quiet=True)
        runs.append((h.drop(columns="seconds"), vae.state_dict()))
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0])
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k])
    vae = _vae(prior="mixture")
    h3 = fit(vae, x, epochs=3, batch_size=32, seed=8, val_data=x[:30], quiet=True)
    assert not h3["train_elbo"].equals(runs[0][0]["train_elbo"])


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    x = torch.rand(90, 16)  # grey levels, dynamically binarized
    kw = dict(epochs=5, batch_size=32, lr=3e-3, val_data=torch.bernoulli(x[:30]), binarize=True,
              seed=3, lr_schedule="cosine", kl_warmup=2, quiet=True)
    full_vae = _vae(prior="learned_normal")
    full = fit(full_vae, x, **kw)

    ck = tmp_path / "ck.pt"
    real_save = _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        fit(_vae(prior="learned_normal"), x, checkpoint=str(ck), **kw)
    monkeypatch.setattr(storage, "save_checkpoint", real_save)

    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    resumed_vae = _vae(prior="learned_normal")
    resumed = fit(resumed_vae, x, checkpoint=str(ck), resume=True, **kw)
    pd.testing.assert_frame_equal(full.drop(columns="seconds"), resumed.drop(columns="seconds"))
    for k, v in full_vae.state_dict().items():
        assert torch.equal(v, resumed_vae.state_dict()[k]), k


def test_checkpoint_and_history_written_every_epoch(tmp_path):
    x = _binary_data(60)
    fit(_vae(), x, epochs=2, batch_size=30, checkpoint=str(tmp_path / "c.pt"),
        history_path=str(tmp_path / "h.csv"), quiet=True)
    assert pd.read_csv(tmp_path / "h.csv")["epoch"].tolist() == [1, 2]
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck["epoch"] == 2 and ck["settings"]["batch_size"] == 30
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp") or ".tmp." in p]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_crafted_pickle_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro-vae-checkpoint-1", "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="refusing"):
        load_checkpoint(path)
    with open(tmp_path / "evil2.pt", "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(ValueError, match="refusing"):
        fit(_vae(), _binary_data(30), epochs=1, checkpoint=str(tmp_path / "evil2.pt"), resume=True, quiet=True)


def test_early_stopping_restores_the_weights_of_the_best_epoch():
    x = _binary_data(40)
    val = _binary_data(40, seed=1)
    kw = dict(batch_size=40, lr=5e-2, val_data=val, seed=0, quiet=True)
    vae = _vae()
    hist = fit(vae, x, epochs=60, patience=2, **kw)
    best = int(hist["val_elbo"].idxmax()) + 1
    assert len(hist) == best + 2 < 60            # stopped two epochs after the best one
    # the same run stopped at the best epoch has the weights early stopping restored
    ref = _vae()
    fit(ref, x, epochs=best, **kw)
    for k, v in ref.state_dict().items():
        assert torch.equal(vae.state_dict()[k], v), k
    last = _vae()
    fit(last, x, epochs=len(hist), **kw)        # and not those of the last epoch
    assert any(not torch.equal(vae.state_dict()[k], v) for k, v in last.state_dict().items())


def test_early_stopping_restores_the_best_parameters_of_programs():
    x = _lg_data(40)
    val = _lg_data(20, seed=2)
    kw = dict(batch_size=10, lr=0.3, val_data=val, seed=0, quiet=True)
    hist = fit(lg_model, lg_guide, x, epochs=40, patience=1, **kw)
    best = int(hist["val_elbo"].idxmax()) + 1
    assert len(hist) == best + 1 < 40
    got = _store_values()
    pyro.clear_param_store()
    fit(lg_model, lg_guide, x, epochs=best, **kw)
    for k, v in _store_values().items():
        assert torch.equal(got[k], v), k


def test_fit_trains_a_subclass_with_its_own_guide_program():
    """fit runs q(z|x) as an effect handler only for the VAE's own guide: an overridden guide
    program is what gets trained."""
    from pyro_vae.distributions import NormalEvent

    calls = []

    class FixedScale(VAE):
        def guide(self, x, num_data=None):
            calls.append(x.shape[0])
            with self._plate(x, num_data):
                loc, _ = self.encoder(x)
                pyro.sample("z", NormalEvent(loc, 0.1 * torch.ones_like(loc)))

    vae = FixedScale(16, 2, hidden=(16,), likelihood="bernoulli", seed=0)
    x = _binary_data(40)
    fit(vae, x, epochs=2, batch_size=20, quiet=True)
    assert calls == [20] * 4
    # the scale branch of the encoder never entered the loss, so it got no gradient and kept
    # its initial weights, while the location branch was trained
    init = FixedScale(16, 2, hidden=(16,), likelihood="bernoulli", seed=0)
    w, w0 = vae.encoder.net[-1].weight, init.encoder.net[-1].weight
    assert torch.equal(w[2:], w0[2:]) and not torch.equal(w[:2], w0[:2])


# --------------------------------------------------------------------------- small pieces
def test_kl_weight_rises_linearly_over_the_warmup_epochs():
    assert [kl_weight(s, 4, 2) for s in (1, 2, 4, 8, 9)] == [0.125, 0.25, 0.5, 1.0, 1.0]
    assert kl_weight(3, 4, 2, target=0.5) == 0.5 * 3 / 8
    assert kl_weight(1, 4, 0, target=0.7) == 0.7


def test_one_epoch_a_checkpoint_state_and_a_restore_are_pieces_that_resume_alone():
    import copy

    from pyro_vae.data_parallel import Replicas
    from pyro_vae.program_pair import ProgramPair
    from pyro_vae.training import HISTORY_COLUMNS, _Trainer

    x = _lg_data(30)
    settings = {"kind": "programs", "objective": "trace", "epochs": 3, "batch_size": 10, "lr": 0.05,
                "num_particles": 1, "vectorize_particles": False, "max_plate_nesting": None, "binarize": False,
                "clip_norm": None, "lr_schedule": "cosine", "lr_decay": None, "kl_warmup": 2, "patience": None,
                "seed": 4, "num_data": 30}

    def trainer():
        pyro.clear_param_store()
        pair = ProgramPair(lg_model, lg_guide, "trace")
        pair.setup((x[:10],), 30, torch.device("cpu"), kl_warmup=2)
        return _Trainer(pair, (x,), settings, Replicas(0, 1, "cpu"), val_data=(x[:5],))

    first = trainer()
    rows = [first.run_epoch(), first.run_epoch()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["beta"] == 0.5 and rows[1]["beta"] == 1.0
    state = copy.deepcopy(first.checkpoint_state())
    third = first.run_epoch()
    second = trainer()
    second.restore(state, "in memory")
    assert second.epoch == 2 and second.rows == rows
    again = second.run_epoch()
    assert {k: again[k] for k in HISTORY_COLUMNS if k != "seconds"} == \
        {k: third[k] for k in HISTORY_COLUMNS if k != "seconds"}
    for name, t in first.pair.named().items():
        assert torch.equal(second.pair.named()[name], t), name


# --------------------------------------------------------------------------- the boundary
def test_bad_inputs_get_clear_errors():
    x = _binary_data(20)
    with pytest.raises(ValueError, match="objective"):
        fit(_vae(), x, objective="elbo")
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        fit(_vae(), x[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        fit(_vae(), torch.full((4, 16), math.nan))
    with pytest.raises(ValueError, match="binarize|continuous_bernoulli"):
        fit(_vae(), torch.rand(10, 16))  # grey levels under a Bernoulli likelihood
    with pytest.raises(ValueError, match="batch_size"):
        fit(_vae(), x, batch_size=0)
    with pytest.raises(ValueError, match="val_data"):
        fit(_vae(), x, patience=3)
    with pytest.raises(ValueError, match="device 'gpu' is not a device"):
        fit(_vae(), x, device="gpu")
    with pytest.raises(ValueError, match="iwae"):
        fit(_vae(beta=0.5), x, objective="iwae", num_particles=2)
    with pytest.raises(TypeError, match="Tensor"):
        fit(_vae(), [[0.0] * 16])
    with pytest.raises(TypeError, match="lr must be a number"):
        fit(_vae(), x, lr="0.1")
    with pytest.raises(TypeError, match="seed must be a non-negative integer, got None"):
        fit(_vae(), x, seed=None)
    for lr in (math.inf, math.nan, 0.0, -1e-3):
        with pytest.raises(ValueError, match="lr must be"):
            fit(_vae(), x, lr=lr)
    with pytest.raises(ValueError, match="beta must be finite"):
        fit(_vae(beta=math.inf), x)
    with pytest.raises(TypeError, match="guide program"):
        fit(TutorialVAE().model, x)         # a bare model program: model, guide and data are needed
    with pytest.raises(ValueError, match="another guide"):
        fit(_vae(), lg_guide, x)


def test_a_diverging_run_raises_an_error_with_advice():
    x = _binary_data(40)
    with pytest.raises(DivergenceError, match="diverged.*lower lr") as info:
        fit(_vae(likelihood="gaussian"), x * 1e3, lr=1e6, epochs=5, batch_size=10, quiet=True)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FloatingPointError)
