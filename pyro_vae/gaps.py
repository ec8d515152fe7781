"""The inference gap of a VAE split into approximation and amortization gaps.

Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders". For each
datapoint x,

    log p(x) - ELBO[q]  =  (log p(x) - ELBO[q*])  +  (ELBO[q*] - ELBO[q])
     inference gap         approximation gap        amortization gap

where q(z|x) is the amortized encoder and q*(z|x) is the best Gaussian of the same family
(diagonal Normal) for that datapoint alone, found by optimizing its own mean and log-scale
with the decoder frozen. The approximation gap is what a better variational family could
recover; the amortization gap is what a better encoder could recover.

How each term is estimated (all per datapoint, with ``num_samples`` samples each):

* ELBO[q] and ELBO[q*]: Monte Carlo averages of log p(x, z) - log q(z|x), z ~ q.
* log p(x): importance sampling (:func:`pyro_vae.importance.log_likelihood`) with the
  *defensive mixture* (q + q*) / 2 as proposal. Its weights are at most twice those of either
  proposal alone, so it is never much worse than the better of the two: q* is usually the
  tighter fit, but being a reverse-KL fit it can be narrower than the posterior, where the
  encoder's q may be wider and safer.
"""

import math

import pandas as pd
import torch

import pyro
import pyro.distributions as dist

from pyro_vae.distributions import NormalEvent
from pyro_vae.checks import as_data_tensor, check_positive_int, check_seed, fork_rng
from pyro_vae.importance import DATA_PLATE, log_likelihood, log_weights, param_store_guard

__all__ = ["inference_gaps", "summarize_gaps", "GAP_COLUMNS"]

#: columns of the per-datapoint table returned by :func:`inference_gaps`
GAP_COLUMNS = ("log_px", "log_px_mc_stderr", "elbo_amortized", "elbo_optimized",
               "approximation_gap", "amortization_gap", "inference_gap")


def inference_gaps(vae, x, num_samples=1000, *, steps=500, lr=0.01, num_particles=8,
                   data_batch_size=500, particle_batch_size=None, seed=0):
    """Per-datapoint log p(x), ELBOs and the approximation / amortization gaps of a VAE.

    q*(z|x_i) = Normal(loc_i, exp(log_scale_i)) has its own parameters of shape ``(N, L)`` per
    datapoint, initialised at the encoder's output and optimized by Adam (cosine-decayed
    learning rate) on the reparameterized ELBO with ``num_particles`` samples per step. The
    model's parameters are neither changed nor given gradients, Pyro's param store is left as
    it was, and the VAE's train/eval mode is restored afterwards (it is evaluated in eval mode).

    Works for any object with ``model(x)``, ``guide(x)``, ``encode(x) -> (loc, scale)`` and a
    latent site ``"z"`` of event shape ``(L,)`` inside ``pyro.plate("data")`` at dim -1 (the
    only plate), such as :class:`pyro_vae.VAE`; ``guide`` should be the diagonal Gaussian
    ``Normal(*encode(x))``, which also enters the mixture proposal of log p(x). All ELBOs are
    plain ELBOs: a KL weight (``beta``) of the VAE is ignored.

    :param vae: the trained model.
    :param torch.Tensor x: data, shape ``(N, D)``.
    :param int num_samples: samples per datapoint for each of log p(x), ELBO[q], ELBO[q*].
    :param int steps: Adam steps of the per-datapoint optimization.
    :param float lr: initial Adam learning rate.
    :param int num_particles: samples per datapoint in each optimization step.
    :param int data_batch_size: datapoints optimized and evaluated together.
    :param int particle_batch_size: particles per pass when evaluating (see
        :func:`~pyro_vae.importance.log_likelihood`).
    :param int seed: seed of all random draws; the global RNG state is restored afterwards.
    :returns: :class:`pandas.DataFrame` with one row per datapoint and columns
        ``log_px``, ``log_px_mc_stderr``, ``elbo_amortized`` (ELBO[q]), ``elbo_optimized``
        (ELBO[q*]), ``approximation_gap`` (log_px - elbo_optimized), ``amortization_gap``
        (elbo_optimized - elbo_amortized) and ``inference_gap`` (log_px - elbo_amortized), in
        nats. ``df.attrs["summary"]`` holds ``{column: {"mean": m, "stderr": s}}`` as from
        :func:`summarize_gaps`.
    """
    for attr in ("model", "guide", "encode"):
        if not callable(getattr(vae, attr, None)):
            raise TypeError(f"vae must have callable model, guide and encode methods (like pyro_vae.VAE); "
                            f"{type(vae).__name__} has no {attr}()")
    x = as_data_tensor(x, "x", dim=2)
    num_samples = check_positive_int(num_samples, "num_samples")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    num_particles = check_positive_int(num_particles, "num_particles")
    data_batch_size = check_positive_int(data_batch_size, "data_batch_size")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    seed = check_seed(seed, allow_none=False)

    was_training = getattr(vae, "training", None)
    if was_training:
        vae.eval()
    columns = {c: [] for c in GAP_COLUMNS}
    try:
        with param_store_guard(), fork_rng(seed, x.device):
            for start in range(0, x.shape[0], data_batch_size):
                xb = x[start:start + data_batch_size]
                with torch.no_grad():
                    loc_q, scale_q = vae.encode(xb)
                loc, scale = _optimize_local_gaussian(vae.model, xb, loc_q, scale_q, steps, lr,
                                                      num_particles)
                kw = dict(particle_batch_size=particle_batch_size, data_batch_size=xb.shape[0])
                amortized = log_likelihood(vae.model, vae.guide, xb, num_samples, **kw)
                optimized = log_likelihood(vae.model, _LocalGaussian(loc, scale), xb, num_samples, **kw)
                mixture = log_likelihood(vae.model, _DefensiveMixture(loc_q, scale_q, loc, scale), xb,
                                         num_samples, **kw)
                log_px = mixture.per_datapoint
                columns["log_px"].append(log_px)
                columns["log_px_mc_stderr"].append(mixture.mc_stderr)
                columns["elbo_amortized"].append(amortized.elbo)
                columns["elbo_optimized"].append(optimized.elbo)
                columns["approximation_gap"].append(log_px - optimized.elbo)
                columns["amortization_gap"].append(optimized.elbo - amortized.elbo)
                columns["inference_gap"].append(log_px - amortized.elbo)
    finally:
        if was_training:
            vae.train()
    df = pd.DataFrame({c: torch.cat(v).detach().cpu().double().numpy() for c, v in columns.items()})
    summary = summarize_gaps(df)
    df.attrs["summary"] = {name: {"mean": float(row["mean"]), "stderr": float(row["stderr"])}
                           for name, row in summary.iterrows()}
    return df


