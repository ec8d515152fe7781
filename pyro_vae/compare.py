"""VAE versus EM on Gaussian-mixture data.

For a Gaussian mixture the posterior over the component p(c|x) is exact, so EM's E step makes
the ELBO equal to log p(x) and the M step maximizes it in closed form. A VAE instead amortizes
an approximate posterior q(z|x) over a continuous latent; its ELBO stays below log p(x) and the
difference (the inference gap) is what amortized, approximate inference costs.
:func:`compare_vae_em` fits both on the same training data and scores them on the same
held-out data:

* ``em`` -- :class:`~pyro_vae.mixture.GaussianMixture` by EM (exact held-out log-likelihood; its
  ELBO after the E step equals it);
* ``vae_normal`` -- a VAE with a Gaussian likelihood and a standard-normal prior;
* ``vae_mixture`` -- a VAE with a K-component mixture-of-Gaussians prior;
* ``gmm_svi`` -- the same Gaussian mixture as EM's, fitted by SVI with an amortized q(c|x)
  (:class:`~pyro_vae.mixture.GaussianMixtureSVI`; exact held-out log-likelihood, ELBO and gap);
* ``mixture_vae`` -- a VAE with an explicit component (:class:`~pyro_vae.MixtureVAE`), trained
  with the exact sum over the component (``enum``);
* ``oracle`` -- the generating mixture, when the data are synthetic.

VAE log-likelihoods are estimated by importance sampling (:func:`pyro_vae.log_likelihood`).

The columns ``family`` (the model) and ``inference`` (how it is fitted) separate two costs:
EM against ``gmm_svi`` is the same model fitted with exact against amortized, stochastic
inference (what inference costs); ``gmm_svi`` against the VAEs is the same kind of inference
on other models (what the model costs). ``vs_em`` is the held-out log-likelihood minus EM's.
"""

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from pyro_vae.ais import ais_log_likelihood
from pyro_vae.checks import check_choice, check_positive_int
from pyro_vae.data import SYNTHETIC, MixtureData, load_split
from pyro_vae.importance import log_likelihood
from pyro_vae.mixture import GaussianMixture, GaussianMixtureSVI
from pyro_vae.mixture_vae import MixtureVAE
from pyro_vae.training import fit
from pyro_vae.vae import VAE

__all__ = ["compare_vae_em", "run_comparison", "Comparison", "adjusted_rand_index", "COLUMNS"]

log = logging.getLogger(__name__)

COLUMNS = ["method", "heldout_log_likelihood", "heldout_log_likelihood_se", "heldout_log_likelihood_mc_se",
           "heldout_elbo", "gap", "gap_se", "fit_seconds", "iterations", "ari", "family", "inference", "vs_em"]

#: the model family and the inference of each method (columns ``family`` and ``inference``)
METHOD_KINDS = {"em": ("gaussian_mixture", "exact (EM)"), "gmm_svi": ("gaussian_mixture", "amortized (SVI)"),
                "vae_normal": ("vae", "amortized (SVI)"), "vae_mixture": ("vae", "amortized (SVI)"),
                "mixture_vae": ("mixture_vae", "amortized (SVI)"), "oracle": ("gaussian_mixture", "true parameters")}


@dataclass
class Comparison:
    """Everything a comparison produced.

    :ivar pandas.DataFrame table: one row per method (columns :data:`COLUMNS`).
    :ivar GaussianMixture em: the fitted mixture.
    :ivar dict vaes: method name -> trained :class:`~pyro_vae.VAE`.
    :ivar dict histories: method name -> training history (EM: iteration/log_likelihood;
        VAEs: epoch/train_elbo/val_elbo).
    :ivar torch.Tensor train_x: training data ``(N, d)``.
    :ivar torch.Tensor test_x: held-out data ``(M, d)``.
    :ivar MixtureData mixture: the generating mixture for synthetic data, else ``None``.
    :ivar GaussianMixtureSVI svi: the mixture fitted by SVI (row ``gmm_svi``), else ``None``.
    """

    table: pd.DataFrame
    em: GaussianMixture
    vaes: dict
    histories: dict
    train_x: torch.Tensor
    test_x: torch.Tensor
    test_labels: torch.Tensor = None
    mixture: MixtureData = None
    per_datapoint: dict = field(default_factory=dict)
    svi: GaussianMixtureSVI = None


