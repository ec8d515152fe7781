"""A user's pair of Pyro programs as :func:`pyro_vae.fit` trains it: the data-plate convention.

A model and a guide are trainable by ``fit(model, guide, data)`` when

1. **the data come first**: both are called with the minibatch as positional arguments,
   ``model(x)``, or ``model(x, y)`` for ``data=(x, y)`` (a conditional model taking the label as
   input), and with ``num_data=N`` (the size of the whole data set) when the model has a
   parameter of that name;
2. **every per-datapoint site lies inside** ``pyro.plate("data", ...)``: every observed site,
   and every latent site local to a datapoint. Sites outside the plate are global (a latent
   shared by all datapoints) and count once per step;
3. **the plate spans the data set**: a program that takes ``num_data`` writes
   ``pyro.plate("data", size=num_data, subsample=torch.arange(len(x)))`` (Pyro then scales the
   minibatch by ``N / B``); a program that does not, as Pyro's tutorials write it, has the plate
   over the minibatch, ``pyro.plate("data", len(x))``, and fit scales the sites inside the plate
   by ``N / B`` itself -- exactly those, not the global ones -- so the minibatch loss is
   unbiased for the full-data ELBO either way;
4. **the guide samples every latent site of the model**, except discrete sites the model
   enumerates itself (``infer={"enumerate": "parallel"}``, trained by ``objective="enum"``).

A first run of the programs on the first minibatch checks these rules (a program that breaks
one gets a :class:`ValueError` that names the site and the rule) and collects the trained
parameters: every ``pyro.param``, ``pyro.module`` and ``PyroModule`` parameter the programs use,
by its name in Pyro's param store.
"""

import contextlib
import inspect
import math

import torch
from torch import nn

import pyro
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.checks import as_data_tensor, check_finite
from pyro_vae.importance import log_weights

__all__ = ["DATA_PLATE", "KL_SITE", "data_plate", "BASELINE_STATE_PREFIX", "ProgramPair", "SiteScale", "program_data"]

#: name of the plate the datapoints live in
DATA_PLATE = "data"
#: name of the latent site whose KL term KL warm-up weights
KL_SITE = "z"
#: prefix of the param-store entries in which TraceGraph_ELBO keeps decaying-average baselines
BASELINE_STATE_PREFIX = "__baseline_avg_downstream_cost_"

_ELBOS = {"trace": Trace_ELBO, "tracegraph": TraceGraph_ELBO, "meanfield": TraceMeanField_ELBO,
          "enum": TraceEnum_ELBO}


def data_plate(x, num_data=None, subsample=None):
    """The plate of the datapoints as the convention writes it, for programs of the library.

    :param torch.Tensor x: the minibatch, shape ``(B, ...)``.
    :param int num_data: N, the size of the whole data set (``None``: the minibatch is all of it).
    :param torch.Tensor subsample: ``arange(B)`` on ``x``'s device, for a caller that keeps one
        between steps (default: built here).
    :returns: ``pyro.plate("data", B)``, or ``pyro.plate("data", size=N, subsample=arange(B))``
        so that Pyro scales the minibatch by ``N / B``.
    :raises ValueError: ``num_data`` is smaller than the minibatch.
    """
    n = x.shape[0]
    if num_data is None or num_data == n:
        return pyro.plate(DATA_PLATE, n, device=x.device)
    if int(num_data) < n:
        raise ValueError(f"num_data={num_data} is smaller than the batch size {n}")
    if subsample is None:
        subsample = torch.arange(n, device=x.device)
    return pyro.plate(DATA_PLATE, size=int(num_data), subsample=subsample, device=x.device)


def program_data(data, name, device, like=None):
    """The data of a program pair as a tuple of tensors with the same number of rows.

    The first tensor (the data proper) becomes floating point (:func:`pyro_vae.checks.as_data_tensor`);
    further tensors (labels, covariates) keep their dtype, so that integer labels can be the
    values of observed discrete sites.

    :param data: tensor or numpy array ``(N, ...)``, or a tuple / list of them.
    :param str name: what it is called at the boundary.
    :param torch.device device: where the tensors go.
    :param tuple like: the training data, whose structure ``data`` must have (for ``val_data``).
    :returns: tuple of tensors, ``N`` rows each.
    """
    parts = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    if not parts:
        raise ValueError(f"{name} is an empty tuple; pass a tensor, or a tuple of tensors (x, y, ...)")
    if like is not None and len(parts) != len(like):
        raise ValueError(f"{name} has {len(parts)} tensor(s) but the training data have {len(like)}; "
                         "give both the same structure")
    first = as_data_tensor(parts[0], name if len(parts) == 1 else f"{name}[0]", device=device)
    out = [first]
    for i, t in enumerate(parts[1:], 1):
        what = f"{name}[{i}]"
        if hasattr(t, "__array__") and not isinstance(t, torch.Tensor):
            import numpy as np

            t = torch.from_numpy(np.ascontiguousarray(t))
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(t).__name__}")
        if t.dim() == 0 or t.shape[0] != first.shape[0]:
            raise ValueError(f"{what} has shape {tuple(t.shape)}, but {name}[0] has {first.shape[0]} rows: "
                             "every tensor of the data needs one row per datapoint")
        check_finite(t, what)
        out.append(t.to(device))
    if like is not None:
        for i, (a, b) in enumerate(zip(out, like)):
            if a.shape[1:] != b.shape[1:]:
                raise ValueError(f"{name}[{i}] has rows of shape {tuple(a.shape[1:])}, the training data "
                                 f"{tuple(b.shape[1:])}")
    return tuple(out)


