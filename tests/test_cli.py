import json
import os

import pandas as pd
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.data import load_split
from pyro_vae.runs import load_run


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
