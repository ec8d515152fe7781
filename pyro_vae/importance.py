"""log p(x) by importance sampling, one estimate per datapoint, for any Pyro model/guide pair.

With the guide q(z|x) as proposal and K samples z_1..z_K ~ q(z|x_i),

    w_ik = p(x_i, z_ik) / q(z_ik | x_i),        log p^(x_i) = logsumexp_k log w_ik - log K.

:func:`log_likelihood` draws the particles in a vectorized outer plate (one forward pass of
guide and model for many particles and datapoints), reduces every site's log-probability to
the ``"data"`` plate, so that there is one weight per particle *per datapoint*, and chunks over
particles and data so that memory stays bounded for large K. Pyro's own
:class:`pyro.infer.Importance` and :func:`pyro.infer.importance.vectorized_importance_weights`
sum the log-weights over the whole batch instead (one weight per particle for all datapoints
jointly), which for a batch of many datapoints is a much looser estimate.

:func:`log_weights` returns the ``(K, N)`` matrix of per-datapoint log-weights with gradients
(reparameterized samples), the building block of the importance-weighted (IWAE) bound
``mean_i [logsumexp_k log w_ik - log K]`` used for training.

Requirements on the model and guide:

* they take the data as first positional argument, ``model(x, *model_args, **model_kwargs)``,
  with datapoints along dimension 0 of ``x``;
* every sample site (latent or observed) lies inside ``pyro.plate("data", len(x))``, and the
  plate is not subsampled; the plate sits at some dim ``-d`` with ``d <= max_plate_nesting``.
  Dimensions to the right of the data dimension (nested plates, e.g. pixels) are summed;
* every latent site of the model is sampled by the guide; the guide's other sites are
  auxiliary (``infer={"is_auxiliary": True}``, as in Pyro's autoguides): they enter log q and
  need not be sites of the model. Discrete latent sites are fine (only log-probabilities of
  sampled values are needed);
* the programs can be vectorized: they must work when run inside an extra plate of K
  particles at dim ``-(max_plate_nesting + 1)``.

Log-probabilities are computed *unscaled*, ``site["fn"].log_prob(site["value"])``: scales from
``num_data`` subsampling or from ``poutine.scale`` (a KL weight beta) are ignored, masks from
``poutine.mask`` are applied.

Autoguides and guides with one parameter row per datapoint
----------------------------------------------------------
Pyro's :class:`~pyro.infer.autoguide.AutoNormal` samples an auxiliary site per latent site
inside the data plate and gives the model's site as a ``Delta`` whose ``log_density`` is the
log-Jacobian of the transform to the site's support; both enter log q, so log q is the density
of the model's latent value. :class:`~pyro.infer.autoguide.AutoDiagonalNormal`,
``AutoMultivariateNormal`` and ``AutoLowRankMultivariateNormal`` sample one auxiliary vector
for all datapoints jointly, outside the data plate; the density of datapoint i's latents is
then the *marginal* of that Gaussian over datapoint i's coordinates (which coordinates those
are is read off the guide by running it once on a known vector). The marginals make the
per-datapoint estimate exact where the guide is the exact posterior, whatever the
correlations the guide puts between datapoints.

Such guides hold one parameter row per datapoint: they score exactly the datapoints they were
fitted on, all at once. :func:`log_likelihood` detects them (a data plate of another size than
the rows passed) and then puts all datapoints in one data chunk, chunking the particles only;
an explicit smaller ``data_batch_size`` is refused with a message saying what to pass. An
autoguide that has never run is set up on all the data passed.

Random draws that do not depend on the chunking
-----------------------------------------------
:func:`log_likelihood` (and :func:`log_weights` given a seed) draws the guide's latent sites
under :class:`pyro_vae.noise.DatapointNoise`: the noise of datapoint i's particle k depends only
on (seed, i, site name, k), not on ``particle_batch_size`` or ``data_batch_size``, and the
per-datapoint log-weights are reduced once, over all K particles in order. So the same seed
gives the same estimates whatever the chunking (up to the last bits that the programs' own
batched arithmetic may round differently for another number of rows). Guide sites of families
with no sampler from standard noise (Gamma, Beta, Poisson...) are sampled by Pyro from torch's
global generator (seeded with ``seed``): their draws then depend on the chunk sizes, and a
warning names them.
"""

import contextlib
import ctypes
import itertools
import math
import sys
from dataclasses import dataclass

import torch
from torch.distributions import biject_to