def adjusted_rand_index(labels_true, labels_pred):
    """Adjusted Rand index of two labelings (Hubert & Arabie, 1985): 1 for identical partitions
    (up to renaming), about 0 for independent ones.

    :param labels_true: integer labels, shape ``(N,)``.
    :param labels_pred: integer labels, shape ``(N,)``.
    :returns: float.
    """
    a = np.asarray(torch.as_tensor(labels_true).cpu()).ravel()
    b = np.asarray(torch.as_tensor(labels_pred).cpu()).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length: {a.shape[0]} and {b.shape[0]}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)

    def pairs(v):
        v = v.astype(np.float64)
        return (v * (v - 1) / 2).sum()

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    total = a.shape[0] * (a.shape[0] - 1) / 2
    expected = rows * cols / total if total > 0 else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (one cluster, or all singletons)
        return 1.0
    return float((index - expected) / (maximum - expected))


def _mean_se(values):
    v = torch.as_tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else math.nan


def _prepare(data, labels, n_components, test_fraction, seed, n_samples, dim, separation):
    split = load_split(SYNTHETIC if data is None else data, labels=labels, test_fraction=test_fraction,
                       split_seed=seed, seed=seed, n_samples=n_samples, n_components=n_components,
                       dim=dim, separation=separation)
    return split.train_x, split.test_x, split.test_labels, split.mixture


def run_comparison(data=None, n_components=3, *, labels=None, covariance_type="full",
                   test_fraction=0.25, latent_dim=None, hidden=(64, 64), epochs=100,
                   batch_size=128, lr=3e-3, num_samples=1000, em_init="random_from_data",
                   em_max_iter=500, em_n_init=1, seed=0, n_samples=4000, dim=2, separation=4.0, device=None, num_threads=1,
                   quiet=True, svi_epochs=40, svi_batch_size=512, svi_lr=0.03, svi_objective="enum",
                   mixture_vae=True, log_px_method="is", ais_steps=100, ais_chains=16):
    """Fit EM, the same mixture by SVI and three VAEs on the same data and score them on the
    same held-out part.

    :param data: ``None`` (a synthetic mixture of ``n_components`` components in ``dim``
        dimensions, ``n_samples`` points), a :class:`~pyro_vae.data.MixtureData`, a tensor /
        array / DataFrame of shape ``(N, d)`` or a CSV file path.
    :param int n_components: K, the mixture's components and the VAE mixture prior's.
    :param labels: true component labels ``(N,)`` for the adjusted Rand index (taken from
        synthetic data automatically).
    :param str covariance_type: EM covariance type.
    :param float test_fraction: fraction held out for scoring.
    :param int latent_dim: VAE latent size (default: ``d``).
    :param tuple hidden: VAE hidden layers.
    :param int epochs: VAE training epochs.
    :param int num_samples: importance samples per held-out point for the VAEs.
    :param str em_init: EM initialization (see :class:`~pyro_vae.mixture.GaussianMixture`); the
        default, responsibilities from randomly chosen data points, leaves EM some iterations
        to show.
    :param int seed: seed of the data, split, initializations and samples.
    :param int num_threads: torch CPU threads while fitting and scoring (restored afterwards).
        The networks here are tiny, and one thread is fastest for them; ``None`` keeps the
        current setting.
    :param int svi_epochs: epochs of the ``gmm_svi`` row (``None``: leave the row out).
    :param int svi_batch_size: its minibatch size.
    :param float svi_lr: its learning rate.
    :param str svi_objective: its objective, ``"enum"`` or ``"tracegraph"``.
    :param bool mixture_vae: add the ``mixture_vae`` row (trained like the VAEs, ``enum``).
    :param str log_px_method: held-out log p(x) of the VAE rows by ``"is"`` (importance sampling
        with the encoder as proposal, ``num_samples`` samples) or ``"ais"``
        (:func:`pyro_vae.ais.ais_log_likelihood` from the encoder, ``ais_steps`` steps,
        ``ais_chains`` chains). The ``mixture_vae`` row, whose latent component is discrete, is
        always estimated by importance sampling. The ELBO column is importance sampling's in
        both cases.
    :param int ais_steps: AIS annealing steps (with ``log_px_method="ais"``).
    :param int ais_chains: AIS chains per point (with ``log_px_method="ais"``).
    :returns: :class:`Comparison`.
    """
    log_px_method = check_choice(log_px_method, "log_px_method", ("is", "ais"))
    ais = None
    if log_px_method == "ais":
        ais = {"num_steps": check_positive_int(ais_steps, "ais_steps"),
               "num_chains": check_positive_int(ais_chains, "ais_chains")}
    with _torch_threads(num_threads):
        comp = _run(data, n_components, labels, covariance_type, test_fraction, latent_dim, hidden,
                    epochs, batch_size, lr, num_samples, em_init, em_max_iter, em_n_init, seed,
                    n_samples, dim, separation, device, quiet,
                    {"epochs": svi_epochs, "batch_size": svi_batch_size, "lr": svi_lr,
                     "objective": svi_objective} if svi_epochs else None, mixture_vae, ais)
    t = comp.table
    t["family"] = [METHOD_KINDS[m][0] for m in t["method"]]
    t["inference"] = [METHOD_KINDS[m][1] for m in t["method"]]
    t["vs_em"] = t["heldout_log_likelihood"] - float(t.loc[t["method"] == "em", "heldout_log_likelihood"].iloc[0])
    return comp


