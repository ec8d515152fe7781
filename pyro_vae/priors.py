"""Priors p(z) for the VAE.

A prior is an ``nn.Module`` whose ``forward()`` (no arguments) returns a Pyro distribution with
``batch_shape == ()`` and ``event_shape == (latent_dim,)``. Its tensors live in registered
buffers and parameters, so ``prior.to(device)`` moves them and learned parameters are trained
together with the networks (the VAE registers the prior with ``pyro.module``).

Built-in priors (names accepted by :func:`make_prior`):

* ``"normal"`` (``"standard_normal"``) -- :class:`StandardNormal`, N(0, I);
* ``"learned_normal"`` (``"diagonal_normal"``) -- :class:`DiagonalNormal`, N(mu, diag(sigma^2))
  with learned mu and sigma;
* ``"laplace"`` -- :class:`Laplace`, independent Laplace(0, b);
* ``"studentt"`` (``"student_t"``) -- :class:`StudentT`, independent standard Student-t;
* ``"mixture"`` -- :class:`MixtureOfGaussians`, learned weights, means and diagonal scales;
* ``"vamp"`` (``"vampprior"``) -- :class:`VampPrior`, a uniform mixture of the encoder's
  q(z|u_k) at learned pseudo-inputs u_k.

Anything else that returns a distribution -- a function with no arguments or an ``nn.Module`` --
is wrapped in :class:`UserPrior`; :func:`check_prior` verifies the shapes once and explains
what to change when they are wrong.
"""


import torch
from torch import nn
from torch.nn import functional as F

import pyro.distributions as dist

from pyro_vae.checks import call_for_distribution, check_positive_float, check_positive_int
from pyro_vae.components import Component, build_declared, read_declaration
from pyro_vae.distributions import NormalEvent, NormalMixtureEvent, inv_softplus

__all__ = [
    "Prior",
    "StandardNormal",
    "DiagonalNormal",
    "Laplace",
    "StudentT",
    "MixtureOfGaussians",
    "VampPrior",
    "UserPrior",
    "PRIORS",
    "make_prior",
    "check_prior",
]

#: smallest scale a learned prior scale can take (keeps log p(z) finite)
MIN_SCALE = 1e-3


class Prior(Component):
    """Base class of the priors p(z).

    Subclasses implement :meth:`forward` and, to be rebuilt from a run config, :meth:`describe`
    (:func:`make_prior` accepts what it returns); those that do not describe themselves as a
    user prior.

    :param int latent_dim: size L of the latent z.
    """

    kind = "prior"
    size_name = "latent_dim"

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")

    def forward(self):
        """:returns: a Pyro distribution with batch shape ``()`` and event shape ``(L,)``."""
        raise NotImplementedError

    def describe(self):
        return {"name": "user", "latent_dim": self.latent_dim, "repr": type(self).__qualname__}


class StandardNormal(Prior):
    """p(z) = N(0, I).

    :param int latent_dim: size L of the latent.
    """

    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.ones(self.latent_dim))

    def forward(self):
        return NormalEvent(self.loc, self.scale)

    def describe(self):
        return {"name": "normal", "latent_dim": self.latent_dim}


class DiagonalNormal(Prior):
    """p(z) = N(mu, diag(sigma^2)) with learned ``mu`` and ``sigma``.

    ``sigma = softplus(raw_scale) + min_scale`` with ``raw_scale`` unconstrained; the prior
    starts exactly at N(0, I).

    :param int latent_dim: size L of the latent.
    :param float min_scale: floor on sigma.
    """

    def __init__(self, latent_dim, min_scale=MIN_SCALE):
        super().__init__(latent_dim)
        self.min_scale = _below_one(check_positive_float(min_scale, "min_scale"), "min_scale")
        self.loc = nn.Parameter(torch.zeros(self.latent_dim))
        self.raw_scale = nn.Parameter(
            torch.full((self.latent_dim,), inv_softplus(1.0 - self.min_scale))
        )

    @property
    def scale(self):
        """sigma, shape ``(L,)``."""
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self):
        return NormalEvent(self.loc, self.scale)

    def describe(self):
        return {"name": "learned_normal", "latent_dim": self.latent_dim, "min_scale": self.min_scale}


class Laplace(Prior):
    """p(z) = prod_i Laplace(z_i | 0, b), fixed scale ``b``.

    :param int latent_dim: size L of the latent.
    :param float scale: the scale b (variance 2 b^2).
    """

    def __init__(self, latent_dim, scale=1.0):
        super().__init__(latent_dim)
        self.scale_value = check_positive_float(scale, "scale")
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.full((self.latent_dim,), self.scale_value))

    def forward(self):
        return dist.Laplace(self.loc, self.scale).to_event(1)

    def describe(self):
        return {"name": "laplace", "latent_dim": self.latent_dim, "scale": self.scale_value}


