"""How noisy is each estimator of the ELBO's gradient: :func:`gradient_variance`.

A model with a discrete latent (such as the component y of a
:class:`~pyro_vae.mixture_vae.MixtureVAE`) can be trained with several estimators of the same
gradient, which differ only in their variance (and cost):

* ``"trace"`` -- :class:`pyro.infer.Trace_ELBO`: the score function of each sampled discrete
  site, weighted by the whole ELBO term of its plate slice;
* ``"tracegraph"`` -- :class:`pyro.infer.TraceGraph_ELBO`: weighted by the downstream cost only
  (terms that depend on the site's value), minus the baseline the guide declares at the site;
* ``"enum"`` -- :class:`pyro.infer.TraceEnum_ELBO`: an exact sum over the sites the guide marks
  ``infer={"enumerate": "parallel"}``.

:func:`gradient_moments` draws the gradient of one estimator many times at fixed parameters
(seeded) and keeps its mean and variance per coordinate; :func:`gradient_variance` does so for
several estimators and reports, per estimator and parameter group, the total variance (the
sum over coordinates), the squared norm of the mean gradient and the ratio of the variance to
that of a reference estimator (``"enum"``, exact in the discrete sites). Gradients are those of
the loss, minus the ELBO per datapoint (the sum over the data passed, divided by their number),
with respect to the unconstrained parameters (as an optimizer sees them).

Stateful baselines are warmed up first: ``warmup`` draws of each ``"tracegraph"`` estimator
update the decaying averages and take Adam steps on ``warmup_params`` (a neural baseline's
parameters, trained by its baseline loss); only then are the draws recorded. Everything is put
back afterwards: the parameters, their gradients, the baseline state in Pyro's param store and
torch's random state.
"""

import contextlib
import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

import pyro
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO

from pyro_vae.checks import (as_data_tensor, check_callable, check_choice, check_int, check_positive_float,
                             check_positive_int, check_program_args, check_seed, fork_rng)
from pyro_vae.importance import infer_max_plate_nesting, program_dtype
from pyro_vae.program_pair import BASELINE_STATE_PREFIX
from pyro_vae.training import guide_for_objective

__all__ = ["gradient_variance", "gradient_moments", "GradientMoments", "ESTIMATORS", "GRADIENT_COLUMNS"]

#: estimators by name: the ELBO class each uses
ESTIMATORS = {"trace": Trace_ELBO, "tracegraph": TraceGraph_ELBO, "enum": TraceEnum_ELBO}

#: columns of :func:`gradient_variance`
GRADIENT_COLUMNS = ["estimator", "objective", "group", "num_parameters", "total_variance",
                    "mean_grad_sq_norm", "variance_ratio", "elbo", "seconds_per_draw"]


@dataclass
class GradientMoments:
    """Mean and variance of an estimator's gradient per coordinate, over repeated draws.

    :ivar dict mean: group name -> mean gradient, float64 tensor ``(P_g,)`` (the group's
        parameters flattened and concatenated in order).
    :ivar dict variance: group name -> variance per coordinate (``n - 1`` in the denominator),
        float64 tensor ``(P_g,)``.
    :ivar int num_draws: draws recorded.
    :ivar float elbo: mean ELBO per datapoint over the draws.
    :ivar float seconds_per_draw: wall-clock time of one draw (forward and backward).
    """

    mean: dict
    variance: dict
    num_draws: int
    elbo: float
    seconds_per_draw: float

    def total_variance(self, group):
        """Sum of the variances of the group's coordinates (the trace of the covariance)."""
        return float(self.variance[group].sum())

    def mean_sq_norm(self, group):
        """Squared Euclidean norm of the group's expected gradient, estimated without bias: the
        squared norm of the sample mean, less the part its noise adds (``total_variance / n``).
        It can come out negative when the gradient is small next to its noise."""
        return float(self.mean[group].square().sum() - self.variance[group].sum() / self.num_draws)


