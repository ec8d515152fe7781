"""log p(x) by annealed importance sampling (AIS), one estimate per datapoint, and the
bidirectional Monte Carlo (BDMC) sandwich, for any Pyro model/guide pair.

AIS (Neal 2001) moves samples from the guide q(z|x) to the posterior p(z|x) through the
geometric path of unnormalized densities

    gamma_t(z) = q(z|x)^(1 - beta_t) p(x, z)^beta_t,      0 = beta_0 < beta_1 < ... < beta_T = 1,

with z_0 ~ q(z|x), z_t drawn by a Markov transition that leaves gamma_t invariant, and the
log-weight of a chain

    log w = sum_{t=1..T} (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log q(z_{t-1}|x)],

so that E[w] = p(x). With C independent chains per datapoint the estimate is
log p^(x) = logsumexp_c log w_c - log C, a stochastic lower bound (E[log p^] <= log p(x)) that,
unlike importance sampling with q, approaches log p(x) as T grows even when q is poor. With
T = 1 it *is* importance sampling with C samples (:func:`pyro_vae.log_likelihood`, same seed:
the same numbers). As in Wu et al. (2017), "On the quantitative analysis of decoder-based
generative models":

* the schedule is sigmoidal by default (:func:`annealing_schedule`), denser at both ends;
* the transitions are HMC (:mod:`pyro_vae.hmc`: Pyro's leapfrog integrator, ``num_leapfrog_steps``
  steps, identity mass matrix) on all latent sites at once, in unconstrained space: a site with
  constrained support is mapped by ``biject_to(support)`` of the model's distribution and the
  log-Jacobian is added to both log q and log p (it cancels in the weights);
* the step size is one per datapoint, shared by its chains (each chain's step drawn within
  +-20% of it, so that trajectory lengths vary): a start-up heuristic finds where one leapfrog
  step is accepted with probability 0.8 (:func:`pyro_vae.hmc.find_step_size`), then after every
  transition ``log eps += adapt_rate * (mean acceptance - target_accept)`` (target 0.65). The
  acceptance that steers it comes from ``num_adapt_chains`` extra chains per datapoint whose
  weights are thrown away: adapting to the estimate's own chains (as Wu et al. do) makes the
  transitions depend on those chains' past, so that E[w] = p(x) no longer holds exactly, whereas
  step sizes set by independent chains keep it.

The densities come from Pyro traces: log p(x, z) by running the model with its latent sites
conditioned on z (``poutine.condition``), log q(z|x) from the guide's distributions at its
latent sites -- traced once per chunk of data when the guide has one latent site (its
distribution cannot depend on another latent), otherwise by running the guide conditioned on z
at every evaluation. Gradients are taken with respect to z only; model parameters get none.

Requirements on the model and guide are those of :func:`pyro_vae.log_likelihood` (data as first
argument; every sample site inside ``pyro.plate("data")``, not subsampled; the guide samples
exactly the model's latent sites; vectorizable over an outer plate of chains), plus: every latent
site is continuous, and the programs are deterministic given x and z (no dropout: evaluate
networks in eval mode). Log-probabilities are unscaled; masks are applied.

:func:`bdmc` (Grosse, Ghahramani & Adams 2015; Grosse et al. 2016) simulates data from the
model, keeping the latents that produced them, and runs forward AIS (a stochastic lower bound)
and reverse AIS from those exact posterior samples (a stochastic upper bound): on simulated data
the true log p(x) lies between the two, and their gap bounds the error of forward AIS.
"""

import contextlib
import math
import sys
from dataclasses import dataclass

import torch
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import ComposeTransform, IndependentTransform

import pyro
from pyro import poutine

from pyro_vae.checks import (as_data_tensor, check_bool, check_callable, check_choice, check_float,
                             check_int, check_positive_float, check_positive_int,
                             check_program_args, check_seed, fork_rng)
from pyro_vae.hmc import find_step_size, hmc_transition, potential_and_grad
from pyro_vae.importance import (DATA_PLATE, PARTICLE_PLATE, ImportanceEstimate, chunk_sizes,
                                 infer_max_plate_nesting, param_store_guard, plate_collision_error,
                                 sample_sites, site_log_prob)
from pyro_vae.noise import DatapointNoise

__all__ = ["ais_log_likelihood", "bdmc", "AISEstimate", "BDMCResult", "annealing_schedule",
           "SCHEDULES"]

#: names of the built-in annealing schedules
SCHEDULES = ("sigmoid", "linear")
#: step size the start-up heuristic starts from
_INITIAL_STEP_SIZE = 0.1