import pyro
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.checks import (as_data_tensor, check_callable, check_int, check_positive_int,
                             check_program_args, check_seed, fork_rng)
from pyro_vae.distributions import gaussian_marginals
from pyro_vae.noise import DatapointNoise

__all__ = ["log_likelihood", "log_weights", "ImportanceEstimate", "program_dtype", "DATA_PLATE",
           "PARTICLE_PLATE", "plate_collision_error", "chunk_sizes", "infer_max_plate_nesting", "sample_sites", "site_log_prob",
           "param_store_guard"]

#: name of the plate of vectorized particles (chosen not to collide with a user's plates)
PARTICLE_PLATE = "_pyro_vae_particles"
#: name of the plate the datapoints live in
DATA_PLATE = "data"
#: default size of one vectorized pass: at most this many (particle, datapoint) pairs ...
_CHUNK_PAIRS = 2 ** 15
#: ... and at most this many numbers of data size (pairs x features)
_CHUNK_ELEMENTS = 2 ** 24


@dataclass
class ImportanceEstimate:
    """Per-datapoint importance-sampling estimates of log p(x), from :func:`log_likelihood`.

    :ivar torch.Tensor per_datapoint: log p^(x_i) = logsumexp_k log w_ik - log K, shape ``(N,)``.
    :ivar torch.Tensor elbo: (1/K) sum_k log w_ik, the Monte Carlo ELBO of each datapoint from the
        same samples, shape ``(N,)``. Always ``<= per_datapoint`` (Jensen's inequality).
    :ivar torch.Tensor ess: effective sample size (sum_k w_ik)^2 / sum_k w_ik^2, shape ``(N,)``;
        between 1 and K, equal to K when all weights are equal (guide = posterior).
    :ivar torch.Tensor mc_stderr: Monte Carlo standard error of each ``per_datapoint`` value by the
        delta method: the relative standard error of p^(x_i), i.e. the sample standard deviation
        (ddof=1) of the K weights divided by their mean and by sqrt(K), which equals
        ``sqrt((K / ess - 1) / (K - 1))``; shape ``(N,)``. NaN when K = 1. It describes the
        spread of log p^, not its downward bias (E[log p^] <= log p(x)): when ``ess`` is small
        compared with K the estimate may still be far from converged.
    :ivar int num_samples: K, the number of importance samples per datapoint.
    """

    per_datapoint: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    mc_stderr: torch.Tensor
    num_samples: int

    @property
    def num_datapoints(self):
        """N, the number of datapoints."""
        return int(self.per_datapoint.shape[0])

    @property
    def mean(self):
        """Mean of the per-datapoint estimates, (1/N) sum_i log p^(x_i) (float)."""
        return float(self.per_datapoint.mean())

    @property
    def stderr(self):
        """Standard error of :attr:`mean` over datapoints: the sample standard deviation (ddof=1)
        of the N per-datapoint estimates divided by sqrt(N) -- the uncertainty of the mean as an
        estimate of the expected log p(x) under the data distribution. NaN when N = 1. The
        Monte Carlo part alone is :attr:`mean_mc_stderr`."""
        n = self.num_datapoints
        if n < 2:
            return math.nan
        return float(self.per_datapoint.std(unbiased=True) / math.sqrt(n))

    @property
    def mean_mc_stderr(self):
        """Monte Carlo standard error of :attr:`mean` for these datapoints:
        sqrt(sum_i mc_stderr_i^2) / N (the datapoints' estimates are independent)."""
        return float(self.mc_stderr.pow(2).sum().sqrt() / self.num_datapoints)

    @property
    def mean_elbo(self):
        """Mean over datapoints of :attr:`elbo` (float)."""
        return float(self.elbo.mean())

    def to_frame(self):
        """One row per datapoint.

        :returns: :class:`pandas.DataFrame` with columns ``log_px``, ``elbo``, ``gap``
            (log_px - elbo), ``ess`` and ``mc_stderr``.
        """
        import pandas as pd

        log_px = self.per_datapoint.detach().cpu().double()
        elbo = self.elbo.detach().cpu().double()
        return pd.DataFrame({
            "log_px": log_px.numpy(),
            "elbo": elbo.numpy(),
            "gap": (log_px - elbo).numpy(),
            "ess": self.ess.detach().cpu().double().numpy(),
            "mc_stderr": self.mc_stderr.detach().cpu().double().numpy(),
        })

    def to_dict(self):
        """Summary numbers as a JSON-able dict."""
        return {
            "num_samples": self.num_samples,
            "num_datapoints": self.num_datapoints,
            "mean": self.mean,
            "stderr": self.stderr,
            "mean_mc_stderr": self.mean_mc_stderr,
            "mean_elbo": self.mean_elbo,
            "mean_ess": float(self.ess.mean()),
        }

    def __str__(self):
        return (f"log p(x) = {self.mean:.3f} +- {self.stderr:.3f} nats per datapoint "
                f"(N={self.num_datapoints}, K={self.num_samples}; Monte Carlo stderr "
                f"{self.mean_mc_stderr:.3f}; ELBO {self.mean_elbo:.3f})")


