"""Training Pyro programs by stochastic variational inference: :func:`fit`.

:func:`fit` runs minibatch SVI with Adam on

* a :class:`~pyro_vae.VAE`, the short form ``fit(vae, data)``, or
* any pair of Pyro programs that follow the data-plate convention, ``fit(model, guide, data)``
  (see :mod:`pyro_vae.program_pair`): the data are the first argument(s) of both programs, and
  every per-datapoint site lies inside ``pyro.plate("data", ...)``.

The objective is chosen by name:

* ``"trace"`` -- :class:`pyro.infer.Trace_ELBO`;
* ``"tracegraph"`` -- :class:`pyro.infer.TraceGraph_ELBO` (Rao-Blackwellized score-function
  terms for non-reparameterizable sites, with the baselines the guide declares through
  ``infer={"baseline": {...}}``: a neural baseline registered with ``pyro.module`` is trained
  with everything else, a decaying average is kept in the checkpoints);
* ``"meanfield"`` -- :class:`pyro.infer.TraceMeanField_ELBO` (analytic KL(q || p) where one is
  registered, e.g. a Gaussian guide and prior; the Monte Carlo term log q(z) - log p(z) where
  none is, e.g. a Laplace prior);
* ``"enum"`` -- :class:`pyro.infer.TraceEnum_ELBO`, which sums exactly over the discrete sites
  marked ``infer={"enumerate": "parallel"}`` (in the guide, or in the model for sites the guide
  does not sample);
* ``"iwae"`` -- the importance-weighted bound of Burda et al. (2016) with ``num_particles``
  samples, computed per datapoint (see :mod:`pyro_vae.importance`).

The loss is scaled to nats per datapoint. A minibatch of ``B`` points out of ``N`` counts
``N / B`` times, exactly the sites inside the ``"data"`` plate and not the global ones, so each
step's objective is an unbiased estimate of the full-data objective. Checkpoints
(:mod:`pyro_vae.checkpoints`) are written atomically after every epoch, and resuming from one
reproduces the uninterrupted run exactly on CPU.

Under ``torchrun --nproc-per-node=W`` the same call trains data-parallel on ``W`` processes
(:mod:`pyro_vae.data_parallel`): each takes its share of every minibatch, gradients are summed
with all-reduce, only rank 0 writes files, and the parameters equal those of a one-process run
with the same ``batch_size`` and seed up to rounding.
"""

import contextlib
import logging
import math
import os
import sys
import time

import pandas as pd
import torch

import pyro
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from pyro_vae import checkpoints, storage
from pyro_vae.checks import (as_data_tensor, check_bool, check_choice, check_float, check_int,
                             check_positive_float, check_positive_int, check_seed, resolve_device)
from pyro_vae.data_parallel import Replicas
from pyro_vae.program_pair import BASELINE_STATE_PREFIX, ProgramPair, program_data
from pyro_vae.vae import VAE, AmortizedGuide

__all__ = ["fit", "OBJECTIVES", "LR_SCHEDULES", "HISTORY_COLUMNS", "DivergenceError", "evaluate_elbo",
           "kl_weight", "adam", "guide_for_objective"]

log = logging.getLogger(__name__)

OBJECTIVES = ("trace", "tracegraph", "meanfield", "enum", "iwae")
LR_SCHEDULES = (None, "cosine", "exponential")
HISTORY_COLUMNS = ("epoch", "train_elbo", "val_elbo", "beta", "lr", "seconds")


class DivergenceError(FloatingPointError, ValueError):
    """The training diverged: the loss or the held-out ELBO became NaN or infinite.

    A :class:`FloatingPointError` and a :class:`ValueError` (a setting to change, not a bug):
    the command line reports it as one line with exit code 2.
    """


# --------------------------------------------------------------------------- small pieces
def kl_weight(step, steps_per_epoch, kl_warmup, target=1.0):
    """The KL weight at a training step under linear KL warm-up.

    :param int step: the step, counted from 1 over the whole run.
    :param int steps_per_epoch: minibatches per epoch.
    :param int kl_warmup: epochs over which the weight rises linearly from 0 to ``target``
        (0: no warm-up, always ``target``).
    :param float target: the weight after the warm-up (the VAE's ``beta``; 1 for programs).
    :returns: ``target * min(1, step / (kl_warmup * steps_per_epoch))`` (float).
    """
    if not kl_warmup:
        return float(target)
    return float(target) * min(1.0, step / (kl_warmup * steps_per_epoch))