def gradient_moments(model, guide, data, groups, objective="trace", *, num_draws=100, warmup=0,
                     warmup_params=None, warmup_lr=1e-2, num_particles=1, max_plate_nesting=None,
                     seed=0, model_args=(), model_kwargs=None):
    """Draw one estimator's gradient ``num_draws`` times at fixed parameters.

    :param callable model: the Pyro model, called as ``model(x, *model_args, **model_kwargs)``.
    :param callable guide: the Pyro guide, called the same way.
    :param data: the data ``x`` (tensor or numpy array ``(N, ...)``), the same for every draw.
    :param dict groups: group name -> the parameters of the group: a list of tensors
        (``nn.Parameter``), names in Pyro's param store, or an ``nn.Module`` (its parameters).
        Names are looked up after a first run of the programs.
    :param str objective: ``"trace"``, ``"tracegraph"`` or ``"enum"``.
    :param int num_draws: gradients recorded (at least 2).
    :param int warmup: draws before recording, for ``"tracegraph"`` (decaying averages,
        ``warmup_params``); other objectives have no state to warm up.
    :param warmup_params: parameters trained by Adam during the warm-up (a neural baseline's),
        same forms as a group; restored afterwards.
    :param float warmup_lr: Adam's learning rate for ``warmup_params``.
    :param int num_particles: samples per draw (the ELBO's ``num_particles``).
    :param int max_plate_nesting: plate dimensions of the programs (default: found on a first run).
    :param int seed: seed of the draws; torch's global random state is restored afterwards.
    :param tuple model_args: further positional arguments of both programs.
    :param dict model_kwargs: keyword arguments of both programs.
    :returns: :class:`GradientMoments`.
    """
    objective = check_choice(objective, "objective", tuple(ESTIMATORS))
    draws = _draw_settings(num_draws, warmup, warmup_lr, num_particles, seed)
    run = _Runner(model, guide, data, groups, warmup_params, max_plate_nesting, model_args, model_kwargs)
    with run.restoring():
        return run.moments(objective, guide, **draws)


def gradient_variance(model, guide=None, data=None, groups=None, estimators=None, *, reference="enum",
                      num_draws=100, warmup=200, warmup_params=None, warmup_lr=1e-2, num_particles=1,
                      max_plate_nesting=None, seed=0, model_args=(), model_kwargs=None):
    """The variance of each estimator's gradient per parameter group, at fixed parameters.

    Two forms:

    * ``gradient_variance(model, guide, data, groups, estimators)``: any Pyro program pair;
    * ``gradient_variance(module, data)``: a module with ``model``/``guide`` methods and
      ``parameter_groups()``, such as :class:`~pyro_vae.mixture_vae.MixtureVAE`; its
      ``gradient_estimators()`` (when it has one) gives the estimators and its
      ``baseline_parameters()`` the warm-up parameters.

    :param model: the Pyro model, or the module.
    :param guide: the Pyro guide; for a module, the data.
    :param data: the data ``x`` ``(N, ...)``, the same for every draw.
    :param dict groups: group name -> parameters (see :func:`gradient_moments`).
    :param estimators: the estimators compared: names (``"trace"``, ``"tracegraph"``,
        ``"enum"``; default all three) or a dict label -> name or ``(name, guide)``, the guide
        replacing ``guide`` for that estimator (e.g. the same guide with another baseline).
    :param str reference: label of the estimator the variances are divided by (``None``: no
        ratio).
    :param int num_draws: gradients drawn per estimator.
    :param int warmup: draws before recording for ``"tracegraph"`` estimators (see
        :func:`gradient_moments`).
    :param warmup_params: parameters trained during the warm-up (a neural baseline's).
    :param float warmup_lr: Adam's learning rate for them.
    :param int num_particles: samples per draw.
    :param int max_plate_nesting: plate dimensions of the programs (default: found on a first run).
    :param int seed: seed of the draws (each estimator starts from it).
    :param tuple model_args: further positional arguments of both programs.
    :param dict model_kwargs: keyword arguments of both programs.
    :returns: :class:`pandas.DataFrame`, one row per (estimator, group), columns
        :data:`GRADIENT_COLUMNS`: ``total_variance`` (sum over the group's coordinates of the
        variance of the gradient), ``mean_grad_sq_norm`` (squared norm of the expected gradient,
        estimated without bias, :meth:`GradientMoments.mean_sq_norm`),
        ``variance_ratio`` (``total_variance`` over the reference's, for the same group),
        ``elbo`` (mean ELBO per datapoint over the draws), ``seconds_per_draw``.
        ``attrs["moments"]`` holds the :class:`GradientMoments` by label.
    """
    if isinstance(model, nn.Module) and callable(getattr(model, "parameter_groups", None)) \
            and not callable(guide):
        module = model
        if guide is not None and data is not None:
            raise ValueError(f"gradient_variance({type(module).__name__}, data) takes the module's own "
                             "programs; for other ones call gradient_variance(model, guide, data, groups)")
        data = guide if guide is not None else data
        model, guide = module.model, module.guide
        groups = module.parameter_groups() if groups is None else groups
        if estimators is None and callable(getattr(module, "gradient_estimators", None)):
            estimators = module.gradient_estimators()
        if warmup_params is None and callable(getattr(module, "baseline_parameters", None)):
            warmup_params = module.baseline_parameters()
    if data is None:
        raise TypeError("gradient_variance needs data: gradient_variance(model, guide, data, groups) or "
                        "gradient_variance(module, data)")
    if not isinstance(groups, dict) or not groups:
        raise TypeError("groups must be a non-empty dict: group name -> parameters (tensors, param store "
                        f"names or a module), got {type(groups).__name__}")
    specs = _estimator_specs(estimators, guide)
    if reference is not None and reference not in specs:
        raise ValueError(f"reference {reference!r} is not one of the estimators {sorted(specs)}; pass "
                         "reference=None for no ratio")
    draws = _draw_settings(num_draws, warmup, warmup_lr, num_particles, seed)
    run = _Runner(model, guide, data, groups, warmup_params, max_plate_nesting, model_args, model_kwargs)
    moments = {}
    with run.restoring():
        for label, (objective, est_guide) in specs.items():
            moments[label] = run.moments(objective, est_guide, **draws)
    rows = []
    for label, m in moments.items():
        for group in run.groups:
            total = m.total_variance(group)
            ref = moments[reference].total_variance(group) if reference is not None else math.nan
            rows.append({"estimator": label, "objective": specs[label][0], "group": group,
                         "num_parameters": int(m.mean[group].numel()), "total_variance": total,
                         "mean_grad_sq_norm": m.mean_sq_norm(group),
                         "variance_ratio": total / ref if ref > 0 else (1.0 if total == ref else math.inf),
                         "elbo": m.elbo, "seconds_per_draw": m.seconds_per_draw})
    frame = pd.DataFrame(rows, columns=GRADIENT_COLUMNS)
    if reference is None:
        frame["variance_ratio"] = math.nan
    frame.attrs["moments"] = moments
    frame.attrs["reference"] = reference
    return frame


