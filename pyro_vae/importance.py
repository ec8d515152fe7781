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
* every latent site of the model is sampled by the guide, and the guide has no other sites.
  Discrete latent sites are fine (only log-probabilities of sampled values are needed);
* the programs can be vectorized: they must work when run inside an extra plate of K
  particles at dim ``-(max_plate_nesting + 1)``.

Log-probabilities are computed *unscaled*, ``site["fn"].log_prob(site["value"])``: scales from
``num_data`` subsampling or from ``poutine.scale`` (a KL weight beta) are ignored, masks from
``poutine.mask`` are applied.
"""

import contextlib
import math
import sys
from dataclasses import dataclass

import torch

import pyro
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.checks import as_data_tensor, check_callable, check_positive_int, check_seed, fork_rng

__all__ = ["log_likelihood", "log_weights", "ImportanceEstimate", "DATA_PLATE", "PARTICLE_PLATE",
           "chunk_sizes", "sample_sites", "site_log_prob", "param_store_guard"]

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
                max_plate_nesting=1):
    """Per-datapoint importance log-weights log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i).

    The K particles are drawn in one vectorized pass. Gradients flow through reparameterized
    sites (e.g. a Normal guide), so ``logsumexp(w, 0) - log K`` averaged over datapoints is the
    importance-weighted (IWAE) bound; non-reparameterizable guide sites contribute no
    score-function term. :func:`log_likelihood` is built on this function: with the same seed,
    one particle chunk and one data chunk, both see the same samples. Like any Pyro training
    step (and unlike :func:`log_likelihood`), parameters the programs register with
    ``pyro.param`` / ``pyro.module`` stay in Pyro's param store.

    :param callable model: Pyro model ``model(x, *model_args, **model_kwargs)``.
    :param callable guide: Pyro guide with the same signature.
    :param torch.Tensor x: data, shape ``(N, ...)``, datapoints along dim 0.
    :param int num_particles: K.
    :param tuple model_args: further positional arguments of model and guide.
    :param dict model_kwargs: keyword arguments of model and guide.
    :param int max_plate_nesting: the number of plate dimensions the model and guide use (1
        for a model with only the ``"data"`` plate at dim -1); ``None`` infers it from one run.
    :returns: tensor of shape ``(K, N)``.
    """
    check_callable(model, "model")
    check_callable(guide, "guide")
    x = as_data_tensor(x, "x")
    num_particles = check_positive_int(num_particles, "num_particles")
    model_args, model_kwargs = _check_args(model_args, model_kwargs)
    if max_plate_nesting is None:
        max_plate_nesting = _infer_max_plate_nesting(model, guide, x, model_args, model_kwargs)
    max_plate_nesting = _check_plate_nesting(max_plate_nesting)
    return _log_weights(model, guide, x, num_particles, model_args, model_kwargs, max_plate_nesting)


def log_likelihood(model, guide, data, num_samples=1000, *, particle_batch_size=None,
                   data_batch_size=None, seed=None, model_args=(), model_kwargs=None,
                   max_plate_nesting=1, progress=False):
    """Estimate log p(x_i) of every datapoint by importance sampling with the guide as proposal.

    Particles are drawn ``particle_batch_size`` at a time for ``data_batch_size`` datapoints at
    a time; a running log-sum-exp over particle chunks keeps memory bounded whatever K is. The
    model and guide are called with ``model_args`` / ``model_kwargs`` only (so without a
    ``num_data`` unless given there) and their log-probabilities are used unscaled, so a KL
    weight (beta) or a dataset size used in training does not change the estimate. No gradients
    are recorded. Parameters that the model or guide register in Pyro's param store during the
    call (``pyro.module``) are removed again afterwards.
    Distribution argument checks (Pyro's validation, when enabled) run on the first chunk only;
    NaN log-weights are reported for every chunk.

    :param callable model: Pyro model ``model(x, *model_args, **model_kwargs)`` whose
        datapoints live in ``pyro.plate("data")`` (see the module documentation).
    :param callable guide: Pyro guide with the same signature: the proposal q(z|x).
    :param torch.Tensor data: data, shape ``(N, ...)``, datapoints along dim 0.
    :param int num_samples: K, importance samples per datapoint.
    :param int particle_batch_size: particles per vectorized pass.
    :param int data_batch_size: datapoints per pass. By default a pass holds at most 2**15
        (particle, datapoint) pairs and 2**24 numbers of data size (pairs x features): as many
        particles as fit, up to K, then as many datapoints as fit.
    :param int seed: seed of the samples (default: the global RNG); the global RNG state is
        restored afterwards when a seed is given.
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
    data = as_data_tensor(data, "data")
    num_samples = check_positive_int(num_samples, "num_samples")
    seed = check_seed(seed)
    model_args, model_kwargs = _check_args(model_args, model_kwargs)
    n = data.shape[0]
    if particle_batch_size is not None:
        particle_batch_size = check_positive_int(particle_batch_size, "particle_batch_size")
    if data_batch_size is not None:
        data_batch_size = check_positive_int(data_batch_size, "data_batch_size")
    particle_batch_size, data_batch_size = chunk_sizes(
        num_samples, n, max(1, data[0].numel()), particle_batch_size, data_batch_size)

    log_px, elbo, ess = [], [], []
    num_chunks = math.ceil(n / data_batch_size) * math.ceil(num_samples / particle_batch_size)
    bar = _progress_bar(progress, num_chunks)
    with torch.no_grad(), param_store_guard(), fork_rng(seed, data.device), bar as pbar:
        if max_plate_nesting is None:
            max_plate_nesting = _infer_max_plate_nesting(
                model, guide, data[:data_batch_size], model_args, model_kwargs)
        max_plate_nesting = _check_plate_nesting(max_plate_nesting)
        for start in range(0, n, data_batch_size):
            xb = data[start:start + data_batch_size]
            lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=data.device)
            lse2 = lse.clone()
            total = torch.zeros_like(lse)
            for k0 in range(0, num_samples, particle_batch_size):
                k = min(particle_batch_size, num_samples - k0)
                # argument checks of distributions (when enabled) run on the first chunk only
                with _validation(start == 0 and k0 == 0):
                    logw = _log_weights(model, guide, xb, k, model_args, model_kwargs,
                                        max_plate_nesting).double()
                lse = torch.logaddexp(lse, torch.logsumexp(logw, 0))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * logw, 0))
                total += logw.sum(0)
                if pbar is not None:
                    pbar.update(1)
            log_px.append(lse - math.log(num_samples))
            elbo.append(total / num_samples)
            ess.append(torch.exp(2 * lse - lse2))
    log_px, elbo, ess = torch.cat(log_px), torch.cat(elbo), torch.cat(ess)
    if num_samples > 1:
        mc = ((num_samples / ess - 1).clamp(min=0) / (num_samples - 1)).sqrt()
    else:
        mc = torch.full_like(ess, math.nan)
    dtype = data.dtype if data.dtype.is_floating_point else torch.get_default_dtype()
    return ImportanceEstimate(per_datapoint=log_px.to(dtype), elbo=elbo.to(dtype), ess=ess.to(dtype),
                              mc_stderr=mc.to(dtype), num_samples=num_samples)