def adam(params, lr):
    """``torch.optim.Adam`` with the fused kernel where this torch and the parameters allow it.

    The fused kernel updates every parameter in one pass (one kernel per step instead of about
    ten per tensor); it is the same algorithm, equal to the per-tensor loop up to rounding.
    Older torch releases (fused Adam on CPU arrived in 2.4) and dtypes it does not cover get
    the per-tensor loop.

    :param list params: the parameters to optimize.
    :param float lr: learning rate.
    :returns: :class:`torch.optim.Adam`.
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


@torch.no_grad()
def evaluate_elbo(vae, data, batch_size=1000, objective="trace"):
    """The ELBO (with beta = 1) of a VAE per datapoint, one sample of z per datapoint.

    :param VAE vae: the model.
    :param torch.Tensor data: data, shape ``(N, D)``, on the model's device.
    :param int batch_size: datapoints per forward pass.
    :param str objective: ``"meanfield"`` (analytic KL where available) or any other objective
        name (Monte Carlo KL).
    :returns: mean ELBO per datapoint (float).
    """
    elbo = TraceMeanField_ELBO() if objective == "meanfield" else Trace_ELBO()
    beta, vae.beta = vae.beta, 1.0
    try:
        total = 0.0
        for i in range(0, data.shape[0], batch_size):
            xb = data[i:i + batch_size]
            total += -elbo.loss(vae.model, vae.guide, xb)
    finally:
        vae.beta = beta
    return total / data.shape[0]


# --------------------------------------------------------------------------- the VAE's fast path
class _VAEPair:
    """A :class:`VAE` as fit trains it: its parameters directly (``vae.parameters()``), the guide
    as an effect handler for ``trace`` / ``meanfield`` (one program run per step), the modules
    registered in Pyro's param store once instead of on every step."""

    kind = "vae"

    def __init__(self, vae, objective, num_particles, vectorize_particles):
        self.vae = vae
        self.objective = objective
        self.num_particles = num_particles
        self.params = list(vae.parameters())
        self.kl_target = vae.beta
        self.has_z = True
        if objective == "iwae":
            from pyro_vae.importance import log_weights

            self._log_weights = log_weights
            return
        cls = {"trace": Trace_ELBO, "tracegraph": TraceGraph_ELBO, "meanfield": TraceMeanField_ELBO,
               "enum": TraceEnum_ELBO}[objective]
        self.elbo = cls(num_particles=num_particles, max_plate_nesting=1,
                        vectorize_particles=vectorize_particles and num_particles > 1)
        # trace / meanfield: q(z|x) as an effect handler, one program run per step instead of a
        # guide run and a model replay (the same ELBO; see vae.AmortizedGuide), unless a
        # subclass wrote a guide program of its own
        own_guide = type(vae).guide is not VAE.guide
        self.guide = vae.guide if objective in ("tracegraph", "enum") or own_guide else AmortizedGuide(vae)
        self._scaled_for = None

    def named(self):
        return self.vae.state_dict()

    def set_kl_weight(self, weight):
        self.vae.beta = weight

    def training(self):
        stack = contextlib.ExitStack()
        if self.objective != "tracegraph":  # TraceGraph_ELBO.loss_and_grads needs the param sites
            stack.enter_context(self.vae._registration_off())  # pyro.module once, not on every step
        return stack

    def train(self, mode=True):
        self.vae.train(mode)

    def evaluate(self, val):
        return evaluate_elbo(self.vae, val[0], objective=self.objective)

    def step(self, batch, num_data):
        x = batch[0]
        if self.objective == "iwae":
            logw = self._log_weights(self.vae.model, self.vae.guide, x, self.num_particles)  # (K, B)
            bound = torch.logsumexp(logw, 0) - math.log(logw.shape[0])
            loss = -bound.sum() / x.shape[0]
            loss.backward()
            return loss.item()
        if self.objective != "tracegraph":
            # the surrogate loss, differentiated here; dividing by num_data after the sum gives
            # nats per datapoint without extra Pyro handlers
            loss = self.elbo.differentiable_loss(self.vae.model, self.guide, x, num_data=num_data)
            loss = loss / num_data
            loss.backward()
            return loss.item()
        if self._scaled_for != num_data:  # model and guide scaled by 1 / num_data, once per size
            scale = 1.0 / num_data
            self._scaled = (pyro.poutine.scale(self.vae.model, scale=scale),
                            pyro.poutine.scale(self.vae.guide, scale=scale))
            self._scaled_for = num_data
        return self.elbo.loss_and_grads(*self._scaled, x, num_data=num_data)


