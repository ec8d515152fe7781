"""Training checkpoints: what :func:`pyro_vae.fit` writes after every epoch, and the checked way back.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so that it loads with
``torch.load(..., weights_only=True)`` (:func:`pyro_vae.storage.load_checkpoint`):

* ``format`` (:data:`FORMAT`) and ``epoch``, the number of epochs done;
* ``model``: the trained tensors by name -- a :class:`~pyro_vae.VAE`'s ``state_dict()``, or for
  a pair of Pyro programs the *unconstrained* value of every parameter under its name in Pyro's
  param store (constraints are objects that ``weights_only`` loading refuses; the programs
  declare them again on their first run);
* ``optimizer`` and ``scheduler``: the states of Adam and of the learning-rate schedule;
* ``rng``: the states of torch's global generator, of the training generator (shuffling,
  binarization, Monte Carlo noise) and, on CUDA, of the device's generator;
* ``history``: the rows of the per-epoch history; ``best``: the best held-out ELBO, its epoch and,
  with early stopping, the tensors of that epoch;
* ``settings``: the settings of the run (an exact resume needs the same ones; only the number of
  epochs may change); ``objective_state``: state the objective keeps between steps (the
  decaying-average baselines of ``tracegraph``);
* ``tag`` (optional): a string the caller ties the checkpoint to (e.g. a hash of the run's
  configuration); a resume with another tag is refused.

:func:`restore` checks everything -- structure, names, shapes, optimizer state, generator
states, settings -- before it changes anything, and refuses a file that does not fit with one
:class:`ValueError` that names what differs.
"""

import math
import numbers

import torch

from pyro_vae import storage

__all__ = ["FORMAT", "make_checkpoint", "write_checkpoint", "restore", "trained_state"]

#: identifies a training checkpoint of this package
FORMAT = "pyro-vae-checkpoint-1"
_REQUIRED = ("epoch", "model", "optimizer", "rng", "history", "best")


