import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from gaussian_mixtures import mixture_data, overlapping_data
from pyro_vae.ais import ais_log_likelihood
from pyro_vae.cli import main
from pyro_vae.data import load_split
from pyro_vae.importance import log_likelihood
from pyro_vae.mixture import GaussianMixture
from pyro_vae.runs import load_run, train_run


def test_train_writes_a_complete_run_folder_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "synthetic", "--latent-dim", "2", "--hidden", "16", "--epochs", "2",
            "--batch-size", "64", "--out", str(out), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 2
    for name in ("config.json", "history.csv", "checkpoint.pt", "elbo.png", "reconstructions.png", "samples.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["latent_dim"] == 2 and config["fit"]["epochs"] == 2
    vae, _, test_x = load_run(str(out))
    assert vae.latent_dim == 2 and test_x.shape[1] == 2

    # another learning rate on resume is refused, naming the setting...
    first = pd.read_csv(out / "history.csv")
    assert main(args + ["--resume", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fit.lr: stored 0.002, given 0.01" in err
    # ... while more epochs continue the run: 3 epochs, the first two rows kept
    args[args.index("--epochs") + 1] = "3"
    assert main(args + ["--resume"]) == 0
    hist = pd.read_csv(out / "history.csv")
    assert hist["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(hist.iloc[:2].drop(columns="seconds"), first.drop(columns="seconds"))
    assert json.loads((out / "config.json").read_text())["fit"]["epochs"] == 3


def test_train_on_images_writes_grids(tmp_path):
    x = (torch.rand(64, 784) > 0.7).float()
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "img"
    assert main(["train", "--data", str(tmp_path / "x.pt"), "--latent-dim", "2", "--hidden", "8",
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert (out / "samples.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "/nonexistent/file.csv"], "nonexistent"),
    (["train", "--data", "synthetic", "--epochs", "0"], "epochs"),
    (["train", "--data", "synthetic", "--prior", "banana"], "prior"),
    (["train", "--data", "synthetic", "--prior", "laplace", "--pseudo-inputs", "5"], "vamp prior"),
    (["train", "--data", "synthetic", "--device", "gpu"], "--device 'gpu' is not a device"),
    (["demo", "--device", "gpu"], "--device 'gpu' is not a device"),
])
def test_train_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    assert main(argv + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "many"])
    assert e.value.code == 2


def test_train_patience_uses_a_validation_split_not_the_test_data(tmp_path, monkeypatch):
    import pyro_vae.runs as runs

    seen = {}
    real_fit = runs.fit

    def spy(vae, data, **kw):
        seen["train"], seen["val"] = data, kw["val_data"]
        return real_fit(vae, data, **kw)

    monkeypatch.setattr(runs, "fit", spy)
    out = tmp_path / "p"
    assert main(["train", "--data", "synthetic", "--epochs", "2", "--patience", "1", "--lr-schedule", "none",
                 "--hidden", "8", "--out", str(out), "--quiet"]) == 0
    _, _, test_x = load_run(str(out))
    as_rows = lambda t: {tuple(r) for r in t.tolist()}  # noqa: E731
    assert not as_rows(seen["val"]) & as_rows(test_x)
    assert not as_rows(seen["val"]) & as_rows(seen["train"])
    assert json.loads((out / "config.json").read_text())["fit"]["lr_schedule"] == "none"


@pytest.mark.parametrize("command", [["em", "--data", "x.csv"], ["evaluate", "run"], ["demo"]])
def test_only_train_runs_under_torchrun(command, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun" in err and "only 'pyro-vae train'" in err


def test_evaluate_bad_device_is_one_line_exit_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device 'gpu' is not a device" in err


TRAIN = ["train", "--data", "synthetic", "--no-binarize", "--latent-dim", "1", "--hidden", "4", "--epochs", "1",
         "--quiet"]


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_train_into_a_run_folder_needs_resume_or_overwrite(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(TRAIN + ["--out", out]) == 0
    assert main(TRAIN + ["--out", out, "--lr", "0.01"]) == 2
    assert "already holds a run" in _one_line(capsys)
    assert main(TRAIN + ["--out", out, "--lr", "0.01", "--overwrite"]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["fit"]["lr"] == 0.01
    assert main(TRAIN + ["--out", out, "--resume", "--overwrite"]) == 2
    assert "exclude each other" in _one_line(capsys)


def test_a_second_writer_gets_one_line_and_exit_2(tmp_path, capsys):
    from pyro_vae.storage import FolderLock

    out = tmp_path / "r"
    for argv in (TRAIN + ["--out", str(out)], ["em", "--data", "x.csv", "--out", str(out)],
                 ["compare", "--epochs", "1", "--out", str(out)]):
        with FolderLock(str(out)):
            assert main(argv) == 2
        assert "in use by another process" in _one_line(capsys)


@pytest.mark.parametrize("argv,needle", [
    (TRAIN + ["--lr", "inf"], "--lr must be finite"),
    (TRAIN + ["--lr", "1e6"], "training diverged"),
    (TRAIN + ["--beta", "inf"], "--beta must be finite"),
    (TRAIN + ["--device", "meta"], "--device 'meta' cannot run"),
    (["em", "--data", "x.csv", "--device", "meta"], "--device 'meta' cannot run"),
    (["compare", "--device", "meta"], "--device 'meta' cannot run"),
    (["evaluate", "run", "--device", "meta"], "--device 'meta' cannot run"),
    (["compare", "--epochs", "0"], "--epochs must be a positive integer"),
    (["compare", "--num-samples", "0", "--epochs", "1", "--n-samples", "60"], "--num-samples must be a positive"),
])
def test_bad_options_are_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--out", str(tmp_path / "o")] if argv[0] != "evaluate" else argv) == 2
    assert needle in _one_line(capsys)


def test_library_argument_names_read_as_options(tmp_path, capsys):
    data = tmp_path / "x.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    assert main(["em", "--data", str(data), "--components", "0", "--out", str(tmp_path / "o")]) == 2
    assert _one_line(capsys).endswith("error: --components must be a positive integer, got 0")
    assert main(["em", "--data", str(data), "--components", "3", "--out", str(tmp_path / "o")]) == 2
    assert "but --components 3" in _one_line(capsys)
    assert main(["em", "--data", str(data), "--seed", "-1", "--out", str(tmp_path / "o")]) == 2
    assert "--seed must be a non-negative integer" in _one_line(capsys)


def test_an_evaluate_option_error_names_the_option(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(TRAIN + ["--out", out]) == 0
    assert main(["evaluate", out, "--num-samples", "0"]) == 2
    assert _one_line(capsys).endswith("error: --num-samples must be a positive integer, got 0")
    assert main(["evaluate", out, "--gaps", "--gap-steps", "-1", "--num-samples", "2", "--gap-points", "2"]) == 2
    assert "--gap-steps must be a non-negative integer" in _one_line(capsys)


@pytest.mark.parametrize("command", [["em", "--data", "x.csv"], ["compare", "--epochs", "1"]])
def test_an_out_naming_a_file_is_refused_before_computing(tmp_path, capsys, monkeypatch, command):
    import pyro_vae.compare
    import pyro_vae.data

    def never(*a, **k):
        raise AssertionError("computed before checking --out")

    monkeypatch.setattr(pyro_vae.compare, "run_comparison", never)
    monkeypatch.setattr(pyro_vae.data, "load_data", never)
    (tmp_path / "f").write_text("x")
    assert main(command + ["--out", str(tmp_path / "f")]) == 2
    assert "is an existing file, not a folder" in _one_line(capsys)


def test_an_unreadable_run_folder_gets_permission_advice(tmp_path, capsys, monkeypatch):
    (tmp_path / "r").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests may run as root
    assert main(["evaluate", str(tmp_path / "r")]) == 2
    assert "not readable: permission denied" in _one_line(capsys)


def test_an_unexpected_error_keeps_its_traceback(monkeypatch):
    import pyro_vae.runs

    def bug(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(pyro_vae.runs, "train_run", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["train"])


def test_compare_command_writes_table_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--n-samples", "600", "--epochs", "3", "--num-samples", "16",
                 "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in result["table"]] == ["em", "gmm_svi", "vae_normal", "vae_mixture", "mixture_vae",
                                                      "oracle"]
    for name in ("comparison.csv", "mixture_fit.png", "vae_samples.png", "heldout_log_likelihood.png",
                 "training.png", "costs.png"):
        assert (out / name).stat().st_size > 0, name


def test_compare_bad_input_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,x\n2,y\n")
    assert main(["compare", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1


def test_train_data_seed_option_is_stored(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", "synthetic", "--data-seed", "5", "--latent-dim", "1", "--hidden", "4",
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["seed"] == 5 and config["data"]["split_seed"] == 0
    _, _, test_x = load_run(str(out))
    assert torch.equal(test_x, load_split("synthetic", seed=5, split_seed=0).test_x)


def test_train_pseudo_inputs_option_sets_the_vamp_prior(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", "synthetic", "--pseudo-inputs", "3", "--latent-dim", "1", "--hidden", "4",
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["prior"] == ["vamp", {"n_pseudo": 3}]
    vae, _, _ = load_run(str(out))
    assert vae.prior.n_pseudo == 3 and vae.prior.pseudo_inputs.shape[0] == 3


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


# ----------------------------------------------------------------------------- evaluate, em, runs elsewhere
TINY_RUN = {"model": {"latent_dim": 1, "hidden": [4], "prior": "normal", "likelihood": "gaussian_feature"},
            "fit": {"epochs": 1, "batch_size": 32}}


def _write_csv(path, x):
    pd.DataFrame(np.asarray(x), columns=[f"f{i}" for i in range(np.asarray(x).shape[1])]).to_csv(path, index=False)


def test_cli_evaluate_with_ais(tmp_path, capsys):
    import json

    import numpy as np
    import pandas as pd

    from pyro_vae.cli import main
    from pyro_vae.runs import load_run

    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--latent-dim", "2", "--hidden", "8", "--epochs", "1",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--method", "ais", "--num-steps", "4", "--num-chains", "3",
                 "--num-leapfrog-steps", "2", "--seed", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    vae, _, test_x = load_run(str(run))
    est = ais_log_likelihood(vae.model, vae.guide, test_x, 4, 3, num_leapfrog_steps=2, seed=2)
    df = pd.read_csv(run / "log_likelihood_ais.csv")
    assert list(df.columns) == ["datapoint", "log_px", "mean_log_weight", "ess", "mc_stderr",
                                "acceptance_rate", "step_size"]
    assert len(df) == test_x.shape[0]
    assert np.allclose(df["log_px"], est.per_datapoint.numpy(), atol=1e-5)
    assert result["method"] == "ais" and result["num_steps"] == 4 and result["num_chains"] == 3
    assert result["mean"] == pytest.approx(est.mean, abs=1e-5)
    assert result["files"] == [str(run / "log_likelihood_ais.csv")]
    assert not (run / "log_likelihood.csv").exists()  # the importance-sampling table is untouched

    assert main(["evaluate", str(run), "--method", "ais", "--num-steps", "4", "--num-chains", "3",
                 "--num-leapfrog-steps", "2", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert f"log p(x) = {est.mean:.3f} +- {est.stderr:.3f}" in text and "by AIS" in text

    for argv, needle in ((["--num-steps", "0"], "--num-steps"), (["--num-chains", "0"], "--num-chains"),
                         (["--gaps"], "--gaps"), (["--particle-batch-size", "5"], "--particle-batch-size"),
                         (["--num-samples", "5"], "--num-samples belongs to importance sampling")):
        assert main(["evaluate", str(run), "--method", "ais"] + argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err


def test_cli_evaluate(tmp_path, capsys):
    import json

    import numpy as np
    import pandas as pd

    from pyro_vae.cli import main
    from pyro_vae.runs import load_run

    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--latent-dim", "2", "--hidden", "8", "--epochs", "1",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--num-samples", "30", "--seed", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    vae, _, test_x = load_run(str(run))
    est = log_likelihood(vae.model, vae.guide, test_x, 30, seed=2)
    df = pd.read_csv(run / "log_likelihood.csv")
    assert list(df.columns) == ["datapoint", "log_px", "elbo", "gap", "ess", "mc_stderr"]
    assert len(df) == test_x.shape[0]
    assert np.allclose(df["log_px"], est.per_datapoint.numpy(), atol=1e-5)
    assert result["mean"] == pytest.approx(est.mean, abs=1e-5)
    assert result["stderr"] == pytest.approx(est.stderr, abs=1e-5)
    assert result["num_samples"] == 30 and result["num_datapoints"] == test_x.shape[0]

    assert main(["evaluate", str(run), "--num-samples", "30", "--seed", "2", "--gaps", "--gap-points", "4",
                 "--gap-steps", "5"]) == 0
    text = capsys.readouterr().out
    assert f"log p(x) = {est.mean:.3f} +- {est.stderr:.3f}" in text
    assert "amortization_gap" in text
    gaps = pd.read_csv(run / "gaps.csv")
    assert len(gaps) == 4 and {"log_px", "approximation_gap", "amortization_gap"} <= set(gaps.columns)
    assert not [p for p in run.iterdir() if ".tmp" in p.name]

    np.save(tmp_path / "other.npy", np.random.default_rng(0).normal(size=(7, 2)).astype("float32"))
    assert main(["evaluate", str(run), "--num-samples", "5", "--data", str(tmp_path / "other.npy"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_datapoints"] == 7

    for argv, needle in ((["evaluate", str(tmp_path / "missing")], "missing"),
                         (["evaluate", str(run), "--num-samples", "0"], "--num-samples"),
                         (["evaluate", str(run), "--gap-points", "4"], "--gap-points sets the inference gaps"),
                         (["evaluate", str(run), "--num-chains", "4"], "--num-chains belongs to annealed"),
                         (["evaluate", str(run), "--data", str(tmp_path / "x3.npy")], "features")):
        if "x3.npy" in argv[-1]:
            np.save(tmp_path / "x3.npy", np.zeros((4, 3), dtype="float32"))
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err


def test_cli_em_writes_the_run_folder(tmp_path, capsys):
    from pyro_vae.cli import main

    x, _ = mixture_data(300, seed=16)
    data = tmp_path / "points.csv"
    _write_csv(data, x.numpy())
    out = tmp_path / "run"
    code = main(["em", "--data", str(data), "--components", "3", "--covariance", "full",
                 "--out", str(out), "--seed", "1", "--json", "--quiet"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    for name in ("params.json", "history.csv", "mixture.png"):
        assert (out / name).is_file()
    params = json.loads((out / "params.json").read_text())
    gm = GaussianMixture(3, random_state=1).fit(x)
    assert params["log_likelihood"] == pytest.approx(gm.score_samples(x).sum().item(), rel=1e-10)
    assert printed["log_likelihood_per_sample"] == pytest.approx(gm.score(x), rel=1e-10)
    assert printed["bic"] == pytest.approx(gm.bic(x), rel=1e-10)
    assert printed["aic"] == pytest.approx(gm.aic(x), rel=1e-10)
    assert params["n_iter"] == gm.n_iter_ and params["converged"] is True
    np.testing.assert_allclose(np.array(params["means"]), gm.means_.numpy(), rtol=1e-12)
    assert np.array(params["covariances"]).shape == (3, 2, 2)
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["iteration", "log_likelihood", "seconds"]
    assert len(history) == gm.n_iter_

    # 3-D data: no plot; human-readable summary
    data3 = tmp_path / "points3.csv"
    _write_csv(data3, overlapping_data(n=100, d=3).numpy())
    code = main(["em", "--data", str(data3), "--components", "2", "--covariance", "diag",
                 "--out", str(tmp_path / "run3")])
    assert code == 0
    text = capsys.readouterr().out
    assert "log-likelihood" in text and "BIC" in text and "iterations" in text
    assert not (tmp_path / "run3" / "mixture.png").exists()


def test_cli_em_reads_a_csv_in_chunks(tmp_path, capsys):
    from pyro_vae.cli import main

    x, _ = mixture_data(300, seed=16)
    data = tmp_path / "points.csv"
    _write_csv(data, x.numpy())
    results = []
    for extra, out in (([], "whole"), (["--chunk-rows", "64"], "chunks")):
        code = main(["em", "--data", str(data), "--components", "3", "--out", str(tmp_path / out),
                     "--seed", "1", "--json", "--quiet", *extra])
        assert code == 0
        results.append(json.loads(capsys.readouterr().out))
        assert (tmp_path / out / "mixture.png").is_file()
    whole, chunks = results
    assert chunks["n_samples"] == 300 and chunks["n_iter"] == whole["n_iter"]
    for key in ("log_likelihood", "bic", "aic", "lower_bound"):
        assert chunks[key] == pytest.approx(whole[key], rel=1e-10), key
    means = [np.array(json.loads((tmp_path / o / "params.json").read_text())["means"]) for o in ("whole", "chunks")]
    np.testing.assert_allclose(means[1], means[0], rtol=0, atol=1e-9)
    assert main(["em", "--data", str(data), "--chunk-rows", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--chunk-rows must be" in capsys.readouterr().err
    npy = tmp_path / "points.npy"
    np.save(npy, x.numpy())
    assert main(["em", "--data", str(npy), "--chunk-rows", "10", "--out", str(tmp_path / "y")]) == 2
    assert "--chunk-rows reads CSV files" in capsys.readouterr().err


@pytest.mark.parametrize("content, args, match", [
    (None, [], "no file"),
    ("a,b\n1,x\n2,y\n3,z\n", [], "not numeric"),
    ("a,b\n1,2\n,3\n4,5\n", [], "missing values"),
    ("a,b\n1,2\n3,4\n", ["--components", "5"], "2 samples but --components 5"),
    ("a,b\n1,2\n3,4\n", ["--components", "0"], "--components must be"),
    ("a,b\n1,2\n3,4\n", ["--device", "gpu"], "--device 'gpu' is not a device"),
])
def test_cli_em_bad_input_exits_with_code_2(tmp_path, capsys, content, args, match):
    from pyro_vae.cli import main

    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    code = main(["em", "--data", str(path), "--out", str(tmp_path / "run"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option,value,needle", [("--lr", "inf", "lr must be finite"),
                                                 ("--lr", "1e6", "diverged"),
                                                 ("--beta", "inf", "beta must be finite")])
def test_the_command_line_reports_bad_or_diverging_settings_in_one_line(tmp_path, capsys, option, value,
                                                                         needle):
    from pyro_vae.cli import main

    code = main(["train", "--data", "synthetic", "--latent-dim", "2", "--hidden", "8", "--epochs", "3",
                 "--batch-size", "64", option, value, "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err


def test_a_relative_data_path_works_from_any_directory(tmp_path, monkeypatch, capsys):
    """Train in one working directory with a relative --data path, evaluate from another."""
    project = tmp_path / "project"
    project.mkdir()
    rng = np.random.default_rng(0)
    np.savetxt(project / "points.csv", rng.normal(size=(60, 2)), delimiter=",", header="a,b", comments="")
    monkeypatch.chdir(project)
    train_run("run", {**TINY_RUN, "data": {"source": "points.csv", "binarize": False}}, quiet=True)
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
