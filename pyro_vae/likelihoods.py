"""Likelihoods p(x|z) for the VAE.

A likelihood is an ``nn.Module`` that turns the decoder output ``out`` of shape
``(..., data_dim * outputs_per_feature)`` into a Pyro distribution with
``batch_shape == out.shape[:-1]`` and ``event_shape == (data_dim,)``. When a likelihood needs
``k > 1`` outputs per feature, ``out`` is split into ``k`` consecutive blocks of ``data_dim``
values (all features of output 0, then all features of output 1, ...), the layout the decoders
in :mod:`pyro_vae.networks` produce.

Built-in likelihoods (names accepted by :func:`make_likelihood`):

* ``"bernoulli"`` -- :class:`Bernoulli`, binary data, decoder outputs logits;
* ``"continuous_bernoulli"`` -- :class:`ContinuousBernoulli`, data in [0, 1], logits;
* ``"gaussian"`` -- :class:`Gaussian`, N(out, sigma^2) with a fixed sigma;
* ``"gaussian_shared"`` -- :class:`GaussianShared`, one learned sigma for all features;
* ``"gaussian_feature"`` -- :class:`GaussianFeature`, one learned sigma per feature;
* ``"gaussian_decoder"`` -- :class:`GaussianDecoder`, the decoder predicts mean and sigma
  (two outputs per feature);
* ``"laplace"`` -- :class:`Laplace`, Laplace(out, b) with one learned scale b per feature.

Learned scales are ``softplus(raw) + min_scale`` with ``raw`` unconstrained, so they cannot
collapse to zero. Any callable from decoder output to a distribution is wrapped in
:class:`UserLikelihood`; :func:`check_likelihood` verifies its shapes once.
"""

import torch
from torch import nn
from torch.nn import functional as F

import pyro.distributions as dist

from pyro_vae.distributions import BernoulliEvent, NormalEvent, inv_softplus
from pyro_vae.checks import call_for_distribution, check_positive_float, check_positive_int
from pyro_vae.components import Component, build_declared, read_declaration

__all__ = [
    "Likelihood",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "LearnedScale",
    "GaussianShared",
    "GaussianFeature",
    "GaussianDecoder",
    "Laplace",
    "UserLikelihood",
    "LIKELIHOODS",
    "make_likelihood",
    "check_likelihood",
]

#: smallest value a learned or predicted scale can take
MIN_SCALE = 1e-3


class Likelihood(Component):
    """Base class of the likelihoods p(x|z).

    Subclasses set the class attribute :attr:`outputs_per_feature`, implement :meth:`forward`
    and usually :meth:`mean` and :meth:`describe` (:func:`make_likelihood` accepts what it
    returns; those that do not override it describe themselves as a user likelihood); they may
    extend :meth:`validate_data`.

    :param int data_dim: size D of a datapoint.
    """

    kind = "likelihood"
    size_name = "data_dim"
    #: number k of decoder outputs per data feature
    outputs_per_feature = 1

    def __init__(self, data_dim):
        super().__init__()
        self.data_dim = check_positive_int(data_dim, "data_dim")

    @property
    def out_dim(self):
        """Size of the decoder output this likelihood expects, ``data_dim * outputs_per_feature``."""
        return self.data_dim * self.outputs_per_feature

    def forward(self, out):
        """
        :param torch.Tensor out: decoder output, shape ``(..., D * k)``.
        :returns: a distribution with batch shape ``out.shape[:-1]`` and event shape ``(D,)``.
        """
        raise NotImplementedError

    def mean(self, out):
        """Mean of p(x|z), used for reconstructions and pictures (by default the ``.mean`` of
        the distribution :meth:`forward` returns).

        :param torch.Tensor out: decoder output, shape ``(..., D * k)``.
        :returns: tensor of shape ``(..., D)``.
        """
        return self(out).mean

    def describe(self):
        return {"name": "user", "data_dim": self.data_dim,
                "outputs_per_feature": self.outputs_per_feature, "repr": type(self).__qualname__}

    def validate_data(self, x):
        """Check that data lie in the support of this likelihood.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :raises TypeError: if ``x`` is not a tensor.
        :raises ValueError: for a wrong feature size, NaN/infinite values or values outside the
            support; the message says how to fix the data or which likelihood to use instead.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor of shape (N, {self.data_dim}), "
                            f"got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.data_dim:
            raise ValueError(f"data must have shape (N, {self.data_dim}) (flatten images first); "
                             f"got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"data must be a floating-point tensor, got dtype {x.dtype}; "
                            f"convert it with x.float()")
        if not torch.isfinite(x).all():
            raise ValueError("data contain NaN or infinite values; remove or impute them first")

    @staticmethod
    def _refuse_values(x, bad, message):
        """Raise a ValueError if any ``bad`` entry of ``x``: ``message`` formatted with the
        first such value as ``{value}``."""
        if bad.any():
            raise ValueError(message.format(value=x[bad][0].item()))

    def _check_out(self, out):
        if out.shape[-1] != self.out_dim:
            raise ValueError(
                f"{type(self).__name__} likelihood expects decoder output of shape (..., "
                f"{self.out_dim}) = (..., data_dim * {self.outputs_per_feature}); got {tuple(out.shape)}"
            )


class Bernoulli(Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i | sigmoid(out_i)); binary data, the decoder outputs logits.

    The distribution is a :class:`~pyro_vae.distributions.BernoulliEvent`,
    ``Bernoulli(logits=out).to_event(1)`` with a cheaper ``log_prob``."""

    def forward(self, out):
        self._check_out(out)
        return BernoulliEvent(out)

    def mean(self, out):
        self._check_out(out)
        return torch.sigmoid(out)

    def validate_data(self, x):
        super().validate_data(x)
        self._refuse_values(
            x, (x != 0) & (x != 1),
            "the bernoulli likelihood needs binary data: values must be 0 or 1, found {value:g} "
            "(grey levels?); binarize the data (pyro_vae.data.binarize) or use "
            "likelihood='continuous_bernoulli'")

    def describe(self):
        return {"name": "bernoulli", "data_dim": self.data_dim}