def make_checkpoint(*, epoch, named, optimizer, scheduler, generator, device, history_columns, rows,
                    best, settings, objective_state=None, tag=None):
    """The checkpoint of a run after ``epoch`` epochs.

    :param int epoch: epochs done.
    :param dict named: the trained tensors by name (``name -> tensor``).
    :param torch.optim.Optimizer optimizer: the optimizer.
    :param scheduler: the learning-rate scheduler, or ``None``.
    :param torch.Generator generator: the training generator.
    :param torch.device device: the training device (its CUDA generator is saved too).
    :param tuple history_columns: the columns of the history.
    :param list rows: the history rows, dicts keyed by the columns.
    :param dict best: ``{"elbo": float, "epoch": int, "state": dict or None}``.
    :param dict settings: the run's settings (numbers, strings, booleans, ``None``).
    :param dict objective_state: tensors the objective keeps between steps, by name.
    :param str tag: stored as ``tag`` when given.
    :returns: dict.
    """
    rng = {"torch": torch.get_rng_state(), "gen": generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    out = {
        "format": FORMAT,
        "epoch": int(epoch),
        "model": {name: t.detach() for name, t in named.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "history": {"columns": list(history_columns),
                    "rows": [[r[c] for c in history_columns] for r in rows]},
        "best": best,
        "settings": dict(settings),
        "objective_state": dict(objective_state or {}),
    }
    if tag is not None:
        out["tag"] = str(tag)
    return out


def write_checkpoint(path, state):
    """Write a checkpoint atomically (:func:`pyro_vae.storage.save_checkpoint`)."""
    storage.save_checkpoint(path, state)


def restore(ck, path, *, named, optimizer, scheduler, generator, device, history_columns, settings, tag=None):
    """Check a loaded checkpoint against this run, then put its state in place.

    Nothing is changed unless every part of the checkpoint fits: the tensors (same names, same
    shapes), the optimizer state, the generator states, the history and the settings (all but
    ``epochs`` equal).

    :param ck: what :func:`pyro_vae.storage.load_checkpoint` returned.
    :param str path: the file, for messages.
    :param dict named: this run's trained tensors by name; restored in place.
    :param torch.optim.Optimizer optimizer: restored.
    :param scheduler: the learning-rate scheduler or ``None``; restored.
    :param torch.Generator generator: the training generator; restored.
    :param torch.device device: the training device.
    :param tuple history_columns: the columns of the history.
    :param dict settings: this run's settings.
    :param str tag: when given, a checkpoint with another ``tag`` is refused (one without a tag,
        written before tags existed, is accepted).
    :returns: ``(epoch, rows, best, objective_state)``: epochs done, history rows (dicts), the
        best-epoch record and the objective's state (tensors by name).
    :raises ValueError: the checkpoint does not fit this run; the message says what differs.
    """
    where = f"checkpoint {path}"
    _check_format(ck, where)
    _check_tag(ck, tag, where)
    epoch = ck["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(f"{where} has a bad epoch count {epoch!r}")
    epoch = int(epoch)
    _check_settings(ck.get("settings"), settings, where)
    _check_tensors(ck["model"], named, where, "model")
    rows = _check_history(ck["history"], history_columns, epoch, where)
    best = _check_best(ck["best"], named, where)
    objective_state = ck.get("objective_state") or {}
    if not isinstance(objective_state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in objective_state.items()):
        raise ValueError(f"{where}: 'objective_state' must map names to tensors")
    rng = _check_rng(ck["rng"], generator, device, where)
    _check_optimizer(ck["optimizer"], optimizer, where)
    sched = ck.get("scheduler")
    if (scheduler is None) != (sched is None) or (sched is not None and (
            not isinstance(sched, dict) or not isinstance(sched.get("last_epoch"), numbers.Integral))):
        raise ValueError(f"{where} holds {'no' if sched is None else 'a different'} learning-rate "
                         "schedule state; resume with the lr_schedule it was written with")

    # everything fits: put it in place
    with torch.no_grad():
        for name, t in named.items():
            t.copy_(ck["model"][name])
    try:
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(sched)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{where}: its optimizer state does not fit this run ({e})") from None
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["gen"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
    return epoch, rows, best, dict(objective_state)


def trained_state(ck, path, *, named, tag=None):
    """The trained tensors of a loaded checkpoint, checked against a model, to load into it.

    With early stopping the best epoch's tensors are the trained model, otherwise the last ones.

    :param ck: what :func:`pyro_vae.storage.load_checkpoint` returned.
    :param str path: the file, for messages.
    :param dict named: the model's tensors by name (e.g. ``vae.state_dict()``); not changed.
    :param str tag: when given, a checkpoint with another ``tag`` is refused (one without a tag
        is accepted).
    :returns: dict ``name -> tensor``.
    :raises ValueError: the checkpoint is not a training checkpoint or does not fit the model.
    """
    where = f"checkpoint {path}"
    _check_format(ck, where)
    _check_tag(ck, tag, where)
    _check_tensors(ck["model"], named, where, "model")
    best = _check_best(ck["best"], named, where)
    return best["state"] if best["state"] is not None else ck["model"]


# --------------------------------------------------------------------------- checks
def _check_format(ck, where):
    if not isinstance(ck, dict):
        raise ValueError(f"{where} is not a pyro-vae training checkpoint: it holds a {type(ck).__name__}, "
                         "not a dict; pass a file written by fit(checkpoint=...) or start a new run")
    if ck.get("format") != FORMAT:
        raise ValueError(f"{where} is not a pyro-vae training checkpoint (format {ck.get('format')!r}, "
                         f"expected {FORMAT!r}); pass a file written by fit(checkpoint=...)")
    missing = [k for k in _REQUIRED if k not in ck]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(repr(k) for k in missing)}: it is incomplete or was "
                         "not written by fit(checkpoint=...); start a new run")


def _check_tag(ck, tag, where):
    stored = ck.get("tag")
    if tag is not None and stored is not None and stored != tag:
        raise ValueError(f"{where} was written under another configuration (tag {stored!r}, expected "
                         f"{tag!r}); it belongs to another run: train again into a new folder, or "
                         "clear this one (--overwrite)")


def _shape(t):
    return tuple(t.shape)


def _check_tensors(saved, named, where, what):
    if not isinstance(saved, dict) or not all(isinstance(k, str) for k in saved):
        raise ValueError(f"{where}: {what!r} must map names to tensors, got {type(saved).__name__}")
    missing = [k for k in named if k not in saved]
    unexpected = [k for k in saved if k not in named]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        raise ValueError(f"{where} was written for other parameters ({'; '.join(parts)}): resume with the "
                         "model it was written for, or start a new run")
    for name, t in named.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{where}: {what} entry {name!r} is a {type(value).__name__}, not a tensor")
        if _shape(value) != _shape(t):
            raise ValueError(f"{where}: parameter {name!r} has shape {_shape(value)} in the checkpoint but "
                             f"{_shape(t)} here: it was written for another architecture; resume with the "
                             "same model or start a new run")
        if value.is_floating_point() != t.is_floating_point():
            raise ValueError(f"{where}: parameter {name!r} has dtype {value.dtype} in the checkpoint but "
                             f"{t.dtype} here")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: parameter {name!r} holds NaN or infinite values; the run that "
                             "wrote it had diverged: start a new run")


def _names(names, limit=5):
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_settings(stored, settings, where):
    if stored is None:  # written before checkpoints recorded their settings
        return
    if not isinstance(stored, dict):
        raise ValueError(f"{where}: 'settings' must be a dict, got {type(stored).__name__}")
    differ = [k for k in sorted(set(stored) | set(settings))
              if k != "epochs" and not _same(stored.get(k), settings.get(k))]
    if differ:
        was = ", ".join(f"{k}={stored.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={settings.get(k)!r}" for k in differ)
        raise ValueError(f"{where} was written with {was}, but this run has {now}: an exact resume needs the "
                         "same settings (only epochs may change); resume with those, or start a new run")


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, numbers.Number) and isinstance(b, numbers.Number):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _check_history(history, columns, epoch, where):
    ok = isinstance(history, dict) and history.get("columns") == list(columns) \
        and isinstance(history.get("rows"), list)
    if ok:
        rows = history["rows"]
        ok = all(isinstance(r, (list, tuple)) and len(r) == len(columns)
                 and all(isinstance(v, numbers.Real) for v in r) for r in rows)
    if not ok:
        raise ValueError(f"{where}: its history is malformed (expected columns {list(columns)} and one row "
                         "of numbers per epoch)")
    if len(rows) != epoch:
        raise ValueError(f"{where}: its history has {len(rows)} rows for {epoch} epochs")
    return [dict(zip(columns, r)) for r in rows]