def _vae_data(data, vae, name, device):
    data = as_data_tensor(data, name, dim=2, features=vae.data_dim, dtype=next(vae.parameters()).dtype,
                          device=device)
    return (data,)


# --------------------------------------------------------------------------- the training loop
class _Trainer:
    """The state of one run of :func:`fit` and its pieces: :meth:`restore` from a checkpoint,
    :meth:`run_epoch`, :meth:`checkpoint_state`, and :meth:`run`, which strings them together.

    :param pair: ``_VAEPair`` or :class:`~pyro_vae.program_pair.ProgramPair` (``params``,
        ``named()``, ``step``, ``evaluate``, ``set_kl_weight``, ``training()``, ``train()``).
    :param tuple data: training tensors, ``N`` rows each, on ``replicas.device``.
    :param dict settings: the run's settings (see :func:`fit`).
    :param Replicas replicas: the processes of the job.
    """

    def __init__(self, pair, data, settings, replicas, val_data=None):
        self.pair = pair
        self.data = data
        self.val_data = val_data
        self.settings = settings
        self.tag = None  # stored in the checkpoints; a resume needs the same
        self.replicas = replicas
        self.device = replicas.device
        self.n = data[0].shape[0]
        self.batch_size = settings["batch_size"]
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)
        self.optimizer = adam(pair.params, settings["lr"])
        schedule = settings["lr_schedule"]
        self.scheduler = None
        if schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=settings["epochs"])
        elif schedule == "exponential":
            self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=settings["lr_decay"])
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(settings["seed"])
        self.rows = []
        self.epoch = 0  # epochs done
        self.best = {"elbo": -math.inf, "epoch": 0, "state": None}
        self._validate = pyro.infer.util.is_validation_enabled()

    # ------------------------------------------------------------------ pieces
    def restore(self, ck, path):
        """Continue from a loaded checkpoint (checked by :func:`pyro_vae.checkpoints.restore`)."""
        self.epoch, self.rows, self.best, state = checkpoints.restore(
            ck, path, named=self.pair.named(), optimizer=self.optimizer, scheduler=self.scheduler,
            generator=self.gen, device=self.device, history_columns=HISTORY_COLUMNS,
            settings=self.settings, tag=self.tag)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            # more epochs than the run was written for: the decay now ends at the new last epoch
            self.scheduler.T_max = self.settings["epochs"]
        store = pyro.get_param_store()
        for name, value in state.items():
            store[name] = value.to(self.device)
        log.info("resuming from %s after epoch %d", path, self.epoch)

    def checkpoint_state(self):
        """The checkpoint after the epochs done (:func:`pyro_vae.checkpoints.make_checkpoint`).

        Its tensors share memory with the run: write it (or copy it) before training on."""
        store = pyro.get_param_store()
        objective_state = {name: store[name].detach() for name in store.keys()
                           if name.startswith(BASELINE_STATE_PREFIX)}
        return checkpoints.make_checkpoint(
            epoch=self.epoch, named=self.pair.named(), optimizer=self.optimizer, scheduler=self.scheduler,
            generator=self.gen, device=self.device, history_columns=HISTORY_COLUMNS, rows=self.rows,
            best=self.best, settings=self.settings, objective_state=objective_state, tag=self.tag)

    def stopped_early(self):
        """Whether early stopping has ended the run (``patience`` epochs without a better ELBO)."""
        patience = self.settings["patience"]
        return patience is not None and self.epoch - self.best["epoch"] >= patience

    def run_epoch(self, validate_first=False):
        """Train one epoch (one pass over the data in seeded minibatches) and record its row.

        :param bool validate_first: run the first step with Pyro's validation setting as it
            is (the other steps run without argument checks).
        :returns: the history row (dict).
        """
        t0 = time.perf_counter()
        s = self.settings
        pair, gen, optimizer, params = self.pair, self.gen, self.optimizer, self.pair.params
        pair.train(True)
        perm = torch.randperm(self.n, generator=gen, device=self.device)
        total = 0.0
        beta = pair.kl_target
        for b in range(self.steps_per_epoch):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            batch = tuple(t[idx] for t in self.data)
            if s["binarize"]:
                batch = (torch.bernoulli(batch[0], generator=gen),) + batch[1:]
            if s["kl_warmup"]:
                beta = kl_weight(self.epoch * self.steps_per_epoch + b + 1, self.steps_per_epoch,
                                 s["kl_warmup"], pair.kl_target)
                pair.set_kl_weight(beta)
            optimizer.zero_grad(set_to_none=True)
            first = validate_first and b == 0
            with contextlib.nullcontext() if not first else pyro.validation_enabled(self._validate):
                loss = self.replicas.step(pair.step, batch, self.n, gen, params)  # this process's share
            if not math.isfinite(loss):
                raise self._diverged("the loss", loss, b + 1)
            if s["clip_norm"] is not None:
                torch.nn.utils.clip_grad_norm_(params, s["clip_norm"])
            optimizer.step()
            total += loss * batch[0].shape[0]
        lr_now = optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        pair.train(False)
        val = math.nan
        if self.val_data is not None:
            val = self.replicas.from_main(lambda: pair.evaluate(self.val_data), "the held-out ELBO")
            if not math.isfinite(val):
                raise self._diverged("the held-out ELBO", val, None)
        self.epoch += 1
        row = {"epoch": self.epoch, "train_elbo": -total / self.n, "val_elbo": val, "beta": beta,
               "lr": lr_now, "seconds": time.perf_counter() - t0}
        self.rows.append(row)
        if self.val_data is not None and val > self.best["elbo"]:
            state = None
            if s["patience"] is not None:
                state = {k: v.detach().clone() for k, v in pair.named().items()}
            self.best = {"elbo": val, "epoch": self.epoch, "state": state}
        return row

    def _diverged(self, what, value, step):
        at = f"epoch {self.epoch + 1}" + (f", step {step}" if step is not None else "")
        return DivergenceError(
            f"training diverged: {what} became {value} at {at}; lower lr (now {self.settings['lr']:g}), "
            "set clip_norm, or check the data, the likelihood and the KL weight")

    def restore_best(self):
        """Put the tensors of the best epoch back (early stopping)."""
        if self.best["state"] is None:
            return
        with torch.no_grad():
            for name, t in self.pair.named().items():
                t.copy_(self.best["state"][name])

    def frame(self):
        """The history as a :class:`pandas.DataFrame`."""
        return pd.DataFrame(self.rows, columns=list(HISTORY_COLUMNS))

    # ------------------------------------------------------------------ the loop
    def run(self, checkpoint=None, history_path=None, quiet=False):
        """Train up to ``settings["epochs"]`` epochs (or until early stopping), writing the
        checkpoint and the history after every epoch (rank 0)."""
        start = self.epoch
        progress = _progress(range(start, self.settings["epochs"]), quiet or not self.replicas.is_main)
        main = self.replicas.is_main
        try:
            # Pyro's validation (when enabled) checks the programs on the first step of the run
            # only: the data were checked once at the entry, and the checks would cost every step
            with pyro.validation_enabled(False), self.pair.training():
                for _ in progress if not self.stopped_early() else []:
                    row = self.run_epoch(validate_first=self.epoch == start)
                    if hasattr(progress, "set_postfix"):
                        progress.set_postfix(train=f"{row['train_elbo']:.2f}", val=f"{row['val_elbo']:.2f}")
                    if checkpoint is not None and main:
                        checkpoints.write_checkpoint(checkpoint, self.checkpoint_state())
                    if history_path is not None and main:
                        storage.write_csv(history_path, self.frame())
                    if self.stopped_early():
                        log.info("early stopping after epoch %d (best epoch %d)", self.epoch, self.best["epoch"])
                        break
        finally:
            self.pair.set_kl_weight(self.pair.kl_target)
            if hasattr(progress, "close"):
                progress.close()
        self.restore_best()
        self.pair.train(False)
        return self.frame()