# --------------------------------------------------------------------------- results
@dataclass
class AISEstimate(ImportanceEstimate):
    """Per-datapoint AIS estimates of log p(x), from :func:`ais_log_likelihood` (and the two
    bounds of :func:`bdmc`).

    AIS is importance sampling on the extended space of whole chains, so the fields of
    :class:`~pyro_vae.importance.ImportanceEstimate` keep their meaning with the C chains as the
    K samples: ``per_datapoint`` is logsumexp_c log w_c - log C, ``ess`` the effective sample
    size of the final weights (between 1 and C), ``mc_stderr`` the Monte Carlo standard error
    over chains (delta method), ``num_samples`` is C; ``mean``, ``stderr`` and
    ``mean_mc_stderr`` are as there. ``elbo`` holds the mean over chains of the log-weights,
    (1/C) sum_c log w_c: the single-chain AIS bound, at most ``per_datapoint``; it is the
    Monte Carlo ELBO when ``num_steps`` is 1 and approaches log p(x) as ``num_steps`` grows.

    For the upper bound of :func:`bdmc` (``bound == "upper"``) the chains run in reverse and
    their weights estimate 1/p(x): ``per_datapoint`` is -(logsumexp_c log w_c - log C), ``elbo``
    is -(1/C) sum_c log w_c (at least ``per_datapoint``), and ``ess``/``mc_stderr`` describe the
    reverse weights.

    :ivar torch.Tensor acceptance_rate: mean HMC acceptance probability over transitions and
        chains, shape ``(N,)``; NaN when ``num_steps`` is 1 (no transitions).
    :ivar torch.Tensor step_size: each datapoint's leapfrog step size at the end, ``(N,)``.
    :ivar int num_steps: T, the number of annealing steps (intermediate distributions).
    :ivar int num_leapfrog_steps: leapfrog steps per HMC transition.
    :ivar str bound: ``"lower"`` (forward AIS) or ``"upper"`` (reverse AIS, :func:`bdmc`).
    """

    acceptance_rate: torch.Tensor
    step_size: torch.Tensor
    num_steps: int
    num_leapfrog_steps: int
    bound: str = "lower"

    @property
    def num_chains(self):
        """C, the number of AIS chains per datapoint (``num_samples``)."""
        return self.num_samples

    @property
    def mean_acceptance_rate(self):
        """Mean over datapoints of :attr:`acceptance_rate` (float; NaN without transitions)."""
        return float(self.acceptance_rate.mean())

    def to_frame(self):
        """One row per datapoint.

        :returns: :class:`pandas.DataFrame` with columns ``log_px``, ``mean_log_weight`` (the
            ``elbo`` field), ``ess``, ``mc_stderr``, ``acceptance_rate`` and ``step_size``.
        """
        import pandas as pd

        col = _numpy
        return pd.DataFrame({
            "log_px": col(self.per_datapoint),
            "mean_log_weight": col(self.elbo),
            "ess": col(self.ess),
            "mc_stderr": col(self.mc_stderr),
            "acceptance_rate": col(self.acceptance_rate),
            "step_size": col(self.step_size),
        })

    def to_dict(self):
        """Summary numbers as a JSON-able dict."""
        return {"method": "ais", "bound": self.bound, "num_steps": self.num_steps,
                "num_chains": self.num_chains, "num_leapfrog_steps": self.num_leapfrog_steps,
                "num_datapoints": self.num_datapoints, "mean": self.mean, "stderr": self.stderr,
                "mean_mc_stderr": self.mean_mc_stderr, "mean_log_weight": self.mean_elbo,
                "mean_ess": float(self.ess.mean()), "mean_acceptance_rate": self.mean_acceptance_rate}

    def __str__(self):
        what = "log p(x)" if self.bound == "lower" else "upper bound of log p(x)"
        return (f"{what} = {self.mean:.3f} +- {self.stderr:.3f} nats per datapoint by AIS "
                f"(N={self.num_datapoints}, {self.num_chains} chains, {self.num_steps} steps of "
                f"{self.num_leapfrog_steps} leapfrog steps; Monte Carlo stderr "
                f"{self.mean_mc_stderr:.3f}; mean ESS {float(self.ess.mean()):.1f}; acceptance "
                f"{self.mean_acceptance_rate:.2f})")


