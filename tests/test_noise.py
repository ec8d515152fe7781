import contextlib
import math
import warnings

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro import poutine

from pyro_vae.noise import NOISE_BLOCK, DatapointNoise

F64 = torch.float64
N, K, L = 9, 70, 3  # K spans three blocks of particles


def _guide(loc, probs):
    """Datapoints at dim -1, particles at dim -2: a Gaussian and a discrete site per datapoint."""
    def guide(x):
        with pyro.plate("particles", x.shape[1], dim=-2), pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(loc[:x.shape[0]], 2.0).to_event(1))
            c = pyro.sample("c", dist.Categorical(probs=probs))
        return z, c
    return guide


def _run(guide, rows, particles, seed=0, **offsets):
    """The guide on datapoints ``rows`` with ``particles`` particles (x carries the sizes)."""
    with DatapointNoise(seed, "data", "particles", **offsets):
        return guide(torch.zeros(rows, particles))


def test_a_datapoints_draws_do_not_depend_on_the_pass():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(N, L, generator=g, dtype=F64)
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    z, c = _run(_guide(loc, probs), N, K)
    assert z.shape == (K, N, L) and c.shape == (K, N)
    for d0, rows, k0, particles in ((0, 4, 0, 7), (4, 5, 7, 63), (3, 2, 31, 2), (8, 1, 0, 70), (2, 6, 40, 1)):
        guide = _guide(loc[d0:], probs)
        z_part, c_part = _run(guide, rows, particles, data_offset=d0, particle_offset=k0)
        assert torch.equal(z_part, z[k0:k0 + particles, d0:d0 + rows])
        assert torch.equal(c_part, c[k0:k0 + particles, d0:d0 + rows])
    # the values are Normal(loc, 2) draws: loc + 2 * (standard normal noise)
    eps = (z - loc) / 2
    assert abs(float(eps.mean())) < 4 / math.sqrt(eps.numel())
    assert abs(float(eps.var()) - 1) < 4 * math.sqrt(2 / eps.numel())
    freq = torch.stack([(c == j).double().mean() for j in range(3)])
    assert (freq - probs).abs().max() < 4 * math.sqrt(0.25 / c.numel())


def test_streams_differ_between_datapoints_blocks_sites_and_seeds():
    loc = torch.zeros(N, L, dtype=F64)
    guide = _guide(loc, torch.ones(3) / 3)
    z = _run(guide, N, K)[0]
    flat = z.permute(1, 0, 2).reshape(N, -1)  # one row of K x L numbers per datapoint
    corr = torch.corrcoef(flat)
    assert (corr - torch.eye(N, dtype=F64)).abs().max() < 4 / math.sqrt(K * L)
    blocks = z[:2 * NOISE_BLOCK].reshape(2, -1)  # the first two particle blocks
    assert abs(float(torch.corrcoef(blocks)[0, 1])) < 4 / math.sqrt(blocks.shape[1])
    assert not torch.equal(_run(guide, N, K, seed=1)[0], z)

    def two_sites(x):
        with pyro.plate("particles", K, dim=-2), pyro.plate("data", N, dim=-1):
            return (pyro.sample("a", dist.Normal(loc, 1.0).to_event(1)),
                    pyro.sample("b", dist.Normal(loc, 1.0).to_event(1)))
    with DatapointNoise(0, "data", "particles"):
        a, b = two_sites(None)
    assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 4 / math.sqrt(a.numel())


def test_plates_at_other_dimensions_and_sites_outside_the_plates():
    """Data at dim -2 with a nested feature plate at -1, particles at -3; a site outside the data
    plate; a run without the particle plate is particle ``particle_offset``."""
    def guide(rows, particles, vectorized=True):
        stack = pyro.plate("particles", particles, dim=-3) if vectorized else contextlib.nullcontext()
        with stack:
            shared = pyro.sample("shared", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
            with pyro.plate("data", rows, dim=-2), pyro.plate("features", 4, dim=-1):
                z = pyro.sample("z", dist.Normal(torch.zeros(rows, 4, dtype=F64), 1.0))
        return shared, z

    with DatapointNoise(3, "data", "particles"):
        shared, z = guide(N, K)
    assert shared.shape == (K, 1, 1, 2) and z.shape == (K, N, 4)
    with DatapointNoise(3, "data", "particles", data_offset=5, particle_offset=33):
        shared_part, z_part = guide(2, 4)
    assert torch.equal(z_part, z[33:37, 5:7])
    assert torch.equal(shared_part, shared[33:37])  # one stream for the whole data set
    with DatapointNoise(3, "data", "particles", data_offset=5, particle_offset=40):
        shared_one, z_one = guide(2, 1, vectorized=False)
    assert torch.equal(z_one, z[40, 5:7]) and torch.equal(shared_one, shared[40, 0, 0])


def test_reparameterized_values_carry_gradients():
    loc = torch.zeros(N, L, dtype=F64, requires_grad=True)
    z = _run(_guide(loc, torch.ones(3) / 3), N, 5)[0]
    (grad,) = torch.autograd.grad(z.sum(), loc)
    assert torch.equal(grad, torch.full((N, L), 5.0, dtype=F64))


def test_sites_left_alone_and_sites_left_to_pyro():
    def guide(x):
        with pyro.plate("particles", 4, dim=-2), pyro.plate("data", 3, dim=-1):
            d = pyro.sample("d", dist.Delta(torch.full((3,), 7.0)))
            o = pyro.sample("o", dist.Normal(0.0, 1.0), obs=torch.ones(3))
            r = pyro.sample("r", dist.Gamma(torch.full((3,), 2.0), 1.0))
        return d, o, r

    unsupported = {}
    with pytest.warns(UserWarning, match=r"'r' \(Gamma\).*depend on particle_batch_size"):
        with DatapointNoise(0, "data", "particles", unsupported=unsupported):
            d, o, r = guide(None)
    assert unsupported == {"r": "Gamma"}
    assert torch.equal(d, torch.full((4, 3), 7.0)) and torch.equal(o, torch.ones(3))
    assert r.shape == (4, 3) and bool((r > 0).all())
    with DatapointNoise(0, "data", "particles", unsupported=unsupported):  # one warning per record
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            guide(None)
    # a replayed value stays
    trace = poutine.trace(guide).get_trace(None)
    with DatapointNoise(0, "data", "particles", unsupported=unsupported):
        replayed = poutine.replay(guide, trace=trace)(None)
    assert torch.equal(replayed[2], trace.nodes["r"]["value"])


def test_bad_arguments():
    with pytest.raises(TypeError, match="seed"):
        DatapointNoise(None, "data", "particles")
    with pytest.raises(ValueError, match="data_offset"):
        DatapointNoise(0, "data", "particles", data_offset=-1)