# --------------------------------------------------------------------------- fit
def fit(model, guide=None, data=None, *, epochs=10, batch_size=256, lr=1e-3, objective="trace",
        num_particles=1, vectorize_particles=True, max_plate_nesting=None, val_data=None,
        binarize=False, clip_norm=None, lr_schedule=None, lr_decay=0.99, kl_warmup=0, patience=None,
        seed=0, device=None, checkpoint=None, resume=False, history_path=None, quiet=False, checkpoint_tag=None):
    """Train by minibatch SVI and return the per-epoch history.

    Two forms:

    * ``fit(vae, data, ...)``: a :class:`~pyro_vae.VAE` (its parameters are updated in place),
      or any ``nn.Module`` with ``model`` and ``guide`` methods following the data-plate
      convention, e.g. a :class:`~pyro_vae.mixture_vae.MixtureVAE`: then
      ``fit(module.model, module.guide, data)`` with the data in the module's floating-point
      type, checked against ``module.likelihood`` where it has one; for objectives other than
      ``"enum"`` the guide's sites marked for enumeration are sampled without the mark;
    * ``fit(model, guide, data, ...)``: any pair of Pyro programs following the data-plate
      convention (:mod:`pyro_vae.program_pair`). ``data`` is a tensor, or a tuple of tensors
      with the same number of rows ``N`` (e.g. ``(x, y)`` for a conditional model): each
      minibatch is passed as the positional arguments ``model(x_b, y_b)``, plus
      ``num_data=N`` when the model has a ``num_data`` parameter. The trained parameters are
      every ``pyro.param``, ``pyro.module`` and ``PyroModule`` parameter the programs use on a
      first run (found in Pyro's param store, moved to the training device); they stay there,
      trained, afterwards.

    :param model: a :class:`~pyro_vae.VAE`, a module with ``model`` and ``guide`` methods,
        or a Pyro model.
    :param guide: the Pyro guide (``fit(model, guide, data)``); for a VAE or a module, the data.
    :param data: training data: tensor or numpy array ``(N, ...)``, or a tuple of them.
    :param int epochs: total number of passes over ``data`` (when resuming, the total
        including the epochs already done).
    :param int batch_size: minibatch size ``B`` (under torchrun: the global minibatch, shared
        among the processes).
    :param float lr: Adam learning rate.
    :param str objective: ``"trace"``, ``"tracegraph"``, ``"meanfield"``, ``"enum"`` or ``"iwae"``.
    :param int num_particles: samples of the latents per datapoint (``K`` of the IWAE bound).
    :param bool vectorize_particles: draw the particles in one vectorized pass.
    :param int max_plate_nesting: plate dimensions the programs use (default: found on the
        first run; always 1 for a VAE).
    :param val_data: held-out data, same structure as ``data``; its ELBO is recorded per epoch.
    :param bool binarize: dynamic binarization: draw each minibatch of the (first) data tensor
        as Bernoulli(x) afresh.
    :param float clip_norm: clip the gradient norm to this value (default: no clipping).
    :param str lr_schedule: ``None``, ``"cosine"`` (to zero over ``epochs``) or
        ``"exponential"`` (multiply by ``lr_decay`` each epoch).
    :param float lr_decay: factor of the exponential schedule, in (0, 1].
    :param int kl_warmup: anneal the KL weight linearly from 0 to its target (the VAE's
        ``beta``; 1 for programs) over this many epochs (per step); it scales the sites named
        ``"z"`` of model and guide.
    :param int patience: early stopping: stop when the held-out ELBO has not improved for this
        many epochs, and restore the best parameters (needs ``val_data``).
    :param int seed: seed of every random draw (initial values created on the first run,
        shuffling, binarization, Monte Carlo samples).
    :param device: ``None`` (the VAE's device; for programs, where the data are), ``"auto"``,
        ``"cpu"``, ``"cuda"``...
    :param str checkpoint: file to write a checkpoint to after every epoch (atomically).
    :param bool resume: continue from ``checkpoint`` if it exists; it must have been written
        by a run with the same settings (only ``epochs`` may differ).
    :param str history_path: CSV file the history is written to after every epoch.
    :param bool quiet: no progress bar (it is also off when stderr is not a terminal).
    :param str checkpoint_tag: a string stored in every checkpoint (e.g. a hash of the
        configuration of a run folder); a resume from a checkpoint with another tag is refused.
    :returns: :class:`pandas.DataFrame` with columns ``epoch, train_elbo, val_elbo, beta, lr,
        seconds`` (ELBOs in nats per datapoint; ``train_elbo`` is the running average of the
        training objective over the epoch, ``beta`` the KL weight at its last step).
    :raises DivergenceError: the loss became NaN or infinite.
    """
    is_vae = isinstance(model, VAE)
    holder = None
    if not is_vae and _holds_programs(model) and not callable(guide):
        # fit(module, data): the module's own model and guide (e.g. a MixtureVAE)
        if guide is not None and data is not None:
            raise ValueError(f"fit({type(model).__name__}, data) trains the module's own model and guide; to "
                             "train its model with another guide call fit(module.model, guide, data)")
        holder, data = model, (guide if guide is not None else data)
        model, guide = holder.model, guide_for_objective(holder.guide, objective)
    if is_vae:
        if data is None and guide is not None and not callable(guide):
            guide, data = None, guide
        if guide is not None:
            raise ValueError("fit(vae, data) trains the VAE with its own guide; to train its model with "
                             "another guide call fit(vae.model, guide, data)")
    else:
        if not callable(model):
            raise TypeError(f"fit(model, guide, data) needs a Pyro model or a pyro_vae.VAE as first "
                            f"argument, got {type(model).__name__}")
        if guide is None or not callable(guide):
            raise TypeError(f"fit(model, guide, data) needs a guide program as second argument, got "
                            f"{type(guide).__name__}; the short form fit(vae, data) is for a pyro_vae.VAE or a "
                            "module with model and guide methods")
    if data is None:
        raise TypeError("fit needs training data: fit(vae, data) or fit(model, guide, data)")
    settings = _settings(locals(), is_vae)
    if val_data is None and patience is not None:
        raise ValueError("early stopping (patience) needs val_data to watch")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    for value, name in ((checkpoint, "checkpoint"), (history_path, "history_path")):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a file path, got {type(value).__name__}")
    if is_vae:
        check_float(model.beta, "the VAE's beta", minimum=0.0)
        if objective == "iwae" and model.beta != 1.0:
            raise ValueError("the iwae objective has no separate KL term for beta to weight; "
                             "use objective='trace' or 'meanfield' for a beta-VAE")
    if objective == "iwae" and kl_warmup:
        raise ValueError("the iwae objective has no separate KL term for kl_warmup to weight; "
                         "use objective='trace' or 'meanfield' for KL annealing")

    # under torchrun: join the process group, one replica per process (see pyro_vae.data_parallel)
    device = resolve_device(device, default=None)
    if device is None:
        device = model.device if is_vae else _data_device(data) if holder is None else _module_device(holder)
    replicas = Replicas.setup(device)
    device = replicas.device
    pyro.set_rng_seed(seed)
    if is_vae:
        model.to(device)
        replicas.replicate(list(model.parameters()) + list(model.buffers()))
        data = _vae_data(data, model, "data", device)
        if val_data is not None:
            val_data = _vae_data(val_data, model, "val_data", device)
        _check_support(model, data[0], binarize, "data")
        if val_data is not None:
            model.likelihood.validate_data(val_data[0])
        pair = _VAEPair(model, objective, num_particles, vectorize_particles)
    else:
        data = program_data(data, "data", device)
        if val_data is not None:
            val_data = program_data(val_data, "val_data", device, like=data)
        if holder is not None:
            data, val_data = _module_data(holder, data, val_data, binarize)
        if binarize and (data[0].min() < 0 or data[0].max() > 1):
            raise ValueError("dynamic binarization needs data in [0, 1]; scale it first (pixel values: "
                             "divide by 255)")
        pair = ProgramPair(model, guide, objective, num_particles, vectorize_particles, max_plate_nesting)
        first = tuple(t[:settings["batch_size"]] for t in data)
        pair.setup(first, data[0].shape[0], device, kl_warmup=kl_warmup)
        replicas.replicate(pair.params)
    replicas.seed_global_rng(seed, 0)
    settings["num_data"] = int(data[0].shape[0])

    trainer = _Trainer(pair, data, settings, replicas, val_data=val_data)
    trainer.tag = None if checkpoint_tag is None else str(checkpoint_tag)
    if objective == "tracegraph":  # the decaying-average baselines start afresh
        store = pyro.get_param_store()
        for name in [k for k in store.keys() if k.startswith(BASELINE_STATE_PREFIX)]:
            del store[name]
    ck = replicas.load_checkpoint(checkpoint, device) if resume else None  # read by rank 0
    if ck is not None:
        trainer.restore(ck, os.fspath(checkpoint))
        replicas.seed_global_rng(seed, trainer.epoch)
    return trainer.run(checkpoint=checkpoint, history_path=history_path, quiet=check_bool(quiet, "quiet"))


