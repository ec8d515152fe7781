import json
import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    ContinuousBernoulli,
    Gaussian,
    GaussianDecoder,
    GaussianFeature,
    GaussianShared,
    Laplace,
    LearnedScale,
    Likelihood,
    UserLikelihood,
    check_likelihood,
    make_likelihood,
)

D = 4
BUILTINS = list(LIKELIHOODS)
LEARNED = ["gaussian_shared", "gaussian_feature", "laplace"]


def _perturb(lik, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lik.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return lik


def _out(lik, batch=(3, 2), seed=1):
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(batch + (D * lik.outputs_per_feature,), generator=g)


def _data(name, batch=(3, 2), seed=2):
    g = torch.Generator().manual_seed(seed)
    if name == "bernoulli":
        return torch.bernoulli(torch.full(batch + (D,), 0.5), generator=g)
    if name == "continuous_bernoulli":
        return torch.rand(batch + (D,), generator=g)
    return torch.randn(batch + (D,), generator=g)


def _reference(lik, out, x):
    """log p(x|z) from torch.distributions on the same parameters, summed over features."""
    td = torch.distributions
    if isinstance(lik, Bernoulli):
        ref = td.Bernoulli(logits=out).log_prob(x)
        p = torch.sigmoid(out)  # the textbook formula as well
        torch.testing.assert_close(ref, x * p.log() + (1 - x) * (1 - p).log(), rtol=1e-4, atol=1e-5)
    elif isinstance(lik, ContinuousBernoulli):
        ref = td.ContinuousBernoulli(logits=out).log_prob(x)
    elif isinstance(lik, Gaussian):
        ref = td.Normal(out, lik.scale_value).log_prob(x)
    elif isinstance(lik, (GaussianShared, GaussianFeature)):
        ref = td.Normal(out, F.softplus(lik.raw_scale) + lik.min_scale).log_prob(x)
    elif isinstance(lik, Laplace):
        ref = td.Laplace(out, F.softplus(lik.raw_scale) + lik.min_scale).log_prob(x)
    elif isinstance(lik, GaussianDecoder):
        ref = td.Normal(out[..., :D], F.softplus(out[..., D:]) + lik.min_scale).log_prob(x)
    else:
        raise AssertionError(type(lik))
    return ref.sum(-1)


@pytest.mark.parametrize("name", BUILTINS)
def test_shapes_and_log_prob_match_torch(name):
    lik = _perturb(make_likelihood({"name": name, "scale": 0.3} if name == "gaussian" else name, D))
    out, x = _out(lik), _data(name)
    d = lik(out)
    assert d.batch_shape == (3, 2) and d.event_shape == (D,)
    assert d.sample().shape == (3, 2, D)
    lp = d.log_prob(x)
    assert lp.shape == (3, 2)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, _reference(lik, out, x))
    assert lik.mean(out).shape == (3, 2, D)
    check_likelihood(lik, D)


def test_gaussian_log_prob_closed_form():
    lik = Gaussian(D, scale=0.3)
    out, x = torch.zeros(1, D), torch.ones(1, D)
    expected = D * (-0.5 / 0.09 - math.log(0.3) - 0.5 * math.log(2 * math.pi))
    assert lik(out).log_prob(x).item() == pytest.approx(expected, rel=1e-6)


def test_continuous_bernoulli_density_integrates_to_one():
    """The normalizing constant is right: the density integrates to 1 over [0, 1]."""
    lik = ContinuousBernoulli(1)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for logit in [-30.0, -4.0, -0.3, 0.0, 1e-4, 2.5, 30.0]:
        out = torch.full((grid.shape[0], 1), logit, dtype=torch.float64)
        density = lik(out).log_prob(grid[:, None]).exp()
        assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=2e-3), logit
        mean = torch.trapezoid(density * grid, grid).item()
        assert lik.mean(out[:1]).item() == pytest.approx(mean, abs=2e-3), logit


def test_continuous_bernoulli_is_finite_for_extreme_logits():
    lik = ContinuousBernoulli(2)
    out = torch.tensor([[-200.0, 200.0], [1e-6, -1e-6]], requires_grad=True)
    lp = lik(out).log_prob(torch.tensor([[0.0, 1.0], [0.5, 0.3]]))
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(out.grad).all()


