"""The inference gap of a VAE split into approximation and amortization gaps.

Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders". For each
datapoint x,

    log p(x) - ELBO[q]  =  (log p(x) - ELBO[q*])  +  (ELBO[q*] - ELBO[q])
     inference gap         approximation gap        amortization gap

where q(z|x) is the amortized encoder and q*(z|x) is the best member *of the same family* for
that datapoint alone, found by optimizing parameters of its own with the decoder frozen. The
approximation gap is what a better variational family could recover; the amortization gap is
what a better encoder could recover.

The per-datapoint family of each guide (:meth:`pyro_vae.guides.Guide.local_posterior`; the
amortized q(z|x_i) is a member of it, and q* starts there):

* diagonal: ``Normal(loc_i, scale_i)`` -- a mean and a scale per datapoint;
* full: ``MultivariateNormal(loc_i, scale_tril_i)`` -- a mean, a positive diagonal and a free
  strictly lower triangle per datapoint;
* IAF: the base ``Normal(loc_i, scale_i)``, the context ``h_i`` and *all the weights of all
  the flows* per datapoint: an IAF of the same architecture for each datapoint alone
  (:class:`pyro_vae.guides.PerDatapointIAF`). Memory grows with ``data_batch_size`` times the
  flow's weights (and their Adam moments).

How each term is estimated (all per datapoint, with ``num_samples`` samples each):

* ELBO[q] and ELBO[q*]: Monte Carlo averages of log p(x, z) - log q(z|x), z ~ q, with the same
  random numbers for both (so their difference, the amortization gap, has less noise; with
  ``steps=0`` q* is q and the two are equal).
* log p(x): :func:`estimate_log_px`, importance sampling with the *defensive mixture*
  (q + q*) / 2 as proposal. Its weights are at most twice those of either proposal alone, so
  it is never much worse than the better of the two: q* is usually the tighter fit, but being
  a reverse-KL fit it can be narrower than the posterior, where the encoder's q may be wider
  and safer.
"""

import math

import pandas as pd
import torch
from torch.distributions import constraints

import pyro
from pyro.distributions.torch_distribution import TorchDistribution

from pyro_vae.distributions import NoiseSpec, NormalEvent, noise_spec, sample_from_noise
from pyro_vae.ais import ais_log_likelihood
from pyro_vae.checks import (as_data_tensor, check_choice, check_int, check_positive_float, check_positive_int,
                             check_seed, fork_rng)
from pyro_vae.guides import LocalPosterior
from pyro_vae.importance import DATA_PLATE, log_likelihood, log_weights, param_store_guard

__all__ = ["inference_gaps", "summarize_gaps", "estimate_log_px", "DefensiveMixture", "GAP_COLUMNS"]

#: columns of the per-datapoint table returned by :func:`inference_gaps`
GAP_COLUMNS = ("log_px", "log_px_mc_stderr", "elbo_amortized", "elbo_optimized",
               "approximation_gap", "amortization_gap", "inference_gap")