# --------------------------------------------------------------------------- public functions
def log_weights(model, guide, x, num_particles, *, model_args=(), model_kwargs=None,
                max_plate_nesting=1, seed=None):
    """Per-datapoint importance log-weights log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i).

    The K particles are drawn in one vectorized pass. Gradients flow through reparameterized
    sites (e.g. a Normal guide), so ``logsumexp(w, 0) - log K`` averaged over datapoints is the
    importance-weighted (IWAE) bound; non-reparameterizable guide sites contribute no
    score-function term. With a ``seed`` the draws are those of :func:`log_likelihood` with the
    same seed (see :class:`pyro_vae.noise.DatapointNoise`), so ``logsumexp(w, 0) - log K`` is its
    ``per_datapoint``; without one Pyro samples from torch's global generator, under whatever
    effect handlers surround the call (as training does). Like any Pyro training step (and
    unlike :func:`log_likelihood`), parameters the programs register with ``pyro.param`` /
    ``pyro.module`` stay in Pyro's param store.

    :param callable model: Pyro model ``model(x, *model_args, **model_kwargs)``.
    :param callable guide: Pyro guide with the same signature.
    :param torch.Tensor x: data, shape ``(N, ...)``, datapoints along dim 0; converted to the
        programs' floating type as in :func:`log_likelihood`.
    :param int num_particles: K.
    :param tuple model_args: further positional arguments of model and guide.
    :param dict model_kwargs: keyword arguments of model and guide.
    :param int max_plate_nesting: the number of plate dimensions the model and guide use (1
        for a model with only the ``"data"`` plate at dim -1); ``None`` infers it from one run.
    :param int seed: seed of the per-datapoint draws (default: Pyro's sampling).
    :returns: tensor of shape ``(K, N)``.
    """
    check_callable(model, "model")
    check_callable(guide, "guide")
    num_particles = check_positive_int(num_particles, "num_particles")
    model_args, model_kwargs = check_program_args(model_args, model_kwargs)
    seed = check_seed(seed)
    x = _program_data(x, "x", model, guide, model_args, model_kwargs)
    if max_plate_nesting is None:
        max_plate_nesting = infer_max_plate_nesting(model, guide, x, model_args, model_kwargs)
    max_plate_nesting = check_int(max_plate_nesting, "max_plate_nesting", minimum=1)
    noise = None if seed is None else DatapointNoise(seed, DATA_PLATE, PARTICLE_PLATE)
    return _log_weights(model, guide, x, num_particles, model_args, model_kwargs, max_plate_nesting,
                        noise)