@dataclass
class BDMCResult:
    """Stochastic lower and upper bounds of log p(x) on data simulated from the model, from
    :func:`bdmc`.

    :ivar AISEstimate lower: forward AIS from the guide (``bound == "lower"``).
    :ivar AISEstimate upper: reverse AIS from the true latents (``bound == "upper"``).
    :ivar torch.Tensor data: the simulated data, shape ``(N, ...)``.
    :ivar dict latents: the latent values that generated them, per site, as the model's trace
        holds them (datapoints along the data plate's dim).
    """

    lower: AISEstimate
    upper: AISEstimate
    data: torch.Tensor
    latents: dict

    @property
    def gap(self):
        """Upper minus lower bound per datapoint, shape ``(N,)``; it bounds the error of either
        estimate on these data (up to Monte Carlo noise)."""
        return self.upper.per_datapoint - self.lower.per_datapoint

    @property
    def mean_gap(self):
        """Mean of :attr:`gap` over datapoints (float), nats."""
        return float(self.gap.mean())

    @property
    def gap_stderr(self):
        """Standard error of :attr:`mean_gap` over datapoints (NaN for one datapoint)."""
        n = self.gap.shape[0]
        return float(self.gap.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan

    def to_frame(self):
        """One row per datapoint.

        :returns: :class:`pandas.DataFrame` with columns ``lower``, ``upper``, ``gap``,
            ``lower_mc_stderr``, ``upper_mc_stderr``, ``lower_ess``, ``upper_ess``,
            ``forward_acceptance`` and ``reverse_acceptance``.
        """
        import pandas as pd

        col, lo, up = _numpy, self.lower, self.upper
        return pd.DataFrame({
            "lower": col(lo.per_datapoint), "upper": col(up.per_datapoint), "gap": col(self.gap),
            "lower_mc_stderr": col(lo.mc_stderr), "upper_mc_stderr": col(up.mc_stderr),
            "lower_ess": col(lo.ess), "upper_ess": col(up.ess),
            "forward_acceptance": col(lo.acceptance_rate), "reverse_acceptance": col(up.acceptance_rate),
        })

    def to_dict(self):
        """Summary numbers as a JSON-able dict."""
        lo, up = self.lower, self.upper
        return {"num_datapoints": lo.num_datapoints, "num_steps": lo.num_steps, "num_chains": lo.num_chains,
                "num_reverse_chains": up.num_chains, "num_leapfrog_steps": lo.num_leapfrog_steps,
                "lower": lo.mean, "upper": up.mean, "mean_gap": self.mean_gap, "gap_stderr": self.gap_stderr,
                "max_gap": float(self.gap.max()), "forward_acceptance": lo.mean_acceptance_rate,
                "reverse_acceptance": up.mean_acceptance_rate}

    def __str__(self):
        return (f"BDMC on {self.lower.num_datapoints} simulated datapoints, {self.lower.num_steps} "
                f"steps: {self.lower.mean:.3f} <= log p(x) <= {self.upper.mean:.3f} nats per "
                f"datapoint (gap {self.mean_gap:.3f} +- {self.gap_stderr:.3f})")


def _numpy(t):
    return t.detach().cpu().double().numpy()


# --------------------------------------------------------------------------- schedule
def annealing_schedule(num_steps, schedule="sigmoid", *, sharpness=4.0):
    """The inverse temperatures beta_0 = 0 < ... < beta_T = 1 of an annealing path.

    ``"sigmoid"`` (Grosse et al. 2013; Wu et al. 2017): s_t = sigmoid(sharpness (2t/T - 1)),
    rescaled so that beta_0 = 0 and beta_T = 1 -- small steps near both ends, where the
    densities change fastest. ``"linear"``: beta_t = t/T. A sequence of T + 1 non-decreasing
    numbers from 0 to 1 is checked and returned as given.

    :param int num_steps: T.
    :param schedule: ``"sigmoid"``, ``"linear"`` or a sequence of length T + 1.
    :param float sharpness: delta of the sigmoid schedule.
    :returns: float64 tensor, shape ``(T + 1,)``.
    """
    num_steps = check_positive_int(num_steps, "num_steps")
    if isinstance(schedule, str):
        check_choice(schedule, "schedule", SCHEDULES)
        sharpness = check_positive_float(sharpness, "sharpness")
        t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        if schedule == "linear" or num_steps == 1:
            return t
        s = torch.sigmoid(sharpness * (2 * t - 1))
        betas = (s - s[0]) / (s[-1] - s[0])
        betas[0], betas[-1] = 0.0, 1.0
        return betas
    try:
        betas = torch.as_tensor(schedule, dtype=torch.float64).detach().cpu().flatten()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"schedule must be one of {SCHEDULES} or a sequence of numbers, got "
                        f"{type(schedule).__name__}") from None
    if betas.shape[0] != num_steps + 1:
        raise ValueError(f"a schedule given as numbers needs num_steps + 1 = {num_steps + 1} values "
                         f"(beta_0 = 0 to beta_T = 1), got {betas.shape[0]}")
    if not bool(torch.isfinite(betas).all()) or betas[0] != 0 or betas[-1] != 1 \
            or bool((betas[1:] < betas[:-1]).any()):
        raise ValueError("a schedule given as numbers must be non-decreasing from exactly 0 to "
                         "exactly 1")
    return betas