def inference_gaps(vae, x, num_samples=1000, *, steps=500, lr=0.01, num_particles=8,
                   data_batch_size=500, particle_batch_size=None, seed=0, log_px_method="is",
                   ais_steps=1000, ais_chains=16):
    """Per-datapoint log p(x), ELBOs and the approximation / amortization gaps of a VAE.

    q*(z|x_i) is a member of the guide's family with parameters of its own per datapoint
    (see the module documentation), initialised at the encoder's q(z|x_i) and optimized by
    Adam (cosine-decayed learning rate) on the reparameterized ELBO with ``num_particles``
    samples per step. The model's parameters are neither changed nor given gradients, Pyro's
    param store is left as it was, and the VAE's train/eval mode is restored afterwards (it is
    evaluated in eval mode).

    Works for a :class:`pyro_vae.VAE` with any guide family (``posterior(x)`` and
    ``local_posterior(x)``; a guide module of the user's needs a ``local_posterior`` method
    of its own), and for any object with ``model(x)``, ``guide(x)``,
    ``encode(x) -> (loc, scale)`` and a latent site ``"z"`` of event shape ``(L,)`` inside
    ``pyro.plate("data")`` at dim -1 (the only plate), whose ``guide`` is the diagonal Gaussian
    ``Normal(*encode(x))``. All ELBOs are plain ELBOs: a KL weight (``beta``) of the VAE is
    ignored.

    With ``log_px_method="ais"``, log p(x) is the larger of the importance-sampling estimate
    above and an annealed-importance-sampling estimate
    (:func:`pyro_vae.ais.ais_log_likelihood` from the amortized guide, ``ais_steps`` steps,
    ``ais_chains`` chains), per datapoint, as Cremer et al. (2018) do: both are stochastic lower
    bounds, and the larger is the tighter. The table then also has the columns ``log_px_is``
    and ``log_px_ais``.

    Random numbers: each data batch draws four seeds from a generator seeded with ``seed``:
    one for the optimization, one for ELBO[q] and ELBO[q*] (the same for both), one for
    log p(x) by importance sampling and one for AIS. The global RNG state is left as it was.

    :param vae: the trained model.
    :param torch.Tensor x: data, shape ``(N, D)``.
    :param int num_samples: samples per datapoint for each of log p(x), ELBO[q], ELBO[q*].
    :param int steps: Adam steps of the per-datapoint optimization (0: q* = q).
    :param float lr: initial Adam learning rate.
    :param int num_particles: samples per datapoint in each optimization step.
    :param int data_batch_size: datapoints optimized and evaluated together.
    :param int particle_batch_size: particles per pass when evaluating (see
        :func:`~pyro_vae.importance.log_likelihood`).
    :param int seed: seed of all random draws.
    :param str log_px_method: ``"is"`` (importance sampling with the defensive mixture) or
        ``"ais"`` (the larger of that and AIS).
    :param int ais_steps: annealing steps of AIS (with ``log_px_method="ais"``).
    :param int ais_chains: AIS chains per datapoint (with ``log_px_method="ais"``).
    :returns: :class:`pandas.DataFrame` with one row per datapoint and columns
        ``log_px``, ``log_px_mc_stderr``, ``elbo_amortized`` (ELBO[q]), ``elbo_optimized``
        (ELBO[q*]), ``approximation_gap`` (log_px - elbo_optimized), ``amortization_gap``
        (elbo_optimized - elbo_amortized) and ``inference_gap`` (log_px - elbo_amortized), in
        nats. ``df.attrs["summary"]`` holds ``{column: {"mean": m, "stderr": s}}`` as from
        :func:`summarize_gaps`.
    """
    for attr in ("model", "guide"):
        if not callable(getattr(vae, attr, None)):
            raise TypeError(f"vae must have callable model and guide methods, and local_posterior or encode "
                            f"(like pyro_vae.VAE); {type(vae).__name__} has no {attr}()")
    family = callable(getattr(vae, "local_posterior", None)) and callable(getattr(vae, "posterior", None))
    if not family and not callable(getattr(vae, "encode", None)):
        raise TypeError(f"vae must have posterior and local_posterior methods (like pyro_vae.VAE) or an "
                        f"encode(x) -> (loc, scale) method for a diagonal Gaussian guide; "
                        f"{type(vae).__name__} has neither")
    x = as_data_tensor(x, "x", dim=2)
    num_samples = check_positive_int(num_samples, "num_samples")
    steps = check_int(steps, "steps", minimum=0)
    num_particles = check_positive_int(num_particles, "num_particles")
    data_batch_size = check_positive_int(data_batch_size, "data_batch_size")
    lr = check_positive_float(lr, "lr")
    seed = check_seed(seed, allow_none=False)
    if particle_batch_size is not None:
        particle_batch_size = check_positive_int(particle_batch_size, "particle_batch_size")
    log_px_method = check_choice(log_px_method, "log_px_method", ("is", "ais"))
    if log_px_method == "ais":
        ais_steps = check_positive_int(ais_steps, "ais_steps")
        ais_chains = check_positive_int(ais_chains, "ais_chains")

    was_training = getattr(vae, "training", None)
    if was_training:
        vae.eval()
    seeds = torch.Generator().manual_seed(seed)
    extra = ("log_px_is", "log_px_ais") if log_px_method == "ais" else ()
    columns = {c: [] for c in GAP_COLUMNS + extra}
    try:
        with param_store_guard():
            for start in range(0, x.shape[0], data_batch_size):
                xb = x[start:start + data_batch_size]
                seed_opt, seed_elbo, seed_log_px, seed_ais = torch.randint(
                    0, 2 ** 62, (4,), generator=seeds).tolist()
                amortized, local = _amortized_and_local(vae, xb, family)
                with fork_rng(seed_opt, x.device):
                    _optimize_local(vae.model, xb, local, steps, lr, num_particles)
                for p in local.params.values():
                    p.requires_grad_(False)
                kw = dict(particle_batch_size=particle_batch_size, data_batch_size=xb.shape[0], seed=seed_elbo)
                elbo_q = log_likelihood(vae.model, vae.guide, xb, num_samples, **kw).elbo
                elbo_q_star = log_likelihood(vae.model, _LocalGuide(local), xb, num_samples, **kw).elbo
                with torch.no_grad():
                    optimized = local.distribution()
                estimate = estimate_log_px(vae.model, xb, amortized, optimized, num_samples,
                                           particle_batch_size=particle_batch_size, seed=seed_log_px)
                log_px, mc_stderr = estimate.per_datapoint, estimate.mc_stderr
                if log_px_method == "ais":
                    ais = ais_log_likelihood(vae.model, vae.guide, xb, ais_steps, ais_chains,
                                             data_batch_size=xb.shape[0], seed=seed_ais, progress=False)
                    columns["log_px_is"].append(log_px)
                    columns["log_px_ais"].append(ais.per_datapoint)
                    use_ais = ais.per_datapoint > log_px
                    log_px = torch.where(use_ais, ais.per_datapoint, log_px)
                    mc_stderr = torch.where(use_ais, ais.mc_stderr, mc_stderr)
                columns["log_px"].append(log_px)
                columns["log_px_mc_stderr"].append(mc_stderr)
                columns["elbo_amortized"].append(elbo_q)
                columns["elbo_optimized"].append(elbo_q_star)
                columns["approximation_gap"].append(log_px - elbo_q_star)
                columns["amortization_gap"].append(elbo_q_star - elbo_q)
                columns["inference_gap"].append(log_px - elbo_q)
    finally:
        if was_training:
            vae.train()
    df = pd.DataFrame({c: torch.cat(v).detach().cpu().double().numpy() for c, v in columns.items()})
    summary = summarize_gaps(df)
    df.attrs["summary"] = {name: {"mean": float(row["mean"]), "stderr": float(row["stderr"])}
                           for name, row in summary.iterrows()}
    return df


