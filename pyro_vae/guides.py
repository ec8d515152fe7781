"""Families of the amortized posterior q(z|x) of a VAE.

Each family is an ``nn.Module`` that maps data ``x`` of shape ``(N, D)`` to a Pyro distribution
over z with batch shape ``(N,)`` and event shape ``(L,)``; :class:`pyro_vae.VAE` samples its
``"z"`` site from it. The built-in families read an encoder network
(:mod:`pyro_vae.networks`): its hidden features ``h = encoder.features(x)`` and the diagonal
Gaussian ``(loc, scale) = encoder.head(h)``.

* ``"diagonal"`` -- :class:`DiagonalGuide`: ``Normal(loc, scale)``, independent coordinates.
* ``"full"`` -- :class:`FullCovarianceGuide`: ``MultivariateNormal(loc, scale_tril)`` with
  ``scale_tril = diag(scale) + M``, where the strictly lower triangle ``M`` is a linear map of
  ``h`` (initialised at zero, divided by sqrt(L)) and the diagonal is the encoder's positive
  ``scale`` (softplus plus a floor).
* ``"iaf"`` -- :class:`IAFGuide`: an inverse autoregressive flow (Kingma et al., 2016) on the
  diagonal Gaussian: ``z = f_K o ... o f_1 (z0)``, ``z0 ~ Normal(loc, scale)``, each ``f_k`` a
  :class:`pyro.distributions.transforms.ConditionalAffineAutoregressive` conditioned on the
  context ``h`` (Eq. 10 of the paper, ``y = mu(x, h) + sigma(x, h) * x``, with a MADE network
  whose output layer starts at zero, so every flow starts as the identity). The
  autoregressive order is reversed from one flow to the next. With ``num_flows=0`` the guide
  *is* the diagonal guide: same weights, same distribution.
* any ``nn.Module`` of the user's mapping ``x`` to such a distribution (checked once by
  :func:`check_guide`).

With the same seed, the built-in families start from the same encoder weights, and the full
and IAF families start as the same distribution as the diagonal one.

**Per-datapoint members (for** :func:`pyro_vae.inference_gaps` **).** A family's
:meth:`Guide.local_posterior` returns a :class:`LocalPosterior`: one member of the family per
datapoint, with parameters of its own (leading dimension ``N``), initialised at q(z|x_i)
so that before any optimization it *is* the amortized q:

* diagonal: ``loc_i`` and ``scale_i = scale(x_i) * exp(s_i)`` (free ``loc_i``, ``s_i``);
* full: ``loc_i``, the diagonal ``scale(x_i) * exp(s_i)`` and a free strictly lower triangle;
* IAF: the base ``loc_i``, ``scale(x_i) * exp(s_i)``, the context ``h_i`` *and a copy of every
  weight of every flow* (the MADE networks), so that each datapoint has an IAF of the same
  architecture entirely of its own. It is evaluated for all datapoints at once with
  :func:`torch.func.vmap` over :func:`torch.func.functional_call` of the flow module: the
  same Pyro transforms, with per-datapoint weights (:class:`PerDatapointIAF`).
"""

import math

import torch
from torch import nn
from torch.distributions import constraints
from torch.func import functional_call, vmap

import pyro.distributions as dist
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN

from pyro_vae.checks import call_for_distribution, check_int, parse_spec
from pyro_vae.distributions import NoiseSpec, NormalEvent

__all__ = ["GUIDES", "DEFAULT_NUM_FLOWS", "Guide", "DiagonalGuide", "FullCovarianceGuide", "IAFGuide",
           "CholeskyNormal", "ConditionalIAF", "LocalPosterior", "PerDatapointIAF", "make_guide", "check_guide",
           "describe_guide", "location_scale"]

#: names of the built-in families
GUIDES = ("diagonal", "full", "iaf")
#: flows of ``"iaf"`` when ``num_flows`` is not given
DEFAULT_NUM_FLOWS = 2


