import json
import math

import pyro
import pyro.distributions as dist
import pytest
import scipy.stats
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.priors import (
    PRIORS,
    DiagonalNormal,
    Laplace,
    MixtureOfGaussians,
    Prior,
    StandardNormal,
    StudentT,
    UserPrior,
    VampPrior,
    check_prior,
    make_prior,
)

L = 3
D = 5
BUILTINS = ["normal", "learned_normal", "laplace", "studentt", "mixture", "vamp"]


class _LinearEncoder(nn.Module):
    """x (N, D) -> (loc, scale), each (N, L)."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Linear(D, L)
        self.raw = nn.Linear(D, L)

    def forward(self, x):
        return self.loc(x), F.softplus(self.raw(x)) + 0.1


def _prior(name, **kwargs):
    return make_prior(dict(name=name, **kwargs), L, encoder=_LinearEncoder(), data_dim=D)


def _perturb(prior, seed=0):
    """Move every learned parameter away from its initial value, so references are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return prior


def _reference_log_prob(prior, z):
    """log p(z) computed naively from the prior's parameters, shape z.shape[:-1]."""
    if isinstance(prior, StandardNormal):
        return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    if isinstance(prior, DiagonalNormal):
        scale = F.softplus(prior.raw_scale) + prior.min_scale
        return (-0.5 * ((z - prior.loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    if isinstance(prior, Laplace):
        b = prior.scale_value
        return (-z.abs() / b - math.log(2 * b)).sum(-1)
    if isinstance(prior, StudentT):
        ref = scipy.stats.t(df=prior.df_value).logpdf(z.detach().double().numpy()).sum(-1)
        return torch.as_tensor(ref, dtype=z.dtype)
    if isinstance(prior, MixtureOfGaussians):
        log_w = torch.log_softmax(prior.logits, -1)
        scales = F.softplus(prior.raw_scales) + prior.min_scale
        terms = [log_w[k] + torch.distributions.Normal(prior.means[k], scales[k]).log_prob(z).sum(-1)
                 for k in range(prior.n_components)]
        return torch.logsumexp(torch.stack(terms, -1), -1)
    if isinstance(prior, VampPrior):
        loc, scale = prior.encoder(prior.pseudo_inputs)
        terms = [torch.distributions.Normal(loc[k], scale[k]).log_prob(z).sum(-1)
                 for k in range(prior.n_pseudo)]
        return torch.logsumexp(torch.stack(terms, -1), -1) - math.log(prior.n_pseudo)
    raise AssertionError(type(prior))


@pytest.mark.parametrize("name", BUILTINS)
def test_shapes_and_log_prob_match_a_naive_reference(name):
    prior = _perturb(_prior(name))
    d = check_prior(prior, L)
    assert d.batch_shape == () and d.event_shape == (L,)
    z = d.sample((7, 2))
    assert z.shape == (7, 2, L)
    lp = d.log_prob(z)
    assert lp.shape == (7, 2)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, _reference_log_prob(prior, z), rtol=1e-5, atol=1e-5)
    # far in the tails too
    z_far = torch.full((1, L), 6.0)
    torch.testing.assert_close(d.log_prob(z_far), _reference_log_prob(prior, z_far), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BUILTINS)
def test_samples_have_the_right_moments(name):
    if name == "studentt":
        prior = _prior(name, df=5.0)  # finite variance df / (df - 2)
    else:
        prior = _perturb(_prior(name))
    d = prior()
    z = d.sample((40000,))
    # closed-form mean and variance of each prior
    if name == "normal":
        mean, var = torch.zeros(L), torch.ones(L)
    elif name == "learned_normal":
        mean, var = prior.loc, prior.scale ** 2
    elif name == "laplace":
        mean, var = torch.zeros(L), torch.full((L,), 2.0)
    elif name == "studentt":
        mean, var = torch.zeros(L), torch.full((L,), 5.0 / 3.0)
    else:
        if name == "mixture":
            w, mu, s = torch.softmax(prior.logits, -1), prior.means, prior.scales
        else:
            mu, s = prior.encoder(prior.pseudo_inputs)
            w = torch.full((prior.n_pseudo,), 1.0 / prior.n_pseudo)
        mean = (w[:, None] * mu).sum(0)
        var = (w[:, None] * (s ** 2 + mu ** 2)).sum(0) - mean ** 2
    mean, var = mean.detach(), var.detach()
    torch.testing.assert_close(z.mean(0), mean, atol=0.05 * var.sqrt().max().item(), rtol=0)
    torch.testing.assert_close(z.var(0), var, rtol=0.08, atol=0)


def test_learned_normal_starts_at_standard_normal():
    prior = DiagonalNormal(L)
    z = torch.randn(4, L)
    torch.testing.assert_close(prior().log_prob(z), StandardNormal(L)().log_prob(z))


def test_learned_scales_have_a_floor():
    prior = DiagonalNormal(L, min_scale=1e-3)
    with torch.no_grad():
        prior.raw_scale.fill_(-1e4)
    torch.testing.assert_close(prior.scale, torch.full((L,), 1e-3))
    assert torch.isfinite(prior().log_prob(torch.ones(2, L))).all()


@pytest.mark.parametrize("name,params", [
    ("learned_normal", ["loc", "raw_scale"]),
    ("mixture", ["logits", "means", "raw_scales"]),
    ("vamp", ["pseudo_inputs"]),
])
def test_gradients_reach_learned_parameters(name, params):
    prior = _perturb(_prior(name))
    z = torch.randn(16, L)
    prior().log_prob(z).sum().backward()
    assert sorted(n for n, _ in prior.named_parameters()) == sorted(params)
    for n, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    if name == "vamp":  # gradients also flow into the (not owned) encoder
        for p in prior.encoder.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_fixed_priors_have_no_parameters():
    for name in ["normal", "laplace", "studentt"]:
        assert list(_prior(name).parameters()) == []


def test_vamp_prior_does_not_register_the_encoder():
    encoder = _LinearEncoder()
    prior = VampPrior(L, encoder, D, n_pseudo=4)
    assert prior.encoder is encoder
    assert list(prior.state_dict()) == ["pseudo_inputs"]
    assert [n for n, _ in prior.named_parameters()] == ["pseudo_inputs"]
    assert list(prior.children()) == []


def test_vamp_prior_inside_a_vae_does_not_duplicate_encoder_weights():
    from pyro_vae.vae import VAE

    vae = VAE(D, L, hidden=(4,), prior="vamp", likelihood="gaussian")
    keys = list(vae.state_dict())
    assert not any(k.startswith("prior.encoder") for k in keys)
    assert "prior.pseudo_inputs" in keys
    assert vae.prior.encoder is vae.encoder
    n_params = sum(p.numel() for p in vae.parameters())
    unique = {id(p): p.numel() for p in vae.parameters()}
    assert n_params == sum(unique.values())


def test_vamp_pseudo_inputs_initialization():
    a = VampPrior(L, _LinearEncoder(), D, n_pseudo=6, seed=3)
    b = VampPrior(L, _LinearEncoder(), D, n_pseudo=6, seed=3)
    c = VampPrior(L, _LinearEncoder(), D, n_pseudo=6, seed=4)
    assert a.pseudo_inputs.shape == (6, D)
    torch.testing.assert_close(a.pseudo_inputs, b.pseudo_inputs)
    assert not torch.equal(a.pseudo_inputs, c.pseudo_inputs)
    assert (a.pseudo_inputs - 0.5).abs().max() < 0.1
    rows = torch.rand(10, D)
    d = VampPrior(L, _LinearEncoder(), D, n_pseudo=4, pseudo_init=rows)
    torch.testing.assert_close(d.pseudo_inputs.detach(), rows[:4])
    assert d.pseudo_inputs.data_ptr() != rows.data_ptr()
    with pytest.raises(ValueError, match=r"\(M, 5\) with M >= n_pseudo=4"):
        VampPrior(L, _LinearEncoder(), D, n_pseudo=4, pseudo_init=torch.rand(3, D))
    with pytest.raises(ValueError, match=r"\(M, 5\)"):
        VampPrior(L, _LinearEncoder(), D, n_pseudo=4, pseudo_init=torch.rand(10, D + 1))


def test_mixture_initialization_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = MixtureOfGaussians(L, 4, seed=1), MixtureOfGaussians(L, 4, seed=1), MixtureOfGaussians(L, 4, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a.means, b.means)
    assert not torch.equal(a.means, c.means)
    torch.testing.assert_close(torch.softmax(a.logits, -1), torch.full((4,), 0.25))
    torch.testing.assert_close(a.scales, torch.ones(4, L))


@pytest.mark.parametrize("name", BUILTINS)
def test_priors_inside_a_pyro_plate(name):
    """The data plate expands the prior to batch shape (N,); log p(z) stays per datapoint."""
    prior = _perturb(_prior(name))
    z = torch.randn(5, L)

    def model():
        with pyro.plate("data", 5):
            pyro.sample("z", prior(), obs=z)

    tr = pyro.poutine.trace(model).get_trace()
    tr.compute_log_prob()
    torch.testing.assert_close(tr.nodes["z"]["log_prob"], _reference_log_prob(prior, z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BUILTINS)
def test_to_float64(name):
    encoder = _LinearEncoder().double()
    prior = make_prior(name, L, encoder=encoder, data_dim=D).to(torch.float64)
    d = prior()
    z = d.sample((3,))
    assert z.dtype == torch.float64
    assert d.log_prob(z).dtype == torch.float64


def test_names_aliases_and_spec_forms():
    assert isinstance(make_prior("normal", L), StandardNormal)
    assert isinstance(make_prior("standard_normal", L), StandardNormal)
    assert isinstance(make_prior("diagonal_normal", L), DiagonalNormal)
    assert isinstance(make_prior("student_t", L), StudentT)
    assert isinstance(make_prior("vampprior", L, encoder=_LinearEncoder(), data_dim=D), VampPrior)
    m = make_prior({"name": "mixture", "n_components": 5}, L)
    assert isinstance(m, MixtureOfGaussians) and m.n_components == 5
    t = make_prior(("studentt", {"df": 7.0}), L)
    assert t.df_value == 7.0
    assert make_prior(["laplace", {"scale": 2.0}], L).scale_value == 2.0  # a pair read from JSON
    instance = DiagonalNormal(L)
    assert make_prior(instance, L) is instance


@pytest.mark.parametrize("name", BUILTINS)
def test_describe_is_json_and_rebuilds_the_same_prior(name):
    prior = _prior(name)
    desc = json.loads(json.dumps(prior.describe()))
    assert desc["name"] in PRIORS
    rebuilt = make_prior(desc, L, encoder=prior.encoder if name == "vamp" else None, data_dim=D)
    assert type(rebuilt) is type(prior)
    assert rebuilt.describe() == prior.describe()
    for (n1, t1), (n2, t2) in zip(prior.state_dict().items(), rebuilt.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)  # seeded initializations are reproduced


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="unknown prior 'gauss'.*'normal'.*'mixture'.*'vamp'"):
        make_prior("gauss", L)
    with pytest.raises(ValueError, match="invalid arguments for prior 'mixture'"):
        make_prior({"name": "mixture", "components": 3}, L)
    with pytest.raises(ValueError, match="needs the encoder and data_dim"):
        make_prior("vamp", L)
    with pytest.raises(ValueError, match="latent_dim=4"):
        make_prior(DiagonalNormal(4), L)
    with pytest.raises(ValueError, match="latent_dim=4"):
        make_prior({"name": "normal", "latent_dim": 4}, L)
    with pytest.raises(ValueError, match="user-declared prior"):
        make_prior({"name": "user", "repr": "<lambda>"}, L)
    with pytest.raises(ValueError, match="'name' key"):
        make_prior({"n_components": 3}, L)
    with pytest.raises(TypeError, match="lambda"):
        make_prior(dist.Normal(torch.zeros(L), 1.0).to_event(1), L)
    with pytest.raises(TypeError, match="prior must be a name"):
        make_prior(3.0, L)
    with pytest.raises(ValueError, match="positive"):
        make_prior(("laplace", {"scale": -1.0}), L)


def test_user_lambda_prior():
    prior = make_prior(lambda: dist.Laplace(torch.zeros(L), 0.5).to_event(1), L)
    assert isinstance(prior, UserPrior)
    d = check_prior(prior, L)
    z = torch.randn(4, L)
    torch.testing.assert_close(d.log_prob(z), (-z.abs() / 0.5 - math.log(1.0)).sum(-1))
    desc = prior.describe()
    assert desc["name"] == "user" and "lambda" in desc["repr"]
    json.dumps(desc)


class _ShiftedNormal(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.full((L,), 0.3))

    def forward(self):
        return dist.Normal(self.loc, 2.0).to_event(1)


def test_user_module_prior_registers_its_parameters():
    module = _ShiftedNormal()
    prior = make_prior(module, L)
    assert isinstance(prior, UserPrior)
    params = dict(prior.named_parameters())
    assert list(params) == ["fn.loc"] and params["fn.loc"] is module.loc
    z = torch.randn(6, L)
    lp = check_prior(prior, L).log_prob(z)
    torch.testing.assert_close(lp, torch.distributions.Normal(0.3, 2.0).log_prob(z).sum(-1))
    lp.sum().backward()
    torch.testing.assert_close(module.loc.grad, ((z - 0.3) / 4.0).sum(0))
    assert prior.to(torch.float64)().mean.dtype == torch.float64


def test_user_prior_subclass_is_used_as_is():
    class Mine(Prior):
        def forward(self):
            return dist.Normal(torch.zeros(self.latent_dim), 3.0).to_event(1)

        def describe(self):
            return {"name": "mine"}

    prior = Mine(L)
    assert make_prior(prior, L) is prior
    check_prior(prior, L)

    class Bare(Prior):  # no describe(): described as a user prior
        def forward(self):
            return dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1)

    bare = Bare(L)
    assert bare.describe() == {"name": "user", "latent_dim": L, "repr": Bare.__qualname__}
    assert "Bare" in repr(bare)


def test_bad_priors_get_a_message_naming_the_expected_shape():
    with pytest.raises(ValueError, match="prior must return a Pyro distribution, got Tensor"):
        check_prior(make_prior(lambda: torch.zeros(L), L), L)
    with pytest.raises(ValueError, match=r"event_shape \(3,\).*got event_shape \(4,\)"):
        check_prior(make_prior(lambda: dist.Normal(torch.zeros(L + 1), 1.0).to_event(1), L), L)
    with pytest.raises(ValueError, match=r"event_shape \(3,\).*\.to_event\(1\)"):
        check_prior(make_prior(lambda: dist.Normal(torch.zeros(L), 1.0), L), L)
    with pytest.raises(ValueError, match=r"only an empty batch shape.*batch_shape \(2,\)"):
        check_prior(make_prior(lambda: dist.Normal(torch.zeros(2, L), 1.0).to_event(1), L), L)
    with pytest.raises(ValueError, match="calling the prior failed with ZeroDivisionError"):
        check_prior(make_prior(lambda: 1 / 0, L), L)


def test_bad_prior_in_a_vae_is_refused_at_construction():
    from pyro_vae.vae import VAE

    with pytest.raises(ValueError, match=r"\.to_event\(1\)"):
        VAE(D, L, hidden=(4,), prior=lambda: dist.Normal(torch.zeros(L), 1.0), likelihood="gaussian")