class StudentT(Prior):
    """p(z) = prod_i StudentT(z_i | df, 0, 1), a fixed standard Student-t (heavy tails).

    :param int latent_dim: size L of the latent.
    :param float df: degrees of freedom.
    """

    def __init__(self, latent_dim, df=3.0):
        super().__init__(latent_dim)
        self.df_value = check_positive_float(df, "df")
        self.register_buffer("df", torch.full((self.latent_dim,), self.df_value))
        self.register_buffer("loc", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.ones(self.latent_dim))

    def forward(self):
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)

    def describe(self):
        return {"name": "studentt", "latent_dim": self.latent_dim, "df": self.df_value}


class MixtureOfGaussians(Prior):
    """p(z) = sum_k pi_k N(z | mu_k, diag(sigma_k^2)), all of pi, mu, sigma learned.

    ``pi = softmax(logits)`` (initially uniform), ``mu_k`` initially drawn from N(0, I) with
    ``seed``, ``sigma_k = softplus(raw) + min_scale`` initially 1.

    :param int latent_dim: size L of the latent.
    :param int n_components: number of components K.
    :param int seed: seed for the initial means (the global RNG is not touched).
    :param float min_scale: floor on the component scales.
    """

    def __init__(self, latent_dim, n_components=10, seed=0, min_scale=MIN_SCALE):
        super().__init__(latent_dim)
        self.n_components = check_positive_int(n_components, "n_components")
        self.seed = int(seed)
        self.min_scale = _below_one(check_positive_float(min_scale, "min_scale"), "min_scale")
        gen = torch.Generator().manual_seed(self.seed)
        self.logits = nn.Parameter(torch.zeros(self.n_components))
        self.means = nn.Parameter(torch.randn(self.n_components, self.latent_dim, generator=gen))
        self.raw_scales = nn.Parameter(
            torch.full((self.n_components, self.latent_dim), inv_softplus(1.0 - self.min_scale))
        )

    @property
    def scales(self):
        """sigma_k, shape ``(K, L)``."""
        return F.softplus(self.raw_scales) + self.min_scale

    def forward(self):
        return NormalMixtureEvent(self.logits, self.means, self.scales)

    def describe(self):
        return {"name": "mixture", "latent_dim": self.latent_dim, "n_components": self.n_components,
                "seed": self.seed, "min_scale": self.min_scale}


class VampPrior(Prior):
    """The VampPrior: p(z) = (1/K) sum_k q(z | u_k), the encoder's posterior at K learned
    pseudo-inputs u_k (Tomczak & Welling, 2018).

    The pseudo-inputs are a parameter of this module. The encoder is *not* a submodule: the VAE
    already owns it, and registering it twice would duplicate its weights in ``state_dict`` and
    in Pyro's param store. A plain reference is kept instead (``self.encoder``); move and save
    the encoder through its owner. Gradients of log p(z) still flow into the encoder weights.

    :param int latent_dim: size L of the latent.
    :param nn.Module encoder: maps x of shape ``(N, D)`` to ``(loc, scale)``, each ``(N, L)``.
    :param int data_dim: size D of a datapoint.
    :param int n_pseudo: number K of pseudo-inputs.
    :param torch.Tensor pseudo_init: optional initial pseudo-inputs, shape ``(M, D)`` with
        ``M >= K`` (e.g. training rows); the first K rows are used. Default: 0.5 plus small
        Gaussian noise (standard deviation 0.01) drawn with ``seed``.
    :param int seed: seed for the default initialization (the global RNG is not touched).
    """

    def __init__(self, latent_dim, encoder, data_dim, n_pseudo=50, pseudo_init=None, seed=0):
        super().__init__(latent_dim)
        if not callable(encoder):
            raise TypeError("VampPrior needs the encoder: a module mapping x (N, D) to (loc, scale)")
        self.data_dim = check_positive_int(data_dim, "data_dim")
        self.n_pseudo = check_positive_int(n_pseudo, "n_pseudo")
        self.seed = int(seed)
        if pseudo_init is None:
            gen = torch.Generator().manual_seed(self.seed)
            init = 0.5 + 0.01 * torch.randn(self.n_pseudo, self.data_dim, generator=gen)
        else:
            init = torch.as_tensor(pseudo_init)
            if init.dim() != 2 or init.shape[1] != self.data_dim or init.shape[0] < self.n_pseudo:
                raise ValueError(
                    f"pseudo_init must have shape (M, {self.data_dim}) with M >= n_pseudo="
                    f"{self.n_pseudo}; got {tuple(init.shape)}"
                )
            init = init[: self.n_pseudo].detach().clone().to(torch.get_default_dtype())
        self.pseudo_inputs = nn.Parameter(init)
        # a plain reference, deliberately bypassing nn.Module.__setattr__ (see class docstring)
        object.__setattr__(self, "encoder", encoder)

    def forward(self):
        loc, scale = self.encoder(self.pseudo_inputs)
        return NormalMixtureEvent(torch.zeros(loc.shape[:-1], dtype=loc.dtype, device=loc.device), loc, scale)

    def describe(self):
        return {"name": "vamp", "latent_dim": self.latent_dim, "n_pseudo": self.n_pseudo,
                "seed": self.seed}