# --------------------------------------------------------------------------- base class
class Guide(nn.Module):
    """Base class of the built-in families: q(z|x) from an encoder network.

    The encoder is a submodule: ``guide.parameters()`` are all the parameters of q.

    :param nn.Module encoder: maps ``x (N, D)`` to ``(loc, scale)``, each ``(N, L)``; the full
        and IAF families also use its ``features(x)`` and ``head(h)`` (the encoders of
        :mod:`pyro_vae.networks` have them).
    :param int latent_dim: size L of the latent.
    """

    #: the family's name in :data:`GUIDES`
    name = None

    def __init__(self, encoder, latent_dim):
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim

    def forward(self, x):
        """q(z|x).

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: a distribution with batch shape ``(N,)`` and event shape ``(L,)``.
        """
        raise NotImplementedError

    def location_scale(self, x):
        """A location and a scale per latent coordinate that summarize q(z|x) (see each family).

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: ``(loc, scale)``, each of shape ``(N, L)``.
        """
        raise NotImplementedError

    def center(self, x):
        """A central point of q(z|x): its mean, or for a flow the base mean pushed through it.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: tensor of shape ``(N, L)``.
        """
        return self.location_scale(x)[0]

    def local_posterior(self, x):
        """One member of the family per datapoint, with its own parameters, equal to q(z|x_i).

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: :class:`LocalPosterior` over ``N`` datapoints.
        """
        raise NotImplementedError

    def describe(self):
        """JSON-able description, ``{"name": ..., **options}``."""
        return {"name": self.name}

    def extra_repr(self):
        return f"latent_dim={self.latent_dim}"


class LocalPosterior:
    """q*(z|x_i): one member of a guide family per datapoint, each with parameters of its own.

    :ivar dict params: the parameters, ``{name: tensor}``, each a leaf tensor that requires
        gradients with leading dimension ``N``. The datapoints' parameters are independent, so
        the sum over datapoints of their ELBOs gives each one its own gradient.
    :param dict params: as above.
    :param callable build: ``build(params)`` returns the distribution, batch shape ``(N,)``,
        event shape ``(L,)``; called again after every change of the parameters.
    """

    def __init__(self, params, build):
        self.params = dict(params)
        self._build = build
        sizes = {p.shape[0] for p in self.params.values()}
        if len(sizes) != 1:
            raise ValueError(f"the parameters of a LocalPosterior must share their first dimension "
                             f"(the datapoints); got sizes {sorted(sizes)}")
        self.num_datapoints = sizes.pop()

    def distribution(self):
        """The per-datapoint distributions at the current parameters.

        :returns: a distribution with batch shape ``(N,)`` and event shape ``(L,)``.
        """
        return self._build(self.params)


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _diagonal_local(loc, scale):
    """Per-datapoint diagonal Gaussians ``Normal(loc_i, scale_i * exp(s_i))`` with s_i = 0."""
    scale = scale.detach()

    def build(p):
        return NormalEvent(p["loc"], scale * p["log_scale_shift"].exp())

    return LocalPosterior({"loc": _leaf(loc), "log_scale_shift": torch.zeros_like(scale).requires_grad_(True)},
                          build)


# --------------------------------------------------------------------------- families
class DiagonalGuide(Guide):
    """q(z|x) = Normal(loc(x), scale(x)), independent coordinates.

    ``location_scale(x)`` is ``(loc, scale)``: the mean and standard deviations of q.
    """

    name = "diagonal"

    def forward(self, x):
        loc, scale = self.encoder(x)
        return NormalEvent(loc, scale)

    def location_scale(self, x):
        return self.encoder(x)

    def local_posterior(self, x):
        with torch.no_grad():
            loc, scale = self.encoder(x)
        return _diagonal_local(loc, scale)


