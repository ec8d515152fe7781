"""torch.distributed collectives for jobs launched by ``torchrun``, and nothing else.

The package's data-parallel code (:mod:`pyro_vae.data_parallel` for :func:`pyro_vae.fit`, and
:meth:`pyro_vae.GaussianMixture.fit`) talks to the other processes only through these functions:

* the process group: :func:`init_process_group` joins the group that torchrun describes in the
  environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), with
  backend ``nccl`` on CUDA and ``gloo`` on CPU; :func:`get_rank`, :func:`get_world_size`,
  :func:`is_main_process`, :func:`local_device`;
* collectives: :func:`all_reduce` / :func:`all_reduce_sum`, :func:`broadcast`,
  :func:`broadcast_object`. In a single-process run each is a no-op, and a
  collective that fails (another process died or stalled for longer than the timeout of the
  group, ``PYRO_VAE_DIST_TIMEOUT`` seconds, default 600) raises a :class:`RuntimeError` that
  says so;
* the end of the job: a process group this module created is destroyed, with gloo's threads,
  when the interpreter exits (:func:`shutdown`).
"""

import atexit
import datetime
import logging
import math
import os

import torch

__all__ = [
    "TIMEOUT_ENV",
    "DEFAULT_TIMEOUT",
    "launched_by_torchrun",
    "init_process_group",
    "shutdown",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "local_device",
    "all_reduce",
    "all_reduce_sum",
    "broadcast",
    "broadcast_object",
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
_created = False  # this module created the process group (and so tears it down)


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
    global _group_timeout, _created
    _import_dynamo()
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=seconds))
    _group_timeout = seconds
    _created = True
    atexit.register(shutdown)
    log.info("joined process group: rank %d of %d, backend %s, timeout %.0f s",
             dist.get_rank(), dist.get_world_size(), backend, seconds)
    return True


def shutdown():
    """Destroy the process group that :func:`init_process_group` created, and with it gloo's threads.

    Registered to run at interpreter exit, while the interpreter is still fully alive; calling it
    earlier is allowed (it acts once). A group the user created is left alone.
    """
    global _created
    if not _created:
        return
    _created = False
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # the job is ending anyway
            log.debug("destroy_process_group at exit failed", exc_info=True)


def _import_dynamo():
    """Import ``torch._dynamo`` before a process group exists.

    ``torch._dynamo``, once imported, holds a reference to every process group that exists at
    that moment (``torch.optim.Adam`` imports it on first use, so training imports it anyway). A
    group it holds survives ``destroy_process_group``: gloo's worker threads then run on into
    the interpreter's finalization, where the process can abort with "terminate called without
    an active exception" (SIGABRT) -- at random, a few runs in a hundred. Imported first, it
    holds no group, and the group is destroyed at exit with its threads.
    """
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # a build without it: nothing holds the group
        log.debug("torch._dynamo could not be imported", exc_info=True)


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


def broadcast_object(obj, what="broadcast"):
    """Rank 0's picklable ``obj``, on every process; ``obj`` itself in a single-process run.

    :param obj: the object (only rank 0's is used).
    :param str what: name of the operation for the error message.
    :returns: rank 0's object.
    """
    if not (is_initialized() and get_world_size() > 1):
        return obj
    box = [obj]
    try:
        _dist().broadcast_object_list(box, src=0)
    except RuntimeError as e:
        raise _failed(what, e) from e
    return box[0]