@contextlib.contextmanager
def _torch_threads(num_threads):
    """Run with ``num_threads`` torch CPU threads, then restore the previous setting."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run(data, n_components, labels, covariance_type, test_fraction, latent_dim, hidden, epochs,
         batch_size, lr, num_samples, em_init, em_max_iter, em_n_init, seed, n_samples, dim,
         separation, device, quiet, svi=None, with_mixture_vae=True, ais=None):
    if not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    train_x, test_x, test_l, mixture = _prepare(data, labels, n_components, test_fraction, seed,
                                                n_samples, dim, separation)
    d = train_x.shape[1]
    latent_dim = latent_dim or d
    rows, histories, vaes, per_point = [], {}, {}, {}

    # --- EM: exact posterior, closed-form updates
    t0 = time.perf_counter()
    gm = GaussianMixture(n_components=n_components, covariance_type=covariance_type,
                         init_params=em_init, max_iter=em_max_iter, n_init=em_n_init,
                         random_state=seed).fit(train_x)
    em_seconds = time.perf_counter() - t0
    em_ll = torch.as_tensor(gm.score_samples(test_x), dtype=torch.float64)
    resp = torch.as_tensor(gm.predict_proba(test_x), dtype=torch.float64)
    em_elbo = float(torch.as_tensor(gm.elbo(test_x, resp)).double().mean())
    ll, ll_se = _mean_se(em_ll)
    rows.append({"method": "em", "heldout_log_likelihood": ll, "heldout_log_likelihood_se": ll_se,
                 "heldout_log_likelihood_mc_se": 0.0, "heldout_elbo": em_elbo, "gap": ll - em_elbo,
                 "gap_se": 0.0, "fit_seconds": em_seconds, "iterations": int(gm.n_iter_),
                 "ari": adjusted_rand_index(test_l, gm.predict(test_x)) if test_l is not None else math.nan})
    histories["em"] = gm.history_
    per_point["em"] = em_ll

    # --- the same mixture by SVI: amortized q(c|x), exact scores
    svi_model = None
    if svi is not None:
        svi_model, row, lp = _gmm_svi_row(train_x, test_x, test_l, n_components, covariance_type, svi, seed,
                                          quiet)
        rows.append(row)
        histories["gmm_svi"], per_point["gmm_svi"] = svi_model.history_, lp

    # --- VAEs: amortized approximate posterior, SVI
    specs = {"vae_normal": "normal", "vae_mixture": {"name": "mixture", "n_components": n_components}}
    if with_mixture_vae:
        specs["mixture_vae"] = None
    for i, (name, prior) in enumerate(specs.items()):
        objective = "trace"
        if name == "mixture_vae":
            vae, objective = _mixture_vae(d, latent_dim, n_components, hidden, seed + i), "enum"
        else:
            vae = VAE(d, latent_dim, hidden=hidden, prior=prior, likelihood="gaussian_feature", seed=seed + i)
        t0 = time.perf_counter()
        hist = fit(vae, train_x, epochs=epochs, batch_size=batch_size, lr=lr, val_data=test_x,
                   seed=seed + i, device=device, quiet=quiet, objective=objective)
        seconds = time.perf_counter() - t0
        est = log_likelihood(vae.model, vae.guide, test_x.to(vae.device), num_samples=num_samples,
                             seed=seed)
        mc_stderr = est.mc_stderr
        if ais is not None and name != "mixture_vae":
            est_ais = ais_log_likelihood(vae.model, vae.guide, test_x.to(vae.device), seed=seed, progress=not quiet,
                                         **ais)
            lp, mc_stderr = est_ais.per_datapoint.double().cpu(), est_ais.mc_stderr
        else:
            lp = est.per_datapoint.double().cpu()
        elbo = est.elbo.double().cpu()
        ll, ll_se = _mean_se(lp)
        gap, gap_se = _mean_se(lp - elbo)
        ari = math.nan
        if test_l is not None and name == "vae_mixture":
            ari = adjusted_rand_index(test_l, _mixture_prior_assignments(vae, test_x))
        if test_l is not None and name == "mixture_vae":
            ari = adjusted_rand_index(test_l, vae.predict(test_x.to(vae.device)).cpu())
        rows.append({"method": name, "heldout_log_likelihood": ll, "heldout_log_likelihood_se": ll_se,
                     "heldout_log_likelihood_mc_se": float(mc_stderr.double().pow(2).mean().sqrt()
                                                           / math.sqrt(lp.numel())),
                     "heldout_elbo": float(elbo.mean()), "gap": gap, "gap_se": gap_se,
                     "fit_seconds": seconds, "iterations": int(len(hist)), "ari": ari})
        histories[name], vaes[name], per_point[name] = hist, vae, lp

    # --- oracle: the generating mixture
    if mixture is not None:
        lp = mixture.log_prob(test_x.double()).double().cpu()
        ll, ll_se = _mean_se(lp)
        rows.append({"method": "oracle", "heldout_log_likelihood": ll, "heldout_log_likelihood_se": ll_se,
                     "heldout_log_likelihood_mc_se": 0.0, "heldout_elbo": ll, "gap": 0.0, "gap_se": 0.0,
                     "fit_seconds": 0.0, "iterations": 0,
                     "ari": adjusted_rand_index(test_l, _oracle_assignments(mixture, test_x))
                     if test_l is not None else math.nan})
        per_point["oracle"] = lp
    table = pd.DataFrame(rows, columns=COLUMNS)
    return Comparison(table=table, em=gm, vaes=vaes, histories=histories, train_x=train_x, test_x=test_x,
                      test_labels=test_l, mixture=mixture, per_datapoint=per_point, svi=svi_model)


def _mixture_vae(d, latent_dim, n_components, hidden, seed):
    """The ``mixture_vae`` row's model, its param-store entries cleared (a new module)."""
    model = MixtureVAE(d, latent_dim, n_components, hidden=hidden, likelihood="gaussian_feature", seed=seed)
    model.unregister()
    return model