def log_likelihood(model, guide, data, num_samples=1000, *, particle_batch_size=None,
                   data_batch_size=None, seed=None, model_args=(), model_kwargs=None,
                   max_plate_nesting=1, progress=False):
    """Estimate log p(x_i) of every datapoint by importance sampling with the guide as proposal.

    Particles are drawn ``particle_batch_size`` at a time for ``data_batch_size`` datapoints at
    a time. The chunk sizes are memory settings only: datapoint i's particles are the same
    draws whatever they are (see the module documentation), so the same seed gives the same
    estimates. The model and guide are called with ``model_args`` / ``model_kwargs`` only (so
    without a ``num_data`` unless given there) and their log-probabilities are used unscaled,
    so a KL weight (beta) or a dataset size used in training does not change the estimate. No
    gradients are recorded. Parameters that the model or guide register in Pyro's param store
    during the call (``pyro.module``) are removed again afterwards.
    Distribution argument checks (Pyro's validation, when enabled) run on the first chunk only;
    NaN log-weights are reported for every chunk.

    The data are converted to the programs' floating type (see :func:`program_dtype`):
    integer or float64 data for a float32 model are converted, as :func:`pyro_vae.fit` does.

    :param callable model: Pyro model ``model(x, *model_args, **model_kwargs)`` whose
        datapoints live in ``pyro.plate("data")`` (see the module documentation).
    :param callable guide: Pyro guide with the same signature: the proposal q(z|x). Pyro's
        autoguides (``AutoNormal``, ``AutoDiagonalNormal``, ``AutoMultivariateNormal``...) of
        a model with per-datapoint latents are accepted.
    :param torch.Tensor data: data, shape ``(N, ...)``, datapoints along dim 0 (a tensor or a
        numpy array; NaN or infinite values are refused).
    :param int num_samples: K, importance samples per datapoint.
    :param int particle_batch_size: particles per vectorized pass.
    :param int data_batch_size: datapoints per pass. By default a pass holds at most 2**15
        (particle, datapoint) pairs and 2**24 numbers of data size (pairs x features): as many
        particles as fit, up to K, then as many datapoints as fit. A guide with one parameter
        row per datapoint gets all N in one pass (particles chunked to fit).
    :param int seed: seed of the samples (default: a seed drawn from torch's global
        generator); the global RNG state is restored afterwards when a seed is given.
    :param tuple model_args: further positional arguments of model and guide.
    :param dict model_kwargs: keyword arguments of model and guide.
    :param int max_plate_nesting: plate dimensions used by model and guide (1 when the
        ``"data"`` plate at dim -1 is the only one); ``None`` infers it from one run.
    :param bool progress: show a tqdm progress bar (only when stderr is a terminal).
    :returns: :class:`ImportanceEstimate` with ``per_datapoint``, ``elbo``, ``ess`` and
        ``mc_stderr`` of shape ``(N,)``, and ``mean``, ``stderr``, ``to_frame()``.
    """
    check_callable(model, "model")
    check_callable(guide, "guide")
    num_samples = check_positive_int(num_samples, "num_samples")
    seed = check_seed(seed)
    model_args, model_kwargs = check_program_args(model_args, model_kwargs)
    if particle_batch_size is not None:
        particle_batch_size = check_positive_int(particle_batch_size, "particle_batch_size")
    if data_batch_size is not None:
        data_batch_size = check_positive_int(data_batch_size, "data_batch_size")
    if max_plate_nesting is not None:
        max_plate_nesting = check_int(max_plate_nesting, "max_plate_nesting", minimum=1)
    data = _program_data(data, "data", model, guide, model_args, model_kwargs)
    n = data.shape[0]
    row_size = max(1, data[0].numel())

    log_px, elbo, ess = [], [], []
    unsupported = {}  # guide sites sampled by Pyro: their draws depend on the chunking
    with torch.no_grad(), param_store_guard(), fork_rng(seed, data.device):
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, ()))
        _set_up_autoguide(guide, data, model_args, model_kwargs)
        kb, nb = chunk_sizes(num_samples, n, row_size, particle_batch_size, data_batch_size)
        if nb < n and _has_per_datapoint_parameters(guide, data[:nb], model_args, model_kwargs):
            if data_batch_size is not None:
                raise ValueError(
                    f"the guide holds one parameter row per datapoint (its '{DATA_PLATE}' plate does "
                    f"not follow the rows passed), so the data cannot be split into chunks of "
                    f"{data_batch_size}; pass data_batch_size=None (all {n} datapoints in one chunk, "
                    f"particles chunked to fit memory) or data_batch_size={n}")
            kb, nb = chunk_sizes(num_samples, n, row_size, particle_batch_size, n)
        if max_plate_nesting is None:
            max_plate_nesting = infer_max_plate_nesting(model, guide, data[:nb], model_args,
                                                         model_kwargs)
        num_chunks = math.ceil(n / nb) * math.ceil(num_samples / kb)
        with _progress_bar(progress, num_chunks) as pbar:
            for start in range(0, n, nb):
                xb = data[start:start + nb]
                logw = torch.empty((num_samples, xb.shape[0]), dtype=torch.float64, device=data.device)
                layouts = {}
                for k0 in range(0, num_samples, kb):
                    k = min(kb, num_samples - k0)
                    noise = DatapointNoise(seed, DATA_PLATE, PARTICLE_PLATE, data_offset=start,
                                           particle_offset=k0, unsupported=unsupported)
                    # argument checks of distributions (when enabled) run on the first chunk only
                    with _validation(start == 0 and k0 == 0):
                        logw[k0:k0 + k] = _log_weights(model, guide, xb, k, model_args, model_kwargs,
                                                       max_plate_nesting, noise, layouts)
                    if pbar is not None:
                        pbar.update(1)
                if (start // nb) % _TRIM_EVERY == _TRIM_EVERY - 1:
                    _release_freed_memory()
                # one reduction over all K particles in order: the same numbers for any chunking
                lse = torch.logsumexp(logw, 0)
                log_px.append(lse - math.log(num_samples))
                elbo.append(logw.mean(0))
                ess.append(torch.exp(2 * lse - torch.logsumexp(2 * logw, 0)))
    log_px, elbo, ess = torch.cat(log_px), torch.cat(elbo), torch.cat(ess)
    if num_samples > 1:
        mc = ((num_samples / ess - 1).clamp(min=0) / (num_samples - 1)).sqrt()
    else:
        mc = torch.full_like(ess, math.nan)
    dtype = data.dtype
    return ImportanceEstimate(per_datapoint=log_px.to(dtype), elbo=elbo.to(dtype), ess=ess.to(dtype),
                              mc_stderr=mc.to(dtype), num_samples=num_samples)


def program_dtype(model, guide, x, model_args=(), model_kwargs=None):
    """The floating type the programs compute in, to which their data are converted.

    In order: the type of the parameters (or floating buffers) of the module the model or the
    guide is a method of (or is, for a ``PyroModule``/autoguide); else, when ``x`` is not of
    torch's default floating type, the type of the first parameter the model (then the guide)
    reads with ``pyro.param`` / ``pyro.module`` in one run on the first datapoint; else
    ``None`` (the data's own floating type is kept; integer data get torch's default type).

    :param callable model: Pyro model.
    :param callable guide: Pyro guide.
    :param torch.Tensor x: the data, shape ``(N, ...)``.
    :param tuple model_args: further positional arguments of model and guide.
    :param dict model_kwargs: keyword arguments of model and guide.
    :returns: ``torch.dtype`` or ``None``.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    for fn in (model, guide):
        owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            for t in itertools.chain(owner.parameters(), owner.buffers()):
                if t.is_floating_point():
                    return t.dtype
    if x.dtype == torch.get_default_dtype():
        return None
    recorder = _ParamTypes()
    probe = x[:1] if x.is_floating_point() else x[:1].to(torch.get_default_dtype())
    for fn in (model, guide):
        if isinstance(fn, AutoGuide) and fn.prototype_trace is None:
            continue  # running it would set it up on one datapoint
        try:
            with torch.no_grad(), fork_rng(0, x.device), param_store_guard(), poutine.block(), recorder:
                fn(probe, *model_args, **model_kwargs)
        except Exception:  # noqa: BLE001 -- the data's type may be what fails; the parameters were seen
            pass
        if recorder.dtype is not None:
            return recorder.dtype
    return None


# --------------------------------------------------------------------------- internals
def _log_weights(model, guide, x, num_particles, model_args, model_kwargs, max_plate_nesting,
                 noise=None, layouts=None):
    particle_dim = -(max_plate_nesting + 1)
    n = x.shape[0]

    def vectorized(fn):
        def run(*args, **kwargs):
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim):
                return fn(*args, **kwargs)
        return run

    guide_run = vectorized(guide) if noise is None else noise(vectorized(guide))
    try:
        try:
            guide_trace = poutine.trace(guide_run).get_trace(x, *model_args, **model_kwargs)
        except ValueError as e:
            if f"inside plate('{DATA_PLATE}')" in str(e):
                raise ValueError(f"{e}; {_PER_DATAPOINT_HINT}") from None
            raise
        _check_guide_rows(guide_trace, n)
        model_trace = poutine.trace(poutine.replay(vectorized(model), trace=guide_trace)).get_trace(
            x, *model_args, **model_kwargs)
    except ValueError as e:
        raise plate_collision_error(e, particle_dim, max_plate_nesting, "particles") from None

    shape = (num_particles, n)
    logw = torch.zeros(shape, dtype=x.dtype, device=x.device)
    model_sites = sample_sites(model_trace)
    guide_sites = sample_sites(guide_trace)
    for name, site in model_sites.items():
        if not site["is_observed"] and name not in guide_sites:
            raise ValueError(
                f"the model's latent site {name!r} is not sampled by the guide; the guide must "
                f"sample every latent site of the model (the guide's sites: {sorted(guide_sites)})")
        logw = logw + site_log_prob(site, name, "model", shape, max_plate_nesting)
    layouts = {} if layouts is None else layouts
    for name, site in guide_sites.items():
        if site["is_observed"]:
            raise ValueError(f"the guide has an observed site {name!r}; a guide must not observe data")
        auxiliary = site["infer"].get("is_auxiliary", False)
        if not auxiliary and name not in model_sites:
            raise ValueError(f"the guide samples {name!r}, which the model does not have; the guide "
                             "may only sample latent sites of the model, and auxiliary sites marked "
                             "infer={'is_auxiliary': True}")
        if auxiliary and _data_frame(site) is None:
            if name not in layouts:
                layouts[name] = _joint_layout(guide, x, model_args, model_kwargs, name, site, model_trace)
            logw = logw - _joint_site_log_prob(site, name, layouts[name], shape)
        else:
            logw = logw - site_log_prob(site, name, "guide", shape, max_plate_nesting)
    if torch.isnan(logw).any():
        bad = torch.isnan(logw).any(0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"the log-weights are NaN for datapoints {bad}; check that the data lie in "
                         "the support of the likelihood and that the guide's parameters are finite")
    return logw


_PER_DATAPOINT_HINT = (
    "a guide with one parameter row per datapoint (Pyro's AutoNormal or AutoDiagonalNormal, a "
    "pyro.param of shape (N, ...)) scores exactly the N datapoints it was fitted on, all in one call")


def plate_collision_error(error, dim, max_plate_nesting, what):
    """The error to raise for ``error``, raised while tracing a program under the plate of
    particles (or chains) at ``dim``: a message saying what to do when a plate of the program
    collides with that plate, else ``error`` itself.

    :param ValueError error: the error raised by tracing.
    :param int dim: the dim of the particle plate.
    :param int max_plate_nesting: the plate nesting it was placed after.
    :param str what: what the plate holds (``"particles"``, ``"chains"``).
    :returns: the exception to raise.
    """
    if PARTICLE_PLATE in str(error) and "collide" in str(error):
        return ValueError(
            f"a plate of the model or guide uses dim {dim}, where the {what} go with "
            f"max_plate_nesting={max_plate_nesting}; pass the number of plate dimensions the "
            "program uses as max_plate_nesting (or None to infer it)")
    return error


def _check_guide_rows(guide_trace, n):
    for name, site in sample_sites(guide_trace).items():
        frame = _data_frame(site)
        if frame is not None and frame.size != n:
            raise ValueError(
                f"the guide's site {name!r} has {frame.size} datapoints in its '{DATA_PLATE}' plate but "
                f"the data passed have {n} rows; the plate must have size len(x) without subsampling "
                f"(call the programs without num_data / subsample_size), and {_PER_DATAPOINT_HINT}: "
                f"pass those {frame.size} datapoints")


def chunk_sizes(num_samples, n, row_size, particle_batch_size, data_batch_size):
    """Particles and datapoints per pass: as many particles as fit (up to K), then as many
    datapoints as fit, within the default budget; a size given by the user is kept.

    :param int num_samples: K.
    :param int n: number of datapoints.
    :param int row_size: numbers per datapoint (features).
    :param int particle_batch_size: the user's choice, or ``None``.
    :param int data_batch_size: the user's choice, or ``None``.
    :returns: ``(particles, datapoints)`` per pass.
    """
    pairs = max(1, min(_CHUNK_PAIRS, _CHUNK_ELEMENTS // row_size))
    if particle_batch_size is None:
        other = data_batch_size if data_batch_size is not None else 1
        particle_batch_size = max(1, pairs // min(other, n))
    particle_batch_size = min(particle_batch_size, num_samples)
    if data_batch_size is None:
        data_batch_size = max(1, pairs // particle_batch_size)
    data_batch_size = min(data_batch_size, n)
    return particle_batch_size, data_batch_size


def sample_sites(trace):
    """The sample sites of a trace that carry log-probabilities (no subsample or deterministic
    sites), ``{name: site}`` in program order."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
            and not site["infer"].get("_deterministic", False)}