# --------------------------------------------------------------------------- internals
def _log_weights(model, guide, x, num_particles, model_args, model_kwargs, max_plate_nesting):
    particle_dim = -(max_plate_nesting + 1)

    def vectorized(fn):
        def run(*args, **kwargs):
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim):
                return fn(*args, **kwargs)
        return run

    try:
        guide_trace = poutine.trace(vectorized(guide)).get_trace(x, *model_args, **model_kwargs)
        model_trace = poutine.trace(poutine.replay(vectorized(model), trace=guide_trace)).get_trace(
            x, *model_args, **model_kwargs)
    except ValueError as e:
        if PARTICLE_PLATE in str(e) and "collide" in str(e):
            raise ValueError(
                f"a plate of the model or guide uses dim {particle_dim}, where the particles go with "
                f"max_plate_nesting={max_plate_nesting}; pass the number of plate dimensions the "
                "program uses as max_plate_nesting (or None to infer it)") from None
        raise

    n = x.shape[0]
    shape = (num_particles, n)
    logw = torch.zeros(shape, dtype=_float_dtype(x), device=x.device)
    model_sites = sample_sites(model_trace)
    guide_sites = sample_sites(guide_trace)
    for name, site in model_sites.items():
        if not site["is_observed"] and name not in guide_sites:
            raise ValueError(
                f"the model's latent site {name!r} is not sampled by the guide; the guide must "
                f"sample every latent site of the model (the guide's sites: {sorted(guide_sites)})")
        logw = logw + site_log_prob(site, name, "model", shape, max_plate_nesting)
    for name, site in guide_sites.items():
        if site["is_observed"]:
            raise ValueError(f"the guide has an observed site {name!r}; a guide must not observe data")
        if name not in model_sites:
            raise ValueError(f"the guide samples {name!r}, which the model does not have; the guide "
                             "may only sample latent sites of the model")
        logw = logw - site_log_prob(site, name, "guide", shape, max_plate_nesting)
    if torch.isnan(logw).any():
        bad = torch.isnan(logw).any(0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"the log-weights are NaN for datapoints {bad}; check that the data lie in "
                         "the support of the likelihood and that the guide's parameters are finite")
    return logw