def test_means():
    out = torch.tensor([[-2.0, 0.0, 1.0, 3.0]])
    torch.testing.assert_close(Bernoulli(D).mean(out), torch.sigmoid(out))
    for lik in [Gaussian(D), GaussianShared(D), GaussianFeature(D), Laplace(D)]:
        torch.testing.assert_close(lik.mean(out), out)
    both = torch.cat([out, -out], -1)
    torch.testing.assert_close(GaussianDecoder(D).mean(both), out)


def test_a_learned_scale_likelihood_of_the_users_is_built_on_learned_scale():
    class Cauchy(LearnedScale):
        name = "cauchy"
        scale_shape = "feature"

        def forward(self, out):
            self._check_out(out)
            return dist.Cauchy(out, self.scale.expand(out.shape)).to_event(1)

    lik = Cauchy(D, init_scale=0.3, min_scale=0.1)
    torch.testing.assert_close(lik.scale, torch.full((D,), 0.3))
    assert lik.describe() == {"name": "cauchy", "data_dim": D, "init_scale": 0.3, "min_scale": 0.1}
    out, x = torch.randn(3, D), torch.randn(3, D)
    expected = torch.distributions.Cauchy(out, 0.3).log_prob(x).sum(-1)
    torch.testing.assert_close(lik(out).log_prob(x), expected)
    torch.testing.assert_close(lik.mean(out), out)
    with pytest.raises(ValueError, match="init_scale must exceed min_scale"):
        Cauchy(D, init_scale=0.1, min_scale=0.1)


@pytest.mark.parametrize("name", LEARNED)
def test_learned_scale_starts_at_init_scale_and_receives_gradients(name):
    lik = make_likelihood({"name": name, "init_scale": 0.7}, D)
    expected_shape = () if name == "gaussian_shared" else (D,)
    assert lik.scale.shape == expected_shape
    torch.testing.assert_close(lik.scale, torch.full(expected_shape, 0.7))
    out, x = _out(lik), _data(name)
    lik(out).log_prob(x).sum().backward()
    assert [n for n, _ in lik.named_parameters()] == ["raw_scale"]
    assert lik.raw_scale.grad is not None and (lik.raw_scale.grad != 0).all()
    # the gradient is the analytic one: d/d sigma of sum log N(x | out, sigma) times softplus'
    if name != "laplace":
        sigma = lik.scale.detach()
        r2 = (x - out) ** 2
        dsigma = (r2 / sigma ** 3 - 1 / sigma).reshape(-1, D)
        dsigma = dsigma.sum() if name == "gaussian_shared" else dsigma.sum(0)
        torch.testing.assert_close(lik.raw_scale.grad, dsigma * torch.sigmoid(lik.raw_scale.detach()))


@pytest.mark.parametrize("name", LEARNED + ["gaussian_decoder"])
def test_scales_cannot_collapse(name):
    lik = make_likelihood({"name": name, "min_scale": 1e-3}, D)
    out = torch.zeros(2, D * lik.outputs_per_feature)
    with torch.no_grad():
        if name == "gaussian_decoder":
            out[:, D:] = -1e4
        else:
            lik.raw_scale.fill_(-1e4)
    d = lik(out)
    base = d.base_dist
    torch.testing.assert_close(base.scale, torch.full((2, D), 1e-3))
    assert torch.isfinite(d.log_prob(torch.ones(2, D))).all()


def test_gradient_reaches_decoder_predicted_scale():
    lik = GaussianDecoder(D)
    out = _out(lik).requires_grad_()
    lik(out).log_prob(_data("gaussian_decoder")).sum().backward()
    assert (out.grad[..., D:] != 0).all() and (out.grad[..., :D] != 0).all()


@pytest.mark.parametrize("name", BUILTINS)
def test_to_float64(name):
    lik = make_likelihood(name, D).to(torch.float64)
    out = _out(lik).double()
    x = _data(name).double()
    assert lik(out).log_prob(x).dtype == torch.float64
    assert check_likelihood(lik, D).batch_shape == (2,)


