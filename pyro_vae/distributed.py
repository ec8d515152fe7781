"""Data-parallel training on several processes with :mod:`torch.distributed`, launched by ``torchrun``.

:func:`pyro_vae.fit` (and so ``pyro-vae train``) runs unchanged under
``torchrun --nproc-per-node=N``: it sees the variables torchrun sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), joins the process group (backend ``nccl`` when
training on CUDA, ``gloo`` on CPU) and trains one replica of the model per process:

* **initial parameters** are broadcast from rank 0, so every replica starts from the same weights;
* **data sharding**: every process draws the same seeded permutation of the training set and
  the same minibatches of ``batch_size`` points (the *global* batch); process ``r`` of ``W``
  takes the interleaved share ``batch[r::W]``, which is the assignment of
  :class:`torch.utils.data.DistributedSampler` when ``W`` divides ``batch_size``. Every process
  runs the same number of steps, and no point is duplicated or dropped;
* **gradient averaging**: after each backward pass the gradients of all parameters -- network
  weights and the learnable parameters of the prior and likelihood alike, i.e.
  ``vae.parameters()`` -- are weighted by the share of the global batch each process holds and
  summed with one ``all_reduce`` over a flat buffer. With equal shares this is the average
  DistributedDataParallel computes; with unequal shares (last batch) it is still exactly the
  gradient of the global-batch mean. Every replica then takes the same optimizer step, so the
  parameters stay identical on all processes;
* **Monte Carlo noise** (the reparameterized draw of z in the guide, and dynamic binarization)
  is drawn for the whole global batch from the training generator on every process, and each
  process uses the rows of its share. The draws therefore do not depend on the number of
  processes: a run on ``W`` processes computes, step by step, the same parameters as a run on
  one process with the same ``batch_size`` and seed, up to floating-point rounding;
* **only rank 0 writes** (checkpoint, history, run folder, figures) and evaluates the held-out
  ELBO, whose value it broadcasts; on ``resume`` rank 0 reads the checkpoint and sends it to the
  others, so nodes need not share a file system for reading.

Why not wrap the model in :class:`torch.nn.parallel.DistributedDataParallel`: DDP synchronizes
gradients through hooks armed by its ``forward()``, but Pyro's ELBO calls the ``model`` and
``guide`` functions, never ``module.forward``. The all-reduce of gradients after backward is
the operation DDP performs, done here explicitly with the same engine.

A process that dies makes the job fail: torchrun stops the others and reports the failed rank;
a process that stalls makes the collectives of the others fail after the timeout of the process
group (``PYRO_VAE_DIST_TIMEOUT`` seconds, default 600), with a message that says so.
"""

import atexit
import datetime
import logging
import math
import os

import torch
from pyro.poutine.messenger import Messenger

from pyro_vae import storage

__all__ = [
    "TIMEOUT_ENV",
    "DEFAULT_TIMEOUT",
    "launched_by_torchrun",
    "init_process_group",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "all_reduce",
    "all_reduce_sum",
    "broadcast",
    "share_rows",
    "SharedNoise",
    "Replicas",
]

log = logging.getLogger(__name__)

#: environment variable with the timeout of collective operations, in seconds
TIMEOUT_ENV = "PYRO_VAE_DIST_TIMEOUT"
#: default timeout of collective operations, in seconds
DEFAULT_TIMEOUT = 600.0


# --------------------------------------------------------------------------- process group
def _dist():
    import torch.distributed as dist

    return dist


