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
* :class:`BernoulliEvent` -- ``Bernoulli(logits=logits).to_event(1)``: the Bernoulli likelihood;
* :class:`NormalMixtureEvent` -- ``MixtureSameFamily(Categorical(logits), NormalEvent(loc,
  scale))``: the mixture priors (VampPrior, mixture of Gaussians), whose ``log_prob`` forms no
  ``(..., K, D)`` tensor of differences.

Samples from given standard noise
---------------------------------
:func:`noise_spec` and :func:`sample_from_noise` write a draw of a distribution as a function of
standard-normal noise, ``value = f(params, eps)`` with ``eps ~ N(0, I)`` of a known shape, so
that whoever supplies ``eps`` (a seeded per-datapoint stream, a noise shared between
processes) controls the randomness while the sample keeps its distribution and its gradient:

* ``Normal``: ``loc + scale * eps``; ``MultivariateNormal``: ``loc + scale_tril @ eps``;
  ``LowRankMultivariateNormal``: ``loc + cov_factor @ eps_1 + sqrt(cov_diag) * eps_2``
  (reparameterized: gradients flow to the parameters);
* ``Independent`` (``.to_event``, :class:`NormalEvent`), masked and expanded distributions:
  their base distribution's rule; ``TransformedDistribution`` (flows such as an IAF, a
  ``LogNormal``): the base distribution's sample pushed through the transforms;
* by inverse CDF of the uniform ``Phi(eps)`` (``Phi`` the standard-normal CDF):
  ``Categorical``, ``OneHotCategorical``, ``Bernoulli``, and any univariate distribution with
  an ``icdf`` (``Exponential``, ``Laplace``, ``Cauchy``, ``Uniform``, ``Gumbel``...);
  ``MixtureSameFamily``: the component by inverse CDF, then the component's rule.

Distributions with none of these rules (``Gamma``, ``Beta``, ``Poisson``...) have no
:func:`noise_spec`; ``Delta`` needs no noise.