def _draw_settings(num_draws, warmup, warmup_lr, num_particles, seed):
    """The checked settings of the draws, as keyword arguments of :meth:`_Runner.moments`."""
    return {"num_draws": check_int(num_draws, "num_draws", minimum=2),
            "warmup": check_int(warmup, "warmup", minimum=0),
            "warmup_lr": check_positive_float(warmup_lr, "warmup_lr"),
            "num_particles": check_positive_int(num_particles, "num_particles"),
            "seed": check_seed(seed, allow_none=False)}


def _estimator_specs(estimators, guide):
    """label -> (objective, guide)."""
    if estimators is None:
        estimators = tuple(ESTIMATORS)
    if isinstance(estimators, str):
        estimators = (estimators,)
    if not isinstance(estimators, dict):
        if not isinstance(estimators, (tuple, list)) or not estimators:
            raise TypeError("estimators must be a list of names or a dict label -> name or (name, guide), "
                            f"got {type(estimators).__name__}")
        estimators = {name: name for name in estimators}
    specs = {}
    for label, spec in estimators.items():
        if isinstance(spec, str):
            objective, est_guide = spec, guide
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            objective, est_guide = spec
            check_callable(est_guide, f"the guide of estimator {label!r}")
        else:
            raise TypeError(f"estimator {label!r} must be a name or a (name, guide) pair, got {spec!r}")
        specs[str(label)] = (check_choice(objective, f"the objective of estimator {label!r}",
                                          tuple(ESTIMATORS)), est_guide)
    return specs