class FullCovarianceGuide(Guide):
    """q(z|x) = MultivariateNormal(loc(x), scale_tril(x)), a Gaussian with full covariance.

    ``scale_tril = diag(scale) + M``: the diagonal is the encoder's ``scale`` (softplus plus a
    floor, so positive), the strictly lower triangle ``M`` is a linear map of the encoder's
    features with L(L-1)/2 outputs divided by ``sqrt(L)``, initialised at zero (so the guide
    starts as the diagonal one). The division keeps the variance that a row's L-1 off-diagonal
    entries add of the order of the diagonal's as the optimizer moves all entries at once
    (undivided, Adam's first steps on a 50-dimensional z give a Cholesky factor with condition
    number 1e10 and an ELBO far below the diagonal guide's). q is a :class:`CholeskyNormal`.
    ``location_scale(x)`` is ``(loc, sqrt(diag(Sigma)))``: the mean and the marginal standard
    deviations of q.

    :param nn.Module encoder: with ``features``, ``head`` and ``feature_dim``.
    :param int latent_dim: size L of the latent.
    """

    name = "full"

    def __init__(self, encoder, latent_dim):
        super().__init__(encoder, latent_dim)
        _check_feature_encoder(encoder, self.name)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("_lower_index", rows * latent_dim + cols, persistent=False)
        self.lower = nn.Linear(encoder.feature_dim, len(rows))
        self._lower_scale = 1.0 / math.sqrt(latent_dim)
        with torch.no_grad():
            self.lower.weight.zero_()
            self.lower.bias.zero_()

    def components(self, x):
        """``(loc, diag, lower)``: the mean ``(N, L)``, the positive diagonal of ``scale_tril``
        ``(N, L)`` and its strictly lower triangle as a matrix ``(N, L, L)``."""
        h = self.encoder.features(x)
        loc, scale = self.encoder.head(h)
        values = self.lower(h) * self._lower_scale
        n, L = loc.shape[:-1], self.latent_dim
        lower = values.new_zeros(n + (L * L,)).index_copy(-1, self._lower_index, values)
        return loc, scale, lower.reshape(n + (L, L))

    def forward(self, x):
        loc, diag, lower = self.components(x)
        return CholeskyNormal(loc, scale_tril=_scale_tril(diag, lower))

    def location_scale(self, x):
        loc, diag, lower = self.components(x)
        return loc, _scale_tril(diag, lower).square().sum(-1).sqrt()

    def local_posterior(self, x):
        with torch.no_grad():
            loc, diag, lower = self.components(x)

        def build(p):
            scale_tril = _scale_tril(diag * p["log_scale_shift"].exp(), p["lower"].tril(-1))
            return CholeskyNormal(p["loc"], scale_tril=scale_tril)

        return LocalPosterior({"loc": _leaf(loc), "log_scale_shift": torch.zeros_like(diag).requires_grad_(True),
                               "lower": _leaf(lower)}, build)


def _scale_tril(diag, lower):
    return torch.diag_embed(diag) + lower