def _settings(args, is_vae):
    """The checked settings of a call of fit (what a checkpoint must agree with)."""
    schedule = args["lr_schedule"]
    check_choice(schedule, "lr_schedule", LR_SCHEDULES)
    num_particles = check_positive_int(args["num_particles"], "num_particles")
    patience = args["patience"]
    clip_norm = args["clip_norm"]
    mpn = args["max_plate_nesting"]
    settings = {
        "kind": "vae" if is_vae else "programs",
        "objective": check_choice(args["objective"], "objective", OBJECTIVES),
        "epochs": check_positive_int(args["epochs"], "epochs"),
        "batch_size": check_positive_int(args["batch_size"], "batch_size"),
        "lr": check_positive_float(args["lr"], "lr"),
        "num_particles": num_particles,
        "vectorize_particles": check_bool(args["vectorize_particles"], "vectorize_particles") and num_particles > 1,
        "max_plate_nesting": None if mpn is None else check_positive_int(mpn, "max_plate_nesting"),
        "binarize": check_bool(args["binarize"], "binarize"),
        "clip_norm": None if clip_norm is None else check_positive_float(clip_norm, "clip_norm"),
        "lr_schedule": schedule,
        "lr_decay": (check_float(args["lr_decay"], "lr_decay", minimum=0.0, maximum=1.0, strict_minimum=True)
                     if schedule == "exponential" else None),
        "kl_warmup": check_int(args["kl_warmup"], "kl_warmup", minimum=0),
        "patience": None if patience is None else check_positive_int(patience, "patience"),
        "seed": check_seed(args["seed"], allow_none=False),
    }
    check_bool(args["resume"], "resume")
    if is_vae and mpn is not None and mpn != 1:
        raise ValueError("a VAE has one plate (max_plate_nesting=1); leave max_plate_nesting out")
    return settings