Any other distribution joins in by defining two methods: ``noise_spec()``, returning its
:data:`NoiseSpec`, and ``from_noise(noise)``, returning the draw (the package's per-datapoint
flows and defensive mixtures do).
"""

import math
from collections import namedtuple

import torch
from torch.distributions.utils import broadcast_all
from torch.nn import functional as F

import pyro.distributions as dist

__all__ = ["NormalEvent", "BernoulliEvent", "NormalMixtureEvent", "inv_softplus", "NoiseSpec", "noise_spec",
           "sample_from_noise", "gaussian_marginals"]

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


class NormalMixtureEvent(dist.MixtureSameFamily):
    """``MixtureSameFamily(Categorical(logits=logits), NormalEvent(loc, scale))``: K diagonal
    Gaussians over vectors of size ``D``.

    ``log_prob`` does not form the ``(..., K, D)`` differences of every point to every
    component (the generic route's cost and memory grow with points x K x D, forward and
    backward): the squared scaled distance of a point ``v`` to component ``k``,
    ``sum_d v_d^2 / s_kd^2 - 2 v_d m_kd / s_kd^2 + m_kd^2 / s_kd^2``, comes from two matrix
    products. The terms are large where a scale is small and cancel in the sum (in float32 they
    would lose up to a nat at scales of 1e-3), so they are formed in float64 and only the result
    is rounded to the values' floating-point type. Everything else -- sampling,
    ``expand``, ``mean``, the component and mixture distributions -- is ``MixtureSameFamily``'s.

    :param torch.Tensor logits: unnormalized log-weights of the components, ``(..., K)``.
    :param torch.Tensor loc: means, ``(..., K, D)``.
    :param torch.Tensor scale: standard deviations, broadcastable with ``loc``.
    :param bool validate_args: as for any torch distribution.
    """

    def __init__(self, logits, loc, scale, validate_args=None):
        super().__init__(dist.Categorical(logits=logits, validate_args=validate_args),
                         NormalEvent(loc, scale, validate_args=validate_args), validate_args=validate_args)
        # the parameters as given, before any expand (an expanded copy would be materialized
        # by the conversion to float64)
        self._params = (logits, loc, scale)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NormalMixtureEvent, _instance)
        new = super().expand(batch_shape, _instance=new)
        new._params = self._params
        return new

    def log_prob(self, value):
        """
        :param torch.Tensor value: points, shape broadcastable with ``batch_shape + (D,)``.
        :returns: ``log sum_k pi_k N(value | loc_k, diag(scale_k^2))``, shape
            ``broadcast(value.shape[:-1], batch_shape)``.
        """
        if self._validate_args:
            self._validate_sample(value)
        logits, loc, scale = self._params
        wide = torch.float64
        loc, scale = torch.broadcast_tensors(loc.to(wide), scale.to(wide))
        precision = scale.pow(-2)                                            # (B..., K, D)
        v = value.to(wide).unsqueeze(-2)                                     # (S..., 1, D)
        quad = (v.square() @ precision.transpose(-1, -2)
                - 2.0 * (v @ (loc * precision).transpose(-1, -2))).squeeze(-2)   # (S..., K)
        constant = (loc.square() * precision).sum(-1) + 2.0 * scale.log().sum(-1)
        log_weights = torch.log_softmax(logits, dim=-1).to(wide)
        out = torch.logsumexp(log_weights - 0.5 * (quad + constant), dim=-1) - loc.shape[-1] * _LOG_SQRT_2PI
        shape = torch.broadcast_shapes(out.shape, self.batch_shape)
        return out.to(torch.promote_types(value.dtype, self._params[1].dtype)).expand(shape)


# --------------------------------------------------------------------------- samples from given noise
#: The standard-normal noise one draw of a distribution needs: its ``shape`` starts with the
#: distribution's ``batch_shape``; ``dtype`` and ``device`` are those of its parameters.
NoiseSpec = namedtuple("NoiseSpec", ["shape", "dtype", "device"])


def noise_spec(fn):
    """The standard-normal noise that :func:`sample_from_noise` turns into one draw of ``fn``.

    :param torch.distributions.Distribution fn: the distribution (see the module documentation
        for the families handled).
    :returns: :data:`NoiseSpec` whose ``shape`` is ``fn.batch_shape + noise_event_shape``
        (e.g. ``batch_shape + (L,)`` for a Normal over vectors of size L, ``batch_shape`` for a
        Categorical), or ``None`` when the family has no noise-based sampler here (and for
        ``Delta``, which needs no noise).
    """
    leaf = _noise_leaf(fn)
    event = _noise_event_shape(fn)
    if leaf is None or event is None:
        return None
    dtype, device = leaf
    return NoiseSpec(torch.Size(fn.batch_shape) + event, dtype, device)


def sample_from_noise(fn, noise):
    """A draw of ``fn`` made from the given standard-normal noise.

    If ``noise`` is standard normal, the value has the distribution ``fn``; it is a
    differentiable function of ``fn``'s parameters where ``fn`` is reparameterizable
    (``fn.has_rsample``), as Pyro's own ``rsample``.

    :param torch.distributions.Distribution fn: a distribution :func:`noise_spec` handles.
    :param torch.Tensor noise: standard-normal noise of shape ``noise_spec(fn).shape`` (leading
        dimensions broadcast with ``fn.batch_shape``).
    :returns: tensor of shape ``fn.batch_shape + fn.event_shape``.
    :raises ValueError: the family has no noise-based sampler (``noise_spec(fn)`` is ``None``).
    """
    if noise_spec(fn) is None:
        raise ValueError(f"{_describe(fn)} has no sampler from standard noise; see "
                         "pyro_vae.distributions.noise_spec")
    return _from_noise(fn, noise)


def gaussian_marginals(fn, index):
    """The marginal distributions of subsets of the coordinates of a Gaussian vector.

    :param fn: ``Normal(loc, scale).to_event(1)``, ``MultivariateNormal`` or
        ``LowRankMultivariateNormal``, batch shape ``B``, event shape ``(D,)``.
    :param torch.Tensor index: integer tensor of shape ``(M, d)``: M subsets of d coordinates.
    :returns: a distribution with batch shape ``B + (M,)`` and event shape ``(d,)``: the
        marginal of coordinates ``index[m]`` is its ``m``-th batch entry. Evaluate it on
        ``value[..., index]``.
    :raises ValueError: ``fn`` is not one of these Gaussians.
    """
    while isinstance(fn, dist.ExpandedDistribution):
        fn = fn.base_dist
    if len(fn.event_shape) != 1:
        raise ValueError(f"expected a distribution over vectors, got event shape {tuple(fn.event_shape)}")
    if isinstance(fn, torch.distributions.Independent) and fn.reinterpreted_batch_ndims == 1:
        base = fn.base_dist
        while isinstance(base, dist.ExpandedDistribution):
            base = base.base_dist
        if type(base) in (torch.distributions.Normal, dist.Normal):
            loc, scale = _unexpand(base.loc), _unexpand(base.scale)
            loc, scale = torch.broadcast_tensors(loc, scale)
            return dist.Normal(loc[..., index], scale[..., index]).to_event(1)
    if isinstance(fn, (torch.distributions.MultivariateNormal, torch.distributions.LowRankMultivariateNormal)):
        loc = _unexpand(fn.loc)
        cov = _unexpand(fn.covariance_matrix)
        return dist.MultivariateNormal(loc[..., index], covariance_matrix=cov[..., index[:, :, None],
                                                                               index[:, None, :]])
    raise ValueError(f"the marginals of {_describe(fn)} are not available; expected "
                     "Normal(...).to_event(1), MultivariateNormal or LowRankMultivariateNormal")


def _describe(fn):
    """``Independent(Gamma)``: the class names of a distribution and the ones it wraps."""
    base = getattr(fn, "base_dist", None)
    return type(fn).__name__ + (f"({_describe(base)})" if base is not None else "")


def _unexpand(t):
    """``t`` with every dimension that an ``expand`` broadcast (stride 0) cut back to size 1."""
    for d in range(t.dim()):
        if t.stride(d) == 0 and t.shape[d] > 1:
            t = t.narrow(d, 0, 1)
    return t


def _is_univariate_with_icdf(fn):
    return fn.event_shape == () and type(fn).icdf is not torch.distributions.Distribution.icdf


def _has_own_rule(fn):
    """Whether ``fn`` brings its own ``noise_spec()`` and ``from_noise(noise)``."""
    return callable(getattr(fn, "noise_spec", None)) and callable(getattr(fn, "from_noise", None))


def _noise_leaf(fn):
    """(dtype, device) of the innermost distribution's parameters, or None if no sampler."""
    while isinstance(fn, (torch.distributions.Independent, dist.MaskedDistribution,
                          dist.ExpandedDistribution, torch.distributions.TransformedDistribution)) \
            and not _has_own_rule(fn):
        fn = fn.base_dist
    if _has_own_rule(fn):
        spec = fn.noise_spec()
        return None if spec is None else (spec.dtype, spec.device)
    if isinstance(fn, torch.distributions.MixtureSameFamily):
        return _noise_leaf(fn.component_distribution)
    if isinstance(fn, (torch.distributions.Normal, torch.distributions.MultivariateNormal,
                       torch.distributions.LowRankMultivariateNormal)):
        return fn.loc.dtype, fn.loc.device
    if isinstance(fn, (torch.distributions.Categorical, torch.distributions.OneHotCategorical,
                       torch.distributions.Bernoulli)):
        return fn.logits.dtype, fn.logits.device
    if _is_univariate_with_icdf(fn):
        mean = fn.mean
        return mean.dtype, mean.device
    return None


