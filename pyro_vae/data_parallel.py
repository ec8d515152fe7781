"""One training step split over the processes of a ``torchrun`` job, as :func:`pyro_vae.fit` runs it.

:func:`pyro_vae.fit` (and so ``pyro-vae train``) runs unchanged under
``torchrun --nproc-per-node=W``: it joins the process group (:mod:`pyro_vae.distributed`) and
trains one replica of the parameters per process. A single-process run is the case ``W = 1``
of the same code, so that both draw the same numbers:

* **initial parameters** are broadcast from rank 0, so every replica starts from the same values;
* **data sharding**: every process draws the same seeded permutation of the training set and
  the same minibatches of ``batch_size`` points (the *global* batch); process ``r`` of ``W``
  takes the interleaved share ``batch[r::W]`` (:func:`share_rows`), which is the assignment of
  :class:`torch.utils.data.DistributedSampler` when ``W`` divides ``batch_size``. Every process
  runs the same number of steps, and no point is duplicated or dropped;
* **gradient averaging**: after each backward pass the gradients of all trained parameters are
  weighted by the share of the global batch each process holds and summed with one
  ``all_reduce`` over a flat buffer. With equal shares this is the average
  DistributedDataParallel computes; with unequal shares (last batch) it is still exactly the
  gradient of the global-batch mean. Every replica then takes the same optimizer step, so the
  parameters stay identical on all processes;
* **Monte Carlo noise** (:class:`SharedNoise`): the reparameterized draws of Gaussian and
  transformed-Gaussian sample sites inside the ``"data"`` plate (and
  dynamic binarization) are drawn for the whole global batch from the training generator on
  every process, and each process uses the rows of its share. These draws therefore do not
  depend on the number of processes: a run on ``W`` processes computes, step by step, the same
  parameters as a run on one process with the same ``batch_size`` and seed, up to
  floating-point rounding. Other latent sites (discrete ones, or distributions whose noise
  cannot be split by rows) are sampled by Pyro from torch's global generator, which
  :meth:`Replicas.seed_global_rng` seeds differently on every rank but 0: their draws are valid
  and independent between processes, but differ from those of a one-process run;
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

import os

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae import distributed as dist
from pyro_vae import storage
from pyro_vae.distributions import noise_spec, sample_from_noise

__all__ = ["share_rows", "SharedNoise", "Replicas"]

#: name of the plate the datapoints live in
DATA_PLATE = "data"


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

    At every reparameterizable latent sample site inside the ``"data"`` plate whose draws
    :func:`pyro_vae.distributions.sample_from_noise` writes as a function of standard-normal
    noise (Normal, ``to_event``, MultivariateNormal, flows and other transformed Gaussians, the
    package's own per-datapoint families; possibly broadcast over particles), the noise is drawn
    with ``generator`` for the *global* minibatch of ``global_size`` datapoints, and the rows
    ``rows`` of this process are kept. The value is a reparameterized sample exactly as the
    distribution's own ``rsample``; only where the noise comes from changes, so that every
    process (and a single-process run) sees the same draw for the same datapoint of the same
    step. Other sites are sampled by Pyro as usual.

    :param torch.Generator generator: source of the noise (advanced identically on every process).
    :param torch.Tensor rows: positions of this process's datapoints in the global batch
        (``None``: all of them, a single-process run).
    :param int global_size: size of the global minibatch.
    :param str plate: name of the data plate.
    """

    def __init__(self, generator, rows, global_size, plate=DATA_PLATE):
        super().__init__()
        self.generator = generator
        self.rows = rows
        self.global_size = int(global_size)
        self.local_size = len(rows) if rows is not None else self.global_size
        self.plate = plate

    def _pyro_sample(self, msg):
        if msg["done"] or msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.plate), None)
        if frame is None or frame.dim is None:
            return
        fn = msg["fn"]
        if not fn.has_rsample:
            return
        spec = noise_spec(fn)  # batch shape + the noise of one draw
        if spec is None:
            return
        pos = frame.dim - (len(spec.shape) - len(fn.batch_shape))  # the data dimension, from the right
        if -pos > len(spec.shape) or spec.shape[pos] != self.local_size:
            return
        msg["value"] = sample_from_noise(fn, self._noise(spec, pos))

    def _noise(self, spec, pos):
        full = list(spec.shape)
        full[pos] = self.global_size
        eps = torch.randn(full, generator=self.generator, dtype=spec.dtype, device=spec.device)
        if self.rows is not None:
            eps = eps.index_select(pos % len(full), self.rows)
        return eps