class _Runner:
    """The fixed setting of the draws: programs, data, groups; what to restore afterwards."""

    def __init__(self, model, guide, data, groups, warmup_params, max_plate_nesting, model_args, model_kwargs):
        self.model = check_callable(model, "model")
        check_callable(guide, "guide")
        self.args, self.kwargs = check_program_args(model_args, model_kwargs)
        data = as_data_tensor(data, "data")
        dtype = program_dtype(model, guide, data, self.args, self.kwargs)
        if dtype is not None and data.is_floating_point() and data.dtype != dtype:
            data = data.to(dtype)
        self.x = data
        self.scale = 1.0 / data.shape[0]
        if max_plate_nesting is None:
            max_plate_nesting = infer_max_plate_nesting(model, guide, data, self.args, self.kwargs)
        self.max_plate_nesting = check_positive_int(max_plate_nesting, "max_plate_nesting")
        # a first run creates the parameters the names refer to
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            tr = poutine.trace(guide).get_trace(data, *self.args, **self.kwargs)
            poutine.trace(poutine.replay(model, trace=tr)).get_trace(data, *self.args, **self.kwargs)
        self.groups = {str(name): _resolve(params, f"group {name!r}") for name, params in groups.items()}
        for name, params in self.groups.items():
            if not params:
                raise ValueError(f"group {name!r} has no parameters")
        self.warmup_params = [] if warmup_params is None else _resolve(warmup_params, "warmup_params")
        store = dict(pyro.get_param_store().named_parameters())
        seen, every = set(), []
        for p in [p for ps in self.groups.values() for p in ps] + self.warmup_params + list(store.values()):
            if id(p) not in seen:
                seen.add(id(p))
                every.append(p)
        self.every = every

    @contextlib.contextmanager
    def restoring(self):
        """Put back parameters, gradients and the baseline state of Pyro's param store."""
        store = pyro.get_param_store()
        values = [p.detach().clone() for p in self.warmup_params]
        grads = [p.grad for p in self.every]
        state = {k: store[k].detach().clone() for k in store.keys() if k.startswith(BASELINE_STATE_PREFIX)}
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.warmup_params, values):
                    p.copy_(v)
            for p, g in zip(self.every, grads):
                p.grad = g
            self._clear_state()
            for k, v in state.items():
                store[k] = v

    def _clear_state(self):
        store = pyro.get_param_store()
        for k in [k for k in store.keys() if k.startswith(BASELINE_STATE_PREFIX)]:
            del store[k]

    def _zero(self):
        for p in self.every:
            p.grad = None

    def moments(self, objective, guide, num_draws, warmup, warmup_lr, num_particles, seed):
        elbo = ESTIMATORS[objective](num_particles=num_particles, max_plate_nesting=self.max_plate_nesting,
                                     vectorize_particles=num_particles > 1)
        model = poutine.scale(self.model, scale=self.scale)
        guide = poutine.scale(guide_for_objective(guide, objective), scale=self.scale)
        self._clear_state()
        values = [p.detach().clone() for p in self.warmup_params]
        stats = {name: _Welford() for name in self.groups}
        loss_total = 0.0
        device = self.x.device if self.x.device.type == "cuda" else None
        if objective == "tracegraph" and warmup:
            # the warm-up draws from a stream of its own, so that the recorded draws are the same
            # with or without it (and the same for every estimator that samples alike)
            warm_seed = int(torch.randint(2 ** 62, (), generator=torch.Generator().manual_seed(seed)))
            opt = torch.optim.Adam(self.warmup_params, lr=warmup_lr) if self.warmup_params else None
            with fork_rng(warm_seed, device):
                for _ in range(warmup):
                    self._zero()
                    elbo.loss_and_grads(model, guide, self.x, *self.args, **self.kwargs)
                    if opt is not None:
                        opt.step()
        with fork_rng(seed, device):
            t0 = time.perf_counter()
            for _ in range(num_draws):
                self._zero()
                loss_total += elbo.loss_and_grads(model, guide, self.x, *self.args, **self.kwargs)
                for name, params in self.groups.items():
                    stats[name].add(torch.cat([p.grad.reshape(-1) if p.grad is not None
                                               else torch.zeros(p.numel(), device=p.device, dtype=p.dtype)
                                               for p in params]))
            seconds = (time.perf_counter() - t0) / num_draws
        with torch.no_grad():  # every estimator starts from the same baseline network
            for p, v in zip(self.warmup_params, values):
                p.copy_(v)
        self._zero()
        return GradientMoments(mean={k: s.mean for k, s in stats.items()},
                               variance={k: s.variance() for k, s in stats.items()},
                               num_draws=num_draws, elbo=-loss_total / num_draws, seconds_per_draw=seconds)


class _Welford:
    """Running mean and sum of squared deviations (Welford), in float64."""

    def __init__(self):
        self.n = 0
        self.mean = None
        self.m2 = None

    def add(self, v):
        v = v.detach().to(torch.float64)
        self.n += 1
        if self.mean is None:
            self.mean = v.clone()
            self.m2 = torch.zeros_like(v)
            return
        delta = v - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (v - self.mean)

    def variance(self):
        return self.m2 / (self.n - 1)


def _resolve(params, what):
    """Parameters given as tensors, param-store names or a module -> list of leaf tensors."""
    if isinstance(params, nn.Module):
        return list(params.parameters())
    if isinstance(params, (torch.Tensor, str)):
        params = [params]
    store = dict(pyro.get_param_store().named_parameters())
    out = []
    for p in params:
        if isinstance(p, str):
            if p not in store:
                raise ValueError(f"{what}: no parameter {p!r} in Pyro's param store (the programs create "
                                 f"{sorted(store)})")
            p = store[p]
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise TypeError(f"{what} must hold parameters (tensors that require gradients), param-store "
                            f"names or a module; got {type(p).__name__}")
        out.append(p)
    return out