# --------------------------------------------------------------------------- public functions
def ais_log_likelihood(model, guide, data, num_steps=1000, num_chains=16, *, num_leapfrog_steps=10,
                       schedule="sigmoid", step_size=None, adapt_step_size=True, target_accept=0.65,
                       adapt_rate=0.1, step_size_jitter=0.2, num_adapt_chains=2, data_batch_size=None,
                       seed=None, model_args=(), model_kwargs=None, max_plate_nesting=1, progress=True):
    """Estimate log p(x_i) of every datapoint by annealed importance sampling from the guide.

    All chains of a chunk of datapoints move together in one vectorized program run per
    leapfrog step (chains in an outer plate, as the particles of :func:`pyro_vae.log_likelihood`);
    a run costs num_chains x (num_steps + (num_steps - 1) x num_leapfrog_steps) evaluations of
    log p(x, z) and its gradient per datapoint. No gradients reach the model's parameters, and
    parameters the programs register in Pyro's param store during the call are removed again.

    :param callable model: Pyro model ``model(x, *model_args, **model_kwargs)`` (see the module
        documentation for the requirements).
    :param callable guide: Pyro guide with the same signature: the initial distribution q(z|x).
    :param torch.Tensor data: data, shape ``(N, ...)``, datapoints along dim 0.
    :param int num_steps: T, annealing steps; 1 is importance sampling with ``num_chains`` samples.
    :param int num_chains: C, independent chains per datapoint.
    :param int num_leapfrog_steps: leapfrog steps per HMC transition.
    :param schedule: ``"sigmoid"`` (default), ``"linear"``, or T + 1 inverse temperatures
        (see :func:`annealing_schedule`).
    :param float step_size: initial leapfrog step size of every datapoint; default: found per
        datapoint by the start-up heuristic.
    :param bool adapt_step_size: adapt each datapoint's step size after every transition toward
        ``target_accept``; ``False`` keeps it fixed (then pass ``step_size``).
    :param float target_accept: target HMC acceptance probability, in (0, 1).
    :param float adapt_rate: change of log step size per unit of acceptance above target.
    :param float step_size_jitter: each chain's step size in a transition is drawn uniformly
        from ``eps * [1 - j, 1 + j]`` (0 for none), so that trajectories do not keep a length
        that brings them back where they started.
    :param int num_adapt_chains: extra chains per datapoint that run alongside and alone set
        the step sizes (start-up heuristic and adaptation); their weights are not used, so the
        step sizes stay independent of the chains that make the estimate and its unbiasedness
        (E[w] = p(x)) holds. Not run with a fixed step size or ``num_steps=1``.
    :param int data_batch_size: datapoints per vectorized pass (all their chains together);
        default: as many as keep a pass within the budget of :func:`pyro_vae.log_likelihood`.
        The estimates depend on the seed and on this chunking (through the random stream).
    :param int seed: seed of all random draws (default: the global RNG); the global RNG state
        is restored afterwards when a seed is given.
    :param tuple model_args: further positional arguments of model and guide.
    :param dict model_kwargs: keyword arguments of model and guide.
    :param int max_plate_nesting: plate dimensions used by model and guide (1 when the
        ``"data"`` plate at dim -1 is the only one); ``None`` infers it from one run.
    :param bool progress: show a tqdm progress bar when stderr is a terminal.
    :returns: :class:`AISEstimate` with ``per_datapoint``, ``mc_stderr``, ``ess``,
        ``acceptance_rate`` and ``step_size`` of shape ``(N,)``, and ``mean``, ``stderr``,
        ``to_frame()``, ``to_dict()``.
    """
    check_callable(model, "model")
    check_callable(guide, "guide")
    data = as_data_tensor(data, "data")
    opts = _check_options(num_steps, num_chains, num_leapfrog_steps, schedule, step_size,
                          adapt_step_size, target_accept, adapt_rate, step_size_jitter,
                          num_adapt_chains, data_batch_size, progress)
    seed = check_seed(seed)
    model_args, model_kwargs = check_program_args(model_args, model_kwargs)
    if max_plate_nesting is not None:
        max_plate_nesting = check_int(max_plate_nesting, "max_plate_nesting", minimum=1)
    n, chains = data.shape[0], opts["num_chains"] + _num_adapt_chains(opts)
    batch = _data_batch_size(opts, n, data, chains)
    with torch.no_grad(), param_store_guard(), fork_rng(seed, data.device), \
            _progress_bar(opts["progress"], opts["num_steps"] * math.ceil(n / batch), "AIS") as bar:
        programs = _Programs(model, guide, model_args, model_kwargs, max_plate_nesting, data[:batch])
        runs = []
        for start in range(0, n, batch):
            # the starting draws from the guide are those of log_likelihood with the same seed
            noise = None if seed is None else DatapointNoise(seed, DATA_PLATE, PARTICLE_PLATE,
                                                             data_offset=start)
            runs.append(_anneal(_Target(programs, data[start:start + batch], chains, noise=noise),
                                opts, bar))
    return _estimate(runs, opts, data, "lower")