def test_support_validation_suggests_a_fix():
    grey = torch.tensor([[0.0, 0.2, 1.0, 0.5]])
    with pytest.raises(ValueError, match=r"values must be 0 or 1.*binarize.*continuous_bernoulli"):
        Bernoulli(D).validate_data(grey)
    Bernoulli(D).validate_data(torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    ContinuousBernoulli(D).validate_data(grey)
    with pytest.raises(ValueError, match=r"\[0, 1\].*255.*gaussian"):
        ContinuousBernoulli(D).validate_data(grey * 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ContinuousBernoulli(D).validate_data(grey - 0.5)
    Gaussian(D).validate_data(grey * 255 - 3)
    for lik in [Gaussian(D), Laplace(D), Bernoulli(D)]:
        with pytest.raises(ValueError, match="NaN or infinite"):
            lik.validate_data(torch.tensor([[0.0, float("nan"), 1.0, 0.0]]))
        with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
            lik.validate_data(torch.zeros(2, D + 1))
        with pytest.raises(TypeError, match="torch.Tensor"):
            lik.validate_data([[0.0] * D])
        with pytest.raises(TypeError, match="floating-point"):
            lik.validate_data(torch.zeros(2, D, dtype=torch.long))


def test_wrong_decoder_output_size():
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\) = \(\.\.\., data_dim \* 2\)"):
        GaussianDecoder(D)(torch.zeros(2, D))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        Bernoulli(D)(torch.zeros(2, D + 1))


def _user_fn(out):
    loc, raw = out.split(D, dim=-1)
    return dist.Normal(loc, F.softplus(raw) + 0.01).to_event(1)


def test_user_likelihood_with_two_outputs_per_feature():
    lik = make_likelihood(_user_fn, D, outputs_per_feature=2)
    assert isinstance(lik, UserLikelihood) and lik.outputs_per_feature == 2
    d = check_likelihood(lik, D)
    assert d.batch_shape == (2,)
    out, x = _out(lik), _data("gaussian")
    ref = torch.distributions.Normal(out[..., :D], F.softplus(out[..., D:]) + 0.01).log_prob(x).sum(-1)
    torch.testing.assert_close(lik(out).log_prob(x), ref)
    torch.testing.assert_close(lik.mean(out), out[..., :D])
    desc = json.loads(json.dumps(lik.describe()))
    assert desc["name"] == "user" and desc["outputs_per_feature"] == 2 and "_user_fn" in desc["repr"]
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        lik(torch.zeros(2, D))


class _StudentTLikelihood(nn.Module):
    """A user module with learned degrees of freedom; declares its outputs per feature."""

    outputs_per_feature = 2

    def __init__(self):
        super().__init__()
        self.raw_df = nn.Parameter(torch.tensor(1.0))

    def forward(self, out):
        loc, raw = out.split(D, dim=-1)
        return dist.StudentT(F.softplus(self.raw_df) + 1, loc, F.softplus(raw) + 0.01).to_event(1)

    def mean(self, out):
        return out[..., :D] + 1.0  # deliberately different from the distribution's mean


def test_user_module_likelihood_registers_parameters_and_reads_outputs_per_feature():
    module = _StudentTLikelihood()
    lik = make_likelihood(module, D)
    assert lik.outputs_per_feature == 2
    params = dict(lik.named_parameters())
    assert list(params) == ["fn.raw_df"] and params["fn.raw_df"] is module.raw_df
    check_likelihood(lik, D)
    out, x = _out(lik), _data("gaussian")
    lik(out).log_prob(x).sum().backward()
    assert module.raw_df.grad is not None and module.raw_df.grad != 0
    torch.testing.assert_close(lik.mean(out), out[..., :D] + 1.0)  # the module's own mean is used
    lik.to(torch.float64)
    assert module.raw_df.dtype == torch.float64


def test_user_likelihood_support_is_validated():
    lik = make_likelihood(lambda out: dist.Bernoulli(logits=out).to_event(1), D)
    lik.validate_data(torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="outside the support"):
        lik.validate_data(torch.tensor([[0.0, 0.3, 1.0, 0.0]]))


def test_bad_user_likelihoods():
    with pytest.raises(ValueError, match="must return a Pyro distribution, got Tensor"):
        check_likelihood(make_likelihood(lambda out: torch.sigmoid(out), D), D)
    with pytest.raises(ValueError, match=r"event_shape \(4,\) and batch_shape \(2,\).*\.to_event\(1\)"):
        check_likelihood(make_likelihood(lambda out: dist.Normal(out, 1.0), D), D)
    # two outputs per feature, but the output is not split
    with pytest.raises(ValueError, match=r"event_shape \(4,\).*got event_shape \(8,\).*split"):
        check_likelihood(make_likelihood(lambda out: dist.Normal(out, 1.0).to_event(1), D,
                                         outputs_per_feature=2), D)
    with pytest.raises(ValueError, match=r"batch_shape \(2,\).*got event_shape \(4,\) and batch_shape \(\)"):
        check_likelihood(make_likelihood(lambda out: dist.Normal(torch.zeros(D), 1.0).to_event(1), D), D)
    with pytest.raises(ValueError, match="failed with RuntimeError"):
        check_likelihood(make_likelihood(lambda out: dist.Normal(out @ torch.ones(3, 3), 1.0), D), D)


def test_bad_user_likelihood_in_a_vae_is_refused_at_construction():
    from pyro_vae.vae import VAE

    with pytest.raises(ValueError, match=r"\.to_event\(1\)"):
        VAE(D, 2, hidden=(4,), likelihood=lambda out: dist.Normal(out, 1.0))


def test_names_spec_forms_and_errors():
    assert isinstance(make_likelihood("bernoulli", D), Bernoulli)
    g = make_likelihood(("gaussian", {"scale": 0.2}), D)
    assert isinstance(g, Gaussian) and g.scale_value == 0.2
    assert make_likelihood(["laplace", {"init_scale": 0.5}], D).init_scale == 0.5
    assert make_likelihood({"name": "gaussian_decoder"}, D).outputs_per_feature == 2
    instance = GaussianShared(D)
    assert make_likelihood(instance, D) is instance
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'.*'bernoulli'.*'gaussian_decoder'"):
        make_likelihood("poisson", D)
    with pytest.raises(ValueError, match="invalid arguments for likelihood 'gaussian'"):
        make_likelihood({"name": "gaussian", "sigma": 0.1}, D)
    with pytest.raises(ValueError, match="2 decoder output"):
        make_likelihood("gaussian_decoder", D, outputs_per_feature=1)
    with pytest.raises(ValueError, match="data_dim=5"):
        make_likelihood(Bernoulli(5), D)
    with pytest.raises(ValueError, match="user-declared likelihood"):
        make_likelihood({"name": "user", "repr": "<lambda>"}, D)
    with pytest.raises(TypeError, match="function of the decoder output"):
        make_likelihood(dist.Normal(0.0, 1.0), D)
    with pytest.raises(TypeError, match="likelihood must be a name"):
        make_likelihood(1, D)
    with pytest.raises(ValueError, match="positive"):
        make_likelihood({"name": "gaussian", "scale": 0.0}, D)
    with pytest.raises(ValueError, match="init_scale must exceed min_scale"):
        make_likelihood({"name": "gaussian_shared", "init_scale": 1e-4}, D)


@pytest.mark.parametrize("name", BUILTINS)
def test_describe_is_json_and_rebuilds_the_same_likelihood(name):
    lik = make_likelihood(name, D)
    desc = json.loads(json.dumps(lik.describe()))
    assert desc["name"] == name
    rebuilt = make_likelihood(desc, D)
    assert type(rebuilt) is type(lik) and rebuilt.describe() == lik.describe()
    assert isinstance(rebuilt, Likelihood)


def test_likelihood_subclass_needs_only_forward():
    class Poisson(Likelihood):
        def forward(self, out):
            self._check_out(out)
            return dist.Poisson(out.exp()).to_event(1)

    lik = Poisson(D)
    assert make_likelihood(lik, D) is lik
    check_likelihood(lik, D)
    out = _out(lik)
    torch.testing.assert_close(lik.mean(out), out.exp())  # the distribution's mean by default
    assert lik.describe() == {"name": "user", "data_dim": D, "outputs_per_feature": 1,
                              "repr": Poisson.__qualname__}
    assert "Poisson" in repr(lik)