def _check_best(best, named, where):
    if not isinstance(best, dict) or not isinstance(best.get("elbo"), numbers.Real) \
            or isinstance(best.get("epoch"), bool) or not isinstance(best.get("epoch"), numbers.Integral):
        raise ValueError(f"{where}: its best-epoch record is malformed")
    state = best.get("state")
    if state is not None:
        _check_tensors(state, named, where, "best state")
    return {"elbo": float(best["elbo"]), "epoch": int(best["epoch"]), "state": state}


def _check_rng(rng, generator, device, where):
    if not isinstance(rng, dict) or "torch" not in rng or "gen" not in rng:
        raise ValueError(f"{where}: its generator states are missing ('rng' needs 'torch' and 'gen')")
    expect = {"torch": torch.get_rng_state(), "gen": generator.get_state()}
    if device.type == "cuda" and "cuda" in rng:
        expect["cuda"] = torch.cuda.get_rng_state(device)
    out = {}
    for key, ref in expect.items():
        state = rng[key]
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or _shape(state) != _shape(ref):
            got = f"a {state.dtype} tensor of shape {_shape(state)}" if isinstance(state, torch.Tensor) \
                else f"a {type(state).__name__}"
            raise ValueError(f"{where}: its {key!r} generator state is {got}, expected a uint8 tensor of "
                             f"shape {_shape(ref)}; the file is damaged or not a pyro-vae checkpoint")
        out[key] = state.cpu()
    # a state of the right size can still be refused (e.g. a Mersenne Twister state out of range)
    probe = torch.Generator()
    try:
        probe.set_state(out["torch"])
        if generator.device.type == "cpu":
            probe.set_state(out["gen"])
    except RuntimeError as e:
        raise ValueError(f"{where}: its generator state is invalid ({e})") from None
    return out


def _check_optimizer(state, optimizer, where):
    groups = optimizer.param_groups
    bad = f"{where}: its optimizer state does not fit this run"
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise ValueError(f"{bad} (expected the state_dict of torch.optim.Adam)")
    if len(state["param_groups"]) != len(groups):
        raise ValueError(f"{bad}: {len(state['param_groups'])} parameter groups, expected {len(groups)}")
    params = [p for g in groups for p in g["params"]]
    ids = []
    for saved, group in zip(state["param_groups"], groups):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list) \
                or len(saved["params"]) != len(group["params"]):
            raise ValueError(f"{bad}: it optimizes a different number of parameters ({len(params)} here)")
        ids += saved["params"]
    index = {i: p for i, p in zip(ids, params)}
    for key, per_param in state["state"].items():
        if key not in index or not isinstance(per_param, dict):
            raise ValueError(f"{bad}: state for an unknown parameter {key!r}")
        p = index[key]
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and _shape(value) != _shape(p):
                raise ValueError(f"{bad}: its {name!r} has shape {_shape(value)} for a parameter of shape "
                                 f"{_shape(p)}")