def bdmc(model, guide, data_shape, num_steps=1000, num_chains=4, *, num_reverse_chains=None,
         num_leapfrog_steps=10, schedule="sigmoid", step_size=None, adapt_step_size=True,
         target_accept=0.65, adapt_rate=0.1, step_size_jitter=0.2, num_adapt_chains=2,
         data_batch_size=None, seed=None, dtype=None, device=None, model_args=(), model_kwargs=None,
         max_plate_nesting=1, progress=True):
    """Bidirectional Monte Carlo: lower and upper bounds of log p(x) on simulated data.

    Runs the model once with its observed site sampled instead of observed
    (``poutine.uncondition``) to draw N datapoints together with the latents that produced
    them. Forward AIS from the guide gives a stochastic lower bound of each datapoint's log p(x)
    (as :func:`ais_log_likelihood`); reverse AIS -- the same path walked from p(z|x) back to
    q(z|x), started at the true latents, which are an exact posterior sample -- gives a
    stochastic upper bound. The reverse chains use the step sizes the forward chains of the same
    datapoint used at each temperature (no adaptation of their own), so the upper bound keeps
    its guarantee given the forward run.

    The model must have exactly one observed site, whose value has the shape of the data
    argument (``obs=x``); it is called with a tensor of zeros of ``data_shape`` to simulate, so
    it must use its data argument only as the observation.

    :param callable model: Pyro model ``model(x, *model_args, **model_kwargs)``.
    :param callable guide: Pyro guide with the same signature.
    :param tuple data_shape: shape ``(N, ...)`` of the data argument, e.g. ``(100, 784)``.
    :param int num_steps: T, annealing steps of each direction.
    :param int num_chains: forward chains per datapoint.
    :param int num_reverse_chains: reverse chains per datapoint (default ``num_chains``); all
        start from the same true latents.
    :param dtype: floating-point type of the placeholder data (default torch's default).
    :param device: device of the placeholder data (default CPU).
    :param int seed: seed of the simulation and of both AIS runs (default: the global RNG).
    :returns: :class:`BDMCResult` with ``lower``, ``upper`` (:class:`AISEstimate`), ``gap``,
        ``data``, ``latents`` and ``to_frame()``.

    The other parameters are those of :func:`ais_log_likelihood`.
    """
    check_callable(model, "model")
    check_callable(guide, "guide")
    data_shape = _check_data_shape(data_shape)
    opts = _check_options(num_steps, num_chains, num_leapfrog_steps, schedule, step_size,
                          adapt_step_size, target_accept, adapt_rate, step_size_jitter,
                          num_adapt_chains, data_batch_size, progress)
    reverse_opts = dict(opts, adapt_step_size=False, num_chains=opts["num_chains"] if num_reverse_chains
                        is None else check_positive_int(num_reverse_chains, "num_reverse_chains"))
    seed = check_seed(seed)
    model_args, model_kwargs = check_program_args(model_args, model_kwargs)
    if max_plate_nesting is not None:
        max_plate_nesting = check_int(max_plate_nesting, "max_plate_nesting", minimum=1)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    n = data_shape[0]
    with torch.no_grad(), param_store_guard(), fork_rng(seed, device):
        data, latents, padded, axes, max_plate_nesting = _simulate(
            model, model_args, model_kwargs, max_plate_nesting,
            torch.zeros(data_shape, dtype=dtype, device=device))
        batch = _data_batch_size(opts, n, data, max(opts["num_chains"] + _num_adapt_chains(opts),
                                                     reverse_opts["num_chains"]))
        total = 2 * opts["num_steps"] * math.ceil(n / batch)
        with _progress_bar(opts["progress"], total, "BDMC") as bar:
            programs = _Programs(model, guide, model_args, model_kwargs, max_plate_nesting, data[:batch])
            forward, reverse = [], []
            for start in range(0, n, batch):
                xb = data[start:start + batch]
                target = _Target(programs, xb, opts["num_chains"] + _num_adapt_chains(opts))
                run = _anneal(target, opts, bar, record=True)
                forward.append(run)
                true_z = {name: value.narrow(axes[name], start, xb.shape[0]) for name, value in padded.items()}
                true_z = {name: v.expand((reverse_opts["num_chains"],) + v.shape[1:]) for name, v in true_z.items()}
                target = _Target(programs, xb, reverse_opts["num_chains"], latents=true_z)
                reverse.append(_anneal(target, reverse_opts, bar, step_sizes=run["recorded"][::-1]))
    lower = _estimate(forward, opts, data, "lower")
    upper = _estimate(reverse, reverse_opts, data, "upper")
    return BDMCResult(lower=lower, upper=upper, data=data, latents=latents)


# --------------------------------------------------------------------------- the annealing
def _anneal(target, opts, bar, *, record=False, step_sizes=None):
    """One AIS run of every chain of one data chunk.

    Forward when the target starts from the guide; the betas walked backward (reverse AIS) when
    ``step_sizes`` -- the step sizes of a forward run, last transition first -- are given. The
    target's chains beyond ``opts["num_chains"]`` are the adaptation chains: only their
    acceptance sets the step sizes, and their weights are dropped.
    :returns: dict with ``log_w`` (C, n) float64, ``accept`` (n,) summed acceptance
        probabilities of the C chains, ``step_size`` (n,) and, with ``record``, ``recorded``: the
        step size of every transition, a list of T - 1 tensors (1, n, 1).
    """
    betas = opts["betas"] if step_sizes is None else opts["betas"].flip(0)
    betas = betas.tolist()
    num_steps = len(betas) - 1
    total, n = target.shape
    c = opts["num_chains"]
    u = target.u0
    log_w = torch.zeros(c, n, dtype=torch.float64, device=u.device)
    accept = torch.zeros(n, dtype=torch.float64, device=u.device)
    adapt = opts["adapt_step_size"] and step_sizes is None
    eps = torch.full((1, n, 1), opts["step_size"] or _INITIAL_STEP_SIZE, dtype=u.dtype, device=u.device)
    recorded = []
    for t in range(1, num_steps + 1):
        potential = target.potential(betas[t])
        if t < num_steps:
            energy, grad = potential_and_grad(potential, u)
            log_p, log_q = target.last
        else:
            log_p, log_q, _ = target.log_terms(u)
        if t == 1:
            target.check_finite(log_p - log_q)
        if betas[t] != betas[t - 1]:
            log_w += (betas[t] - betas[t - 1]) * (log_p[:c] - log_q[:c]).double()
        if t < num_steps:
            if step_sizes is not None:
                eps = step_sizes[t - 1]
            elif t == 1 and opts["step_size"] is None:
                weights = torch.zeros(total, 1, dtype=u.dtype, device=u.device)
                weights[c:] = 1.0
                eps = find_step_size(u, potential, eps, energy=energy, grad=grad, chain_dims=(0,),
                                     weights=weights)
            step = hmc_transition(u, potential, _jittered(eps, opts["step_size_jitter"], total),
                                  opts["num_leapfrog_steps"], energy=energy, grad=grad)
            u = step.position
            accept += step.accept_prob[:c].mean(0).double()
            if record:
                recorded.append(eps)
            if adapt:
                rate = step.accept_prob[c:].mean(0)
                eps = eps * torch.exp(opts["adapt_rate"] * (rate - opts["target_accept"])).reshape(eps.shape)
        if bar is not None:
            bar.update(1)
    return {"log_w": log_w, "accept": accept, "step_size": eps.reshape(n), "recorded": recorded}