def _gmm_svi_row(train_x, test_x, test_l, n_components, covariance_type, svi, seed, quiet):
    """Fit the ``gmm_svi`` row: the EM model family (``tied`` as full, ``spherical`` as diag)
    by SVI; its log-likelihood, ELBO and gap are exact."""
    cov = "full" if covariance_type in ("full", "tied") else "diag"
    t0 = time.perf_counter()
    model = GaussianMixtureSVI(n_components, covariance_type=cov, epochs=svi["epochs"],
                               batch_size=svi["batch_size"], lr=svi["lr"], objective=svi["objective"],
                               seed=seed).fit(train_x, val_data=test_x, quiet=quiet)
    seconds = time.perf_counter() - t0
    lp = model.score_samples(test_x).double().cpu()
    gap = model.gap(test_x).double().cpu()
    ll, ll_se = _mean_se(lp)
    gap_mean, gap_se = _mean_se(gap)
    row = {"method": "gmm_svi", "heldout_log_likelihood": ll, "heldout_log_likelihood_se": ll_se,
           "heldout_log_likelihood_mc_se": 0.0, "heldout_elbo": float(model.elbo(test_x).double().mean()),
           "gap": gap_mean, "gap_se": gap_se, "fit_seconds": seconds, "iterations": int(len(model.history_)),
           "ari": adjusted_rand_index(test_l, model.predict(test_x).cpu()) if test_l is not None else math.nan}
    return model, row, lp


