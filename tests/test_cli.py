import json
import os

import pandas as pd
import pytest
import torch

from pyro_vae.cli import main
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

    # resume continues to 3 epochs and keeps the first two rows
    first = pd.read_csv(out / "history.csv")
    args[args.index("--epochs") + 1] = "3"
    with pytest.raises(SystemExit):  # different settings on resume are refused...
        raise SystemExit(main(args + ["--resume"]))
    # ... so extending a run means keeping the stored settings: edit epochs in place
    config["fit"]["epochs"] = 3
    (out / "config.json").write_text(json.dumps(config))
    assert main(args + ["--resume"]) == 0
    hist = pd.read_csv(out / "history.csv")
    assert hist["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(hist.iloc[:2].drop(columns="seconds"), first.drop(columns="seconds"))


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
