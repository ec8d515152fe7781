import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_vae.data import load_split
from pyro_vae.runs import load_run, load_run_data, train_run

TINY = {"model": {"latent_dim": 1, "hidden": [4], "prior": "normal", "likelihood": "gaussian_feature"},
        "fit": {"epochs": 1, "batch_size": 32}}



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


# ------------------------------------------------------------------ one run per folder
SYN = {"source": "synthetic", "n_samples": 120, "test_fraction": 0.25, "binarize": False}


def _tiny(**fit):
    return {"data": dict(SYN), "model": dict(TINY["model"]), "fit": {**TINY["fit"], **fit}}


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    train_run(str(out), _tiny(), quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        train_run(str(out), _tiny(lr=0.01), quiet=True)
    # nothing of the first run was touched, config.json included
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_overwrite_replaces_the_run_and_refuses_foreign_files(tmp_path):
    out = tmp_path / "run"
    train_run(str(out), _tiny(), quiet=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt.*nothing was deleted"):
        train_run(str(out), _tiny(lr=0.01), overwrite=True, quiet=True)
    assert (out / "checkpoint.pt").exists() and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / "history.csv").write_text("stale")
    train_run(str(out), _tiny(lr=0.01), overwrite=True, quiet=True)
    assert json.loads((out / "config.json").read_text())["fit"]["lr"] == 0.01
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1]


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    """An old checkpoint next to a new config.json (a folder mixing two runs) is never used."""
    out = tmp_path / "run"
    train_run(str(out), _tiny(), quiet=True)
    config = json.loads((out / "config.json").read_text())
    config["fit"]["lr"] = 0.01  # as a new run writing its config, killed before its first checkpoint
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="checkpoint.pt was written under another configuration"):
        load_run(str(out))
    with pytest.raises(ValueError, match="another configuration"):
        train_run(str(out), _tiny(lr=0.01, epochs=2), resume=True, quiet=True)
    # raising the number of epochs keeps the configuration's tag
    config["fit"]["lr"], config["fit"]["epochs"] = TINY["fit"].get("lr", 2e-3), 5
    (out / "config.json").write_text(json.dumps(config))
    load_run(str(out))


def test_a_second_writer_is_refused_while_the_folder_is_locked(tmp_path):
    from pyro_vae.storage import FolderInUseError, FolderLock

    out = tmp_path / "run"
    with FolderLock(str(out)):
        with pytest.raises(FolderInUseError, match="in use by another process"):
            train_run(str(out), _tiny(), quiet=True)
    assert not (out / "config.json").exists()
    train_run(str(out), _tiny(), quiet=True)  # free again