def _noise_event_shape(fn):
    """Shape of the noise of one draw beyond ``fn.batch_shape``, or None."""
    if _has_own_rule(fn):
        spec = fn.noise_spec()
        return None if spec is None else torch.Size(spec.shape[len(fn.batch_shape):])
    if isinstance(fn, torch.distributions.Independent):
        inner = _noise_event_shape(fn.base_dist)
        if inner is None:
            return None
        r = fn.reinterpreted_batch_ndims
        return torch.Size(fn.base_dist.batch_shape[len(fn.base_dist.batch_shape) - r:]) + inner
    if isinstance(fn, (dist.MaskedDistribution, dist.ExpandedDistribution)):
        return _noise_event_shape(fn.base_dist)
    if isinstance(fn, torch.distributions.TransformedDistribution):
        inner = _noise_event_shape(fn.base_dist)
        base_batch = fn.base_dist.batch_shape
        if inner is None or base_batch[:len(fn.batch_shape)] != fn.batch_shape:
            return None
        return torch.Size(base_batch[len(fn.batch_shape):]) + inner
    if isinstance(fn, torch.distributions.MixtureSameFamily):
        inner = _noise_event_shape(fn.component_distribution)
        return None if inner is None else torch.Size([1 + inner.numel()])
    if isinstance(fn, torch.distributions.Normal):
        return torch.Size()
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return fn.event_shape
    if isinstance(fn, torch.distributions.LowRankMultivariateNormal):
        return torch.Size([fn.cov_factor.shape[-1] + fn.event_shape[0]])
    if isinstance(fn, (torch.distributions.Categorical, torch.distributions.OneHotCategorical,
                       torch.distributions.Bernoulli)) or _is_univariate_with_icdf(fn):
        return torch.Size()
    return None