def _num_adapt_chains(opts):
    """Adaptation chains a forward run needs: none without transitions or with a fixed step size."""
    tuned = opts["adapt_step_size"] or opts["step_size"] is None
    return opts["num_adapt_chains"] if tuned and opts["num_steps"] > 1 else 0


def _jittered(eps, jitter, num_chains):
    """Each chain's step size drawn uniformly from eps * [1 - jitter, 1 + jitter]: a trajectory
    of fixed length can return close to where it started on a Gaussian-like target (a period of
    the dynamics); a random length avoids that, and each draw is a valid HMC kernel."""
    if not jitter:
        return eps
    u = torch.rand((num_chains,) + tuple(eps.shape[1:]), dtype=eps.dtype, device=eps.device)
    return eps * (1.0 + jitter * (2.0 * u - 1.0))


def _estimate(runs, opts, data, bound):
    """An :class:`AISEstimate` from the runs of all data chunks."""
    log_w = torch.cat([r["log_w"] for r in runs], 1)
    num_chains = log_w.shape[0]
    sign = -1.0 if bound == "upper" else 1.0  # reverse weights estimate 1/p(x)
    lse = torch.logsumexp(log_w, 0)
    lse2 = torch.logsumexp(2 * log_w, 0)
    ess = torch.exp(2 * lse - lse2)
    if num_chains > 1:
        mc = ((num_chains / ess - 1).clamp(min=0) / (num_chains - 1)).sqrt()
    else:
        mc = torch.full_like(ess, math.nan)
    transitions = opts["num_steps"] - 1
    accept = torch.cat([r["accept"] for r in runs])
    accept = accept / transitions if transitions else torch.full_like(accept, math.nan)
    dtype = data.dtype if data.dtype.is_floating_point else torch.get_default_dtype()
    return AISEstimate(
        per_datapoint=(sign * (lse - math.log(num_chains))).to(dtype),
        elbo=(sign * log_w.mean(0)).to(dtype),
        ess=ess.to(dtype), mc_stderr=mc.to(dtype), num_samples=num_chains,
        acceptance_rate=accept.to(dtype),
        step_size=torch.cat([r["step_size"] for r in runs]).to(dtype),
        num_steps=opts["num_steps"], num_leapfrog_steps=opts["num_leapfrog_steps"], bound=bound)


# --------------------------------------------------------------------------- densities from traces
class _Programs:
    """The model and guide with their arguments, vectorized over chains."""

    def __init__(self, model, guide, model_args, model_kwargs, max_plate_nesting, x_probe):
        self.model, self.guide = model, guide
        self.args, self.kwargs = model_args, model_kwargs
        if max_plate_nesting is None:
            max_plate_nesting = infer_max_plate_nesting(model, guide, x_probe, model_args, model_kwargs)
        self.max_plate_nesting = max_plate_nesting
        self.validate = True  # Pyro's argument checks (when enabled) run on the first evaluation only

    def trace(self, fn, x, num_chains, values=None):
        """Trace ``fn`` in a plate of ``num_chains`` chains, its sites in ``values`` conditioned."""
        dim = -(self.max_plate_nesting + 1)

        def run(*args, **kwargs):
            with pyro.plate(PARTICLE_PLATE, num_chains, dim=dim):
                return fn(*args, **kwargs)

        program = poutine.condition(run, data=values) if values else run
        context = contextlib.nullcontext() if self.validate else pyro.validation_enabled(False)
        try:
            with context:
                return poutine.trace(program).get_trace(x, *self.args, **self.kwargs)
        except ValueError as e:
            raise plate_collision_error(e, dim, self.max_plate_nesting, "chains") from None