class SiteScale(Messenger):
    """Effect handler that scales sample sites: those inside the ``"data"`` plate by
    :attr:`data`, those named ``"z"`` by :attr:`kl`, all of them by :attr:`total`.

    Set the attributes between uses; a factor of 1 costs nothing.
    """

    def __init__(self):
        super().__init__()
        self.data = 1.0
        self.kl = 1.0
        self.total = 1.0

    def _process_message(self, msg):
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        scale = self.total
        if self.data != 1.0 and any(f.name == DATA_PLATE for f in msg["cond_indep_stack"]):
            scale = scale * self.data
        if self.kl != 1.0 and msg["name"] == KL_SITE:
            scale = scale * self.kl
        if scale != 1.0:
            msg["scale"] = scale * msg["scale"]


class ProgramPair:
    """A model and a guide following the data-plate convention, as :func:`pyro_vae.fit` trains them.

    Call :meth:`setup` once before training: it checks the convention on a first run and
    collects :attr:`params`.

    :param callable model: the Pyro model.
    :param callable guide: the Pyro guide.
    :param str objective: ``"trace"``, ``"tracegraph"``, ``"meanfield"``, ``"enum"`` or ``"iwae"``.
    :param int num_particles: samples per datapoint.
    :param bool vectorize_particles: draw the particles in one vectorized pass.
    :param int max_plate_nesting: plate dimensions of the programs (``None``: found on the first run).
    """

    kind = "programs"
    kl_target = 1.0

    def __init__(self, model, guide, objective, num_particles=1, vectorize_particles=True,
                 max_plate_nesting=None):
        self.model = model
        self.guide = guide
        self.objective = objective
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles and num_particles > 1
        self.max_plate_nesting = max_plate_nesting
        self.takes_num_data = _has_parameter(model, "num_data")
        self.scale = SiteScale()
        self.params = []
        self._named = {}
        self.has_z = False

    # ------------------------------------------------------------------ set-up
    def setup(self, batch, num_data, device, kl_warmup=0):
        """Run the programs once on ``batch``, check the convention, collect the parameters.

        :param tuple batch: the first minibatch, ``B`` rows per tensor.
        :param int num_data: size ``N`` of the training set.
        :param torch.device device: the training device (parameters elsewhere are moved there).
        :param int kl_warmup: the KL warm-up asked for (needs a ``"z"`` site).
        """
        kwargs = self._kwargs(num_data)
        for fn, role in ((self.model, "model"), (self.guide, "guide")):
            _check_call(fn, role, batch, kwargs)
        model_tr, guide_tr = self._traces(batch, kwargs, device)
        if _stale_params(model_tr, guide_tr):
            # pyro.module(..., update_module_params=True) takes the stored values on the first run
            model_tr, guide_tr = self._traces(batch, kwargs, device)
            stale = _stale_params(model_tr, guide_tr)
            if stale:
                raise ValueError(
                    f"Pyro's param store already holds {_names(stale)} from an earlier module of the same "
                    "name, so pyro.module would train the stored tensors while the module computes with "
                    "its own: call pyro.clear_param_store() before fit (or give the module another name)")
        check_convention(model_tr, guide_tr, batch[0].shape[0], num_data, self.takes_num_data,
                         self.objective)
        sites = {n for tr in (model_tr, guide_tr) for n, s in tr.nodes.items() if s["type"] == "sample"}
        self.has_z = KL_SITE in sites
        if kl_warmup and not self.has_z:
            raise ValueError(f"kl_warmup weights the latent site {KL_SITE!r}, which neither program has "
                             f"(their sites: {sorted(sites)}); name the latent {KL_SITE!r} or set kl_warmup=0")
        names = sorted({n for tr in (model_tr, guide_tr) for n, s in tr.nodes.items() if s["type"] == "param"})
        if not names:
            raise ValueError("the model and guide use no parameters (pyro.param, pyro.module or PyroModule): "
                             "there is nothing to train")
        store = dict(pyro.get_param_store().named_parameters())
        self._named = {name: store[name] for name in names}
        with torch.no_grad():
            for t in self._named.values():
                if t.device != device:
                    t.data = t.data.to(device)
        self.params = list(self._named.values())
        if self.max_plate_nesting is None:
            dims = [-f.dim for tr in (model_tr, guide_tr) for s in tr.nodes.values()
                    if s["type"] == "sample" for f in s["cond_indep_stack"] if f.dim is not None]
            self.max_plate_nesting = max(dims, default=1)
        if self.objective != "iwae":
            self.elbo = _ELBOS[self.objective](
                num_particles=self.num_particles, max_plate_nesting=self.max_plate_nesting,
                vectorize_particles=self.vectorize_particles)
            eval_cls = {"meanfield": TraceMeanField_ELBO, "enum": TraceEnum_ELBO}.get(self.objective, Trace_ELBO)
            self.eval_elbo = eval_cls(max_plate_nesting=self.max_plate_nesting)

    def _kwargs(self, num_data):
        return {"num_data": num_data} if self.takes_num_data else {}

    def _traces(self, batch, kwargs, device):
        """Traces of a run of the guide and of the model replayed against it. The run leaves
        torch's generators as they were: training draws the same numbers as without it."""
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            guide_tr = poutine.trace(self.guide).get_trace(*batch, **kwargs)
            model_tr = poutine.trace(poutine.replay(self.model, trace=guide_tr)).get_trace(*batch, **kwargs)
        return model_tr, guide_tr

    # ------------------------------------------------------------------ training
    def named(self):
        """The trained tensors (unconstrained values) by their names in Pyro's param store."""
        return dict(self._named)

    def set_kl_weight(self, weight):
        self.scale.kl = weight

    def training(self):
        """Nothing to switch for the duration of the training loop."""
        return contextlib.nullcontext()

    def train(self, mode=True):
        """Programs manage their modules' modes themselves."""

    def step(self, batch, num_data):
        """Forward and backward on one minibatch (or a process's share of it).

        :param tuple batch: tensors of ``b`` rows.
        :param int num_data: size ``N`` of the training set.
        :returns: the loss in nats per datapoint (float); the gradients are in ``.grad``.
        """
        b = batch[0].shape[0]
        if self.objective == "iwae":
            kwargs = {"num_data": b} if self.takes_num_data else {}
            logw = log_weights(self.model, self.guide, batch[0], self.num_particles, model_args=batch[1:],
                               model_kwargs=kwargs, max_plate_nesting=self.max_plate_nesting)  # (K, b)
            loss = -(torch.logsumexp(logw, 0) - math.log(logw.shape[0])).mean()
            loss.backward()
            return loss.item()
        kwargs = self._kwargs(num_data)
        self.scale.data = 1.0 if self.takes_num_data else num_data / b
        if self.objective == "tracegraph":
            # TraceGraph_ELBO differentiates its own surrogate (with the baselines' loss): the
            # whole objective is scaled to nats per datapoint before
            self.scale.total = 1.0 / num_data
            with self.scale:
                return self.elbo.loss_and_grads(self.model, self.guide, *batch, **kwargs)
        self.scale.total = 1.0
        with self.scale:
            loss = self.elbo.differentiable_loss(self.model, self.guide, *batch, **kwargs) / num_data
        loss.backward()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, val, batch_size=1000):
        """The ELBO per datapoint of held-out data (KL weight 1).

        :param tuple val: held-out tensors of ``M`` rows.
        :returns: float.
        """
        m = val[0].shape[0]
        kl, self.scale.kl = self.scale.kl, 1.0
        try:
            total = 0.0
            for i in range(0, m, batch_size):
                chunk = tuple(t[i:i + batch_size] for t in val)
                b = chunk[0].shape[0]
                self.scale.data = 1.0 if self.takes_num_data else m / b
                self.scale.total = 1.0
                with self.scale:  # an estimate of the ELBO of all M points, weighted by b / M
                    total += -self.eval_elbo.loss(self.model, self.guide, *chunk, **self._kwargs(m)) * b / m
        finally:
            self.scale.kl = kl
        return total / m