def is_initialized():
    """Whether a default :mod:`torch.distributed` process group exists."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def _env_int(name, default=None):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer "
                         "(it is set by torchrun)") from None


def launched_by_torchrun():
    """Whether the environment describes a job of more than one process (``WORLD_SIZE > 1``)."""
    return (_env_int("WORLD_SIZE", 1) or 1) > 1


def get_rank():
    """Rank of this process: from the process group if there is one, else ``RANK`` (default 0)."""
    if is_initialized():
        return _dist().get_rank()
    return _env_int("RANK", 0)


def get_world_size():
    """Number of processes: from the process group if there is one, else ``WORLD_SIZE`` (default 1)."""
    if is_initialized():
        return _dist().get_world_size()
    return _env_int("WORLD_SIZE", 1)


def is_main_process():
    """True on rank 0 (and in a single-process run): the process that writes files."""
    return get_rank() == 0


def _timeout_seconds(timeout):
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV)
        if text is None or text == "":
            return DEFAULT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={text!r} must be a number of seconds") from None
        what = TIMEOUT_ENV
    else:
        what = "timeout"
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 \
            or not math.isfinite(timeout):
        raise ValueError(f"{what} must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


_group_timeout = None  # seconds, when this module created the process group


def _timeout_of_group():
    if _group_timeout is not None:
        return _group_timeout
    try:
        from torch.distributed.distributed_c10d import _get_default_group  # private, best effort

        return _get_default_group().options._timeout.total_seconds()
    except Exception:
        return None


def local_device(device):
    """The device of this process under torchrun: a CUDA device becomes ``cuda:LOCAL_RANK``.

    :param torch.device device: the device asked for.
    :returns: :class:`torch.device`.
    """
    device = torch.device(device)
    if device.type == "cuda" and launched_by_torchrun():
        local_rank = _env_int("LOCAL_RANK", 0)
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} "
                             "CUDA devices: start at most one process per GPU (--nproc-per-node)")
        return torch.device("cuda", local_rank)
    return device


def init_process_group(device="cpu", timeout=None):
    """Join the process group that torchrun describes in the environment.

    Does nothing when the job has one process or when a process group already exists (a user
    may create their own with :func:`torch.distributed.init_process_group`).

    :param device: the device this process trains on: ``nccl`` is used for CUDA, ``gloo`` for CPU.
    :param timeout: seconds (or :class:`datetime.timedelta`) after which a collective operation
        that waits for a stalled process fails; default ``PYRO_VAE_DIST_TIMEOUT`` or 600.
    :returns: True if this call created the process group.
    """
    seconds = _timeout_seconds(timeout)
    if is_initialized() or not launched_by_torchrun():
        return False
    dist = _dist()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 asks for a distributed run, but this PyTorch build has no "
                           "torch.distributed; install a build with it or run one process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} not: launch the job with torchrun "
                         "(e.g. torchrun --nproc-per-node=2 ...), which sets them all")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    global _group_timeout
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=seconds))
    _group_timeout = seconds
    atexit.register(_destroy)
    log.info("joined process group: rank %d of %d, backend %s, timeout %.0f s",
             dist.get_rank(), dist.get_world_size(), backend, seconds)
    return True


def _destroy():
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # the job is ending anyway
            pass


def _failed(what, error):
    rank, world = get_rank(), get_world_size()
    timeout = _timeout_of_group()
    limit = f"{timeout:.0f} s" if timeout is not None else "the timeout"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RuntimeError(
        f"distributed {what} failed on rank {rank} of {world}: {first}. Another process of the job "
        f"has probably died or stalled for longer than {limit} (set {TIMEOUT_ENV} to change it); "
        "look for the first error in the job's output -- torchrun names the rank that failed")


def all_reduce_sum(tensor, what="all_reduce"):
    """Sum ``tensor`` over all processes, in place; a no-op in a single-process run.

    :param torch.Tensor tensor: on this process's device (CUDA with ``nccl``).
    :param str what: name of the operation for the error message.
    :returns: ``tensor``.
    """
    return all_reduce(tensor, "sum", what)


def all_reduce(tensor, op="sum", what="all_reduce"):
    """Reduce ``tensor`` over all processes, in place; a no-op in a single-process run.

    :param torch.Tensor tensor: on this process's device (CUDA with ``nccl``).
    :param str op: ``"sum"``, ``"max"`` or ``"min"``.
    :param str what: name of the operation for the error message.
    :returns: ``tensor``.
    """
    ops = {"sum": "SUM", "max": "MAX", "min": "MIN"}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    if is_initialized() and get_world_size() > 1:
        try:
            _dist().all_reduce(tensor, op=getattr(_dist().ReduceOp, ops[op]))
        except RuntimeError as e:
            raise _failed(what, e) from e
    return tensor


def broadcast(tensor, what="broadcast"):
    """Copy rank 0's ``tensor`` into ``tensor`` on every process; a no-op in a single-process run.

    :param torch.Tensor tensor: same shape and dtype on every process.
    :param str what: name of the operation for the error message.
    :returns: ``tensor``.
    """
    if is_initialized() and get_world_size() > 1:
        try:
            _dist().broadcast(tensor, src=0)
        except RuntimeError as e:
            raise _failed(what, e) from e
    return tensor


def _broadcast_object(obj, what):
    box = [obj]
    try:
        _dist().broadcast_object_list(box, src=0)
    except RuntimeError as e:
        raise _failed(what, e) from e
    return box[0]


# --------------------------------------------------------------------------- sharding and noise
def share_rows(batch_size, rank, world_size, device=None):
    """Positions, within a global minibatch, of the datapoints process ``rank`` handles.

    Process ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...`` (the interleaving of
    :class:`torch.utils.data.DistributedSampler`). The shares differ in size by at most one.

    :param int batch_size: size ``B`` of the global minibatch.
    :param int rank: this process's rank ``r``.
    :param int world_size: number of processes ``W``.
    :returns: long tensor of shape ``(ceil((B - r) / W),)``.
    """
    return torch.arange(rank, batch_size, world_size, device=device)


class SharedNoise(Messenger):
    """Effect handler: draw the Monte Carlo noise of a minibatch share as rows of the global batch.

    At every latent sample site inside the ``"data"`` plate whose distribution is a Normal
    (possibly wrapped in ``Independent`` and broadcast over particles), the standard-normal noise
    is drawn with ``generator`` for the *global* minibatch of ``global_size`` datapoints and the
    rows ``rows`` of this process are kept: ``value = loc + eps[rows] * scale``. The value is a
    reparameterized sample exactly as Pyro's own ``rsample``; only where the noise comes from
    changes, so that every process (and a single-process run) sees the same draw for the same
    datapoint of the same step. Other sites are sampled by Pyro as usual.

    :param torch.Generator generator: source of the noise (advanced identically on every process).
    :param torch.Tensor rows: positions of this process's datapoints in the global batch
        (``None``: all of them, a single-process run).
    :param int global_size: size of the global minibatch.
    :param str plate: name of the data plate.
    """

    def __init__(self, generator, rows, global_size, plate="data"):
        super().__init__()
        self.generator = generator
        self.rows = rows
        self.global_size = int(global_size)
        self.plate = plate

    def _pyro_sample(self, msg):
        if msg["done"] or msg["is_observed"] or msg["value"] is not None:
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.plate), None)
        if frame is None or frame.dim is None:
            return
        fn = msg["fn"]
        base = fn
        while isinstance(base, torch.distributions.Independent):
            base = base.base_dist
        if not isinstance(base, torch.distributions.Normal):
            return
        shape = list(fn.shape())
        pos = frame.dim - len(fn.event_shape)
        local = len(self.rows) if self.rows is not None else self.global_size
        if -pos > len(shape) or shape[pos] != local:
            return
        shape[pos] = self.global_size
        eps = torch.randn(shape, generator=self.generator, dtype=base.loc.dtype, device=base.loc.device)
        if self.rows is not None:
            eps = eps.index_select(pos % len(shape), self.rows)
        msg["value"] = base.loc + eps * base.scale


# --------------------------------------------------------------------------- training replicas
class Replicas:
    """The replicas of one model across the processes of a job, as :func:`pyro_vae.fit` uses them.

    Create with :meth:`setup`. In a single-process run every method reduces to the plain
    computation (no communication).

    :ivar int rank: this process's rank.
    :ivar int world_size: number of processes.
    :ivar torch.device device: this process's device.
    :ivar bool is_main: rank 0, the process that writes files.
    """

    def __init__(self, rank, world_size, device):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.device = torch.device(device)
        self.is_main = self.rank == 0
        self._checked = False

    @classmethod
    def setup(cls, module, device, timeout=None):
        """Join the torchrun process group if there is one, move ``module`` to this process's
        device and broadcast its parameters and buffers from rank 0.

        :param torch.nn.Module module: the model (all its parameters and buffers are replicated).
        :param torch.device device: the device asked for (CUDA becomes ``cuda:LOCAL_RANK``).
        :param timeout: see :func:`init_process_group`.
        :returns: :class:`Replicas`.
        """
        device = local_device(device)
        init_process_group(device, timeout)
        module.to(device)
        if not is_initialized() or get_world_size() == 1:
            return cls(0, 1, device)
        dist = _dist()
        if dist.get_backend() == "nccl" and device.type != "cuda":
            raise ValueError("the process group uses the nccl backend, which needs CUDA tensors: train "
                             "with device='cuda', or create the group with backend='gloo'")
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                broadcast(t.data, "broadcast of the initial parameters")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def step(self, step_fn, x, num_data, generator, params):
        """One data-parallel training step on the global minibatch ``x``.

        This process runs ``step_fn`` (forward and backward) on its share of ``x`` with the
        shared Monte Carlo noise, then the gradients and the loss are combined across processes
        so that ``p.grad`` holds the gradient of the global-batch loss on every process.

        :param callable step_fn: ``step_fn(x_share, num_data)`` runs backward on the loss (mean
            per datapoint of the share) and returns its value (float).
        :param torch.Tensor x: the global minibatch, shape ``(B, D)``, identical on all processes.
        :param int num_data: size ``N`` of the training set.
        :param torch.Generator generator: the training generator (identical state on all processes).
        :param list params: the parameters whose gradients are combined.
        :returns: the global-batch loss (float).
        """
        size = x.shape[0]
        if self.world_size == 1:
            with SharedNoise(generator, None, size):
                return step_fn(x, num_data)
        if not self._checked:
            self._check_same_batch(x, num_data)
        rows = share_rows(size, self.rank, self.world_size, device=x.device)
        local = x.index_select(0, rows)
        if local.shape[0]:
            with SharedNoise(generator, rows, size):
                loss = step_fn(local, num_data)
        else:  # fewer datapoints than processes in the last batch: nothing to do here
            loss = 0.0
        if size < self.world_size:
            # some process skipped the step and so drew no noise: take rank 0's generator state
            state = generator.get_state().to(self.device)
            generator.set_state(broadcast(state, "broadcast of the generator state").cpu())
        return self._reduce(params, loss, local.shape[0] / size)

    def _reduce(self, params, loss, weight):
        grads = [p.grad for p in params]
        dtype = next((g.dtype for g in grads if g is not None), params[0].dtype)
        parts = [(g.detach().reshape(-1).to(dtype) * weight) if g is not None
                 else torch.zeros(p.numel(), dtype=dtype, device=self.device)
                 for p, g in zip(params, grads)]
        has_grad = torch.tensor([g is not None for g in grads], dtype=dtype, device=self.device)
        flat = torch.cat(parts + [has_grad, torch.tensor([loss * weight], dtype=dtype, device=self.device)])
        all_reduce_sum(flat, "all_reduce of the gradients")
        offset = 0
        count = flat[-1 - len(params):-1].tolist()
        for i, p in enumerate(params):
            n = p.numel()
            if count[i] > 0:
                p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
        return float(flat[-1])

    def _check_same_batch(self, x, num_data):
        stats = torch.tensor([float(num_data), float(x.shape[0]), float(x.double().sum())],
                             dtype=torch.float64, device=self.device)
        both = all_reduce(torch.cat([stats, -stats]), "max", "check of the training data")
        high, low = both[:3], -both[3:]
        if not torch.equal(high, low):
            raise ValueError(
                f"the processes were given different training data (rank {self.rank}: {int(num_data)} "
                f"datapoints, first minibatch sum {stats[2].item():.6g}; over all ranks the sizes range "
                f"{int(low[0])}..{int(high[0])}): every process must pass the same data and seed to fit()")
        self._checked = True

    def from_main(self, fn):
        """Compute a float on rank 0 and give it to every process.

        :param callable fn: no arguments, returns a float; called on rank 0 only.
        :returns: the float.
        """
        if self.world_size == 1:
            return fn()
        value = torch.tensor([float(fn()) if self.is_main else 0.0], dtype=torch.float64, device=self.device)
        return float(broadcast(value, "broadcast of the held-out ELBO")[0])

    def load_checkpoint(self, path, device):
        """Read the checkpoint on rank 0 (if the file exists) and give it to every process.

        :param str path: checkpoint file.
        :param torch.device device: where the tensors go in a single-process run (CPU otherwise;
            the caller copies them into place).
        :returns: the checkpoint dict, or ``None`` if rank 0 has no such file.
        """
        if self.world_size == 1:
            return storage.load_checkpoint(path, map_location=device) if os.path.exists(path) else None
        ck = None
        if self.is_main and os.path.exists(path):
            ck = storage.load_checkpoint(path, map_location="cpu")
        return _broadcast_object(ck, "broadcast of the checkpoint")
