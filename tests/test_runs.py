import json
import os

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.data import load_split
from pyro_vae.runs import load_run, load_run_data, train_run

TINY = {"model": {"latent_dim": 1, "hidden": [4], "prior": "normal", "likelihood": "gaussian_feature"},
        "fit": {"epochs": 1, "batch_size": 32}}


def test_a_relative_data_path_works_from_any_directory(tmp_path, monkeypatch, capsys):
    """Train in one working directory with a relative --data path, evaluate from another."""
    project = tmp_path / "project"
    project.mkdir()
    rng = np.random.default_rng(0)
    np.savetxt(project / "points.csv", rng.normal(size=(60, 2)), delimiter=",", header="a,b", comments="")
    monkeypatch.chdir(project)
    train_run("run", {**TINY, "data": {"source": "points.csv", "binarize": False}}, quiet=True)
    config = json.loads((project / "run" / "config.json").read_text())
    assert os.path.isabs(config["data"]["source"])
    _, _, test_x = load_run("run")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, _, test_x2 = load_run(str(project / "run"))
    assert torch.equal(test_x, test_x2)
    assert main(["evaluate", str(project / "run"), "--num-samples", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_datapoints"] == test_x.shape[0]


def test_a_run_folder_with_a_relative_path_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "points.csv", rng.normal(size=(60, 2)), delimiter=",")
    train_run("run", {**TINY, "data": {"source": "points.csv", "binarize": False}}, quiet=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["data"]["source"] = "points.csv"  # as a run folder of an earlier version stored it
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    os.mkdir(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="relative to the folder training ran in.*absolute path"):
        load_run(str(tmp_path / "run"))


def test_synthetic_data_have_their_own_seed(tmp_path):
    base = {"source": "synthetic", "n_samples": 200, "test_fraction": 0.25}
    a = load_run_data({**base, "seed": 3, "split_seed": 0})
    b = load_run_data({**base, "seed": 3, "split_seed": 1})
    c = load_run_data({**base, "seed": 4, "split_seed": 0})
    rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    # another split of the same data, and other data under the same split
    assert rows(torch.cat(a[:2])) == rows(torch.cat(b[:2])) and not torch.equal(a[1], b[1])
    assert rows(torch.cat(a[:2])) != rows(torch.cat(c[:2]))
    s = load_split("synthetic", n_samples=200, test_fraction=0.25, seed=3, split_seed=1)
    assert torch.equal(b[0], s.train_x) and torch.equal(b[1], s.test_x)
    # a configuration written before data.seed existed seeded the data with split_seed
    old = load_run_data({**base, "split_seed": 4})
    assert torch.equal(old[1], load_split("synthetic", n_samples=200, test_fraction=0.25, seed=4,
                                          split_seed=4).test_x)


def test_train_data_seed_option_is_stored(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", "synthetic", "--data-seed", "5", "--latent-dim", "1", "--hidden", "4",
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["seed"] == 5 and config["data"]["split_seed"] == 0
    _, _, test_x = load_run(str(out))
    assert torch.equal(test_x, load_split("synthetic", seed=5, split_seed=0).test_x)


def test_train_a_mixture_vae_writes_a_run_folder_that_loads_and_evaluates(tmp_path, capsys):
    x = (torch.rand(80, 36, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "m"
    assert main(["train", "--data", str(tmp_path / "x.pt"), "--model", "mixture_vae", "--components", "3",
                 "--latent-dim", "2", "--hidden", "8", "--epochs", "2", "--batch-size", "32", "--out",
                 str(out), "--quiet"]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["kind"] == "mixture_vae" and config["model"]["n_components"] == 3
    assert config["model"]["baseline"] is None and config["fit"]["objective"] == "enum"
    assert (out / "samples.png").exists() and not (out / "components.png").exists()  # not images
    model, _, test_x = load_run(str(out))
    trained = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert torch.equal(model.prior.means, trained["mixture_vae$$$prior.means"])
    assert model.n_components == 3 and model.predict(test_x).shape == (test_x.shape[0],)
    assert main(["evaluate", str(out), "--num-samples", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_datapoints"] == test_x.shape[0]
    assert main(["evaluate", str(out), "--gaps"]) == 2
    assert "--gaps" in capsys.readouterr().err
    # VAE options do not apply to it, and its options not to a VAE
    assert main(["train", "--data", "synthetic", "--model", "mixture_vae", "--prior", "vamp",
                 "--out", str(tmp_path / "n")]) == 2
    assert main(["train", "--data", "synthetic", "--components", "3", "--out", str(tmp_path / "n")]) == 2
    assert "--components belongs to --model mixture_vae" in capsys.readouterr().err