class Replicas:
    """The replicas of the trained parameters across the processes of a job.

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
    def setup(cls, device, timeout=None):
        """Join the torchrun process group if there is one.

        :param torch.device device: the device asked for (CUDA becomes ``cuda:LOCAL_RANK``).
        :param timeout: see :func:`pyro_vae.distributed.init_process_group`.
        :returns: :class:`Replicas`.
        """
        device = dist.local_device(device)
        dist.init_process_group(device, timeout)
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return cls(0, 1, device)
        import torch.distributed

        if torch.distributed.get_backend() == "nccl" and device.type != "cuda":
            raise ValueError("the process group uses the nccl backend, which needs CUDA tensors: train "
                             "with device='cuda', or create the group with backend='gloo'")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def replicate(self, tensors):
        """Copy rank 0's values of ``tensors`` (parameters, buffers) into every process's.

        :param list tensors: tensors of the same shapes on every process.
        """
        if self.world_size == 1:
            return
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, "broadcast of the initial parameters")

    def seed_global_rng(self, seed, epoch):
        """Give every rank but 0 its own stream of torch's global generator.

        Draws that :class:`SharedNoise` does not take over come from the global generator;
        seeded alike, the processes would draw the same noise for different datapoints. Rank 0
        keeps its stream (the one a single-process run has).

        :param int seed: the training seed.
        :param int epoch: epochs done (a resumed run gets a stream of its own too).
        """
        if self.rank > 0:
            torch.manual_seed((seed * 1_000_003 + epoch * 7_919 + self.rank) % 2 ** 63)

    def step(self, step_fn, batch, num_data, generator, params):
        """One data-parallel training step on the global minibatch ``batch``.

        This process runs ``step_fn`` (forward and backward) on its share of the batch with the
        shared Monte Carlo noise, then the gradients and the loss are combined across processes
        so that ``p.grad`` holds the gradient of the global-batch loss on every process.

        :param callable step_fn: ``step_fn(batch_share, num_data)`` runs backward on the loss
            (mean per datapoint of the share) and returns its value (float).
        :param tuple batch: the global minibatch, tensors of ``B`` rows each, identical on all
            processes.
        :param int num_data: size ``N`` of the training set.
        :param torch.Generator generator: the training generator (identical state on all processes).
        :param list params: the parameters whose gradients are combined.
        :returns: the global-batch loss (float).
        """
        size = batch[0].shape[0]
        if self.world_size == 1:
            with SharedNoise(generator, None, size):
                return step_fn(batch, num_data)
        if not self._checked:
            self._check_same_batch(batch[0], num_data)
        rows = share_rows(size, self.rank, self.world_size, device=batch[0].device)
        local = tuple(t.index_select(0, rows) for t in batch)
        if rows.numel():
            with SharedNoise(generator, rows, size):
                loss = step_fn(local, num_data)
        else:  # fewer datapoints than processes in the last batch: nothing to do here
            loss = 0.0
        if size < self.world_size:
            # some process skipped the step and so drew no noise: take rank 0's generator state
            state = generator.get_state().to(self.device)
            generator.set_state(dist.broadcast(state, "broadcast of the generator state").cpu())
        return self._reduce(params, loss, rows.numel() / size)

    def _reduce(self, params, loss, weight):
        grads = [p.grad for p in params]
        dtype = next((g.dtype for g in grads if g is not None), params[0].dtype)
        parts = [(g.detach().reshape(-1).to(dtype) * weight) if g is not None
                 else torch.zeros(p.numel(), dtype=dtype, device=self.device)
                 for p, g in zip(params, grads)]
        has_grad = torch.tensor([g is not None for g in grads], dtype=dtype, device=self.device)
        flat = torch.cat(parts + [has_grad, torch.tensor([loss * weight], dtype=dtype, device=self.device)])
        dist.all_reduce_sum(flat, "all_reduce of the gradients")
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
        both = dist.all_reduce(torch.cat([stats, -stats]), "max", "check of the training data")
        high, low = both[:3], -both[3:]
        if not torch.equal(high, low):
            raise ValueError(
                f"the processes were given different training data (rank {self.rank}: {int(num_data)} "
                f"datapoints, first minibatch sum {stats[2].item():.6g}; over all ranks the sizes range "
                f"{int(low[0])}..{int(high[0])}): every process must pass the same data and seed to fit()")
        self._checked = True

    def from_main(self, fn, what="a value computed on rank 0"):
        """Compute a float on rank 0 and give it to every process.

        :param callable fn: no arguments, returns a float; called on rank 0 only.
        :param str what: what the value is, for the message of a failed broadcast
            (e.g. ``"the held-out ELBO"``).
        :returns: the float.
        """
        if self.world_size == 1:
            return fn()
        value = torch.tensor([float(fn()) if self.is_main else 0.0], dtype=torch.float64, device=self.device)
        return float(dist.broadcast(value, f"broadcast of {what}")[0])

    def load_checkpoint(self, path, device):
        """Read the checkpoint on rank 0 (if the file exists) and give it to every process.

        A file rank 0 cannot read is refused on every process with the same message.

        :param str path: checkpoint file.
        :param torch.device device: where the tensors go in a single-process run (CPU otherwise;
            the caller copies them into place).
        :returns: the loaded object, or ``None`` if rank 0 has no such file.
        :raises ValueError: the file is not a plain weights file.
        """
        if self.world_size == 1:
            return storage.load_checkpoint(path, map_location=device) if os.path.exists(path) else None
        loaded, error = None, None
        if self.is_main and os.path.exists(path):
            try:
                loaded = storage.load_checkpoint(path, map_location="cpu")
            except (ValueError, OSError) as e:
                error = str(e)
        loaded, error = dist.broadcast_object((loaded, error), "broadcast of the checkpoint")
        if error is not None:
            raise ValueError(error)
        return loaded