def summarize_gaps(df):
    """Means over datapoints with standard errors.

    :param pandas.DataFrame df: the table from :func:`inference_gaps`.
    :returns: :class:`pandas.DataFrame` indexed by ``log_px``, ``elbo_amortized``,
        ``elbo_optimized``, ``approximation_gap``, ``amortization_gap``, ``inference_gap``, with
        columns ``mean``, ``stderr`` (sample standard deviation over datapoints, ddof=1, divided
        by sqrt(N); NaN when N = 1) and ``n``.
    """
    names = [c for c in GAP_COLUMNS if c != "log_px_mc_stderr"]
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks the columns {missing}; pass the table returned by inference_gaps")
    n = len(df)
    rows = {c: {"mean": float(df[c].mean()),
                "stderr": float(df[c].std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
                "n": n} for c in names}
    return pd.DataFrame.from_dict(rows, orient="index")[["mean", "stderr", "n"]]


# --------------------------------------------------------------------------- internals
class _LocalGaussian:
    """A guide with its own diagonal Gaussian for every datapoint: z_i ~ Normal(loc_i, scale_i)."""

    def __init__(self, loc, scale):
        self.loc, self.scale = loc, scale

    def __call__(self, x, *args, **kwargs):
        if x.shape[0] != self.loc.shape[0]:
            raise ValueError(f"this guide holds parameters for {self.loc.shape[0]} datapoints, "
                             f"got {x.shape[0]}")
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("z", NormalEvent(self.loc, self.scale))


class _DefensiveMixture:
    """Proposal (q + q*) / 2 for every datapoint, both diagonal Gaussians."""

    def __init__(self, loc_q, scale_q, loc_star, scale_star):
        self.loc = torch.stack([loc_q, loc_star], -2)        # (N, 2, L)
        self.scale = torch.stack([scale_q, scale_star], -2)  # (N, 2, L)

    def __call__(self, x, *args, **kwargs):
        n = self.loc.shape[0]
        mix = dist.Categorical(logits=torch.zeros(n, 2, dtype=self.loc.dtype, device=self.loc.device))
        components = NormalEvent(self.loc, self.scale)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("z", dist.MixtureSameFamily(mix, components))


def _optimize_local_gaussian(model, x, loc_init, scale_init, steps, lr, num_particles):
    """Maximize each datapoint's ELBO over its own Gaussian; returns detached (loc, scale)."""
    loc = loc_init.detach().clone().requires_grad_(True)
    log_scale = scale_init.detach().log().clone().requires_grad_(True)
    if steps == 0:
        return loc.detach(), log_scale.detach().exp()
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in range(steps):
        guide = _LocalGaussian(loc, log_scale.exp())
        logw = log_weights(model, guide, x, num_particles)  # (P, N)
        # the datapoints' parameters are independent: the sum gives each its own ELBO gradient
        loss = -logw.mean(0).sum()
        # gradients for q*'s parameters only: the model's parameters get none
        grad_loc, grad_log_scale = torch.autograd.grad(loss, [loc, log_scale])
        loc.grad, log_scale.grad = grad_loc, grad_log_scale
        optimizer.step()
        schedule.step()
    return loc.detach(), log_scale.detach().exp()
