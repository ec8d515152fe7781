"""The variational autoencoder as a Pyro model/guide pair.

``model(x)``: z ~ p(z) (the prior), x ~ p(x|z) (the likelihood applied to the decoder output).
``guide(x)``: z ~ q(z|x) = Normal(loc(x), scale(x)), a diagonal Gaussian from the encoder.

Both run inside ``pyro.plate("data", size=num_data, subsample=...)`` so that, when a minibatch of
a dataset of size ``num_data`` is passed, Pyro scales its log-probabilities by
``num_data / batch_size`` and the minibatch ELBO is an unbiased estimate of the full-data ELBO.
The KL weight ``beta`` (beta-VAE, KL annealing) scales the ``"z"`` sites of model and guide.
"""

import contextlib

import torch
from torch import nn

import pyro
from pyro import poutine
from pyro.poutine.guide import GuideMessenger

from pyro_vae.distributions import NormalEvent
from pyro_vae.likelihoods import check_likelihood, make_likelihood
from pyro_vae.networks import Decoder, Encoder
from pyro_vae.priors import check_prior, make_prior

__all__ = ["VAE", "AmortizedGuide"]


class VAE(nn.Module):
    """A variational autoencoder written as a Pyro ``model`` and ``guide``.

    :param int data_dim: size D of a (flattened) datapoint.
    :param int latent_dim: size L of the latent z.
    :param tuple hidden: hidden layer sizes of the encoder and decoder MLPs.
    :param prior: p(z): a name (``"normal"``, ``"learned_normal"``, ``"laplace"``,
        ``"studentt"``, ``"mixture"``, ``"vamp"``), a ``(name, kwargs)`` pair or dict, an
        ``nn.Module`` or any callable with no arguments returning a Pyro distribution with
        event shape ``(L,)``. Parameters of an ``nn.Module`` prior are learned.
    :param likelihood: p(x|z): a name (``"bernoulli"``, ``"continuous_bernoulli"``,
        ``"gaussian"``, ``"gaussian_shared"``, ``"gaussian_feature"``, ``"gaussian_decoder"``,
        ``"laplace"``), a Likelihood, or a callable from decoder output
        ``(..., D * k)`` to a distribution with event shape ``(D,)``.
    :param int likelihood_outputs: decoder outputs per feature ``k`` for a user callable
        likelihood (default: its ``outputs_per_feature`` attribute, else 1).
    :param str activation: nonlinearity of the MLPs.
    :param float beta: KL weight; 1 gives the ELBO.
    :param nn.Module encoder: optional replacement encoder ``x (..., D) -> (loc, scale)``.
    :param nn.Module decoder: optional replacement decoder ``z (..., L) -> (..., D * k)``.
    :param str name: prefix of the names under which parameters enter Pyro's param store.
    :param int seed: seed for the initial weights (default: the global RNG).
    """

    def __init__(self, data_dim, latent_dim=16, hidden=(400,), prior="normal",
                 likelihood="bernoulli", likelihood_outputs=None, activation="softplus",
                 beta=1.0, encoder=None, decoder=None, name="vae", seed=None):
        super().__init__()
        with _seeded(seed):
            self._build(data_dim, latent_dim, hidden, prior, likelihood, likelihood_outputs,
                        activation, beta, encoder, decoder, name)

    def _build(self, data_dim, latent_dim, hidden, prior, likelihood, likelihood_outputs,
               activation, beta, encoder, decoder, name):
        data_dim, latent_dim = _positive_int(data_dim, "data_dim"), _positive_int(latent_dim, "latent_dim")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.activation = activation
        self.beta = beta
        if "$$$" in name:
            raise ValueError("name must not contain '$$$'")
        self.name = name

        self.likelihood = make_likelihood(likelihood, data_dim, outputs_per_feature=likelihood_outputs)
        k = int(self.likelihood.outputs_per_feature)
        self.encoder = encoder if encoder is not None else Encoder(data_dim, latent_dim, self.hidden, activation)
        self.decoder = decoder if decoder is not None else Decoder(latent_dim, data_dim * k, self.hidden, activation)
        self.prior = make_prior(prior, latent_dim, encoder=self.encoder, data_dim=data_dim)
        self._custom_networks = encoder is not None or decoder is not None
        self._check_networks()
        check_prior(self.prior, latent_dim)
        check_likelihood(self.likelihood, data_dim)

    # ------------------------------------------------------------------ properties
    @property
    def beta(self):
        """KL weight: the ``"z"`` sites of model and guide are scaled by it."""
        return self._beta

    @beta.setter
    def beta(self, value):
        value = float(value)
        if not value >= 0:
            raise ValueError(f"beta must be a non-negative number, got {value}")
        self._beta = value

    @property
    def device(self):
        return next(self.parameters()).device

    def _check_networks(self):
        x = torch.zeros(2, self.data_dim, **_like(self.encoder))
        try:
            loc, scale = self.encoder(x)
        except Exception as e:
            raise ValueError(f"encoder must map x of shape (N, {self.data_dim}) to (loc, scale): {e}") from None
        if loc.shape != (2, self.latent_dim) or scale.shape != (2, self.latent_dim):
            raise ValueError(
                f"encoder must return (loc, scale) each of shape (N, {self.latent_dim}); "
                f"got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        k = self.likelihood.outputs_per_feature
        out = self.decoder(torch.zeros(2, self.latent_dim, **_like(self.decoder)))
        if out.shape != (2, self.data_dim * k):
            raise ValueError(
                f"decoder must map z of shape (N, {self.latent_dim}) to (N, {self.data_dim * k}) "
                f"(data_dim * outputs per feature of the likelihood); got {tuple(out.shape)}"
            )

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (N, {self.data_dim}), got {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(
                f"x must have shape (N, {self.data_dim}) (flatten images first); got {tuple(x.shape)}"
            )

    def _plate(self, x, num_data):
        n = x.shape[0]
        if num_data is None or num_data == n:
            return pyro.plate("data", n, device=x.device)
        return pyro.plate("data", size=int(num_data), subsample=self._subsample(n, x.device), device=x.device)

    def _subsample(self, n, device):
        """``torch.arange(n)`` on ``device``, kept between calls (minibatches repeat their size)."""
        cached = getattr(self, "_subsample_cache", None)
        if cached is None or cached.shape[0] != n or cached.device != device:
            cached = torch.arange(n, device=device)
            self._subsample_cache = cached
        return cached

    def _kl_scale(self):
        """``poutine.scale`` by beta for the ``"z"`` sites (no handler when beta is 1)."""
        return poutine.scale(scale=self._beta) if self._beta != 1.0 else contextlib.nullcontext()

    # ------------------------------------------------------------------ Pyro param store
    #: model and guide register their modules with ``pyro.module`` on every call (see
    #: :meth:`_registration_off`)
    _registering = True

    def _register_model(self):
        pyro.module(self.name + "_decoder", self.decoder)
        if any(True for _ in self.prior.parameters()):
            pyro.module(self.name + "_prior", self.prior)
        if any(True for _ in self.likelihood.parameters()):
            pyro.module(self.name + "_likelihood", self.likelihood)

    def _register_guide(self):
        pyro.module(self.name + "_encoder", self.encoder)

    @contextlib.contextmanager
    def _registration_off(self):
        """Register every module in Pyro's param store once, then let model and guide skip the
        per-call ``pyro.module`` inside the block. For training loops that optimize
        ``self.parameters()`` directly (as :func:`pyro_vae.fit` does) the registration on every
        step is pure overhead; the param store still holds every parameter afterwards."""
        self._register_model()
        self._register_guide()
        before = self.__dict__.get("_registering")
        self._registering = False
        try:
            yield
        finally:
            if before is None:
                del self._registering
            else:
                self._registering = before

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x, num_data=None):
        """p(z) p(x|z).

        :param torch.Tensor x: data, shape ``(N, D)``; a minibatch when ``num_data`` is given.
        :param int num_data: size of the full dataset (default ``N``).
        """
        self._check_x(x)
        if self._registering:
            self._register_model()
        with self._plate(x, num_data):
            with self._kl_scale():
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, num_data=None):
        """q(z|x), a diagonal Gaussian from the encoder.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :param int num_data: size of the full dataset (default ``N``).
        """
        self._check_x(x)
        if self._registering:
            self._register_guide()
        with self._plate(x, num_data):
            q = self.posterior(x)
            with self._kl_scale():
                pyro.sample("z", q)

    def posterior(self, x):
        """q(z|x) as a distribution (with gradients; :meth:`encode` gives its parameters
        without).

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: a diagonal Normal with batch shape ``(N,)`` and event shape ``(L,)``.
        """
        loc, scale = self.encoder(x)
        return NormalEvent(loc, scale)

    # ------------------------------------------------------------------ conveniences
    @torch.no_grad()
    def encode(self, x):
        """Parameters of q(z|x).

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: ``(loc, scale)``, each of shape ``(N, L)``.
        """
        self._check_x(x)
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z):
        """p(x|z) as a distribution.

        :param torch.Tensor z: latents, shape ``(..., L)``.
        :returns: a distribution with batch shape ``z.shape[:-1]`` and event shape ``(D,)``.
        """
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (..., {self.latent_dim}); got {tuple(z.shape)}")
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def sample(self, num_samples, seed=None, mean=True):
        """Draw new data from the model: z ~ p(z), then x ~ p(x|z) or its mean.

        :param int num_samples: number of samples ``n``.
        :param int seed: seed for the draws (default: the global RNG).
        :param bool mean: return the mean of p(x|z) (smooth images) instead of a draw.
        :returns: tensor of shape ``(n, D)``.
        """
        num_samples = _positive_int(num_samples, "num_samples")
        with _seeded(seed):
            z = self.prior().sample((num_samples,))
            out = self.decoder(z)
            return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    @torch.no_grad()
    def reconstruct(self, x):
        """Mean of p(x|z) at z = the mean of q(z|x).

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: reconstructions, shape ``(N, D)``.
        """
        loc, _ = self.encode(x)
        return self.likelihood.mean(self.decoder(loc))

    def config(self):
        """A JSON-able description from which :meth:`from_config` rebuilds the VAE."""
        if self._custom_networks:
            raise ValueError("a VAE with user-supplied networks cannot be described by a config; "
                             "save its state_dict and rebuild it in code")
        return {
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "beta": self.beta,
            "prior": self.prior.describe(),
            "likelihood": self.likelihood.describe(),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild a VAE (with fresh weights) from :meth:`config` output.

        A user-declared prior or likelihood cannot be rebuilt from a config: construct the VAE
        in code and load its ``state_dict`` instead.
        """
        cfg = dict(config)
        for key in ("prior", "likelihood"):
            spec = cfg.get(key)
            if isinstance(spec, dict) and spec.get("name") == "user":
                raise ValueError(
                    f"this run used a user-declared {key}; rebuild the VAE in code with the same "
                    f"{key} and load the checkpoint's state_dict"
                )
        return cls(
            cfg["data_dim"], cfg["latent_dim"], hidden=tuple(cfg["hidden"]),
            prior=cfg["prior"], likelihood=cfg["likelihood"], activation=cfg["activation"],
            beta=cfg["beta"], name=cfg.get("name", "vae"),
        )


class AmortizedGuide(GuideMessenger):
    """The guide of a :class:`VAE` as an effect-based guide (:class:`pyro.poutine.guide.GuideMessenger`).

    ``AmortizedGuide(vae)`` is the same q(z|x) as ``vae.guide``, applied differently: called
    as ``guide(x, num_data)`` it runs ``vae.model`` once and hands it q(z|x) at its ``"z"``
    site, where ``vae.guide`` runs a program of its own whose trace the model is then replayed
    against. Trace-based ELBOs (``Trace_ELBO``, ``TraceMeanField_ELBO``) accept either and give
    the same value and gradients for the same random draws; this one runs one program and one
    plate per step instead of two. :func:`pyro_vae.fit` trains with it.

    :param VAE vae: the model whose encoder supplies q(z|x).
    """

    def __init__(self, vae):
        super().__init__(vae.model)
        self.vae = vae

    def get_posterior(self, name, prior):
        """q(z|x) at the ``"z"`` site of the model, for the ``x`` the guide was called with."""
        if name != "z":
            raise ValueError(f"the VAE's guide has no distribution for the sample site {name!r}; "
                             "the model's only latent site is 'z'")
        args, kwargs = self.args_kwargs
        return self.vae.posterior(args[0] if args else kwargs["x"])


def _like(module):
    """dtype and device of a module's first parameter or buffer (float32 on CPU if none)."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return {"dtype": t.dtype, "device": t.device}
    return {}


def _positive_int(value, what):
    try:
        ivalue = int(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a positive integer, got {value!r}") from None
    if ivalue != value or ivalue < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return ivalue


class _seeded:
    """Context manager: run with a fixed torch seed, then restore the global RNG state."""

    def __init__(self, seed):
        self.seed = seed

    def __enter__(self):
        if self.seed is not None:
            self.state = torch.random.get_rng_state()
            self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.seed is not None:
            torch.random.set_rng_state(self.state)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