def site_log_prob(site, name, role, shape, max_plate_nesting):
    """The unscaled, masked log-probability of one site reduced to one number per (particle,
    datapoint): dimensions right of the ``"data"`` plate are summed.

    :param dict site: a sample site of a trace run inside the particle plate.
    :param str name: its name (for messages).
    :param str role: ``"model"`` or ``"guide"`` (for messages).
    :param tuple shape: ``(K, N)``.
    :param int max_plate_nesting: plate dimensions of the programs.
    :returns: tensor of shape ``(K, N)``.
    :raises ValueError: the site is not inside the data plate, or its shape does not follow
        the plates.
    """
    num_particles, n = shape
    lp = site["fn"].log_prob(site["value"])
    mask = site["mask"]
    if mask is not None:
        if isinstance(mask, torch.Tensor):
            lp = lp.masked_fill(~mask.bool(), 0.0)
        elif mask is False:
            lp = torch.zeros_like(lp)
    frame = _data_frame(site)
    if frame is None:
        raise ValueError(
            f"the {role}'s site {name!r} is not inside a vectorized pyro.plate('{DATA_PLATE}'); a "
            "per-datapoint log p(x) needs every sample site inside the data plate (global latent "
            "variables would couple the datapoints: condition on them or make them parameters)")
    rank = max_plate_nesting + 1
    if -frame.dim > max_plate_nesting:
        raise ValueError(
            f"the '{DATA_PLATE}' plate of the {role}'s site {name!r} is at dim {frame.dim}, beyond "
            f"max_plate_nesting={max_plate_nesting}; pass max_plate_nesting={-frame.dim} or more")
    if lp.dim() > rank:
        raise ValueError(
            f"the {role}'s site {name!r} has batch shape {tuple(lp.shape)} with more dimensions than "
            f"max_plate_nesting={max_plate_nesting} allows; pass a larger max_plate_nesting or move "
            "extra batch dimensions into the event with .to_event()")
    lp = lp.reshape((1,) * (rank - lp.dim()) + tuple(lp.shape))
    data_dim = rank + frame.dim  # positive index of the data dimension
    if data_dim < lp.dim() - 1:
        lp = lp.sum(tuple(range(data_dim + 1, lp.dim())))
    middle = lp.shape[1:data_dim]
    if any(s != 1 for s in middle):
        raise ValueError(
            f"the {role}'s site {name!r} has batch dimensions {tuple(middle)} between the particles "
            f"and the '{DATA_PLATE}' plate; plates other than '{DATA_PLATE}' must be nested inside it")
    lp = lp.reshape(lp.shape[0], lp.shape[-1])
    if lp.shape[1] not in (1, n):
        raise ValueError(
            f"the {role}'s site {name!r} has {lp.shape[1]} datapoints in the '{DATA_PLATE}' plate "
            f"but the data passed has {n} rows; the plate must have size len(x) without "
            f"subsampling (call the model without num_data / subsample_size), and {_PER_DATAPOINT_HINT}")
    if lp.shape[0] not in (1, num_particles):
        raise ValueError(f"the {role}'s site {name!r} has log-prob shape {tuple(lp.shape)}, expected "
                         f"{num_particles} particles; is the program vectorizable over particles?")
    return lp.expand(shape)