def test_a_run_removes_temporary_files_left_by_a_killed_write(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.pt.abcd1234.tmp.pt"
    stale.write_bytes(b"")
    train_run(str(out), _tiny(), quiet=True)
    assert not stale.exists()


def test_resume_names_the_setting_that_differs_and_allows_more_epochs(tmp_path):
    out = tmp_path / "run"
    train_run(str(out), _tiny(), quiet=True)
    with pytest.raises(ValueError, match=r"fit\.lr: stored 0\.002, given 0\.01"):
        train_run(str(out), _tiny(lr=0.01), resume=True, quiet=True)
    with pytest.raises(ValueError, match=r"model\.latent_dim: stored 1, given 2"):
        train_run(str(out), {**_tiny(), "model": {**TINY["model"], "latent_dim": 2}}, resume=True, quiet=True)
    _, history = train_run(str(out), _tiny(epochs=2), resume=True, quiet=True)
    assert history["epoch"].tolist() == [1, 2]
    assert json.loads((out / "config.json").read_text())["fit"]["epochs"] == 2


def test_resume_takes_the_same_file_by_another_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savetxt(tmp_path / "points.csv", np.random.default_rng(0).normal(size=(60, 2)), delimiter=",")
    os.symlink(tmp_path / "points.csv", tmp_path / "link.csv")
    cfg = {**TINY, "data": {"source": "points.csv", "binarize": False}}
    train_run("run", cfg, quiet=True)
    for source in (str(tmp_path / "points.csv"), "link.csv"):
        _, history = train_run("run", {**cfg, "data": {"source": source, "binarize": False}}, resume=True,
                               quiet=True)
        assert len(history) == 1


def test_an_older_config_without_newer_keys_still_resumes(tmp_path):
    out = tmp_path / "run"
    train_run(str(out), _tiny(), quiet=True)
    config = json.loads((out / "config.json").read_text())
    for section, key in (("model", "guide"), ("model", "network"), ("model", "num_flows"), ("data", "seed")):
        del config[section][key]  # keys a config.json of an earlier version does not have
    (out / "config.json").write_text(json.dumps(config))
    load_run(str(out))
    _, history = train_run(str(out), _tiny(epochs=2), resume=True, quiet=True)
    assert history["epoch"].tolist() == [1, 2]


# ------------------------------------------------------------------ damaged run folders
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train_run(str(out), _tiny(), quiet=True)
    return out


def _copy(trained, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    return out


@pytest.mark.parametrize("damage,needle", [
    (lambda ck: torch.zeros(3), "holds a Tensor, not a dict"),
    (lambda ck: {k: v for k, v in ck.items() if k != "model"}, "lacks 'model'"),
    (lambda ck: {**ck, "model": {k: v for k, v in list(ck["model"].items())[1:]}}, "other parameters"),
    (lambda ck: {**ck, "model": {k: v[..., :1] if v.dim() else v for k, v in ck["model"].items()}},
     "another architecture|other parameters"),
    (lambda ck: {**ck, "model": {**ck["model"], "extra.weight": torch.zeros(2)}}, "unexpected 'extra.weight'"),
])
def test_load_run_refuses_a_bad_checkpoint_with_one_value_error(trained, tmp_path, damage, needle):
    out = _copy(trained, tmp_path)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save(damage(ck), out / "checkpoint.pt")
    with pytest.raises(ValueError, match=needle):
        load_run(str(out))


def test_load_run_refuses_a_checkpoint_of_another_architecture(trained, tmp_path):
    out = _copy(trained, tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["model"]["hidden"] = [5]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="another configuration|another architecture"):
        load_run(str(out))


@pytest.mark.parametrize("edit,needle", [
    (lambda c: [1, 2], "holds a list"),
    (lambda c: {**c, "model": None}, "'model' is missing or not an object"),
    (lambda c: {**c, "model": {k: v for k, v in c["model"].items() if k != "latent_dim"}}, "lacks model.latent_dim"),
    (lambda c: {**c, "model": {**c["model"], "hidden": None}}, "model.hidden must be a list"),
    (lambda c: {**c, "model": {**c["model"], "latent_dim": "two"}}, "latent_dim"),
    (lambda c: {**c, "data": {**c["data"], "source": None}}, "data.source"),
])
def test_load_run_refuses_a_bad_config_with_one_value_error(trained, tmp_path, edit, needle):
    out = _copy(trained, tmp_path)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(ValueError, match=needle) as e:
        load_run(str(out))
    assert "config.json" in str(e.value)


def test_resume_refuses_a_bad_generator_state(trained, tmp_path):
    out = _copy(trained, tmp_path)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    ck["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(ck, out / "checkpoint.pt")
    with pytest.raises(ValueError, match="'torch' generator state"):
        train_run(str(out), _tiny(epochs=2), resume=True, quiet=True)


def test_an_unusable_out_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is an existing file"):
        train_run(str(tmp_path / "file"), _tiny(), quiet=True)


def test_one_feature_data_train_and_draw_histograms(tmp_path):
    np.savetxt(tmp_path / "one.csv", np.random.default_rng(0).normal(size=(80, 1)), delimiter=",")
    out = tmp_path / "run"
    train_run(str(out), {**TINY, "data": {"source": str(tmp_path / "one.csv"), "binarize": False}}, quiet=True)
    for name in ("elbo.png", "reconstructions.png", "samples.png"):
        assert (out / name).stat().st_size > 1000, name
    vae, _, test_x = load_run(str(out))
    assert vae.data_dim == 1 and test_x.shape[1] == 1


def test_train_overrides_hold_only_what_is_given():
    from pyro_vae.runs import train_overrides

    assert train_overrides() == {"data": {}, "model": {}, "fit": {}}
    config = train_overrides(source="points.csv", latent_dim=3, prior="laplace", epochs=2, seed=5)
    assert config == {"data": {"source": "points.csv", "binarize": False}, "model": {"latent_dim": 3, "prior": "laplace"},
                      "fit": {"epochs": 2}, "seed": 5}
    # the MNIST-10k protocol keeps its binarization; a source given with binarize keeps it
    assert train_overrides(source="mnist10k")["data"] == {"source": "mnist10k"}
    assert train_overrides(source="points.csv", binarize=True)["data"]["binarize"] is True
    assert train_overrides(model_kind="vae")["model"] == {"kind": "vae"}


def test_train_overrides_set_the_pseudo_inputs_of_the_vamp_prior():
    from pyro_vae.runs import DEFAULT_CONFIG, train_overrides

    assert DEFAULT_CONFIG["model"]["prior"] == "vamp"
    assert train_overrides(pseudo_inputs=500)["model"] == {"prior": ["vamp", {"n_pseudo": 500}]}
    assert train_overrides(prior="vamp", pseudo_inputs=7)["model"]["prior"] == ["vamp", {"n_pseudo": 7}]
    with pytest.raises(ValueError, match="pseudo_inputs is an option of the vamp prior, not of prior='laplace'"):
        train_overrides(prior="laplace", pseudo_inputs=10)
    with pytest.raises(ValueError, match="pseudo_inputs must be a positive integer, got 0"):
        train_overrides(pseudo_inputs=0)
    with pytest.raises(ValueError, match="^prior is an option of model_kind=vae"):
        train_overrides(model_kind="mixture_vae", pseudo_inputs=10)


def test_train_overrides_of_a_mixture_vae():
    from pyro_vae.runs import train_overrides

    config = train_overrides(model_kind="mixture_vae", n_components=4, baseline="none")
    assert config["model"] == {"kind": "mixture_vae", "n_components": 4, "baseline": None}
    assert config["fit"] == {"objective": "enum"}
    assert train_overrides(model_kind="mixture_vae", objective="tracegraph")["fit"] == {"objective": "tracegraph"}
    with pytest.raises(ValueError, match="^n_components belongs to model_kind=mixture_vae$"):
        train_overrides(n_components=3)
    with pytest.raises(ValueError, match="^baseline belongs to model_kind=mixture_vae$"):
        train_overrides(model_kind="vae", baseline="neural")
    with pytest.raises(ValueError, match="^guide is an option of model_kind=vae"):
        train_overrides(model_kind="mixture_vae", guide="iaf")
    with pytest.raises(ValueError, match="n_components must be a positive integer, got 0"):
        train_overrides(model_kind="mixture_vae", n_components=0)


def test_fit_mixture_run_writes_what_the_estimator_computes(tmp_path):
    from pyro_vae.mixture import GaussianMixture
    from pyro_vae.runs import fit_mixture_run

    x = torch.cat([torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 4 * k
                   for k in range(2)])
    path = tmp_path / "points.csv"
    np.savetxt(path, x.numpy(), delimiter=",", header="a,b", comments="")
    gm, result, files = fit_mixture_run(tmp_path / "run", path, n_components=2, random_state=3)
    ref = GaussianMixture(2, random_state=3).fit(x)
    assert result["log_likelihood"] == pytest.approx(float(ref.score_samples(x).sum()), rel=1e-10)
    assert result["bic"] == pytest.approx(ref.bic(x), rel=1e-10) and result["n_samples"] == 80
    assert result["n_iter"] == ref.n_iter_ == gm.n_iter_
    torch.testing.assert_close(result["means"], ref.means_)
    assert [os.path.basename(f) for f in files] == ["params.json", "history.csv", "mixture.png"]
    stored = json.loads((tmp_path / "run" / "params.json").read_text())
    assert stored["log_likelihood"] == result["log_likelihood"] and stored["data"] == str(path)
    assert len(pd.read_csv(files[1])) == ref.n_iter_
    # in chunks: the same fit
    _, chunked, _ = fit_mixture_run(tmp_path / "chunked", path, chunk_rows=16, n_components=2, random_state=3)
    assert chunked["log_likelihood"] == pytest.approx(result["log_likelihood"], rel=1e-10)
    np.save(tmp_path / "points.npy", x.numpy())
    with pytest.raises(ValueError, match="chunk_rows reads CSV files"):
        fit_mixture_run(tmp_path / "npy", tmp_path / "points.npy", chunk_rows=16)


# ------------------------------------------------------------------ evaluate_run
def test_evaluate_run_writes_what_log_likelihood_and_inference_gaps_compute(trained, tmp_path):
    from pyro_vae.gaps import inference_gaps
    from pyro_vae.importance import log_likelihood
    from pyro_vae.runs import evaluate_run

    out = _copy(trained, tmp_path)
    result = evaluate_run(str(out), num_samples=20, gaps=True, gap_points=3, gap_steps=4, seed=5, progress=False)
    vae, _, test_x = load_run(str(out))
    est = log_likelihood(vae.model, vae.guide, test_x, 20, seed=5)
    table = pd.read_csv(out / "log_likelihood.csv")
    assert table["datapoint"].tolist() == list(range(test_x.shape[0]))
    assert np.allclose(table["log_px"], est.per_datapoint.numpy(), atol=1e-5)
    assert np.allclose(table["elbo"], est.elbo.numpy(), atol=1e-5)
    assert result["method"] == "is" and result["run_dir"] == str(out)
    assert result["mean"] == pytest.approx(est.mean, abs=1e-5) and result["num_samples"] == 20
    assert result["num_datapoints"] == test_x.shape[0]
    expected = inference_gaps(vae, test_x[:3], num_samples=20, steps=4, seed=5)
    gaps = pd.read_csv(out / "gaps.csv")
    assert gaps["datapoint"].tolist() == [0, 1, 2] and result["gap_datapoints"] == 3
    for column in ("log_px", "elbo_optimized", "amortization_gap"):
        assert np.allclose(gaps[column], expected[column], atol=1e-5), column
    assert result["gaps"]["inference_gap"]["mean"] == pytest.approx(expected["inference_gap"].mean(), abs=1e-5)
    assert result["files"] == [str(out / "log_likelihood.csv"), str(out / "gaps.csv")]
    assert not (out / "log_likelihood_ais.csv").exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    json.dumps(result)  # the summary is plain JSON


def test_evaluate_run_by_ais_writes_what_ais_log_likelihood_computes(trained, tmp_path):
    from pyro_vae.ais import ais_log_likelihood
    from pyro_vae.runs import evaluate_run

    out = _copy(trained, tmp_path)
    result = evaluate_run(out, method="ais", num_steps=3, num_chains=2, num_leapfrog_steps=2, seed=1,
                          progress=False)
    vae, _, test_x = load_run(str(out))
    est = ais_log_likelihood(vae.model, vae.guide, test_x, 3, 2, num_leapfrog_steps=2, seed=1, progress=False)
    table = pd.read_csv(out / "log_likelihood_ais.csv")
    assert np.allclose(table["log_px"], est.per_datapoint.numpy(), atol=1e-5)
    assert result["method"] == "ais" and result["num_chains"] == 2 and result["num_steps"] == 3
    assert result["files"] == [str(out / "log_likelihood_ais.csv")]
    assert not (out / "log_likelihood.csv").exists()


def test_evaluate_run_on_other_data(trained, tmp_path):
    from pyro_vae.importance import log_likelihood
    from pyro_vae.runs import evaluate_run

    out = _copy(trained, tmp_path)
    vae, _, _ = load_run(str(out))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    expected = log_likelihood(vae.model, vae.guide, x, 8, seed=0).per_datapoint.numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    for data in (x, x.numpy().astype("float64"), str(tmp_path / "x.npy")):
        result = evaluate_run(out, num_samples=8, data=data, progress=False)
        assert result["num_datapoints"] == 6
        assert np.allclose(pd.read_csv(out / "log_likelihood.csv")["log_px"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="has 3 features per datapoint; the run's model needs 2"):
        evaluate_run(out, num_samples=8, data=torch.zeros(4, 3), progress=False)
    with pytest.raises(ValueError, match=r"x3\.npy has 3 features"):
        np.save(tmp_path / "x3.npy", np.zeros((4, 3), dtype="float32"))
        evaluate_run(out, num_samples=8, data=str(tmp_path / "x3.npy"), progress=False)
    with pytest.raises(TypeError, match="data must be a torch.Tensor or numpy array"):
        evaluate_run(out, num_samples=8, data=[[0.0, 1.0]], progress=False)


@pytest.mark.parametrize("kwargs,error,needle", [
    ({"method": "mc"}, ValueError, "unknown method .mc.; choose one of"),
    ({"num_samples": 0}, ValueError, "num_samples must be a positive integer, got 0"),
    ({"num_samples": 2.0}, TypeError, "num_samples must be an integer"),
    ({"gaps": True, "gap_steps": -1}, ValueError, "gap_steps must be a non-negative integer"),
    ({"gaps": 1}, TypeError, "gaps must be"),
    ({"seed": None}, TypeError, "seed must be a non-negative integer"),
    ({"particle_batch_size": 0}, ValueError, "particle_batch_size must be a positive integer"),
    ({"gap_points": 5}, ValueError, "gap_points sets the inference gaps"),
    ({"num_steps": 5}, ValueError, "num_steps belongs to annealed importance sampling"),
    ({"method": "ais", "num_samples": 5}, ValueError, "num_samples belongs to importance sampling"),
    ({"method": "ais", "gaps": True}, ValueError, "gaps belongs to importance sampling"),
    ({"method": "ais", "particle_batch_size": 5}, ValueError, "particle_batch_size belongs to importance"),
    ({"method": "ais", "num_chains": 0}, ValueError, "num_chains must be a positive integer"),
])
def test_evaluate_run_refuses_bad_settings_before_touching_the_folder(trained, tmp_path, kwargs, error, needle):
    from pyro_vae.runs import evaluate_run

    out = _copy(trained, tmp_path)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(error, match=needle):
        evaluate_run(out, progress=False, **kwargs)
    assert sorted(p.name for p in out.iterdir()) == before


def test_evaluate_run_holds_the_run_folder_lock_and_creates_no_folder(trained, tmp_path):
    from pyro_vae.runs import evaluate_run
    from pyro_vae.storage import FolderInUseError, FolderLock

    out = _copy(trained, tmp_path)
    with FolderLock(str(out)):
        with pytest.raises(FolderInUseError, match="in use by another process"):
            evaluate_run(out, num_samples=4, progress=False)
    assert not (out / "log_likelihood.csv").exists()
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        evaluate_run(tmp_path / "missing", num_samples=4, progress=False)
    assert not (tmp_path / "missing").exists()


def test_evaluate_run_of_a_mixture_vae_takes_importance_sampling_only(tmp_path):
    from pyro_vae.importance import log_likelihood
    from pyro_vae.runs import evaluate_run

    out = tmp_path / "m"
    x = (torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    torch.save(x, tmp_path / "x.pt")
    train_run(str(out), {"data": {"source": str(tmp_path / "x.pt"), "binarize": False},
                         "model": {"kind": "mixture_vae", "n_components": 2, "latent_dim": 1, "hidden": [4],
                                   "likelihood": "bernoulli"},
                         "fit": {"epochs": 1, "batch_size": 20}}, quiet=True)
    result = evaluate_run(out, num_samples=6, seed=2, progress=False)
    model, _, test_x = load_run(str(out))
    expected = log_likelihood(model.model, model.guide, test_x, 6, seed=2)
    assert result["mean"] == pytest.approx(expected.mean, abs=1e-5)
    with pytest.raises(ValueError, match="gaps optimizes a Gaussian"):
        evaluate_run(out, gaps=True, progress=False)
    with pytest.raises(ValueError, match="method 'ais' moves continuous latents"):
        evaluate_run(out, method="ais", progress=False)
