import math
import os
import pickle

import pandas as pd
import pytest
import torch

from pyro_vae.vae import VAE
from pyro_vae.training import fit
from pyro_vae import storage
from pyro_vae.storage import load_checkpoint


def _binary_data(n=120, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = (torch.rand(3, d, generator=g) > 0.5).float()
    labels = torch.randint(0, 3, (n,), generator=g)
    flip = torch.rand(n, d, generator=g) < 0.1
    return torch.where(flip, 1 - proto[labels], proto[labels])


def _vae(**kw):
    kw.setdefault("likelihood", "bernoulli")
    return VAE(16, 2, hidden=(16,), seed=0, **kw)


@pytest.mark.parametrize("objective,particles", [("trace", 1), ("tracegraph", 1), ("meanfield", 1),
                                                 ("iwae", 5), ("trace", 3)])
def test_every_objective_trains(objective, particles):
    x = _binary_data()
    vae = _vae()
    hist = fit(vae, x, epochs=15, batch_size=40, lr=1e-2, objective=objective,
               num_particles=particles, val_data=x[:40], quiet=True)
    assert list(hist.columns) == ["epoch", "train_elbo", "val_elbo", "beta", "lr", "seconds"]
    assert len(hist) == 15 and hist["epoch"].tolist() == list(range(1, 16))
    assert hist["val_elbo"].notna().all()
    # the ELBO must improve well beyond Monte Carlo noise on this easy data
    assert hist["train_elbo"].iloc[-3:].mean() > hist["train_elbo"].iloc[0] + 1.0
    assert hist["val_elbo"].iloc[-1] > hist["val_elbo"].iloc[0]


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


class _Killed(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    x = torch.rand(90, 16)  # grey levels, dynamically binarized
    kw = dict(epochs=5, batch_size=32, lr=3e-3, val_data=torch.bernoulli(x[:30]), binarize=True,
              seed=3, lr_schedule="cosine", kl_warmup=2, quiet=True)
    full_vae = _vae(prior="learned_normal")
    full = fit(full_vae, x, **kw)

    # the same run, killed right after the checkpoint of epoch 2 is written
    ck = tmp_path / "ck.pt"
    real_save = storage.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise _Killed

    monkeypatch.setattr(storage, "save_checkpoint", save_then_die)
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
    assert ck["epoch"] == 2
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


def test_early_stopping_restores_the_best_weights():
    x = _binary_data(40)
    val = _binary_data(40, seed=1)
    vae = _vae()
    hist = fit(vae, x, epochs=60, batch_size=40, lr=5e-2, val_data=val, patience=2, quiet=True)
    best = hist["val_elbo"].idxmax()
    assert len(hist) == min(60, best + 1 + 2)


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
    with pytest.raises(ValueError, match="device='gpu' is not a device"):
        fit(_vae(), x, device="gpu")
    with pytest.raises(ValueError, match="iwae"):
        fit(_vae(beta=0.5), x, objective="iwae", num_particles=2)
    with pytest.raises(TypeError, match="Tensor"):
        fit(_vae(), [[0.0] * 16])


def test_fit_trains_a_subclass_with_its_own_guide_program():
    """fit runs q(z|x) as an effect handler only for the VAE's own guide: an overridden guide
    program is what gets trained."""
    import pyro
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