def _holds_programs(obj):
    """A module with ``model`` and ``guide`` methods, the short form ``fit(module, data)``."""
    return (isinstance(obj, torch.nn.Module) and callable(getattr(obj, "model", None))
            and callable(getattr(obj, "guide", None)))


def guide_for_objective(guide, objective):
    """The guide as an objective uses it: every objective but ``"enum"`` samples the sites
    marked ``infer={"enumerate": ...}``, so for them the marks are dropped (Pyro's Trace_ELBO
    and TraceGraph_ELBO would warn about them).

    :param callable guide: a Pyro guide.
    :param str objective: the objective's name (:data:`OBJECTIVES`).
    :returns: ``guide`` itself for ``"enum"``, else the guide without enumeration marks.
    """
    if objective == "enum":
        return guide
    return pyro.poutine.infer_config(guide, lambda msg: {"enumerate": None} if msg["infer"].get("enumerate") else {})


def _module_device(module):
    return next(iter(module.parameters()), torch.empty(0)).device


def _module_data(module, data, val_data, binarize):
    """The data of ``fit(module, data)`` in the module's floating-point type, checked against
    its likelihood's support when it has one."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is not None:
        data = (data[0].to(dtype),) + data[1:]
        if val_data is not None:
            val_data = (val_data[0].to(dtype),) + val_data[1:]
    if callable(getattr(getattr(module, "likelihood", None), "validate_data", None)):
        _check_support(module, data[0], binarize, "data")
        if val_data is not None:
            module.likelihood.validate_data(val_data[0])
    return data, val_data


def _data_device(data):
    first = data[0] if isinstance(data, (tuple, list)) and data else data
    return first.device if isinstance(first, torch.Tensor) else torch.device("cpu")


def _check_support(vae, data, binarize, what):
    if binarize:
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"dynamic binarization needs {what} in [0, 1]; scale it first "
                             "(pixel values: divide by 255)")
        return
    vae.likelihood.validate_data(data)


def _progress(iterable, quiet):
    if quiet or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc="epochs", unit="epoch", leave=False)
