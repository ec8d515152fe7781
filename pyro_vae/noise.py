"""Monte Carlo noise that belongs to a datapoint, not to a pass: :class:`DatapointNoise`.

An estimator that runs a guide over chunks of particles and datapoints (such as
:func:`pyro_vae.log_likelihood`) would, with Pyro's own sampling, give datapoint i the draws that
happen to come next from torch's generator in whatever chunk it lands in: another chunk size,
other draws, other estimates. Under :class:`DatapointNoise` the draws of datapoint i's particle k
at a site depend only on (seed, i, site name, k):

* the standard-normal noise of datapoint i comes from torch's CPU generator seeded by a 64-bit
  hash (SplitMix64's finalizer) of (seed, i, a stable hash of the site name, b), where b numbers
  the fixed blocks of 32 particles (a fixed size, because torch's ``randn`` of shape
  ``(a + b, ...)`` is not the concatenation of shapes ``(a, ...)`` and ``(b, ...)`` from the same
  generator state). A pass over particles k0..k0+k-1 draws the blocks it overlaps and keeps its
  rows, whatever the other datapoints and particles of the pass;
* the noise becomes a sample by :func:`pyro_vae.distributions.sample_from_noise`: Normal,
  ``to_event``, MultivariateNormal, low-rank, flows and other ``TransformedDistribution``
  (reparameterized: gradients flow as with Pyro's ``rsample``); Categorical, Bernoulli, mixtures
  and univariate distributions with an ``icdf`` by inverse CDF;
* a site outside the data plate (an autoguide's joint latent) uses datapoint index -1: one
  stream per particle block;
* the noise is drawn on the CPU and moved to the parameters' device, so CPU and CUDA see the
  same draws;
* sites of other families (Gamma, Beta, Poisson...) are left to Pyro, which samples them from
  torch's global generator: their draws then depend on the passes; a warning names them.

Torch seeds its CPU generator from the low 32 bits of the seed, so two of the many streams of
a large run can coincide; each datapoint's estimate stays unbiased.
"""

import hashlib
import warnings

import torch

import pyro.distributions as dist
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.checks import check_int, check_seed
from pyro_vae.distributions import noise_spec, sample_from_noise

__all__ = ["DatapointNoise", "NOISE_BLOCK"]

#: particles per block of noise drawn from one seeded stream
NOISE_BLOCK = 32
_MASK64 = 2 ** 64 - 1