def _data_frame(site):
    return next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE and f.dim is not None), None)


def _joint_layout(guide, x, model_args, model_kwargs, name, site, model_trace):
    """Which coordinates of an auxiliary vector sampled outside the data plate (an
    AutoContinuous guide's latent) belong to which datapoint: ``(N, d)`` indices. The guide is
    run with the vector set to 0, 1/D, ..., (D-1)/D; each model site it gives is mapped back
    through the inverse of the transform to its support, which returns the positions."""
    if len(site["fn"].event_shape) != 1:
        raise ValueError(f"the guide's auxiliary site {name!r} lies outside the '{DATA_PLATE}' plate "
                         f"with event shape {tuple(site['fn'].event_shape)}; only a vector can be split "
                         "per datapoint")
    size = site["fn"].event_shape[0]
    probe = torch.arange(size, dtype=torch.float64, device=x.device) / size
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(poutine.condition(guide, data={name: probe})).get_trace(
            x, *model_args, **model_kwargs)
    parts = []
    for other, s in sample_sites(trace).items():
        frame = _data_frame(s)
        if other == name or s["infer"].get("is_auxiliary", False) or frame is None:
            continue
        support = model_trace.nodes[other]["fn"].support
        position = biject_to(support).inv(s["value"].double()) * size
        index = position.round()
        if not bool(((position - index).abs() < 1e-3).all()):
            break
        index = index.movedim(len(s["fn"].batch_shape) + frame.dim, 0)
        parts.append(index.reshape(index.shape[0], -1).long())
    else:
        index = torch.cat(parts, 1) if parts else None
        if (index is not None and index.shape[0] == x.shape[0]
                and torch.equal(index.flatten().sort().values, torch.arange(size, device=index.device))):
            return index
    raise ValueError(
        f"the guide's auxiliary site {name!r} lies outside the '{DATA_PLATE}' plate and its "
        "coordinates could not be assigned to datapoints (every coordinate must give one latent "
        "value of one datapoint, as in AutoDiagonalNormal or AutoMultivariateNormal of a model "
        "whose latents are all inside the data plate)")


