"""Training a VAE by stochastic variational inference.

:func:`fit` runs minibatch SVI with Adam on any of four objectives, chosen by name:

* ``"trace"`` -- :class:`pyro.infer.Trace_ELBO`;
* ``"tracegraph"`` -- :class:`pyro.infer.TraceGraph_ELBO` (Rao-Blackwellized score-function
  terms for non-reparameterizable sites);
* ``"meanfield"`` -- :class:`pyro.infer.TraceMeanField_ELBO` (analytic KL(q || p) where one is
  registered, e.g. for a Gaussian prior);
* ``"iwae"`` -- the importance-weighted bound of Burda et al. (2016) with ``num_particles``
  samples, computed per datapoint (see :mod:`pyro_vae.importance`).

The loss is scaled to nats per datapoint. A minibatch of ``B`` points out of ``N`` enters the
``"data"`` plate with ``size=N``, so each step's objective is an unbiased estimate of the
full-data objective. Checkpoints hold only tensors and plain containers, are written
atomically after every epoch, and resuming from one reproduces the uninterrupted run exactly
on CPU.

Under ``torchrun --nproc-per-node=W`` the same call trains data-parallel on ``W`` processes
(:mod:`pyro_vae.distributed`): each takes its share of every minibatch, gradients are summed
with all-reduce, only rank 0 writes files, and the parameters equal those of a one-process run
with the same ``batch_size`` and seed up to rounding.
"""

import contextlib
import logging
import math
import sys
import time

import pandas as pd
import torch

import pyro
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from pyro_vae import distributed as _dist
from pyro_vae import storage
from pyro_vae.vae import VAE, AmortizedGuide

__all__ = ["fit", "OBJECTIVES", "HISTORY_COLUMNS", "evaluate_elbo"]

log = logging.getLogger(__name__)

OBJECTIVES = ("trace", "tracegraph", "meanfield", "iwae")
LR_SCHEDULES = (None, "cosine", "exponential")
HISTORY_COLUMNS = ("epoch", "train_elbo", "val_elbo", "beta", "lr", "seconds")
CHECKPOINT_FORMAT = "pyro-vae-checkpoint-1"


# --------------------------------------------------------------------------- objectives
def _pyro_elbo(objective, num_particles, vectorize_particles):
    cls = {"trace": Trace_ELBO, "tracegraph": TraceGraph_ELBO, "meanfield": TraceMeanField_ELBO}[objective]
    return cls(num_particles=num_particles, vectorize_particles=vectorize_particles and num_particles > 1,
               max_plate_nesting=1)


class _Objective:
    """``step(x, num_data)`` runs backward on the loss (nats per datapoint) and returns its value."""

    def __init__(self, vae, objective, num_particles, vectorize_particles):
        self.vae = vae
        self.objective = objective
        self.num_particles = num_particles
        if objective == "iwae":
            from pyro_vae.importance import log_weights

            self._log_weights = log_weights
        else:
            self.elbo = _pyro_elbo(objective, num_particles, vectorize_particles)
            # trace / meanfield: q(z|x) as an effect handler, one program run per step instead
            # of a guide run and a model replay (the same ELBO; see vae.AmortizedGuide), unless
            # a subclass wrote a guide program of its own
            own_guide = type(vae).guide is not VAE.guide
            self.guide = vae.guide if objective == "tracegraph" or own_guide else AmortizedGuide(vae)

    def step(self, x, num_data):
        if self.objective == "iwae":
            logw = self._log_weights(self.vae.model, self.vae.guide, x, self.num_particles)  # (K, B)
            bound = torch.logsumexp(logw, 0) - math.log(logw.shape[0])
            loss = -bound.sum() / x.shape[0]
            loss.backward()
            return loss.item()
        if self.objective != "tracegraph":
            # Trace_ELBO / TraceMeanField_ELBO: their surrogate loss, differentiated here; dividing
            # by num_data after the sum gives nats per datapoint without extra Pyro handlers
            loss = self.elbo.differentiable_loss(self.vae.model, self.guide, x, num_data=num_data)
            loss = loss / num_data
            loss.backward()
            return loss.item()
        model, guide = self._scaled(num_data)
        return self.elbo.loss_and_grads(model, guide, x, num_data=num_data)

    def _scaled(self, num_data):
        """model and guide scaled by 1 / num_data (nats per datapoint), built once per size."""
        if getattr(self, "_scaled_for", None) != num_data:
            scale = 1.0 / num_data
            self._scaled_programs = (poutine.scale(self.vae.model, scale=scale),
                                     poutine.scale(self.vae.guide, scale=scale))
            self._scaled_for = num_data
        return self._scaled_programs