class UserPrior(Prior):
    """A user-declared prior: any callable with no arguments returning a distribution.

    If ``fn`` is an ``nn.Module`` it becomes a submodule, so its parameters are saved with the
    VAE and learned with the networks.

    :param callable fn: ``fn() -> distribution`` with batch shape ``()`` and event shape ``(L,)``,
        e.g. ``lambda: dist.Laplace(torch.zeros(16), 1.0).to_event(1)``.
    :param int latent_dim: size L of the latent.
    """

    def __init__(self, fn, latent_dim):
        super().__init__(latent_dim)
        if not callable(fn):
            raise TypeError(f"a user prior must be callable, got {type(fn).__name__}")
        self.fn = fn

    def forward(self):
        return self.fn()

    def describe(self):
        return {"name": "user", "latent_dim": self.latent_dim, "repr": repr(self.fn)}


#: names accepted by :func:`make_prior`, mapped to their classes
PRIORS = {
    "normal": StandardNormal,
    "standard_normal": StandardNormal,
    "learned_normal": DiagonalNormal,
    "diagonal_normal": DiagonalNormal,
    "laplace": Laplace,
    "studentt": StudentT,
    "student_t": StudentT,
    "mixture": MixtureOfGaussians,
    "vamp": VampPrior,
    "vampprior": VampPrior,
}


def make_prior(spec, latent_dim, encoder=None, data_dim=None):
    """Build a prior p(z) from a declaration.

    :param spec: one of

        * a name: ``"normal"``/``"standard_normal"``, ``"learned_normal"``/``"diagonal_normal"``,
          ``"laplace"``, ``"studentt"``/``"student_t"``, ``"mixture"``, ``"vamp"``/``"vampprior"``;
        * a name with keyword arguments: ``("mixture", {"n_components": 5})`` or
          ``{"name": "mixture", "n_components": 5}`` (the form :meth:`Prior.describe` returns,
          so run configs can be written to JSON and read back);
        * a :class:`Prior` instance (returned as is);
        * any other ``nn.Module`` or callable with no arguments returning a distribution with
          event shape ``(L,)``; it is wrapped in :class:`UserPrior` (an ``nn.Module``'s
          parameters are then learned).
    :param int latent_dim: size L of the latent.
    :param nn.Module encoder: the VAE's encoder (needed by ``"vamp"`` only).
    :param int data_dim: size D of a datapoint (needed by ``"vamp"`` only).
    :returns: a :class:`Prior`.
    :raises ValueError: for an unknown name, bad arguments or a mismatched ``latent_dim``.
    :raises TypeError: when ``spec`` is none of the above.
    """
    latent_dim = check_positive_int(latent_dim, "latent_dim")
    name, cls, kwargs = read_declaration(
        spec, Prior, PRIORS, latent_dim, "the model has latent_dim={}",
        "a function returning the distribution, e.g. prior=lambda: dist.Normal(torch.zeros(L), 1.0).to_event(1)",
        "a callable returning a distribution")
    if cls is None:  # a Prior, or a callable of the user's
        return spec if isinstance(spec, Prior) else UserPrior(spec, latent_dim)
    if cls is VampPrior:
        if encoder is None or data_dim is None:
            raise ValueError("the 'vamp' prior needs the encoder and data_dim "
                             "(the VAE passes them; in code use VampPrior(latent_dim, encoder, data_dim))")
        kwargs.setdefault("encoder", encoder)
        kwargs.setdefault("data_dim", data_dim)
    return build_declared(cls, latent_dim, kwargs, "prior", name)


def check_prior(prior, latent_dim):
    """Call ``prior()`` once and check what it returns.

    :param prior: a :class:`Prior` (or any callable with no arguments).
    :param int latent_dim: expected size L of the latent.
    :returns: the distribution ``prior()`` returned.
    :raises ValueError: when the result is not a distribution, or its shapes are not
        ``batch_shape == ()`` and ``event_shape == (L,)``. Only an empty batch shape is allowed:
        the data plate adds the batch dimension.
    """
    d = call_for_distribution(prior, (), "calling the prior", "prior must return a Pyro distribution",
                              error=ValueError)
    expected = (latent_dim,)
    if tuple(d.event_shape) == expected and tuple(d.batch_shape) == ():
        return d
    msg = (f"prior must return a distribution with event_shape ({latent_dim},) and batch_shape () "
           f"(only an empty batch shape is allowed); got event_shape {tuple(d.event_shape)} and "
           f"batch_shape {tuple(d.batch_shape)}")
    if tuple(d.event_shape) == () and tuple(d.batch_shape) == expected:
        msg += "; declare the dimensions as one event with .to_event(1)"
    raise ValueError(msg)


def _below_one(value, name):
    if not value < 1.0:
        raise ValueError(f"{name} must be smaller than 1, got {value:g}")
    return value