class ContinuousBernoulli(Likelihood):
    """p(x|z) = prod_i ContinuousBernoulli(x_i | logits=out_i) for data in [0, 1]
    (Loaiza-Ganem & Cunningham, 2019). The log normalizer is computed on clamped probabilities,
    with a Taylor expansion near 1/2, so it stays finite for any logits."""

    def forward(self, out):
        self._check_out(out)
        return dist.ContinuousBernoulli(logits=out).to_event(1)

    def mean(self, out):
        self._check_out(out)
        return dist.ContinuousBernoulli(logits=out).mean

    def validate_data(self, x):
        super().validate_data(x)
        self._refuse_values(
            x, (x < 0) | (x > 1),
            "the continuous_bernoulli likelihood needs data in [0, 1], found {value:g}; scale the "
            "data to [0, 1] (e.g. divide 8-bit pixels by 255) or use likelihood='gaussian'")

    def describe(self):
        return {"name": "continuous_bernoulli", "data_dim": self.data_dim}


class Gaussian(Likelihood):
    """p(x|z) = N(x | out, sigma^2 I) with a fixed sigma.

    :param int data_dim: size D of a datapoint.
    :param float scale: sigma.
    """

    def __init__(self, data_dim, scale=1.0):
        super().__init__(data_dim)
        self.scale_value = check_positive_float(scale, "scale")
        self.register_buffer("scale", torch.tensor(self.scale_value))

    def forward(self, out):
        self._check_out(out)
        return NormalEvent(out, self.scale.expand(out.shape))

    def mean(self, out):
        self._check_out(out)
        return out

    def describe(self):
        return {"name": "gaussian", "data_dim": self.data_dim, "scale": self.scale_value}


class LearnedScale(Likelihood):
    """Base of the likelihoods with a learned scale ``softplus(raw_scale) + min_scale``, not
    predicted by the decoder; ``raw_scale`` starts where the scale is ``init_scale``.

    A subclass sets :attr:`name` (its name for :func:`make_likelihood`), :attr:`scale_shape`
    and :meth:`forward`.

    :param int data_dim: size D of a datapoint.
    :param float init_scale: initial scale.
    :param float min_scale: floor on the scale.
    """

    #: the name under which :func:`make_likelihood` builds the subclass
    name = None
    #: ``"shared"``: one scale for all features, shape ``()``; ``"feature"``: one per feature, ``(D,)``
    scale_shape = None

    def __init__(self, data_dim, init_scale=1.0, min_scale=MIN_SCALE):
        super().__init__(data_dim)
        self.init_scale = check_positive_float(init_scale, "init_scale")
        self.min_scale = check_positive_float(min_scale, "min_scale")
        if not self.init_scale > self.min_scale:
            raise ValueError(f"init_scale must exceed min_scale={self.min_scale}, got {init_scale}")
        shape = () if self.scale_shape == "shared" else (self.data_dim,)
        self.raw_scale = nn.Parameter(torch.full(shape, inv_softplus(self.init_scale - self.min_scale)))

    @property
    def scale(self):
        """The learned scale: shape ``()`` if shared, else ``(D,)``."""
        return F.softplus(self.raw_scale) + self.min_scale

    def mean(self, out):
        self._check_out(out)
        return out

    def describe(self):
        return {"name": self.name, "data_dim": self.data_dim, "init_scale": self.init_scale,
                "min_scale": self.min_scale}