class _Target:
    """log p(x, z), log q(z|x) and the log-Jacobian at unconstrained points u, shape
    ``(C, n, P)``, for one chunk of n datapoints; u0 are the starting points: draws from the
    guide, or the given latent values (each site's value with the chains' dim first)."""

    def __init__(self, programs, x, num_chains, latents=None, noise=None):
        self.programs, self.x = programs, x
        self.shape = (num_chains, x.shape[0])
        mpn = programs.max_plate_nesting
        with noise if noise is not None else contextlib.nullcontext():
            guide_trace = programs.trace(programs.guide, x, num_chains, latents)
        guide_sites = sample_sites(guide_trace)
        values = {}
        for name, site in guide_sites.items():
            if site["is_observed"] and (latents is None or name not in latents):
                raise ValueError(f"the guide has an observed site {name!r}; a guide must not observe data")
            _check_continuous(site, name, "guide")
            values[name] = site["value"]
        model_sites = sample_sites(programs.trace(programs.model, x, num_chains, values))
        for name, site in model_sites.items():
            if name in values:
                _check_continuous(site, name, "model")
            elif not site["is_observed"]:
                raise ValueError(
                    f"the model's latent site {name!r} is not sampled by the guide; the guide must "
                    f"sample every latent site of the model (the guide's sites: {sorted(guide_sites)})")
        for name in values:
            if name not in model_sites:
                raise ValueError(f"the guide samples {name!r}, which the model does not have; the "
                                 "guide may only sample latent sites of the model")
        if not values:
            raise ValueError("the model has no latent site sampled by the guide; AIS needs at least one "
                             "continuous latent site")
        self.sites, parts, offset = [], [], 0
        for name, value in values.items():
            transform = _unconstraining(model_sites[name]["fn"].support, name)
            u = transform.inv(value)
            flat = self._flatten(u, model_sites[name], name, mpn)
            self.sites.append((name, transform, tuple(u.shape), offset, flat.shape[-1],
                               _is_identity(transform)))
            parts.append(flat)
            offset += flat.shape[-1]
        self.u0 = torch.cat(parts, -1).detach()
        # a guide with one latent site: its distribution depends on x alone, so it is traced once
        self.guide_site = None
        if len(values) == 1:
            with pyro.validation_enabled(False):  # no support check of z at every evaluation
                trace = programs.trace(programs.guide, x, num_chains, values)
            (name, site), = sample_sites(trace).items()
            self.guide_site = (name, site)
        self.last = None

    def _flatten(self, u, site, name, mpn):
        """(C, 1.., n, rest..) -> (C, n, prod(rest))."""
        num_chains, n = self.shape
        frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
        batch_rank = len(site["fn"].batch_shape)
        if not frames or frames[0].dim is None or batch_rank != mpn + 1:
            raise ValueError(
                f"the latent site {name!r} must lie inside a vectorized pyro.plate('{DATA_PLATE}') with "
                f"batch dimensions only from plates (batch shape {tuple(site['fn'].batch_shape)} with "
                f"max_plate_nesting={mpn}); move extra batch dimensions into the event with .to_event()")
        axis = mpn + 1 + frames[0].dim
        shape = tuple(u.shape)
        if shape[0] != num_chains or shape[axis] != n or any(s != 1 for s in shape[1:axis]):
            raise ValueError(
                f"the latent site {name!r} has shape {shape}, which does not fit (chains, ..., "
                f"datapoints, ...) with {num_chains} chains and {n} datapoints; plates other than "
                f"'{DATA_PLATE}' must be nested inside it")
        return u.reshape(num_chains, n, -1)

    def log_terms(self, u):
        """log p(x, z), log q(z|x) and log |dz/du| at z = T(u), each of shape (C, n)."""
        num_chains, n = self.shape
        mpn = self.programs.max_plate_nesting
        values = {}
        log_jac = torch.zeros(self.shape, dtype=u.dtype, device=u.device)
        for name, transform, shape, offset, size, identity in self.sites:
            us = u[..., offset:offset + size].reshape(shape)
            z = transform(us)
            if not identity:
                log_jac = log_jac + transform.log_abs_det_jacobian(us, z).reshape(num_chains, n, -1).sum(-1)
            values[name] = z
        p = self.programs
        log_p = sum(site_log_prob(site, name, "model", self.shape, mpn)
                    for name, site in sample_sites(p.trace(p.model, self.x, num_chains, values)).items())
        if self.guide_site is not None:
            name, site = self.guide_site
            log_q = site_log_prob(dict(site, value=values[name]), name, "guide", self.shape, mpn)
        else:
            log_q = sum(site_log_prob(site, name, "guide", self.shape, mpn)
                        for name, site in sample_sites(p.trace(p.guide, self.x, num_chains, values)).items())
        p.validate = False
        return log_p, log_q, log_jac

    def potential(self, beta):
        """-log gamma_beta(u) = -(log|J| + (1 - beta) log q + beta log p), per chain; the last
        evaluation's (log p, log q) are kept in ``self.last``."""

        def energy(u):
            log_p, log_q, log_jac = self.log_terms(u)
            self.last = (log_p.detach(), log_q.detach())
            return -(log_jac + (1.0 - beta) * log_q + beta * log_p)

        return energy

    def check_finite(self, log_ratio):
        if torch.isnan(log_ratio).any():
            bad = torch.isnan(log_ratio).any(0).nonzero().flatten()[:5].tolist()
            raise ValueError(f"log p(x, z) - log q(z|x) is NaN for datapoints {bad} of the chunk; check "
                             "that the data lie in the support of the likelihood and that the guide's "
                             "parameters are finite")


def _check_continuous(site, name, role):
    support = site["fn"].support
    if support.is_discrete:
        raise ValueError(
            f"the {role}'s latent site {name!r} is discrete ({type(site['fn']).__name__}); AIS moves the "
            "latents by HMC, which needs continuous ones: sum the discrete site out of the model (e.g. "
            "with MixtureSameFamily) or estimate log p(x) by importance sampling (log_likelihood)")


def _unconstraining(support, name):
    """``biject_to(support)``, looking through the wrapper of a mixture's support."""
    wrapper = getattr(constraints, "MixtureSameFamilyConstraint", None)
    while wrapper is not None and isinstance(support, wrapper):
        support = support.base_constraint
    try:
        return biject_to(support)
    except NotImplementedError:
        raise ValueError(f"the latent site {name!r} has support {support}, which has no bijection to "
                         "unconstrained space (torch.distributions.biject_to); register one or "
                         "reparameterize the site") from None