class DatapointNoise(Messenger):
    """Effect handler: the noise of every latent site is drawn per datapoint and particle.

    At a latent sample site whose distribution :func:`pyro_vae.distributions.noise_spec`
    handles, the standard-normal noise of datapoint ``data_offset + r`` (row r of the site's
    ``data_plate`` dimension) and particle ``particle_offset + j`` (row j of the
    ``particle_plate`` dimension; ``particle_offset`` when the site is outside that plate) is
    drawn as the module documentation says, and the site's value is
    :func:`pyro_vae.distributions.sample_from_noise` of it. Sites that already have a value
    (observed, replayed) are left alone, as are ``Delta`` sites (no randomness); sites of other
    families are sampled by Pyro, recorded in ``unsupported`` and warned about once.

    Use it around the guide only (the model replays the guide's values)::

        with DatapointNoise(seed, "data", "particles", data_offset=start, particle_offset=k0):
            guide_trace = poutine.trace(vectorized_guide).get_trace(x[start:start + n])

    :param int seed: the seed.
    :param str data_plate: name of the plate of the datapoints.
    :param str particle_plate: name of the plate of vectorized particles.
    :param int data_offset: index of the first datapoint passed in the whole data set.
    :param int particle_offset: index of the first particle of this pass.
    :param dict unsupported: shared record ``{site name: distribution name}`` of the sites left
        to Pyro (one warning per site and record).
    """

    def __init__(self, seed, data_plate, particle_plate, *, data_offset=0, particle_offset=0,
                 unsupported=None):
        super().__init__()
        self.seed = check_seed(seed, allow_none=False)
        self.data_plate = data_plate
        self.particle_plate = particle_plate
        self.data_offset = check_int(data_offset, "data_offset", minimum=0)
        self.particle_offset = check_int(particle_offset, "particle_offset", minimum=0)
        self.unsupported = {} if unsupported is None else unsupported
        self._generator = torch.Generator()
        self._root = _mix64(self.seed)

    def _pyro_sample(self, msg):
        if (msg["done"] or msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg)
                or _is_delta(msg["fn"])):
            return
        spec = noise_spec(msg["fn"])
        positions = None if spec is None else self._positions(msg, spec.shape)
        if positions is None:
            name = msg["name"]
            if name not in self.unsupported:
                self.unsupported[name] = type(msg["fn"]).__name__
                why = ("has no sampler from standard noise (pyro_vae.distributions.noise_spec)"
                       if spec is None else "has a shape that does not follow its plates")
                warnings.warn(
                    f"the guide's site {name!r} ({type(msg['fn']).__name__}) {why}: Pyro samples it "
                    "from torch's global generator, so its draws depend on particle_batch_size and "
                    "data_batch_size", stacklevel=2)
            return
        msg["value"] = sample_from_noise(msg["fn"], self.noise(msg["name"], spec, *positions))

    def _positions(self, msg, shape):
        """Positions of the data and particle dimensions in the noise (None where absent)."""
        nbatch = len(msg["fn"].batch_shape)
        found = {}
        for frame in msg["cond_indep_stack"]:
            if frame.name in (self.data_plate, self.particle_plate) and frame.dim is not None:
                pos = nbatch + frame.dim
                if pos < 0 or shape[pos] != frame.size:
                    return None
                found[frame.name] = pos
        return found.get(self.data_plate), found.get(self.particle_plate)

    def noise(self, name, spec, data_pos, particle_pos):
        """The standard-normal noise of one site.

        :param str name: the site's name.
        :param spec: its :data:`pyro_vae.distributions.NoiseSpec`.
        :param int data_pos: position of the datapoints in ``spec.shape`` (``None``: none).
        :param int particle_pos: position of the particles in ``spec.shape`` (``None``: none).
        :returns: tensor of shape ``spec.shape`` on ``spec.device``.
        """
        shape = list(spec.shape)
        positions = [p for p in (data_pos, particle_pos) if p is not None]
        n = shape[data_pos] if data_pos is not None else 1
        k = shape[particle_pos] if particle_pos is not None else 1
        rest = [s for d, s in enumerate(shape) if d not in positions]
        first = self.particle_offset // NOISE_BLOCK
        last = (self.particle_offset + k - 1) // NOISE_BLOCK
        skip = self.particle_offset - first * NOISE_BLOCK
        site = _mix64(self._root ^ int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(),
                                                  "little"))
        rows = []
        for r in range(n):
            datapoint = self.data_offset + r if data_pos is not None else -1
            stream = _mix64(site ^ (datapoint & _MASK64))
            blocks = []
            for b in range(first, last + 1):
                self._generator.manual_seed(_mix64(stream ^ b))
                blocks.append(torch.randn([NOISE_BLOCK] + rest, generator=self._generator, dtype=spec.dtype))
            rows.append(torch.cat(blocks)[skip:skip + k])
        noise = torch.stack(rows)  # (datapoints, particles, *rest)
        # drop the dimensions the site does not have, then move the others into place
        noise = noise[(slice(None) if data_pos is not None else 0,
                       slice(None) if particle_pos is not None else 0)]
        noise = noise.movedim(tuple(range(len(positions))), tuple(positions))
        return noise.to(spec.device)


def _is_delta(fn):
    """Whether ``fn`` is a (wrapped) Delta: its value needs no noise."""
    while isinstance(fn, (torch.distributions.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def _mix64(value):
    """SplitMix64's finalizer: a 64-bit integer whose bits all depend on all bits of ``value``."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)
