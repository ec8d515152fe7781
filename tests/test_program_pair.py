"""The data-plate convention of fit(model, guide, data): scaling of minibatches, and programs
that break a rule, written as a user would write them."""

import pytest
import torch

import pyro
import pyro.distributions as dist

from pyro_vae.program_pair import ProgramPair
from pyro_vae.training import fit
from pyro_vae.vae import VAE

F64 = torch.float64
N = 60


def _data(n=N, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64) + 1.0


# a global latent w (point-mass guide: deterministic) and per-datapoint observations
def tutorial_model(x):
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    w = pyro.sample("w", dist.Normal(torch.zeros((), dtype=F64), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc + w, 1.0).to_event(1), obs=x)


def tutorial_guide(x):
    pyro.sample("w", dist.Delta(pyro.param("w_hat", torch.tensor(0.3, dtype=F64))))


def subsampled_model(x, num_data=None):
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    w = pyro.sample("w", dist.Normal(torch.zeros((), dtype=F64), 1.0))
    with pyro.plate("data", size=num_data, subsample=torch.arange(x.shape[0])):
        pyro.sample("x", dist.Normal(loc + w, 1.0).to_event(1), obs=x)


def subsampled_guide(x, num_data=None):
    pyro.sample("w", dist.Delta(pyro.param("w_hat", torch.tensor(0.3, dtype=F64))))


def _hand_loss(x, rows):
    """-(log p(w) + N/B sum_b log p(x_i | w)) / N at the initial parameters: the global term once."""
    w = torch.tensor(0.3, dtype=F64)
    log_pw = torch.distributions.Normal(0.0, 1.0).log_prob(w)
    log_px = torch.distributions.Normal(w, 1.0).log_prob(x[rows]).sum(-1)
    return float(-(log_pw + N / len(rows) * log_px.sum()) / N)


@pytest.mark.parametrize("model,guide", [(tutorial_model, tutorial_guide), (subsampled_model, subsampled_guide)])
def test_minibatch_losses_are_unbiased_for_the_full_data_loss(model, guide):
    """Only the sites of the data plate count N / B times: the mean of the scaled losses (and of
    their gradients) over the minibatches of an epoch is the full-batch loss (and gradient)."""
    x = _data()
    pair = ProgramPair(model, guide, "trace")
    pair.setup((x[:20],), N, torch.device("cpu"))
    assert sorted(pair.named()) == ["loc", "w_hat"]

    def step(rows):
        for p in pair.params:
            p.grad = None
        loss = pair.step((x[rows],), N)
        assert loss == pytest.approx(_hand_loss(x, rows), rel=1e-12)
        return loss, [p.grad.clone() for p in pair.params]

    full_loss, full_grads = step(torch.arange(N))
    parts = [step(torch.arange(i, i + 20)) for i in range(0, N, 20)]
    assert sum(p[0] for p in parts) / 3 == pytest.approx(full_loss, rel=1e-12)
    for k, g in enumerate(full_grads):
        torch.testing.assert_close(sum(p[1][k] for p in parts) / 3, g, rtol=1e-12, atol=1e-12)
    # the global site alone is not scaled: scaling it too would change every minibatch loss
    assert abs(_hand_loss(x, torch.arange(20)) - full_loss) > 1e-3


def test_the_vae_programs_as_a_pair_train_as_the_vae_does():
    """fit(vae.model, vae.guide, data) -- a pair that takes num_data -- follows the same path
    of numbers as the short form fit(vae, data)."""
    x = (torch.rand(50, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    a, b = VAE(6, 2, hidden=(8,), seed=0), VAE(6, 2, hidden=(8,), seed=0)
    kw = dict(epochs=2, batch_size=20, lr=1e-2, seed=3, val_data=x[:10], quiet=True)
    h_short = fit(a, x, **kw)
    pyro.clear_param_store()  # a's modules hold the names b's modules register under
    h_pair = fit(b.model, b.guide, x, **kw)
    cols = ["train_elbo", "val_elbo", "beta", "lr"]
    torch.testing.assert_close(torch.tensor(h_pair[cols].to_numpy()), torch.tensor(h_short[cols].to_numpy()),
                               rtol=1e-5, atol=1e-5)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.encoder.net[0].weight, VAE(6, 2, hidden=(8,), seed=0).encoder.net[0].weight)


# --------------------------------------------------------------------------- broken rules
def _guide_z(x, *args, **kwargs):
    loc = pyro.param("q_loc", torch.zeros(2, dtype=F64))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 1.0).expand([x.shape[0], 2]).to_event(1))