def _is_identity(transform):
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


# --------------------------------------------------------------------------- BDMC pieces
def _simulate(model, model_args, model_kwargs, max_plate_nesting, placeholder):
    """Data and latents drawn from the model: ``(data, latents, padded, data_axes,
    max_plate_nesting)`` -- the latents as the trace holds them, and with their batch padded to
    ``max_plate_nesting + 1`` dims, the first of size 1 for the chains (the data plate's axis in
    ``data_axes``)."""
    trace = poutine.trace(poutine.uncondition(model)).get_trace(placeholder, *model_args, **model_kwargs)
    sites = sample_sites(trace)
    observed = [name for name, site in sites.items() if site["infer"].get("was_observed")]
    if len(observed) != 1:
        raise ValueError(f"bdmc needs a model with exactly one observed site (obs=x), got "
                         f"{len(observed)} ({observed}); simulate the data yourself and use "
                         "ais_log_likelihood for the lower bound")
    for name, site in sites.items():
        if name != observed[0]:
            _check_continuous(site, name, "model")
    data = sites[observed[0]]["value"]
    if tuple(data.shape) != tuple(placeholder.shape):
        raise ValueError(f"the model's observed site {observed[0]!r} has shape {tuple(data.shape)}, not the "
                         f"data shape {tuple(placeholder.shape)}; bdmc needs obs=x with x the data argument")
    latents, padded, axes = {}, {}, {}
    if max_plate_nesting is None:
        max_plate_nesting = max([-f.dim for s in sites.values() for f in s["cond_indep_stack"]
                                 if f.vectorized], default=1)
    for name, site in sites.items():
        if name == observed[0]:
            continue
        frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
        batch_rank = len(site["fn"].batch_shape)
        if not frames or frames[0].dim is None or batch_rank > max_plate_nesting:
            raise ValueError(f"the model's latent site {name!r} is not inside a vectorized "
                             f"pyro.plate('{DATA_PLATE}') or has more batch dimensions than "
                             f"max_plate_nesting={max_plate_nesting}")
        value = site["value"].detach()
        latents[name] = value
        # pad the batch to max_plate_nesting + 1 dims: the chains' plate goes in front
        padded[name] = value.reshape((1,) * (max_plate_nesting + 1 - batch_rank) + tuple(value.shape))
        axes[name] = max_plate_nesting + 1 + frames[0].dim
    return data.detach(), latents, padded, axes, max_plate_nesting


# --------------------------------------------------------------------------- argument checks
def _check_options(num_steps, num_chains, num_leapfrog_steps, schedule, step_size, adapt_step_size,
                   target_accept, adapt_rate, step_size_jitter, num_adapt_chains, data_batch_size,
                   progress):
    num_steps = check_positive_int(num_steps, "num_steps")
    opts = {
        "num_steps": num_steps,
        "num_chains": check_positive_int(num_chains, "num_chains"),
        "num_leapfrog_steps": check_positive_int(num_leapfrog_steps, "num_leapfrog_steps"),
        "betas": annealing_schedule(num_steps, schedule),
        "step_size": None if step_size is None else check_positive_float(step_size, "step_size"),
        "adapt_step_size": check_bool(adapt_step_size, "adapt_step_size"),
        "target_accept": check_float(target_accept, "target_accept", 0.0, 1.0),
        "adapt_rate": check_float(adapt_rate, "adapt_rate", 0.0),
        "step_size_jitter": check_float(step_size_jitter, "step_size_jitter", 0.0),
        "num_adapt_chains": check_positive_int(num_adapt_chains, "num_adapt_chains"),
        "data_batch_size": None if data_batch_size is None
        else check_positive_int(data_batch_size, "data_batch_size"),
        "progress": check_bool(progress, "progress"),
    }
    if not opts["step_size_jitter"] < 1:
        raise ValueError(f"step_size_jitter must be below 1 (step sizes drawn from eps * [1 - j, 1 + j]), "
                         f"got {opts['step_size_jitter']:g}")
    if not 0 < opts["target_accept"] < 1:
        raise ValueError(f"target_accept must be strictly between 0 and 1, got {opts['target_accept']:g}")
    return opts


def _data_batch_size(opts, n, data, num_chains):
    return chunk_sizes(num_chains, n, max(1, data[0].numel()), num_chains, opts["data_batch_size"])[1]


def _check_data_shape(data_shape):
    if isinstance(data_shape, int) and not isinstance(data_shape, bool):
        raise TypeError(f"data_shape must be the full shape (N, ...) of the data argument, e.g. "
                        f"({data_shape}, 784), got the integer {data_shape}")
    if not isinstance(data_shape, (tuple, list, torch.Size)) or not data_shape:
        raise TypeError(f"data_shape must be a tuple (N, ...) such as (100, 784), got {data_shape!r}")
    return tuple(check_positive_int(s, "each entry of data_shape") for s in data_shape)


def _progress_bar(progress, total, desc):
    if not progress or not sys.stderr.isatty():
        return contextlib.nullcontext()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)