def _uniform(noise, dtype):
    """Phi(noise), a uniform on (0, 1), kept inside the open interval in ``dtype``."""
    u = torch.special.ndtr(noise.double()).to(dtype)
    return u.clamp(min=torch.finfo(dtype).tiny, max=1 - torch.finfo(dtype).eps / 2)


def _inverse_cdf_index(probs, noise):
    """Index of the category whose CDF interval holds Phi(noise); ``probs`` ``(..., C)``."""
    u = torch.special.ndtr(noise.double()).unsqueeze(-1)
    cdf = probs.double().cumsum(-1)
    return (u >= cdf).sum(-1).clamp(max=probs.shape[-1] - 1)


def _matvec(matrix, vector):
    # einsum contracts without materializing the broadcast batch of matrices
    return torch.einsum("...ij,...j->...i", _unexpand(matrix), vector)


def _from_noise(fn, noise):
    if _has_own_rule(fn):
        return fn.from_noise(noise)
    if isinstance(fn, (torch.distributions.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        return _from_noise(fn.base_dist, noise)
    if isinstance(fn, torch.distributions.TransformedDistribution):
        value = _from_noise(fn.base_dist, noise)
        for transform in fn.transforms:
            value = transform(value)
        return value
    if isinstance(fn, torch.distributions.MixtureSameFamily):
        component = fn.component_distribution
        inner = _noise_event_shape(component)
        index = _inverse_cdf_index(fn.mixture_distribution.probs, noise[..., 0])
        comp_noise = noise[..., 1:].reshape(noise.shape[:-1] + inner)
        comp_noise = comp_noise.unsqueeze(-1 - len(inner))  # the same noise for every component
        values = _from_noise(component, comp_noise)  # (..., C) + event
        event = len(fn.event_shape)
        index = index.reshape(index.shape + (1,) * (event + 1))
        index = index.expand(index.shape[:index.dim() - event] + values.shape[values.dim() - event:])
        return torch.take_along_dim(values, index, dim=-1 - event).squeeze(-1 - event)
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc + fn.scale * noise
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return fn.loc + _matvec(fn.scale_tril, noise)
    if isinstance(fn, torch.distributions.LowRankMultivariateNormal):
        rank = fn.cov_factor.shape[-1]
        return (fn.loc + _matvec(fn.cov_factor, noise[..., :rank])
                + fn.cov_diag.sqrt() * noise[..., rank:])
    if isinstance(fn, torch.distributions.Categorical):
        return _inverse_cdf_index(fn.probs, noise)
    if isinstance(fn, torch.distributions.OneHotCategorical):
        probs = fn.probs
        index = _inverse_cdf_index(probs, noise)
        return torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)
    if isinstance(fn, torch.distributions.Bernoulli):
        probs = fn.probs
        return (torch.special.ndtr(noise.double()) < probs.double()).to(probs.dtype)
    return fn.icdf(_uniform(noise, _noise_leaf(fn)[0]))