def obs_outside_model(x):
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    pyro.sample("x", dist.Normal(loc, 1.0).expand(x.shape).to_event(2), obs=x)


def fixed_size_model(x):
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    with pyro.plate("data", N, subsample=torch.arange(x.shape[0])):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def ignores_num_data_model(x, num_data=None):
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def wrong_subsample_model(x, num_data=None):
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    with pyro.plate("data", num_data, subsample_size=10):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x[:10])


def no_data_model():
    pyro.param("loc", torch.zeros(2))


def latent_model(x):
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(loc, 1.0).expand([x.shape[0], 2]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def other_plate_model(x):
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    with pyro.plate("batch", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def global_model(x):
    pyro.sample("w", dist.Normal(torch.zeros((), dtype=F64), 1.0))


def global_guide(x):
    pyro.sample("w", dist.Normal(pyro.param("w_loc", torch.zeros((), dtype=F64)), 1.0))


def empty_guide(x, *args, **kwargs):
    pass


def extra_site_guide(x):
    _guide_z(x)
    pyro.sample("u", dist.Normal(0.0, 1.0))


def observing_guide(x):
    loc = pyro.param("q_loc", torch.zeros(2, dtype=F64))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 1.0).expand([x.shape[0], 2]).to_event(1))
        pyro.sample("x_again", dist.Normal(x, 1.0).to_event(1), obs=x)


def parameterless_model(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("model,guide,data,extra,needle", [
    (obs_outside_model, empty_guide, None, {},
     "the model's observed site 'x' lies outside pyro.plate\\('data', ...\\)"),
    (fixed_size_model, empty_guide, None, {},
     "the model's site 'x' lies in a 'data' plate of size 60, but the minibatch has 20 rows"),
    (ignores_num_data_model, empty_guide, None, {},
     "plate of size 20, but fit passed num_data=60: write pyro.plate\\('data', size=num_data"),
    (wrong_subsample_model, empty_guide, None, {}, "subsamples 10 datapoints, but the minibatch passed has 20"),
    (no_data_model, empty_guide, None, {}, "the model cannot be called as model\\(x\\)"),
    (latent_model, _guide_z, "pair", {}, "the model cannot be called as model\\(x, y\\)"),
    (latent_model, empty_guide, None, {}, "the model's latent site 'z' is not sampled by the guide"),
    (latent_model, extra_site_guide, None, {}, "the guide samples 'u', which the model does not have"),
    (latent_model, observing_guide, None, {}, "the guide observes the site 'x_again'"),
    (other_plate_model, empty_guide, None, {}, "outside pyro.plate\\('data', ...\\) \\(it is inside "
                                               "pyro.plate\\('batch'\\): fit's convention names"),
    (global_model, global_guide, None, {}, "neither the model nor the guide has a sample site inside "
                                           "pyro.plate\\('data', ...\\)"),
    (parameterless_model, empty_guide, None, {}, "use no parameters"),
    (latent_model, _guide_z, None, {"kl_warmup": 0, "val_data": (_data(5), _data(5))},
     "val_data has 2 tensor\\(s\\) but the training data have 1"),
    (tutorial_model, tutorial_guide, None, {"kl_warmup": 2}, "kl_warmup weights the latent site 'z'"),
])
def test_a_program_that_breaks_the_convention_gets_the_site_and_the_rule(model, guide, data, extra, needle):
    x = _data()
    if data == "pair":
        x = (x, torch.zeros(N, dtype=torch.long))
    with pytest.raises(ValueError, match=needle):
        fit(model, guide, x, epochs=1, batch_size=20, quiet=True, **extra)


def test_data_tensors_must_have_one_row_per_datapoint():
    with pytest.raises(ValueError, match=r"data\[1\] has shape \(7,\), but data\[0\] has 60 rows"):
        fit(latent_model, _guide_z, (_data(), torch.zeros(7)), epochs=1, quiet=True)
    with pytest.raises(TypeError, match=r"data\[1\] must be a torch.Tensor"):
        fit(latent_model, _guide_z, (_data(), "labels"), epochs=1, quiet=True)