@torch.no_grad()
def evaluate_elbo(vae, data, batch_size=1000, objective="trace"):
    """The ELBO (with beta = 1) per datapoint, one sample of z per datapoint.

    :param VAE vae: the model.
    :param torch.Tensor data: data, shape ``(N, D)``, on the model's device.
    :param int batch_size: datapoints per forward pass.
    :param str objective: ``"trace"`` (Monte Carlo KL) or ``"meanfield"`` (analytic KL where
        available).
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


# --------------------------------------------------------------------------- validation
def _as_data(data, vae, what, device):
    if not isinstance(data, torch.Tensor):
        try:
            import numpy as np

            if isinstance(data, np.ndarray):
                data = torch.from_numpy(data)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(f"{what} must be a torch.Tensor or numpy array of shape (N, {vae.data_dim}), "
                            f"got {type(data).__name__}; see pyro_vae.data.load_data") from None
    if data.dim() != 2 or data.shape[1] != vae.data_dim:
        raise ValueError(f"{what} must have shape (N, {vae.data_dim}) (flatten images first); "
                         f"got {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    data = data.to(device=device, dtype=next(vae.parameters()).dtype)
    if not torch.isfinite(data).all():
        raise ValueError(f"{what} contains NaN or infinite values; drop or impute them first")
    return data


def _check_positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _resolve_device(device, vae):
    if device is None:
        return vae.device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available; use device='cpu'")
    return device


# --------------------------------------------------------------------------- fit
def fit(vae, data, *, epochs=10, batch_size=256, lr=1e-3, objective="trace", num_particles=1,
        vectorize_particles=True, val_data=None, binarize=False, clip_norm=None, lr_schedule=None,
        lr_decay=0.99, kl_warmup=0, patience=None, seed=0, device=None, checkpoint=None,
        resume=False, history_path=None, quiet=False):
    """Train ``vae`` by minibatch SVI and return the per-epoch history.

    :param VAE vae: the model/guide pair to train (its parameters are updated in place).
    :param torch.Tensor data: training data, shape ``(N, D)``.
    :param int epochs: total number of passes over ``data`` (when resuming, the total
        including the epochs already done).
    :param int batch_size: minibatch size ``B`` (under torchrun: the global minibatch, shared
        among the processes).
    :param float lr: Adam learning rate.
    :param str objective: ``"trace"``, ``"tracegraph"``, ``"meanfield"`` or ``"iwae"``.
    :param int num_particles: samples of z per datapoint (``K`` of the IWAE bound).
    :param bool vectorize_particles: draw the particles in one vectorized pass.
    :param torch.Tensor val_data: held-out data, shape ``(M, D)``; its ELBO is recorded per epoch.
    :param bool binarize: dynamic binarization: draw each minibatch as Bernoulli(x) afresh.
    :param float clip_norm: clip the gradient norm to this value (default: no clipping).
    :param str lr_schedule: ``None``, ``"cosine"`` (to zero over ``epochs``) or
        ``"exponential"`` (multiply by ``lr_decay`` each epoch).
    :param float lr_decay: factor of the exponential schedule.
    :param int kl_warmup: anneal the KL weight linearly from 0 to ``vae.beta`` over this many
        epochs (per step).
    :param int patience: early stopping: stop when the held-out ELBO has not improved for this
        many epochs, and restore the best weights (needs ``val_data``).
    :param int seed: seed of every random draw (shuffling, binarization, Monte Carlo samples).
    :param device: ``None`` (the model's device), ``"auto"``, ``"cpu"``, ``"cuda"``...
    :param str checkpoint: file to write a checkpoint to after every epoch (atomically).
    :param bool resume: continue from ``checkpoint`` if it exists.
    :param str history_path: CSV file the history is written to after every epoch.
    :param bool quiet: no progress bar (it is also off when stderr is not a terminal).
    :returns: :class:`pandas.DataFrame` with columns ``epoch, train_elbo, val_elbo, beta, lr,
        seconds`` (ELBOs in nats per datapoint; ``train_elbo`` is the running average of the
        training objective over the epoch).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")
    for value, what in ((epochs, "epochs"), (batch_size, "batch_size"), (num_particles, "num_particles")):
        _check_positive_int(value, what)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
    if patience is not None:
        _check_positive_int(patience, "patience")
        if val_data is None:
            raise ValueError("early stopping (patience) needs val_data to watch")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if not isinstance(kl_warmup, int) or kl_warmup < 0:
        raise ValueError(f"kl_warmup must be a non-negative integer, got {kl_warmup!r}")
    if objective == "iwae" and (vae.beta != 1.0 or kl_warmup):
        raise ValueError("the iwae objective has no separate KL term for beta or kl_warmup to weight; "
                         "use objective='trace' or 'meanfield' for a beta-VAE or KL annealing")

    # under torchrun: join the process group, one replica per process (see pyro_vae.distributed)
    replicas = _dist.Replicas.setup(vae, _resolve_device(device, vae))
    device = replicas.device
    data = _as_data(data, vae, "data", device)
    if val_data is not None:
        val_data = _as_data(val_data, vae, "val_data", device)
    _check_support(vae, data, binarize, "data")
    if val_data is not None:
        vae.likelihood.validate_data(val_data)

    pyro.set_rng_seed(seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    params = list(vae.parameters())
    optimizer = adam(params, lr)
    scheduler = None
    if lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    elif lr_schedule == "exponential":
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
    step_fn = _Objective(vae, objective, num_particles, vectorize_particles)

    n = data.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    target_beta = vae.beta
    rows = []
    start_epoch = 0
    best = {"elbo": -math.inf, "epoch": 0, "state": None}

    ck = replicas.load_checkpoint(checkpoint, device) if resume else None  # read by rank 0
    if ck is not None:
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{checkpoint} is not a pyro-vae training checkpoint")
        vae.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler") is not None:
            scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if device.type == "cuda" and "cuda" in ck["rng"]:
            torch.cuda.set_rng_state(ck["rng"]["cuda"].cpu(), device)
        gen.set_state(ck["rng"]["gen"].cpu())
        rows = [dict(zip(ck["history"]["columns"], r)) for r in ck["history"]["rows"]]
        start_epoch = int(ck["epoch"])
        best = {"elbo": float(ck["best"]["elbo"]), "epoch": int(ck["best"]["epoch"]),
                "state": ck["best"].get("state")}
        log.info("resuming from %s after epoch %d", checkpoint, start_epoch)

    stopped = patience is not None and start_epoch - best["epoch"] >= patience
    validate = pyro.infer.util.is_validation_enabled()
    handlers = contextlib.ExitStack()
    progress = _progress(range(start_epoch, epochs), quiet or not replicas.is_main)
    try:
        # Pyro's validation (when enabled) checks the programs on the first step of the run
        # only: the data were checked once at the entry, and the checks would cost every step
        handlers.enter_context(pyro.validation_enabled(False))
        if objective != "tracegraph":  # TraceGraph_ELBO.loss_and_grads needs the param sites
            handlers.enter_context(vae._registration_off())  # pyro.module once, not on every step
        for epoch in progress if not stopped else []:
            t0 = time.perf_counter()
            vae.train()
            perm = torch.randperm(n, generator=gen, device=device)
            total = 0.0
            for b in range(steps_per_epoch):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                xb = data[idx]
                if binarize:
                    xb = torch.bernoulli(xb, generator=gen)
                if kl_warmup:
                    step = epoch * steps_per_epoch + b + 1
                    vae.beta = target_beta * min(1.0, step / (kl_warmup * steps_per_epoch))
                optimizer.zero_grad(set_to_none=True)
                first = epoch == start_epoch and b == 0
                with pyro.validation_enabled(validate) if first else contextlib.nullcontext():
                    loss = replicas.step(step_fn.step, xb, n, gen, params)  # this process's share of xb
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss became {loss} at epoch {epoch + 1}; lower lr, set clip_norm, "
                        "or check the data and likelihood")
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_norm)
                optimizer.step()
                total += loss * xb.shape[0]
            lr_now = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            vae.eval()
            val = replicas.from_main(lambda: evaluate_elbo(vae, val_data, objective=objective)) \
                if val_data is not None else math.nan
            row = {"epoch": epoch + 1, "train_elbo": -total / n, "val_elbo": val,
                   "beta": vae.beta, "lr": lr_now, "seconds": time.perf_counter() - t0}
            rows.append(row)
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(train=f"{row['train_elbo']:.2f}", val=f"{val:.2f}")
            if val_data is not None and val > best["elbo"]:
                best = {"elbo": val, "epoch": epoch + 1,
                        "state": {k: v.detach().clone() for k, v in vae.state_dict().items()}
                        if patience is not None else None}
            stop = patience is not None and epoch + 1 - best["epoch"] >= patience
            if checkpoint is not None and replicas.is_main:
                storage.save_checkpoint(checkpoint, _checkpoint_state(
                    vae, optimizer, scheduler, gen, device, rows, epoch + 1, best))
            if history_path is not None and replicas.is_main:
                storage.write_csv(history_path, _frame(rows))
            if stop:
                log.info("early stopping after epoch %d (best epoch %d)", epoch + 1, best["epoch"])
                break
    finally:
        handlers.close()
        vae.beta = target_beta
        if hasattr(progress, "close"):
            progress.close()
    if patience is not None and best["state"] is not None:
        vae.load_state_dict(best["state"])
    vae.eval()
    return _frame(rows)


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


def _check_support(vae, data, binarize, what):
    if binarize:
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"dynamic binarization needs {what} in [0, 1]; scale it first "
                             "(pixel values: divide by 255)")
        return
    vae.likelihood.validate_data(data)


def _frame(rows):
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


def _checkpoint_state(vae, optimizer, scheduler, gen, device, rows, epoch, best):
    rng = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": vae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "history": {"columns": list(HISTORY_COLUMNS),
                    "rows": [[r[c] for c in HISTORY_COLUMNS] for r in rows]},
        "best": best,
    }


def _progress(iterable, quiet):
    if quiet or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc="epochs", unit="epoch", leave=False)