def estimate_log_px(model, x, amortized, optimized, num_samples, *, particle_batch_size=None, seed=None):
    """log p(x_i) per datapoint by importance sampling with the defensive mixture
    (q + q*) / 2 as proposal (:class:`DefensiveMixture`).

    This is the log p(x) step of :func:`inference_gaps`.

    :param callable model: Pyro model ``model(x)`` with its latent site ``"z"`` inside
        ``pyro.plate("data")``.
    :param torch.Tensor x: data, shape ``(N, D)``.
    :param amortized: q(z|x), a distribution with batch shape ``(N,)`` and event shape ``(L,)``.
    :param optimized: q*(z|x), the same shapes.
    :param int num_samples: importance samples per datapoint.
    :param int particle_batch_size: particles per vectorized pass.
    :param int seed: seed of the draws (default: the global RNG).
    :returns: :class:`pyro_vae.importance.ImportanceEstimate`.
    """
    proposal = _DistributionGuide(DefensiveMixture(amortized, optimized))
    return log_likelihood(model, proposal, x, num_samples, particle_batch_size=particle_batch_size,
                          data_batch_size=x.shape[0], seed=seed)


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


# --------------------------------------------------------------------------- the mixture proposal
class DefensiveMixture(TorchDistribution):
    """The equal mixture (a + b) / 2 of two distributions over vectors of any families.

    Sampling picks a component with probability 1/2 for every draw (both are sampled, one is
    kept); ``log_prob`` is ``logaddexp(a.log_prob, b.log_prob) - log 2``. Not reparameterized.

    :param a: a distribution with batch shape ``B`` and event shape ``(L,)``.
    :param b: a distribution with the same shapes.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, a, b, validate_args=None):
        if a.batch_shape != b.batch_shape or a.event_shape != b.event_shape:
            raise ValueError(f"the two components must have the same shapes; got batch {tuple(a.batch_shape)} "
                             f"and {tuple(b.batch_shape)}, event {tuple(a.event_shape)} and {tuple(b.event_shape)}")
        self.a, self.b = a, b
        super().__init__(a.batch_shape, a.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.a.expand(batch_shape), self.b.expand(batch_shape))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            za, zb = self.a.sample(sample_shape), self.b.sample(sample_shape)
            pick = torch.rand(za.shape[:-1], device=za.device) < 0.5
            return torch.where(pick.unsqueeze(-1), za, zb)

    def noise_spec(self):
        """Noise of one draw (see :func:`pyro_vae.distributions.noise_spec`): one number that
        picks the component, then the noise of ``a`` and of ``b``, flattened; ``None`` when a
        component has no noise-based sampler."""
        specs = noise_spec(self.a), noise_spec(self.b)
        if None in specs:
            return None
        sizes = [self._event_size(spec, c) for spec, c in zip(specs, (self.a, self.b))]
        return NoiseSpec(self.batch_shape + (1 + sum(sizes),), specs[0].dtype, specs[0].device)

    def from_noise(self, noise):
        """The draw made from standard-normal ``noise`` of the shape :meth:`noise_spec` gives."""
        parts, start = [], 1
        for c in (self.a, self.b):
            spec = noise_spec(c)
            size = self._event_size(spec, c)
            event = spec.shape[len(c.batch_shape):]
            parts.append(sample_from_noise(c, noise[..., start:start + size].reshape(noise.shape[:-1] + event)))
            start += size
        pick = torch.special.ndtr(noise[..., 0]) < 0.5
        return torch.where(pick.unsqueeze(-1), parts[0], parts[1]).detach()

    @staticmethod
    def _event_size(spec, component):
        return spec.shape[len(component.batch_shape):].numel()

    def log_prob(self, value):
        return torch.logaddexp(self.a.log_prob(value), self.b.log_prob(value)) - math.log(2.0)


# --------------------------------------------------------------------------- internals
class _DistributionGuide:
    """A guide sampling ``"z"`` from a fixed distribution with batch shape ``(N,)``."""

    def __init__(self, distribution):
        self.distribution = distribution

    def __call__(self, x, *args, **kwargs):
        n = self.distribution.batch_shape[-1]
        if x.shape[0] != n:
            raise ValueError(f"this guide holds a distribution for {n} datapoints, got {x.shape[0]}")
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("z", self.distribution)


class _LocalGuide:
    """A guide sampling ``"z"`` from a :class:`LocalPosterior` at its current parameters."""

    def __init__(self, local):
        self.local = local

    def __call__(self, x, *args, **kwargs):
        if x.shape[0] != self.local.num_datapoints:
            raise ValueError(f"this guide holds parameters for {self.local.num_datapoints} datapoints, "
                             f"got {x.shape[0]}")
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("z", self.local.distribution())


def _amortized_and_local(vae, x, family):
    """q(z|x) as a distribution and its per-datapoint family, initialised at q."""
    with torch.no_grad():
        if family:
            amortized = vae.posterior(x)
            local = vae.local_posterior(x)
        else:
            loc, scale = vae.encode(x)
            amortized = NormalEvent(loc, scale)
            local = None
    if local is None:
        local = LocalPosterior(
            {"loc": loc.detach().clone().requires_grad_(True),
             "log_scale_shift": torch.zeros_like(scale).requires_grad_(True)},
            lambda p: NormalEvent(p["loc"], scale * p["log_scale_shift"].exp()))
    if not isinstance(local, LocalPosterior) or local.num_datapoints != x.shape[0]:
        raise TypeError(f"local_posterior(x) must return a pyro_vae.guides.LocalPosterior over the "
                        f"{x.shape[0]} datapoints of x")
    return amortized, local


def _optimize_local(model, x, local, steps, lr, num_particles):
    """Maximize each datapoint's ELBO over its own member of the family (in place)."""
    if steps == 0:
        return
    params = list(local.params.values())
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    guide = _LocalGuide(local)
    for _ in range(steps):
        logw = log_weights(model, guide, x, num_particles)  # (P, N)
        # the datapoints' parameters are independent: the sum gives each its own ELBO gradient
        loss = -logw.mean(0).sum()
        # gradients for q*'s parameters only: the model's parameters get none
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        schedule.step()