class CholeskyNormal(dist.MultivariateNormal):
    """:class:`~pyro.distributions.MultivariateNormal` given by ``scale_tril`` that scores its own
    draws from their noise.

    A reparameterized draw is ``z = loc + scale_tril @ eps``; its log-density is
    ``log N(eps; 0, I) - sum(log diag(scale_tril))``, the same number the general formula gives
    by solving ``scale_tril @ u = z - loc``, without the solve. The solve loses all precision when
    ``scale_tril`` is badly conditioned (as the encoder's can be early in training, with many
    off-diagonal entries of the size of the diagonal), and then yields inf or NaN. ``log_prob``
    of the value last drawn uses the noise; any other value takes the general formula.
    """

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        z = self.loc + (self._unbroadcasted_scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        self._draw = (z, eps)
        return z

    def log_prob(self, value):
        draw = getattr(self, "_draw", None)
        if draw is None or value is not draw[0]:
            return super().log_prob(value)
        eps = draw[1]
        if self._validate_args:
            self._validate_sample(value)
        half_log_det = self._unbroadcasted_scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * (eps.shape[-1] * math.log(2 * math.pi) + eps.square().sum(-1)) - half_log_det


class ConditionalIAF(nn.Module):
    """A stack of ``num_flows`` affine autoregressive transforms of Pyro
    (:class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`), conditioned on a
    context vector.

    Flow ``k`` orders the coordinates ``0..L-1`` for even ``k`` and ``L-1..0`` for odd ``k``.
    The output layer of every MADE network starts at zero: each transform starts as the
    identity.

    :param int latent_dim: size L of z.
    :param int context_dim: size C of the context.
    :param int num_flows: number K of transforms (0 gives the identity).
    :param tuple hidden: hidden layer sizes of each MADE network (each at least L).
    """

    def __init__(self, latent_dim, context_dim, num_flows, hidden):
        super().__init__()
        self.latent_dim, self.context_dim = latent_dim, context_dim
        self.num_flows, self.hidden = num_flows, tuple(hidden)
        transforms = []
        for k in range(num_flows):
            order = torch.arange(latent_dim)
            arn = ConditionalAutoRegressiveNN(latent_dim, context_dim, list(self.hidden),
                                              permutation=order if k % 2 == 0 else order.flip(0))
            with torch.no_grad():
                arn.layers[-1].weight.zero_()
                arn.layers[-1].bias.zero_()
            transforms.append(ConditionalAffineAutoregressive(arn))
        self.transforms = nn.ModuleList(transforms)

    def condition(self, context):
        """The transforms given the context, for :class:`~pyro.distributions.TransformedDistribution`.

        :param torch.Tensor context: shape ``(..., C)``.
        :returns: list of :class:`~pyro.distributions.transforms.AffineAutoregressive`.
        """
        return [t.condition(context) for t in self.transforms]

    def forward(self, z0, context, inverse=False):
        """Push base points through the flow (or, with ``inverse``, pull points back).

        :param torch.Tensor z0: points, shape ``(..., L)`` (``z`` with ``inverse``).
        :param torch.Tensor context: shape ``(..., C)``, broadcastable with ``z0``.
        :param bool inverse: compute the inverse map (sequential in L: slow).
        :returns: ``(z, log_abs_det)``: the image ``(..., L)`` and ``log |det dz/dz0|`` ``(...)``
            (with ``inverse``: the preimage and the same log-determinant of the forward map).
        """
        ladj = z0.new_zeros(z0.shape[:-1])
        transforms = self.condition(context)
        if inverse:
            y = z0
            for t in reversed(transforms):
                x = t.inv(y)
                ladj = ladj + t.log_abs_det_jacobian(x, y)
                y = x
            return y, ladj
        x = z0
        for t in transforms:
            y = t(x)
            ladj = ladj + t.log_abs_det_jacobian(x, y)
            x = y
        return x, ladj


class IAFGuide(Guide):
    """q(z|x): an inverse autoregressive flow on the encoder's diagonal Gaussian, conditioned on x.

    ``z = f_K o ... o f_1 (z0)`` with ``z0 ~ Normal(loc(x), scale(x))`` and every ``f_k``
    conditioned on the encoder's features ``h(x)`` (:class:`ConditionalIAF`).
    ``location_scale(x)`` is the base Gaussian's ``(loc, scale)`` (the flow's moments have no
    closed form); :meth:`center` pushes the base mean through the flow. With ``num_flows=0``
    q is the base Gaussian itself, i.e. the diagonal guide.

    Densities of points the flow did not just produce (``log_prob`` of arbitrary z) need the
    inverse of each transform, which takes L sequential passes of its network.

    :param nn.Module encoder: with ``features``, ``head`` and ``feature_dim`` (not needed for
        ``num_flows=0``).
    :param int latent_dim: size L of the latent.
    :param int num_flows: number of transforms K (default :data:`DEFAULT_NUM_FLOWS`).
    :param tuple hidden: hidden layer sizes of each transform's MADE network, each at least
        L (default ``(2 * L,)``).
    """

    name = "iaf"

    def __init__(self, encoder, latent_dim, num_flows=None, hidden=None):
        super().__init__(encoder, latent_dim)
        self.num_flows = check_int(DEFAULT_NUM_FLOWS if num_flows is None else num_flows, "num_flows",
                                   minimum=0)
        self.hidden = _check_flow_hidden(hidden, latent_dim)
        if self.num_flows:
            _check_feature_encoder(encoder, self.name)
            self.flow = ConditionalIAF(latent_dim, encoder.feature_dim, self.num_flows, self.hidden)
        else:
            self.flow = None

    def forward(self, x):
        if self.flow is None:
            return NormalEvent(*self.encoder(x))
        h = self.encoder.features(x)
        return dist.TransformedDistribution(NormalEvent(*self.encoder.head(h)), self.flow.condition(h))

    def location_scale(self, x):
        return self.encoder(x)

    def center(self, x):
        if self.flow is None:
            return self.encoder(x)[0]
        h = self.encoder.features(x)
        return self.flow(self.encoder.head(h)[0], h)[0]

    def local_posterior(self, x):
        if self.flow is None:
            with torch.no_grad():
                loc, scale = self.encoder(x)
            return _diagonal_local(loc, scale)
        with torch.no_grad():
            h = self.encoder.features(x)
            loc, scale = self.encoder.head(h)
        n = loc.shape[0]
        params = {"loc": _leaf(loc), "log_scale_shift": torch.zeros_like(scale).requires_grad_(True),
                  "context": _leaf(h)}
        names = [name for name, _ in self.flow.named_parameters()]
        for name, w in self.flow.named_parameters():
            params["flow." + name] = _leaf(w.expand((n,) + w.shape))
        flow = self.flow

        def build(p):
            weights = {name: p["flow." + name] for name in names}
            return PerDatapointIAF(p["loc"], scale * p["log_scale_shift"].exp(), p["context"], weights, flow)

        return LocalPosterior(params, build)

    def describe(self):
        return {"name": self.name, "num_flows": self.num_flows, "hidden": list(self.hidden)}

    def extra_repr(self):
        return f"latent_dim={self.latent_dim}, num_flows={self.num_flows}, hidden={self.hidden}"


class PerDatapointIAF(TorchDistribution):
    """An IAF per datapoint, each with weights of its own: ``z_i = f(z0_i; c_i, W_i)``,
    ``z0_i ~ Normal(loc_i, scale_i)``.

    ``f`` is the transform stack of a :class:`ConditionalIAF` module evaluated with the weights
    ``W_i`` in place of its own (:func:`torch.func.functional_call`, vectorized over datapoints
    with :func:`torch.func.vmap`). When ``W_i`` are the module's weights and ``c_i`` the
    context of datapoint i, this is the IAF guide's q(z|x_i), up to float rounding.
    ``log_prob`` of the value just drawn by :meth:`rsample` is cached; other values are pulled
    back through the inverse flow.

    :param torch.Tensor loc: base means, shape ``(N, L)``.
    :param torch.Tensor scale: base standard deviations, shape ``(N, L)``.
    :param torch.Tensor context: contexts, shape ``(N, C)``.
    :param dict weights: ``{name: tensor (N, ...)}`` for every parameter of ``flow``.
    :param ConditionalIAF flow: the architecture.
    :param batch_shape: ``(..., N)`` (default ``(N,)``), as set by :meth:`expand`.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, scale, context, weights, flow, batch_shape=None, validate_args=None):
        n, L = loc.shape
        self.loc, self.scale, self.context, self.weights, self.flow = loc, scale, context, weights, flow
        batch_shape = torch.Size((n,) if batch_shape is None else batch_shape)
        if batch_shape[-1:] != (n,):
            raise ValueError(f"the batch shape of a PerDatapointIAF over {n} datapoints must end in {n}; "
                             f"got {tuple(batch_shape)}")
        self._cache = None
        super().__init__(batch_shape, torch.Size((L,)), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.loc, self.scale, self.context, self.weights, self.flow, batch_shape)

    def _base(self):
        return NormalEvent(self.loc, self.scale).expand(self.batch_shape)

    def _flow(self, points, inverse):
        """The flow of each datapoint applied to ``points (..., N, L)``."""
        def one(w, p, c):
            return functional_call(self.flow, w, (p, c), {"inverse": inverse})

        moved = points.movedim(-2, 0)  # (N, ..., L): one slice per datapoint
        out, ladj = vmap(one)(self.weights, moved, self.context)
        return out.movedim(0, -2), ladj.movedim(0, -1)

    def rsample(self, sample_shape=torch.Size()):
        return self._push(self._base().rsample(sample_shape))

    def noise_spec(self):
        """The standard-normal noise of one draw: that of the base Gaussian, ``batch_shape + (L,)``
        (see :func:`pyro_vae.distributions.noise_spec`)."""
        return NoiseSpec(self.batch_shape + self.event_shape, self.loc.dtype, self.loc.device)

    def from_noise(self, noise):
        """The draw made from standard-normal ``noise`` of shape ``batch_shape + (L,)``."""
        return self._push(self.loc + self.scale * noise)

    def _push(self, z0):
        z, ladj = self._flow(z0, inverse=False)
        self._cache = (z, self._base().log_prob(z0) - ladj)
        return z

    def log_prob(self, value):
        if self._cache is not None and value is self._cache[0]:
            return self._cache[1]
        value = value.expand(torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape))
        z0, ladj = self._flow(value, inverse=True)
        return self._base().log_prob(z0) - ladj


# --------------------------------------------------------------------------- construction
def make_guide(spec, encoder, latent_dim, num_flows=None):
    """A guide family by name, or a user module checked as is.

    :param spec: ``"diagonal"``, ``"full"``, ``"iaf"``, a ``(name, kwargs)`` pair or
        ``{"name": ..., **kwargs}`` (``"iaf"`` takes ``num_flows`` and ``hidden``), or an
        ``nn.Module`` mapping x to a distribution (returned unchanged; see :func:`check_guide`).
    :param nn.Module encoder: the encoder network of the built-in families.
    :param int latent_dim: size L of the latent.
    :param int num_flows: flows of ``"iaf"`` (also accepted in the spec; not both).
    :returns: the guide module.
    """
    if isinstance(spec, nn.Module):
        if num_flows is not None:
            raise ValueError("num_flows is an option of guide='iaf'; a guide module of your own "
                             "sets up its own flows")
        return spec
    name, kwargs = parse_spec(spec, "guide")
    if name is None:
        raise TypeError(f"guide must be one of {list(GUIDES)} or an nn.Module mapping x (N, D) to a "
                        f"distribution over z; got {type(spec).__name__}")
    if name not in GUIDES:
        raise ValueError(f"unknown guide {name!r}; choose one of {list(GUIDES)}, or pass an nn.Module "
                         "mapping x (N, D) to a distribution over z")
    if name != "iaf":
        if num_flows is not None or kwargs:
            extra = sorted(kwargs) + (["num_flows"] if num_flows is not None else [])
            raise ValueError(f"guide={name!r} takes no options, got {extra}; num_flows is an option "
                             "of guide='iaf'")
        return {"diagonal": DiagonalGuide, "full": FullCovarianceGuide}[name](encoder, latent_dim)
    unknown = sorted(set(kwargs) - {"num_flows", "hidden"})
    if unknown:
        raise ValueError(f"guide 'iaf' takes the options num_flows and hidden, got {unknown}")
    if num_flows is not None and "num_flows" in kwargs and kwargs["num_flows"] != num_flows:
        raise ValueError(f"num_flows given twice with different values ({num_flows} and "
                         f"{kwargs['num_flows']} in the guide spec)")
    if num_flows is None:
        num_flows = kwargs.get("num_flows")
    return IAFGuide(encoder, latent_dim, num_flows=num_flows, hidden=kwargs.get("hidden"))


def check_guide(guide, data_dim, latent_dim, like=None):
    """Check once that a guide maps ``x (N, D)`` to a distribution with batch shape ``(N,)`` and
    event shape ``(L,)``; raise a ``ValueError`` / ``TypeError`` saying what to change.

    :param nn.Module guide: the guide module.
    :param int data_dim: D.
    :param int latent_dim: L.
    :param dict like: ``dtype`` / ``device`` of the probe data.
    """
    if not isinstance(guide, nn.Module):
        raise TypeError(f"a guide must be an nn.Module (so that its parameters are trained) mapping "
                        f"x (N, {data_dim}) to a distribution over z; got {type(guide).__name__}")
    x = torch.zeros(2, data_dim, **(like or {}))
    encoder = getattr(guide, "encoder", None) if isinstance(guide, Guide) else None
    with torch.no_grad():
        if encoder is not None:
            try:
                out = encoder(x)
            except Exception as e:
                raise ValueError(f"encoder must map x of shape (N, {data_dim}) to (loc, scale): {e}") from None
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError(f"encoder must return a pair (loc, scale), got {type(out).__name__}")
            loc, scale = out
            if loc.shape != (2, latent_dim) or scale.shape != (2, latent_dim):
                raise ValueError(
                    f"encoder must return (loc, scale) each of shape (N, {latent_dim}); "
                    f"got {tuple(loc.shape)} and {tuple(scale.shape)}")
        q = call_for_distribution(
            guide, (x,), f"the guide must map x of shape (N, {data_dim}) to a distribution over z; calling it "
            f"on zeros of shape (2, {data_dim})",
            "the guide must return a distribution over z (e.g. dist.Normal(loc, scale).to_event(1))")
    if tuple(q.event_shape) != (latent_dim,):
        hint = (" -- call .to_event(1) on it" if tuple(q.batch_shape) == (2, latent_dim) and not q.event_shape
                else "")
        raise ValueError(f"the guide's distribution must have event shape ({latent_dim},) (one vector z "
                         f"per datapoint); got {tuple(q.event_shape)}{hint}")
    if tuple(q.batch_shape) != (2,):
        raise ValueError(f"the guide's distribution must have batch shape (N,) for x of shape (N, {data_dim}); "
                         f"for N=2 it has {tuple(q.batch_shape)}")


def describe_guide(guide):
    """JSON-able description of a guide: the family's :meth:`Guide.describe`, or
    ``{"name": "user", "repr": ...}`` for a module of the user's."""
    if isinstance(guide, Guide):
        return guide.describe()
    return {"name": "user", "repr": repr(guide)}


def location_scale(guide, x):
    """``(loc, scale)`` summarizing q(z|x): :meth:`Guide.location_scale` for the built-in
    families, the distribution's ``mean`` and ``stddev`` for a user's module.

    :param nn.Module guide: the guide module.
    :param torch.Tensor x: data, shape ``(N, D)``.
    :returns: ``(loc, scale)``, each ``(N, L)``.
    """
    if isinstance(guide, Guide):
        return guide.location_scale(x)
    q = guide(x)
    try:
        return q.mean, q.stddev
    except NotImplementedError:
        raise TypeError(f"the guide's {type(q).__name__} has no closed-form mean and standard deviation; "
                        "use vae.posterior(x) for the distribution itself") from None


def _check_feature_encoder(encoder, family):
    missing = [a for a in ("features", "head", "feature_dim") if not hasattr(encoder, a)]
    if missing:
        raise ValueError(
            f"guide={family!r} needs an encoder with features(x), head(h) and feature_dim (as the "
            f"encoders of pyro_vae.networks have); this one lacks {missing}. Use guide='diagonal' with "
            "this encoder, or pass your whole q(z|x) as a guide module")


def _check_flow_hidden(hidden, latent_dim):
    if hidden is None:
        return (2 * latent_dim,)
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        hidden = tuple(check_int(h, "hidden size of the flow") for h in hidden)
    except TypeError:
        raise TypeError(f"the flow's hidden sizes must be a sequence of integers, got {hidden!r}") from None
    if not hidden or min(hidden) < latent_dim:
        raise ValueError(f"the flow's hidden layers must be at least latent_dim={latent_dim} wide (the "
                         f"autoregressive masks need it); got {list(hidden)}")
    return hidden