def _joint_site_log_prob(site, name, index, shape):
    """log q of datapoint i's coordinates ``index[i]`` under the marginal of a Gaussian auxiliary
    vector, shape ``(K, N)``."""
    try:
        marginals = gaussian_marginals(site["fn"], index)
    except ValueError:
        raise ValueError(
            f"the guide's auxiliary site {name!r} ({type(site['fn']).__name__}) lies outside the "
            f"'{DATA_PLATE}' plate: the density of one datapoint's coordinates is its marginal, "
            "available for Gaussian ones (AutoDiagonalNormal, AutoMultivariateNormal, "
            "AutoLowRankMultivariateNormal); use one of those or AutoNormal") from None
    lp = marginals.log_prob(site["value"][..., index]).reshape(-1, shape[1])
    if site["mask"] is False:
        lp = torch.zeros_like(lp)
    if lp.shape[0] not in (1, shape[0]):
        raise ValueError(f"the guide's site {name!r} does not follow the particle plate")
    return lp.expand(shape)


def infer_max_plate_nesting(model, guide, x, model_args=(), model_kwargs=None):
    """The number of plate dimensions model and guide use: the deepest vectorized plate of one
    run of the guide and the model replayed on it (1 when there are none).

    :param torch.Tensor x: data, shape ``(N, ...)``.
    :returns: int >= 1.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, *model_args, **model_kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *model_args, **model_kwargs)
    dims = [-f.dim for tr in (guide_trace, model_trace) for site in tr.nodes.values()
            if site["type"] == "sample" for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=1)


def _set_up_autoguide(guide, data, model_args, model_kwargs):
    """An autoguide creates its parameters the first time it runs: run it on all the data."""
    if isinstance(guide, AutoGuide) and getattr(guide, "prototype_trace", True) is None:
        with poutine.block():
            guide(data, *model_args, **model_kwargs)


def _has_per_datapoint_parameters(guide, xb, model_args, model_kwargs):
    """Whether the guide's data plate does not follow the rows passed (parameters with one row
    per datapoint of the full data set), from one run on a chunk."""
    try:
        with poutine.block():
            trace = poutine.trace(guide).get_trace(xb, *model_args, **model_kwargs)
    except ValueError as e:
        if f"inside plate('{DATA_PLATE}')" in str(e):
            return True
        raise
    return any(_data_frame(site) is not None and _data_frame(site).size != xb.shape[0]
               for site in sample_sites(trace).values())


def _program_data(data, name, model, guide, model_args, model_kwargs):
    x = as_data_tensor(data, name)
    dtype = program_dtype(model, guide, x, model_args, model_kwargs)
    if dtype is not None and dtype != x.dtype:
        x = as_data_tensor(data, name, dtype=dtype)
    return x


class _ParamTypes(Messenger):
    """Records the floating type of the first parameter a program reads."""

    def __init__(self):
        super().__init__()
        self.dtype = None

    def _pyro_post_param(self, msg):
        value = msg["value"]
        if self.dtype is None and isinstance(value, torch.Tensor) and value.is_floating_point():
            self.dtype = value.dtype


@contextlib.contextmanager
def param_store_guard():
    """Remove the parameters that were added to Pyro's param store inside the block."""
    store = pyro.get_param_store()
    before = set(store.keys())
    try:
        yield
    finally:
        for name in set(store.keys()) - before:
            del store[name]


def _release_freed_memory():
    """Hand the heap memory freed by a data chunk back to the system (glibc's ``malloc_trim``).

    Each chunk allocates and frees many tensors of a few sizes; glibc keeps the freed memory in
    fragments, so without this the resident memory grows with the number of chunks (K=5,000 over
    1,000 digits: 2.3 GB). Called every :data:`_TRIM_EVERY` data chunks, so that the pages given
    back are not faulted in again at every chunk. Does nothing where glibc is not the allocator.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None
_TRIM_EVERY = 16


def _progress_bar(progress, total):
    if not progress or not sys.stderr.isatty():
        return contextlib.nullcontext()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="log p(x)", unit="chunk", leave=False)


@contextlib.contextmanager
def _validation(keep):
    """Keep Pyro's validation setting (``keep=True``) or switch it off inside the block."""
    if keep:
        yield
    else:
        with pyro.validation_enabled(False):
            yield
