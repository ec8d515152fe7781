"""Every example runs in its quick mode."""

import os
import runpy
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["custom_prior_and_likelihood.py", "vae_vs_em_gmm.py",
                                  "log_likelihood_importance_sampling.py", "mnist_vae.py"])
def test_example_runs_quick(name, tmp_path, monkeypatch, capsys):
    # the examples run in a scratch folder: name the MNIST folder beside the repository explicitly
    mnist = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                         "shared", "data", "mnist")
    if "PYRO_VAE_MNIST_DIR" not in os.environ and os.path.isdir(mnist):
        monkeypatch.setenv("PYRO_VAE_MNIST_DIR", os.path.normpath(mnist))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [name, "--quick"])
    runpy.run_path(os.path.join(EXAMPLES, name), run_name="__main__")
    out = capsys.readouterr().out
    assert "log p(x)" in out or "log_likelihood" in out
