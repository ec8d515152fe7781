"""One training step split over processes (pyro_vae.data_parallel), checked in one process:
the shares of a minibatch, the shared Monte Carlo noise, and the weighting of the gradients.
The launches under torchrun are in test_distributed.py."""

import pytest
import torch

import pyro
import pyro.distributions as dist

from pyro_vae import data_parallel as DP
from pyro_vae.vae import VAE


def _binary_data(n, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=torch.float64)


def test_shares_follow_distributed_sampler():
    # the shares of W processes over the global batches of one epoch are the indices that
    # torch's DistributedSampler assigns to each rank (when W divides the batch size)
    from torch.utils.data import DistributedSampler

    n, batch, world = 48, 8, 2
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    for rank in range(world):
        mine = []
        for b in range(0, n, batch):
            rows = DP.share_rows(min(batch, n - b), rank, world)
            mine += perm[b:b + batch][rows].tolist()
        sampler = DistributedSampler(perm.tolist(), num_replicas=world, rank=rank, shuffle=False)
        assert mine == [perm[i].item() for i in sampler]
    # uneven batch: every position is taken exactly once, sizes differ by at most one
    shares = [DP.share_rows(7, r, 3).tolist() for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(7)) and [len(s) for s in shares] == [3, 2, 2]
    assert DP.share_rows(1, 1, 2).numel() == 0


def _guide(loc, scale):
    with pyro.plate("data", loc.shape[0]):
        return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_shared_noise_gives_each_share_its_rows_of_the_global_draw():
    loc = torch.randn(5, 3)
    scale = torch.rand(5, 3) + 0.5
    with DP.SharedNoise(torch.Generator().manual_seed(1), None, 5):
        full = _guide(loc, scale)
    eps = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(full, loc + eps * scale)
    for rank in range(2):
        rows = DP.share_rows(5, rank, 2)
        with DP.SharedNoise(torch.Generator().manual_seed(1), rows, 5):
            part = _guide(loc[rows], scale[rows])
        assert torch.equal(part, full[rows])
    # a vectorized particle plate outside the data plate: rows are taken along the data dim
    rows = DP.share_rows(5, 1, 2)
    with DP.SharedNoise(torch.Generator().manual_seed(2), rows, 5):
        with pyro.plate("particles", 4, dim=-2):
            part = _guide(loc[rows], scale[rows])
    eps = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(part, loc[rows] + eps[:, rows] * scale[rows])
    # the draw stays reparameterized
    loc.requires_grad_(True)
    with DP.SharedNoise(torch.Generator().manual_seed(1), None, 5):
        _guide(loc, scale).sum().backward()
    assert torch.equal(loc.grad, torch.ones_like(loc))


def test_sites_outside_the_data_plate_or_not_normal_are_left_to_pyro():
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    with DP.SharedNoise(gen, None, 4):
        pyro.set_rng_seed(3)
        a = pyro.sample("a", dist.Normal(torch.zeros(4), 1.0).to_event(1))   # no data plate
        with pyro.plate("data", 4):
            b = pyro.sample("b", dist.Gamma(torch.ones(4), 1.0))            # not a Normal
    pyro.set_rng_seed(3)
    assert torch.equal(a, dist.Normal(torch.zeros(4), 1.0).sample())
    assert torch.equal(b, dist.Gamma(torch.ones(4), 1.0).sample())
    assert torch.equal(gen.get_state(), before)