def chunk_sizes(num_samples, n, row_size, particle_batch_size, data_batch_size):
    """Particles and datapoints per pass: as many particles as fit (up to K), then as many
    datapoints as fit, within the default budget; a size given by the user is kept."""
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
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
            and not site["infer"].get("_deterministic", False)}


def site_log_prob(site, name, role, shape, max_plate_nesting):
    """log-prob of one site reduced to shape (K, N)."""
    num_particles, n = shape
    lp = site["fn"].log_prob(site["value"])
    mask = site["mask"]
    if mask is not None:
        if isinstance(mask, torch.Tensor):
            lp = lp.masked_fill(~mask.bool(), 0.0)
        elif mask is False:
            lp = torch.zeros_like(lp)
    frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
    if not frames or frames[0].dim is None:
        raise ValueError(
            f"the {role}'s site {name!r} is not inside a vectorized pyro.plate('{DATA_PLATE}'); a "
            "per-datapoint log p(x) needs every sample site inside the data plate (global latent "
            "variables would couple the datapoints: condition on them or make them parameters)")
    rank = max_plate_nesting + 1
    if -frames[0].dim > max_plate_nesting:
        raise ValueError(
            f"the '{DATA_PLATE}' plate of the {role}'s site {name!r} is at dim {frames[0].dim}, beyond "
            f"max_plate_nesting={max_plate_nesting}; pass max_plate_nesting={-frames[0].dim} or more")
    if lp.dim() > rank:
        raise ValueError(
            f"the {role}'s site {name!r} has batch shape {tuple(lp.shape)} with more dimensions than "
            f"max_plate_nesting={max_plate_nesting} allows; pass a larger max_plate_nesting or move "
            "extra batch dimensions into the event with .to_event()")
    lp = lp.reshape((1,) * (rank - lp.dim()) + tuple(lp.shape))
    data_dim = rank + frames[0].dim  # positive index of the data dimension
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
            "subsampling (call the model without num_data / subsample_size)")
    if lp.shape[0] not in (1, num_particles):
        raise ValueError(f"the {role}'s site {name!r} has log-prob shape {tuple(lp.shape)}, expected "
                         f"{num_particles} particles; is the program vectorizable over particles?")
    return lp.expand(shape)


def _infer_max_plate_nesting(model, guide, x, model_args, model_kwargs):
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x, *model_args, **model_kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *model_args, **model_kwargs)
    dims = [-f.dim for tr in (guide_trace, model_trace) for site in tr.nodes.values()
            if site["type"] == "sample" for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=1)


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



def _float_dtype(x):
    return x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()


def _check_plate_nesting(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_plate_nesting must be a positive integer or None, got {value!r}")
    if value < 1:
        raise ValueError(f"max_plate_nesting must be at least 1 (the '{DATA_PLATE}' plate), got {value!r}")
    return value


def _check_args(model_args, model_kwargs):
    if not isinstance(model_args, (tuple, list)):
        raise TypeError(f"model_args must be a tuple of extra positional arguments, got "
                        f"{type(model_args).__name__}")
    if model_kwargs is None:
        model_kwargs = {}
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    return tuple(model_args), model_kwargs
