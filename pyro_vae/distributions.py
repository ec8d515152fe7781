"""Vector-valued distributions with one event dimension and a cheaper ``log_prob``.

The VAE's densities are products over the features of a vector: ``Normal(loc, scale)`` or
``Bernoulli(logits)`` made one event with ``.to_event(1)``. The generic route computes the
elementwise log-density with every constant and sign on the full ``(..., D)`` tensor and then
sums. The classes here sum first where that saves whole-tensor operations (forward and
backward) and otherwise are those distributions: ``isinstance(d, Independent)``,
``d.base_dist``, sampling, ``rsample``, ``mean``, ``expand``, ``mask``, ``to_event`` and the
registered KL divergences are unchanged, and ``log_prob`` agrees with the generic route up to
float rounding.

* :class:`NormalEvent` -- ``Normal(loc, scale).to_event(1)``: the guide q(z|x), the normal
  priors, the components of the mixture priors and the Gaussian likelihoods;
* :class:`BernoulliEvent` -- ``Bernoulli(logits=logits).to_event(1)``: the Bernoulli likelihood.
"""

import math

from torch.distributions.utils import broadcast_all
from torch.nn import functional as F

import pyro.distributions as dist

__all__ = ["NormalEvent", "BernoulliEvent", "inv_softplus"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def inv_softplus(y):
    """x such that softplus(x) = y, for a Python float y > 0: the raw value that makes a
    softplus-parameterized scale start at y."""
    return y + math.log(-math.expm1(-y))


class _VectorEvent(dist.Independent):
    """``Independent(base, 1)`` built from its parameters; ``expand`` keeps the subclass."""

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        return super().expand(batch_shape, _instance=new)


class NormalEvent(_VectorEvent):
    """``Normal(loc, scale).to_event(1)``: a diagonal Gaussian over vectors of size ``D``.

    :param torch.Tensor loc: means, shape ``(..., D)``.
    :param torch.Tensor scale: standard deviations, shape broadcastable with ``loc``.
    :param bool validate_args: as for any torch distribution.
    """

    def __init__(self, loc, scale, validate_args=None):
        super().__init__(dist.Normal(loc, scale, validate_args=validate_args), 1,
                         validate_args=validate_args)

    @property
    def loc(self):
        return self.base_dist.loc

    @property
    def scale(self):
        return self.base_dist.scale

    def log_prob(self, value):
        """
        :param torch.Tensor value: points, shape broadcastable with ``(..., D)``.
        :returns: ``sum_d log N(value_d | loc_d, scale_d)``, shape ``(...)``.
        """
        base = self.base_dist
        if self._validate_args:
            base._validate_sample(value)
        u = (value - base.loc) / base.scale
        return (-0.5 * u.square() - base.scale.log()).sum(-1) - self.event_shape[0] * _LOG_SQRT_2PI


class BernoulliEvent(_VectorEvent):
    """``Bernoulli(logits=logits).to_event(1)``: independent binary features.

    ``Bernoulli.log_prob`` negates the elementwise cross-entropy of the whole ``(..., D)``
    tensor before the sum; here only the sum is negated.

    :param torch.Tensor logits: log-odds, shape ``(..., D)``.
    :param bool validate_args: as for any torch distribution.
    """

    def __init__(self, logits, validate_args=None):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=validate_args), 1,
                         validate_args=validate_args)

    @property
    def logits(self):
        return self.base_dist.logits

    def log_prob(self, value):
        """
        :param torch.Tensor value: binary data, shape broadcastable with ``(..., D)``.
        :returns: ``sum_d log Bernoulli(value_d | sigmoid(logits_d))``, shape ``(...)``.
        """
        base = self.base_dist
        if self._validate_args:
            base._validate_sample(value)
        logits, value = broadcast_all(base.logits, value)
        return F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1).neg()