def test_share_gradients_weighted_by_share_size_give_the_global_batch_gradient():
    # what the all-reduce computes, done in one process: rank r's per-point-mean gradient on
    # its share, weighted by |share| / B and summed, equals the global-batch gradient
    from pyro_vae.program_pair import ProgramPair

    x = (_binary_data(7) > 0.5).double()
    vae = VAE(12, 2, hidden=(6,), prior="learned_normal", seed=0).double()
    pair = ProgramPair(vae.model, vae.guide, "trace")
    pair.setup((x,), 50, torch.device("cpu"))
    step, params = pair.step, pair.params
    assert len(params) == len(list(vae.parameters()))

    def grads(rows):
        for p in params:
            p.grad = None
        with DP.SharedNoise(torch.Generator().manual_seed(4), rows, 7):
            loss = step((x if rows is None else x[rows],), 50)
        return loss, [p.grad.clone() for p in params]

    loss, full = grads(None)
    total_loss, total = 0.0, [torch.zeros_like(p) for p in params]
    for rank in range(3):
        rows = DP.share_rows(7, rank, 3)
        part_loss, part = grads(rows)
        w = len(rows) / 7
        total_loss += w * part_loss
        total = [t + w * g for t, g in zip(total, part)]
    assert abs(total_loss - loss) < 1e-12
    for a, b in zip(total, full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _draw(fn, rows, global_size, seed=1):
    with DP.SharedNoise(torch.Generator().manual_seed(seed), rows, global_size):
        with pyro.plate("data", fn.batch_shape[-1] if fn.batch_shape else 1):
            return pyro.sample("z", fn)


def test_shared_noise_covers_multivariate_normal_and_transformed_guides():
    """A full-covariance Gaussian and a flow on a Normal base draw their noise as rows of the
    global batch too: each share gets the rows of the one-process draw."""
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    torch.manual_seed(0)
    n, d = 5, 3
    loc = torch.randn(n, d)
    tril = torch.randn(n, d, d).tril(-1) + torch.diag_embed(torch.rand(n, d) + 0.5)
    flow = AffineAutoregressive(AutoRegressiveNN(d, [8]))
    families = {
        "full": lambda rows: dist.MultivariateNormal(loc[rows], scale_tril=tril[rows]),
        "flow": lambda rows: dist.TransformedDistribution(
            dist.Normal(loc[rows], torch.ones(len(rows), d)).to_event(1), [flow]),
    }
    everything = torch.arange(n)
    for name, make in families.items():
        full = _draw(make(everything), None, n)
        eps = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
        base = make(everything)
        if name == "full":
            assert torch.allclose(full, loc + (tril @ eps.unsqueeze(-1)).squeeze(-1), atol=1e-6)
        else:
            assert torch.allclose(full, flow(loc + eps), atol=1e-6)
            assert torch.isfinite(base.log_prob(full)).all()
        for rank in range(2):
            rows = DP.share_rows(n, rank, 2)
            part = _draw(make(rows), rows, n)
            assert torch.allclose(part, full[rows], atol=1e-6), name
    # the draw stays differentiable (reparameterized) through the flow
    flow.zero_grad()
    _draw(families["flow"](everything), None, n).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_single_process_replicas_compute_locally(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    rep = DP.Replicas.setup(torch.device("cpu"))
    assert (rep.rank, rep.world_size, rep.is_main) == (0, 1, True)
    assert rep.from_main(lambda: 1.5) == 1.5
    state = torch.get_rng_state()
    rep.seed_global_rng(3, 0)        # rank 0 keeps the global stream a one-process run has
    assert torch.equal(torch.get_rng_state(), state)
    param = torch.nn.Parameter(torch.ones(2))

    def step(batch, num_data):
        loss = (param * batch[0].sum(0)).sum() / batch[0].shape[0]
        loss.backward()
        return loss.item()

    loss = rep.step(step, (torch.ones(4, 2),), 4, torch.Generator(), [param])
    assert loss == 2.0 and torch.equal(param.grad, torch.ones(2))


def test_from_main_names_the_value_it_broadcasts(monkeypatch):
    seen = []

    def fake_broadcast(tensor, what="broadcast"):
        seen.append(what)
        return tensor

    monkeypatch.setattr(DP.dist, "broadcast", fake_broadcast)
    rep = DP.Replicas(0, 2, torch.device("cpu"))
    assert rep.from_main(lambda: 2.5, "the test statistic") == 2.5
    assert seen == ["broadcast of the test statistic"]