# --------------------------------------------------------------------------- the convention
def check_convention(model_trace, guide_trace, batch_size, num_data, takes_num_data, objective):
    """Check the data-plate convention on the traces of a first run (see the module docstring).

    :param model_trace: the model's trace (replayed against the guide's).
    :param guide_trace: the guide's trace.
    :param int batch_size: rows ``B`` of the minibatch the programs were run on.
    :param int num_data: size ``N`` of the training set.
    :param bool takes_num_data: the programs were given ``num_data=N``.
    :param str objective: the objective (model-side enumeration needs ``"enum"``).
    :raises ValueError: a rule is broken; the message names the site and the rule.
    """
    found = False
    for role, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in _sample_sites(trace).items():
            frame = next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)
            if frame is None:
                if site["is_observed"]:
                    others = [f.name for f in site["cond_indep_stack"] if f.vectorized]
                    hint = (f" (it is inside pyro.plate({others[0]!r}): fit's convention names the plate of "
                            f"the datapoints {DATA_PLATE!r})") if others else ""
                    raise ValueError(
                        f"the {role}'s observed site {name!r} lies outside pyro.plate({DATA_PLATE!r}, ...){hint}: "
                        "every per-datapoint site must be inside the data plate, so that a minibatch can "
                        "be scaled to the whole data set (fit's data-plate convention)")
                continue  # a global latent site
            found = True
            full = frame.full_size if frame.full_size is not None else frame.size
            if takes_num_data and full != num_data:
                raise ValueError(
                    f"the {role}'s site {name!r} lies in a {DATA_PLATE!r} plate of size {full}, but fit passed "
                    f"num_data={num_data}: write pyro.plate({DATA_PLATE!r}, size=num_data, "
                    "subsample=torch.arange(len(x))) so that the plate spans the whole data set")
            if not takes_num_data and full != batch_size:
                raise ValueError(
                    f"the {role}'s site {name!r} lies in a {DATA_PLATE!r} plate of size {full}, but the "
                    f"minibatch has {batch_size} rows: a program without a num_data parameter must put "
                    f"the plate over the minibatch, pyro.plate({DATA_PLATE!r}, len(x)) (fit scales it to the "
                    f"{num_data} datapoints); or take num_data and write pyro.plate({DATA_PLATE!r}, "
                    "size=num_data, subsample=torch.arange(len(x)))")
            if frame.size != batch_size:
                raise ValueError(
                    f"the {role}'s {DATA_PLATE!r} plate at site {name!r} subsamples {frame.size} datapoints, "
                    f"but the minibatch passed has {batch_size}: subsample the plate to the rows passed, "
                    "subsample=torch.arange(len(x))")
    if not found:
        raise ValueError(
            f"neither the model nor the guide has a sample site inside pyro.plate({DATA_PLATE!r}, ...): fit's "
            f"data-plate convention puts every per-datapoint site in a plate named {DATA_PLATE!r}")
    model_sites, guide_sites = _sample_sites(model_trace), _sample_sites(guide_trace)
    for name, site in model_sites.items():
        if site["is_observed"] or name in guide_sites:
            continue
        if site["infer"].get("enumerate") is None:
            raise ValueError(
                f"the model's latent site {name!r} is not sampled by the guide: sample it in the guide, or "
                "enumerate it in the model (infer={'enumerate': 'parallel'}) and use objective='enum'")
        if objective != "enum":
            raise ValueError(f"the model enumerates its site {name!r}, which only objective='enum' sums out; "
                             f"got objective={objective!r}")
    for name, site in guide_sites.items():
        if site["is_observed"]:
            raise ValueError(f"the guide observes the site {name!r}; a guide must not observe data")
        if name not in model_sites and not site["infer"].get("is_auxiliary"):
            raise ValueError(f"the guide samples {name!r}, which the model does not have; a guide may only "
                             "sample latent sites of the model (or auxiliary sites marked "
                             "infer={'is_auxiliary': True})")


def _sample_sites(trace):
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def _has_parameter(fn, name):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _check_call(fn, role, batch, kwargs):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*batch, **kwargs)
    except TypeError as e:
        call = ", ".join(["x", "y", "u", "v", "w"][:len(batch)]) if len(batch) <= 5 else "x, y, ..."
        extra = ", num_data=N" if kwargs else ""
        raise ValueError(
            f"the {role} cannot be called as {role}({call}{extra}) ({e}): fit passes the data as the first "
            f"argument(s) -- {len(batch)} tensor(s) here; a tuple (x, y) is passed as {role}(x, y) -- and "
            "num_data=N when the model has a num_data parameter") from None


def _stale_params(model_trace, guide_trace):
    """Names of pyro.module parameters whose module tensor is not the one in Pyro's param store."""
    store = dict(pyro.get_param_store().named_parameters())
    stale = []
    for trace in (model_trace, guide_trace):
        for name, site in trace.nodes.items():
            args = site.get("args", ())
            if site["type"] == "param" and len(args) > 1 and isinstance(args[1], nn.Parameter) \
                    and store.get(name) is not args[1]:
                stale.append(name)
    return sorted(set(stale))


def _names(names, limit=3):
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