class GaussianShared(LearnedScale):
    """p(x|z) = N(x | out, sigma^2 I) with one learned sigma shared by all features; the
    parameters are those of :class:`LearnedScale`, the scale being sigma."""

    name = "gaussian_shared"
    scale_shape = "shared"

    def forward(self, out):
        self._check_out(out)
        return NormalEvent(out, self.scale.expand(out.shape))


class GaussianFeature(GaussianShared):
    """p(x|z) = prod_i N(x_i | out_i, sigma_i^2) with a learned sigma per feature; the
    parameters are those of :class:`LearnedScale`, the scale being sigma."""

    name = "gaussian_feature"
    scale_shape = "feature"


class Laplace(LearnedScale):
    """p(x|z) = prod_i Laplace(x_i | out_i, b_i) with a learned scale b_i per feature: a robust
    alternative to :class:`GaussianFeature`; the parameters are those of :class:`LearnedScale`,
    the scale being b."""

    name = "laplace"
    scale_shape = "feature"

    def forward(self, out):
        self._check_out(out)
        return dist.Laplace(out, self.scale.expand(out.shape)).to_event(1)


class GaussianDecoder(Likelihood):
    """p(x|z) = prod_i N(x_i | mu_i, sigma_i^2) with mean and scale both predicted by the decoder.

    The decoder outputs ``2 * D`` values: ``out[..., :D]`` is mu and ``out[..., D:]`` gives
    ``sigma = softplus(out[..., D:]) + min_scale``.

    :param int data_dim: size D of a datapoint.
    :param float min_scale: floor on sigma.
    """

    outputs_per_feature = 2

    def __init__(self, data_dim, min_scale=MIN_SCALE):
        super().__init__(data_dim)
        self.min_scale = check_positive_float(min_scale, "min_scale")

    def forward(self, out):
        self._check_out(out)
        loc, raw = out.split(self.data_dim, dim=-1)
        return NormalEvent(loc, F.softplus(raw) + self.min_scale)

    def mean(self, out):
        self._check_out(out)
        return out[..., : self.data_dim]

    def describe(self):
        return {"name": "gaussian_decoder", "data_dim": self.data_dim, "min_scale": self.min_scale}


class UserLikelihood(Likelihood):
    """A user-declared likelihood: a callable from decoder output to a distribution.

    If ``fn`` is an ``nn.Module`` it becomes a submodule, so its parameters are saved with the
    VAE and learned with the networks. :meth:`mean` uses ``fn.mean(out)`` when ``fn`` has such a
    method, else the ``.mean`` of the distribution.

    :param callable fn: ``fn(out) -> distribution``, ``out`` of shape ``(..., D * k)``, result
        with batch shape ``out.shape[:-1]`` and event shape ``(D,)``, e.g.
        ``lambda out: dist.Normal(out[..., :D], out[..., D:].exp()).to_event(1)`` with k = 2.
    :param int data_dim: size D of a datapoint.
    :param int outputs_per_feature: number k of decoder outputs per feature.
    """

    def __init__(self, fn, data_dim, outputs_per_feature=1):
        super().__init__(data_dim)
        if not callable(fn):
            raise TypeError(f"a user likelihood must be callable, got {type(fn).__name__}")
        self.outputs_per_feature = check_positive_int(outputs_per_feature, "outputs_per_feature")
        self.fn = fn

    def forward(self, out):
        self._check_out(out)
        return self.fn(out)

    def mean(self, out):
        self._check_out(out)
        user_mean = getattr(self.fn, "mean", None)
        if callable(user_mean):
            return user_mean(out)
        try:
            return self.fn(out).mean
        except NotImplementedError:
            raise ValueError("the user likelihood's distribution has no .mean; give the callable "
                             "a mean(out) method returning a tensor of shape (..., D)") from None

    def validate_data(self, x):
        """Check shape and finiteness, then the support of the distribution ``fn`` returns
        (unless that support depends on the decoder output)."""
        super().validate_data(x)
        out = torch.zeros(1, self.out_dim, dtype=x.dtype, device=x.device)
        try:
            support = self.fn(out).support
        except NotImplementedError:
            return
        if torch.distributions.constraints.is_dependent(support):
            return
        if not support.check(x).all():
            raise ValueError(f"data lie outside the support of the user likelihood ({support}); "
                             f"transform the data or choose a likelihood whose support contains it")

    def describe(self):
        return {"name": "user", "data_dim": self.data_dim,
                "outputs_per_feature": self.outputs_per_feature, "repr": repr(self.fn)}


