"""Training checkpoints: a file that does not fit the run is refused with one clear ValueError,
before anything is changed; one that fits is restored exactly."""

import math

import pytest
import torch

import pyro
import pyro.distributions as dist

from pyro_vae import checkpoints
from pyro_vae.storage import load_checkpoint
from pyro_vae.training import fit
from pyro_vae.vae import VAE


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 8, generator=g) > 0.5).float()


def _vae(**kw):
    kw.setdefault("hidden", (8,))
    return VAE(8, 2, seed=0, **kw)


@pytest.fixture
def written(tmp_path):
    """A checkpoint of one epoch of a small VAE, and a function that writes a variant of it."""
    path = tmp_path / "ck.pt"
    fit(_vae(), _data(), epochs=1, batch_size=20, checkpoint=str(path), quiet=True)
    ck = load_checkpoint(path)

    def variant(change):
        state = load_checkpoint(path)
        out = tmp_path / "variant.pt"
        torch.save(change(state), out)
        return str(out)

    return ck, variant


def _resume(path, vae=None, **kw):
    kw.setdefault("epochs", 2)
    return fit(vae or _vae(), _data(), batch_size=20, checkpoint=path, resume=True, quiet=True, **kw)


def _delete(key):
    def change(state):
        del state[key]
        return state
    return change


def _set(path, value):
    def change(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return state
    return change


@pytest.mark.parametrize("change,needle", [
    (lambda s: torch.zeros(3), "holds a Tensor, not a dict"),
    (lambda s: [s], "holds a list"),
    (_set(["format"], "something-else"), "not a pyro-vae training checkpoint"),
    (_delete("model"), "lacks 'model'"),
    (_delete("optimizer"), "lacks 'optimizer'"),
    (_delete("rng"), "lacks 'rng'"),
    (_set(["rng", "torch"], torch.zeros(7, dtype=torch.uint8)), "'torch' generator state is a torch.uint8 tensor "
                                                                "of shape \\(7,\\)"),
    (_set(["rng", "gen"], torch.zeros(5056)), "'gen' generator state is a torch.float32"),
    (_set(["rng"], {"torch": torch.get_rng_state()}), "generator states are missing"),
    (_set(["epoch"], "one"), "bad epoch count"),
    (_set(["history"], {"columns": ["a"], "rows": []}), "history is malformed"),
    (_set(["history", "rows"], []), "history has 0 rows for 1 epochs"),
    (_set(["best"], None), "best-epoch record is malformed"),
    (_set(["model", "q.encoder.net.0.weight"], torch.zeros(3, 3)), "'q.encoder.net.0.weight' has shape \\(3, 3\\) in "
                                                                   "the checkpoint but \\(8, 8\\) here"),
    (_set(["model", "q.encoder.net.0.weight"], "weights"), "is a str, not a tensor"),
    (_set(["model", "q.encoder.net.0.bias"], torch.full((8,), math.nan)), "NaN or infinite.*diverged"),
    (_set(["optimizer"], {"state": {}, "param_groups": []}), "optimizer state does not fit"),
    (_set(["optimizer", "state", 0, "exp_avg"], torch.zeros(5)), "'exp_avg' has shape \\(5,\\)"),
    (_set(["settings", "lr"], 0.5), "written with lr=0.5, but this run has lr=0.001"),
    (_set(["settings", "batch_size"], 7), "batch_size=7"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_with_one_message(written, change, needle):
    _, variant = written
    path = variant(change)
    with pytest.raises(ValueError, match=needle):
        _resume(path)


def test_another_architecture_is_named(written):
    _, variant = written
    same = variant(lambda s: s)
    with pytest.raises(ValueError, match=r"\(8, 8\) in the checkpoint but \(16, 8\) here.*another architecture"):
        _resume(same, vae=_vae(hidden=(16,)))
    with pytest.raises(ValueError, match="other parameters \\(missing 'prior.raw_scale'; unexpected 'prior.scale'"):
        _resume(same, vae=_vae(prior="learned_normal"))


def test_a_program_pair_checkpoint_is_refused_for_a_vae_and_names_the_parameters(tmp_path):
    def model(x):
        loc = pyro.param("loc", torch.zeros(8))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    path = str(tmp_path / "programs.pt")
    fit(model, guide, _data(), epochs=1, batch_size=20, checkpoint=path, quiet=True)
    with pytest.raises(ValueError, match="written with kind='programs', but this run has kind='vae'"):
        _resume(path)


def test_epochs_may_be_extended_and_the_rest_is_restored(written):
    ck, variant = written
    path = variant(lambda s: s)
    vae = _vae()
    hist = _resume(path, vae=vae, epochs=3)
    assert hist["epoch"].tolist() == [1, 2, 3]
    assert hist["train_elbo"].iloc[0] == ck["history"]["rows"][0][1]


def test_restore_changes_nothing_when_a_part_does_not_fit():
    """The checks run before anything is put in place: a refused file leaves the run untouched."""
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(1)
    named = dict(net.named_parameters())
    cols = ("epoch", "train_elbo")
    state = checkpoints.make_checkpoint(epoch=1, named=named, optimizer=opt, scheduler=None, generator=gen,
                                        device=torch.device("cpu"), history_columns=cols,
                                        rows=[{"epoch": 1, "train_elbo": -3.0}],
                                        best={"elbo": -math.inf, "epoch": 0, "state": None},
                                        settings={"lr": 0.1})
    state["model"] = {k: v + 1.0 for k, v in state["model"].items()}   # other values, same shapes
    state["rng"]["gen"] = torch.zeros(3, dtype=torch.uint8)             # ...but a broken generator
    before = {k: v.detach().clone() for k, v in named.items()}
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="'gen' generator state"):
        checkpoints.restore(state, "x.pt", named=named, optimizer=opt, scheduler=None, generator=gen,
                            device=torch.device("cpu"), history_columns=cols, settings={"lr": 0.1})
    for k, v in named.items():
        assert torch.equal(v, before[k])
    assert torch.equal(torch.get_rng_state(), rng)
    # the intact state restores every part
    state["rng"]["gen"] = torch.Generator().manual_seed(7).get_state()
    epoch, rows, best, extra = checkpoints.restore(
        state, "x.pt", named=named, optimizer=opt, scheduler=None, generator=gen, device=torch.device("cpu"),
        history_columns=cols, settings={"lr": 0.1})
    assert epoch == 1 and rows == [{"epoch": 1, "train_elbo": -3.0}] and extra == {}
    for k, v in named.items():
        assert torch.equal(v, before[k] + 1.0)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(7).get_state())