def compare_vae_em(data=None, n_components=3, **kwargs):
    """Fit EM and VAEs on mixture data; one row per method. See :func:`run_comparison`.

    :returns: :class:`pandas.DataFrame` with columns :data:`COLUMNS`: held-out log-likelihood per
        datapoint (exact for mixtures, importance-sampled for VAEs) with its standard error over
        held-out points (``_se``) and Monte Carlo standard error (``_mc_se``), held-out ELBO, gap
        (log p - ELBO) with standard error, fit seconds, iterations (EM) or epochs (VAE), and the
        adjusted Rand index against the true labels where they exist.
    """
    return run_comparison(data, n_components, **kwargs).table


@torch.no_grad()
def _mixture_prior_assignments(vae, x):
    """Component of the mixture prior most responsible for the encoder mean of each point."""
    loc, _ = vae.encode(x.to(vae.device))
    prior = vae.prior()
    comp = prior.component_distribution  # batch (K,), event (L,)
    logits = prior.mixture_distribution.logits
    return (comp.log_prob(loc.unsqueeze(-2)) + logits).argmax(-1).cpu()


@torch.no_grad()
def _oracle_assignments(mixture, x):
    dist = mixture.distribution()
    comp = dist.component_distribution
    logits = dist.mixture_distribution.logits
    return (comp.log_prob(x.double().unsqueeze(-2)) + logits).argmax(-1)


def save_comparison(comparison, out_dir):
    """Write ``comparison.csv`` and the figures of a comparison into ``out_dir``.

    Figures: ``mixture_fit.png`` (data with EM component ellipses; 2-D data only),
    ``vae_samples.png`` (samples of each VAE against the held-out data; first two coordinates),
    ``heldout_log_likelihood.png`` (per method with error bars), ``costs.png`` (what inference
    costs: EM against ``gmm_svi``, the same model; what the model costs: ``gmm_svi`` against the
    VAEs; when the ``gmm_svi`` row is there), ``training.png`` (EM log-likelihood per
    iteration, ELBO per epoch of the SVI fits).

    :returns: list of the paths written.
    """
    import os

    import matplotlib.pyplot as plt

    from pyro_vae import plots, storage

    os.makedirs(out_dir, exist_ok=True)
    written = []

    def out(name):
        path = os.path.join(out_dir, name)
        written.append(path)
        return path

    storage.write_csv(out("comparison.csv"), comparison.table)
    if comparison.test_x.shape[1] == 2:
        storage.save_figure(plots.plot_mixture_2d(comparison.train_x, comparison.em),
                            out("mixture_fit.png"))
    if comparison.test_x.shape[1] >= 2 and comparison.vaes:
        fig, axes = plt.subplots(1, len(comparison.vaes), figsize=(5 * len(comparison.vaes), 5), squeeze=False)
        for ax, (name, vae) in zip(axes[0], comparison.vaes.items()):
            samples = vae.sample(comparison.test_x.shape[0], seed=0, mean=False)
            plots.plot_samples_2d(comparison.test_x, samples, ax=ax, title=f"{name}: samples vs held-out data")
        storage.save_figure(fig, out("vae_samples.png"))
    storage.save_figure(plots.plot_method_comparison(comparison.table), out("heldout_log_likelihood.png"))
    if "family" in comparison.table and (comparison.table["method"] == "gmm_svi").any():
        storage.save_figure(plots.plot_inference_and_model_costs(comparison.table), out("costs.png"))
    storage.save_figure(plots.plot_training_curves(comparison.histories), out("training.png"))
    return written


def format_table(table):
    """The comparison table as aligned text for a terminal."""
    show = table.copy()
    show["heldout_log_likelihood"] = [
        f"{v:.4f} ± {s:.4f}" for v, s in zip(table["heldout_log_likelihood"], table["heldout_log_likelihood_se"])]
    show["gap"] = [f"{g:.4f} ± {s:.4f}" for g, s in zip(table["gap"], table["gap_se"])]
    show = show.drop(columns=["heldout_log_likelihood_se", "gap_se", "heldout_log_likelihood_mc_se"])
    return show.to_string(index=False, float_format=lambda v: f"{v:.4f}")