#: names accepted by :func:`make_likelihood`, mapped to their classes
LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "continuous_bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
    "gaussian_shared": GaussianShared,
    "gaussian_feature": GaussianFeature,
    "gaussian_decoder": GaussianDecoder,
    "laplace": Laplace,
}


def make_likelihood(spec, data_dim, outputs_per_feature=None):
    """Build a likelihood p(x|z) from a declaration.

    :param spec: one of

        * a name: ``"bernoulli"``, ``"continuous_bernoulli"``, ``"gaussian"``,
          ``"gaussian_shared"``, ``"gaussian_feature"``, ``"gaussian_decoder"``, ``"laplace"``;
        * a name with keyword arguments: ``("gaussian", {"scale": 0.1})`` or
          ``{"name": "gaussian", "scale": 0.1}`` (the form :meth:`Likelihood.describe` returns);
        * a :class:`Likelihood` instance (returned as is);
        * any other ``nn.Module`` or callable mapping decoder output ``(..., D * k)`` to a
          distribution with event shape ``(D,)``; it is wrapped in :class:`UserLikelihood`.
    :param int data_dim: size D of a datapoint.
    :param int outputs_per_feature: k for a user callable (default: ``fn.outputs_per_feature``
        if present, else 1); for a built-in it must equal the built-in's own k if given.
    :returns: a :class:`Likelihood`.
    :raises ValueError: for an unknown name, bad arguments or mismatched sizes.
    :raises TypeError: when ``spec`` is none of the above.
    """
    data_dim = check_positive_int(data_dim, "data_dim")
    name, cls, kwargs = read_declaration(
        spec, Likelihood, LIKELIHOODS, data_dim, "the data have {} features",
        "a function of the decoder output, e.g. likelihood=lambda out: dist.Normal(out, 0.1).to_event(1)",
        "a callable from decoder output to a distribution")
    if cls is None:  # a Likelihood, or a callable of the user's
        if isinstance(spec, Likelihood):
            _check_k(spec, outputs_per_feature)
            return spec
        k = outputs_per_feature if outputs_per_feature is not None else getattr(spec, "outputs_per_feature", 1)
        return UserLikelihood(spec, data_dim, outputs_per_feature=k)
    lik = build_declared(cls, data_dim, kwargs, "likelihood", name)
    _check_k(lik, outputs_per_feature)
    return lik


def check_likelihood(lik, data_dim):
    """Call the likelihood once on zeros of shape ``(2, D * k)`` and check the result.

    :param lik: a :class:`Likelihood` (or a callable with an ``outputs_per_feature`` attribute).
    :param int data_dim: expected size D of a datapoint.
    :returns: the distribution returned for the zeros.
    :raises ValueError: when the result is not a distribution, or its shapes are not
        ``batch_shape == (2,)`` and ``event_shape == (D,)``.
    """
    k = int(getattr(lik, "outputs_per_feature", 1))
    ref = _first_tensor(lik)
    out = torch.zeros(2, data_dim * k,
                      dtype=ref.dtype if ref is not None else torch.get_default_dtype(),
                      device=ref.device if ref is not None else None)
    d = call_for_distribution(lik, (out,), f"calling the likelihood on decoder output of shape (N, {data_dim * k})",
                              "likelihood must return a Pyro distribution", error=ValueError)
    if tuple(d.event_shape) == (data_dim,) and tuple(d.batch_shape) == (2,):
        return d
    msg = (f"for decoder output of shape (2, {data_dim * k}) the likelihood must return a "
           f"distribution with event_shape ({data_dim},) and batch_shape (2,); got event_shape "
           f"{tuple(d.event_shape)} and batch_shape {tuple(d.batch_shape)}")
    if tuple(d.event_shape) == () and tuple(d.batch_shape) == (2, data_dim):
        msg += "; declare the features as one event with .to_event(1)"
    elif k > 1 and data_dim * k in tuple(d.batch_shape) + tuple(d.event_shape):
        msg += (f"; with outputs_per_feature={k} split the output into {k} blocks of "
                f"{data_dim}, e.g. out.split({data_dim}, dim=-1)")
    raise ValueError(msg)


def _check_k(lik, k):
    if k is not None and int(k) != lik.outputs_per_feature:
        raise ValueError(f"the {type(lik).__name__} likelihood uses {lik.outputs_per_feature} "
                         f"decoder output(s) per feature, not {k}")


def _first_tensor(module):
    if not isinstance(module, nn.Module):
        return None
    for t in module.parameters():
        return t
    for t in module.buffers():
        return t
    return None
