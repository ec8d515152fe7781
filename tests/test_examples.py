"""Every example runs in its quick mode and prints what it should: the numbers it prints are
parsed and checked against an independent computation or a property they must have."""

import math
import os
import re
import runpy
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from data_files import MNIST_DIR

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
NUMBER = r"(-?\d+\.\d+|NaN)"


def _run(name, tmp_path, monkeypatch, capsys):
    # the examples run in a scratch folder: name the MNIST folder beside the repository explicitly
    mnist = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                         "shared", "data", "mnist")
    if "PYRO_VAE_MNIST_DIR" not in os.environ and os.path.isdir(mnist):
        monkeypatch.setenv("PYRO_VAE_MNIST_DIR", os.path.normpath(mnist))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [name, "--quick"])
    module = runpy.run_path(os.path.join(EXAMPLES, name), run_name="__main__")
    return capsys.readouterr().out, module


def _find(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return [float(v) for v in match.groups()]


def _mixture_log_density(x, mix):
    """Per-point log density of a synthetic mixture, one scipy density per component."""
    w, mu, cov = (np.asarray(v, dtype=float) for v in (mix.weights, mix.means, mix.covariances))
    return logsumexp([np.log(w[k]) + multivariate_normal(mu[k], cov[k]).logpdf(x) for k in range(len(w))], axis=0)


@pytest.mark.slow
def test_custom_prior_and_likelihood(tmp_path, monkeypatch, capsys):
    from pyro_vae.data import make_gaussian_mixture, train_test_split

    out, _ = _run("custom_prior_and_likelihood.py", tmp_path, monkeypatch, capsys)
    elbo, = _find(r"held-out ELBO\s+" + NUMBER, out)
    logpx, se = _find(r"held-out log p\(x\)\s+" + NUMBER + r" ± " + NUMBER, out)
    truth, = _find(r"generating mixture\s+" + NUMBER, out)
    # the generating mixture's held-out log-likelihood, computed again with scipy
    mix = make_gaussian_mixture(n_samples=1000, n_components=3, dim=2, seed=0)
    test_x = train_test_split(mix.x, test_fraction=0.25, seed=0)[1]
    assert truth == pytest.approx(_mixture_log_density(test_x.double().numpy(), mix).mean(), abs=1e-4)
    # importance sampling is above the ELBO of the same draws; a briefly trained model is below
    # the generating mixture
    assert elbo <= logpx and se > 0
    assert logpx < truth


@pytest.mark.slow
def test_log_likelihood_importance_sampling(tmp_path, monkeypatch, capsys):
    out, module = _run("log_likelihood_importance_sampling.py", tmp_path, monkeypatch, capsys)
    exact, = _find(r"exact log p\(x\) = " + NUMBER, out)
    # the closed form, computed again with scipy on the same data
    W, B, sigma = (np.asarray(module[k], dtype=float) for k in ("W", "B", "SIGMA"))
    x = module["make_data"]().double().numpy()
    reference = multivariate_normal(B, W @ W.T + sigma ** 2 * np.eye(len(B))).logpdf(x).mean()
    assert exact == pytest.approx(reference, abs=1e-4)
    rows = {int(k): (float(a), float(b)) for k, a, b in
            re.findall(r"K=\s*(\d+): IS estimate " + NUMBER + ", ELBO " + NUMBER, out)}
    assert sorted(rows) == [1, 10, 100]
    for k, (estimate, elbo) in rows.items():
        assert elbo <= estimate + 1e-4, k
    assert rows[1][0] == pytest.approx(rows[1][1], abs=1e-4)  # one sample: the estimate is the ELBO
    # the estimate approaches the exact value as K grows
    errors = [abs(rows[k][0] - exact) for k in (1, 10, 100)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.2
    # the gap table: each gap is the difference of the bounds, and the gaps add up
    gaps = {name: float(v) for name, v in re.findall(r"^(\w+)\s+" + NUMBER + r"\s+\d+\.\d+\s+\d+$", out, re.M)}
    assert gaps["approximation_gap"] == pytest.approx(gaps["log_px"] - gaps["elbo_optimized"], abs=1e-5)
    assert gaps["amortization_gap"] == pytest.approx(gaps["elbo_optimized"] - gaps["elbo_amortized"], abs=1e-5)
    assert gaps["inference_gap"] == pytest.approx(gaps["approximation_gap"] + gaps["amortization_gap"], abs=1e-5)
    assert gaps["inference_gap"] > 0


@pytest.mark.slow
def test_vae_vs_em_gmm(tmp_path, monkeypatch, capsys):
    out, _ = _run("vae_vs_em_gmm.py", tmp_path, monkeypatch, capsys)
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("em", "vae_normal", "vae_mixture", "oracle"):
            numbers = [float(v) for v in re.findall(NUMBER, line)]
            rows[parts[0]] = dict(zip(["ll", "ll_se", "elbo", "gap", "gap_se", "seconds", "ari"], numbers))
    assert sorted(rows) == ["em", "oracle", "vae_mixture", "vae_normal"]
    # the printed table is the one written to comparison.csv
    table = pd.read_csv(tmp_path / "runs" / "vae_vs_em" / "comparison.csv").set_index("method")
    for method, row in rows.items():
        assert row["ll"] == pytest.approx(table.loc[method, "heldout_log_likelihood"], abs=1e-4)
        assert row["elbo"] == pytest.approx(table.loc[method, "heldout_elbo"], abs=1e-4)
    # EM's posterior is exact: no gap; the VAEs' amortized posteriors leave one
    assert rows["em"]["gap"] == 0 and rows["em"]["elbo"] == rows["em"]["ll"]
    assert rows["vae_normal"]["gap"] > 0 and rows["vae_mixture"]["gap"] > 0
    # EM reaches the generating mixture; five epochs of VAE training do not
    assert abs(rows["oracle"]["ll"] - rows["em"]["ll"]) < 0.05
    assert rows["vae_normal"]["ll"] < rows["em"]["ll"] and rows["em"]["ari"] > 0.9
    assert math.isnan(rows["vae_normal"]["ari"])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="real MNIST folder absent")
def test_mnist_vae(tmp_path, monkeypatch, capsys):
    out, _ = _run("mnist_vae.py", tmp_path, monkeypatch, capsys)
    logpx, se, k, elbo = _find(r"held-out log p\(x\) = " + NUMBER + " ± " + NUMBER + r" nats \(K=(\d+); ELBO "
                               + NUMBER, out)
    assert k == 50 and elbo <= logpx and se > 0
    # better than independent fair coins per pixel (784 log 2 nats), and a probability below 1
    assert -784 * math.log(2) < logpx < 0
    for name in ("elbo.png", "reconstructions.png", "samples.png"):
        assert (tmp_path / "runs" / "mnist" / name).stat().st_size > 1000


def _ppca_max_log_likelihood(x):
    """Mean log-likelihood of probabilistic PCA at its closed-form maximum (Tipping & Bishop):
    the sample covariance's top eigenvalues kept, the others averaged into the noise."""
    n, d = x.shape
    cov = np.cov(x, rowvar=False, bias=True)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    latent = 2
    noise = values[latent:].mean()
    w = vectors[:, :latent] * np.sqrt(values[:latent] - noise)
    return multivariate_normal(x.mean(0), w @ w.T + noise * np.eye(d)).logpdf(x).mean()


@pytest.mark.slow
def test_fit_pyro_program(tmp_path, monkeypatch, capsys):
    out, module = _run("fit_pyro_program.py", tmp_path, monkeypatch, capsys)
    match = re.search(r"trained (\d+) epochs \(resumed after (\d+)\)", out)
    assert match and int(match.group(1)) == 2 * int(match.group(2))
    assert (tmp_path / "runs" / "fit_pyro_program" / "checkpoint.pt").stat().st_size > 0
    exact, = _find(r"exact log p\(x\) = " + NUMBER, out)
    sklearn_best, = _find(r"scikit-learn PCA, closed form\) = " + NUMBER, out)
    estimate, se, elbo = _find(r"importance sampling \(K=\d+\): " + NUMBER + " ± " + NUMBER + ", ELBO " + NUMBER, out)
    best = _ppca_max_log_likelihood(module["make_data"]().double().numpy())
    # scikit-learn's PCA is the same closed form (its covariance divides by N - 1)
    assert sklearn_best == pytest.approx(best, abs=5e-3)
    # the trained program is below the maximum, and close to it
    assert exact <= best + 1e-3 and best - exact < 0.06
    # importance sampling from the trained guide recovers the exact value; the ELBO is below
    assert estimate == pytest.approx(exact, abs=0.01) and se > 0
    assert elbo <= estimate


@pytest.mark.slow
def test_ais_and_bdmc(tmp_path, monkeypatch, capsys):
    from scipy.integrate import quad
    from scipy.stats import norm

    out, module = _run("ais_and_bdmc.py", tmp_path, monkeypatch, capsys)
    exact, = _find(r"exact log p\(x\) = " + NUMBER, out)
    # log p(x) again, by scipy's adaptive quadrature, the integrand scaled by its value at the
    # grid's best z so that it does not underflow
    x = module["make_data"](20).double().numpy()
    a, b, sigma = np.asarray(module["A"], dtype=float), np.asarray(module["B"], dtype=float), module["SIGMA"]

    def log_joint(z, row):
        return norm.logpdf(z) + norm.logpdf(row, a * np.sin(3 * z) + b * z, sigma).sum()

    reference = []
    for row in x:
        grid = np.linspace(-10, 10, 2001)
        top = max(log_joint(z, row) for z in grid)
        value, _ = quad(lambda z: np.exp(log_joint(z, row) - top), -10, 10, points=list(grid[::100]), limit=500)
        reference.append(top + np.log(value))
    assert exact == pytest.approx(np.mean(reference), abs=1e-4)
    importance, = _find(r"importance sampling, 16 samples: " + NUMBER, out)
    ais = {int(steps): float(v) for steps, v in re.findall(r"AIS, 16 chains x\s+(\d+) steps: " + NUMBER, out)}
    assert sorted(ais) == [10, 100]
    # more annealing steps close the distance to log p(x), from below (up to Monte Carlo error)
    assert importance < ais[10] < ais[100] <= exact + 0.05
    assert exact - ais[100] < 0.25 < exact - importance
    lower, truth, upper, gap = _find(r"lower " + NUMBER + ", exact " + NUMBER + ", upper " + NUMBER + ", gap "
                                     + NUMBER, out)
    # the sandwich holds the true value
    assert lower <= truth + 0.05 and truth <= upper + 0.05
    assert gap == pytest.approx(upper - lower, abs=1e-3) and gap > 0


@pytest.mark.slow
def test_discrete_latents(tmp_path, monkeypatch, capsys):
    out, _ = _run("discrete_latents.py", tmp_path, monkeypatch, capsys)
    em, = _find(r"EM\s+" + NUMBER, out)
    fits = {name: (float(ll), float(gap)) for name, ll, gap in
            re.findall(r"SVI, (\w+)\s+" + NUMBER + "  gap " + NUMBER, out)}
    assert sorted(fits) == ["enum", "tracegraph"]
    for name, (ll, gap) in fits.items():
        # the same model as EM's: near EM's held-out log-likelihood, with a gap of at least 0
        assert abs(ll - em) < 0.2 and gap >= 0, name
    variance = {name: float(v) for name, v in re.findall(r"^  (\w+)\s+(\d+\.?\d*(?:e[+-]?\d+)?)", out, re.M)}
    assert sorted(variance) == ["enum", "trace", "tracegraph", "tracegraph_decaying", "tracegraph_neural"]
    # Rao-Blackwellization alone removes nothing here; baselines and the exact sum do
    assert variance["tracegraph"] == pytest.approx(variance["trace"], rel=1e-3)
    assert variance["enum"] < variance["tracegraph_neural"] < variance["trace"]
    assert variance["tracegraph_decaying"] < variance["trace"]
