"""The variational autoencoder as a Pyro model/guide pair.

``model(x)``: z ~ p(z) (the prior), x ~ p(x|z) (the likelihood applied to the decoder output).
``guide(x)``: z ~ q(z|x), a posterior family of :mod:`pyro_vae.guides` (by default
Normal(loc(x), scale(x)), a diagonal Gaussian from the encoder) or a module of the user's.

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

from pyro_vae.checks import check_float, check_positive_int, fork_rng, parse_spec
from pyro_vae.guides import Guide, check_guide, describe_guide, location_scale, make_guide
from pyro_vae.likelihoods import check_likelihood, make_likelihood
from pyro_vae.networks import describe_network, make_decoder, make_encoder
from pyro_vae.priors import check_prior, make_prior
from pyro_vae.program_pair import data_plate

__all__ = ["VAEBase", "VAE", "AmortizedGuide"]


class VAEBase(nn.Module):
    """What the variational autoencoders of the package (:class:`VAE`,
    :class:`~pyro_vae.mixture_vae.MixtureVAE`) share: data of size ``data_dim``, a latent z of
    size ``latent_dim``, and a ``decoder`` network whose output the ``likelihood`` turns into
    p(x|z). A subclass sets these four attributes.
    """

    @property
    def device(self):
        """The device of the parameters."""
        return next(self.parameters()).device

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (N, {self.data_dim}), got {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(
                f"x must have shape (N, {self.data_dim}) (flatten images first); got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def decode(self, z):
        """p(x|z) as a distribution.

        :param torch.Tensor z: latents, shape ``(..., L)``.
        :returns: a distribution with batch shape ``z.shape[:-1]`` and event shape ``(D,)``.
        """
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (..., {self.latent_dim}); got {tuple(z.shape)}")
        return self.likelihood(self.decoder(z))


class VAE(VAEBase):
    """A variational autoencoder written as a Pyro ``model`` and ``guide``.

    :param int data_dim: size D of a (flattened) datapoint.
    :param int latent_dim: size L of the latent z.
    :param tuple hidden: hidden layer sizes of the encoder and decoder MLPs (for
        ``network="conv"``: of their fully connected layers).
    :param prior: p(z): a name (``"normal"``, ``"learned_normal"``, ``"laplace"``,
        ``"studentt"``, ``"mixture"``, ``"vamp"``), a ``(name, kwargs)`` pair or dict, an
        ``nn.Module`` or any callable with no arguments returning a Pyro distribution with
        event shape ``(L,)``. Parameters of an ``nn.Module`` prior are learned. The
        ``"vamp"`` prior is a mixture of the encoder's diagonal Gaussians ``(loc, scale)`` at
        its pseudo-inputs, whatever the guide family (for ``"full"``: without the
        off-diagonal part; for ``"iaf"``: the flow's base).
    :param likelihood: p(x|z): a name (``"bernoulli"``, ``"continuous_bernoulli"``,
        ``"gaussian"``, ``"gaussian_shared"``, ``"gaussian_feature"``, ``"gaussian_decoder"``,
        ``"laplace"``), a Likelihood, or a callable from decoder output
        ``(..., D * k)`` to a distribution with event shape ``(D,)``.
    :param int likelihood_outputs: decoder outputs per feature ``k`` for a user callable
        likelihood (default: its ``outputs_per_feature`` attribute, else 1).
    :param str activation: nonlinearity of the networks.
    :param float beta: KL weight; 1 gives the ELBO.
    :param nn.Module encoder: optional replacement encoder ``x (..., D) -> (loc, scale)``
        (for ``guide="full"`` or ``"iaf"`` it also needs ``features``, ``head`` and
        ``feature_dim`` like the encoders of :mod:`pyro_vae.networks`).
    :param nn.Module decoder: optional replacement decoder ``z (..., L) -> (..., D * k)``.
    :param str name: prefix of the names under which parameters enter Pyro's param store.
    :param int seed: seed for the initial weights (default: the global RNG). With the same
        seed, every guide family starts from the same encoder, decoder and prior weights.
    :param guide: q(z|x) (:mod:`pyro_vae.guides`): ``"diagonal"`` (a diagonal Gaussian),
        ``"full"`` (a Gaussian with full covariance), ``"iaf"`` (an inverse autoregressive
        flow on a diagonal Gaussian, conditioned on x; options ``num_flows`` and ``hidden``
        in a ``("iaf", {...})`` pair or dict), or an ``nn.Module`` of your own mapping
        ``x (N, D)`` to a distribution over z with batch shape ``(N,)`` and event shape
        ``(L,)`` (it is checked once here).
    :param int num_flows: number of flows of ``guide="iaf"`` (default 2; 0 gives the diagonal
        guide).
    :param network: encoder/decoder architecture: ``"mlp"`` or ``"conv"`` (square
        single-channel images, e.g. 784 = 28x28; ``("conv", {"channels": c})`` sets the
        channels).

    :ivar nn.Module q: the guide module, x -> q(z|x); :attr:`encoder` is its encoder network.
    """

    def __init__(self, data_dim, latent_dim=16, hidden=(400,), prior="normal",
                 likelihood="bernoulli", likelihood_outputs=None, activation="softplus",
                 beta=1.0, encoder=None, decoder=None, name="vae", seed=None, *,
                 guide="diagonal", num_flows=None, network="mlp"):
        super().__init__()
        with fork_rng(seed):
            self._build(data_dim, latent_dim, hidden, prior, likelihood, likelihood_outputs,
                        activation, beta, encoder, decoder, name, guide, num_flows, network)

    def _build(self, data_dim, latent_dim, hidden, prior, likelihood, likelihood_outputs,
               activation, beta, encoder, decoder, name, guide, num_flows, network):
        data_dim = check_positive_int(data_dim, "data_dim")
        latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.activation = activation
        self.beta = beta
        if not isinstance(name, str) or "$$$" in name:
            raise ValueError(f"name must be a string without '$$$', got {name!r}")
        self.name = name
        self.network = describe_network(network)
        user_guide = isinstance(guide, nn.Module)
        if user_guide and encoder is not None:
            raise ValueError("encoder= replaces the encoder network of a built-in guide family; a guide "
                             "module of your own brings its own networks, so pass one or the other")
        if user_guide and parse_spec(prior, "prior")[0] in ("vamp", "vampprior"):
            raise ValueError("the 'vamp' prior is a mixture of the encoder's Gaussians at pseudo-inputs and "
                             "needs a built-in guide family (diagonal, full or iaf); with a guide module of "
                             "your own, choose another prior or declare your own")

        # built in this order so that, for a given seed, the encoder, decoder and prior weights
        # are the same for every guide family (the family's own parts come last)
        self.likelihood = make_likelihood(likelihood, data_dim, outputs_per_feature=likelihood_outputs)
        k = int(self.likelihood.outputs_per_feature)
        custom = encoder is not None or decoder is not None
        if encoder is None and not user_guide:
            encoder = make_encoder(network, data_dim, latent_dim, self.hidden, activation)
        if decoder is None:
            decoder = make_decoder(network, latent_dim, data_dim * k, self.hidden, activation, k)
        prior = make_prior(prior, latent_dim, encoder=encoder, data_dim=data_dim)
        q = make_guide(guide, encoder, latent_dim, num_flows=num_flows)
        self.q = q
        self.decoder = decoder
        self.prior = prior
        self._custom_networks = custom
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
        self._beta = check_float(value, "beta", minimum=0.0)

    @property
    def encoder(self):
        """The encoder network of the guide (``None`` for a guide module of the user's without
        an ``encoder`` attribute)."""
        return getattr(self.q, "encoder", None)

    @property
    def guide_family(self):
        """``"diagonal"``, ``"full"``, ``"iaf"`` or ``"user"``."""
        return describe_guide(self.q)["name"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the guide families kept the encoder at "encoder.*"; it is
        # now "q.encoder.*" (the guide module owns it)
        old = prefix + "encoder."
        if not any(k.startswith(prefix + "q.") for k in state_dict):
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[prefix + "q.encoder." + key[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_networks(self):
        check_guide(self.q, self.data_dim, self.latent_dim, like=_like(self.q))
        k = self.likelihood.outputs_per_feature
        out = self.decoder(torch.zeros(2, self.latent_dim, **_like(self.decoder)))
        if out.shape != (2, self.data_dim * k):
            raise ValueError(
                f"decoder must map z of shape (N, {self.latent_dim}) to (N, {self.data_dim * k}) "
                f"(data_dim * outputs per feature of the likelihood); got {tuple(out.shape)}"
            )

    def _plate(self, x, num_data):
        return data_plate(x, num_data, self._subsample(x.shape[0], x.device))

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
        if not isinstance(self.q, Guide):
            pyro.module(self.name + "_guide", self.q)
            return
        # the encoder under the name it always had; the family's own parts under their names
        for child_name, child in self.q.named_children():
            if child is self.q.encoder:
                pyro.module(self.name + "_encoder", child)
            elif any(True for _ in child.parameters()):
                pyro.module(f"{self.name}_guide_{child_name}", child)

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
        """q(z|x), the distribution of :meth:`posterior`.

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
        """q(z|x) as a distribution, with gradients (wrap the call in ``torch.no_grad()`` when
        none are wanted). This is what :meth:`guide` samples and what :class:`AmortizedGuide`
        hands to the model.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: a distribution with batch shape ``(N,)`` and event shape ``(L,)``: a
            diagonal Normal (``"diagonal"``), a MultivariateNormal (``"full"``), a
            TransformedDistribution (``"iaf"`` with flows) or the user module's distribution.
        """
        return self.q(x)

    def local_posterior(self, x):
        """q(z|x_i) as a member of the guide family with parameters of its own per datapoint
        (see :mod:`pyro_vae.guides`); :func:`pyro_vae.inference_gaps` optimizes them.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: :class:`pyro_vae.guides.LocalPosterior`.
        """
        self._check_x(x)
        if not callable(getattr(self.q, "local_posterior", None)):
            raise TypeError(
                f"the guide module {type(self.q).__name__} has no local_posterior(x): the "
                "per-datapoint optimum q* of inference_gaps is defined within a guide family; give your "
                "module a local_posterior(x) method returning a pyro_vae.guides.LocalPosterior")
        return self.q.local_posterior(x)

    # ------------------------------------------------------------------ conveniences
    @torch.no_grad()
    def encode(self, x):
        """A location and a scale per latent coordinate summarizing q(z|x), without gradients.

        ========== ====================================================================
        guide      ``(loc, scale)``
        ========== ====================================================================
        diagonal   the mean and standard deviations of q (its parameters)
        full       the mean and the marginal standard deviations ``sqrt(diag(Sigma))``
        iaf        the base Gaussian of the flow (its mean and standard deviations)
        user       the distribution's ``mean`` and ``stddev``
        ========== ====================================================================

        :meth:`posterior` gives the distribution itself.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: ``(loc, scale)``, each of shape ``(N, L)``.
        """
        self._check_x(x)
        return location_scale(self.q, x)

    @torch.no_grad()
    def sample(self, num_samples, seed=None, mean=True):
        """Draw new data from the model: z ~ p(z), then x ~ p(x|z) or its mean.

        :param int num_samples: number of samples ``n``.
        :param int seed: seed for the draws (default: the global RNG).
        :param bool mean: return the mean of p(x|z) (smooth images) instead of a draw.
        :returns: tensor of shape ``(n, D)``.
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        with fork_rng(seed, self.device):
            z = self.prior().sample((num_samples,))
            out = self.decoder(z)
            return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    @torch.no_grad()
    def reconstruct(self, x):
        """Mean of p(x|z) at z = the mean of q(z|x) (for ``"iaf"``: the base mean pushed
        through the flow).

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: reconstructions, shape ``(N, D)``.
        """
        self._check_x(x)
        z = self.q.center(x) if isinstance(self.q, Guide) else location_scale(self.q, x)[0]
        return self.likelihood.mean(self.decoder(z))

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
            "guide": describe_guide(self.q),
            "network": dict(self.network),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild a VAE (with fresh weights) from :meth:`config` output.

        A user-declared prior, likelihood or guide cannot be rebuilt from a config: construct
        the VAE in code and load its ``state_dict`` instead. Configs written before the guide
        families (no ``"guide"`` / ``"network"`` keys) describe the diagonal guide and MLP
        networks.
        """
        cfg = dict(config)
        for key in ("prior", "likelihood", "guide"):
            spec = cfg.get(key)
            if isinstance(spec, dict) and spec.get("name") == "user":
                raise ValueError(
                    f"this run used a user-declared {key}; rebuild the VAE in code with the same "
                    f"{key} and load the checkpoint's state_dict"
                )
        return cls(
            cfg["data_dim"], cfg["latent_dim"], hidden=tuple(cfg["hidden"]),
            prior=cfg["prior"], likelihood=cfg["likelihood"], activation=cfg["activation"],
            beta=cfg["beta"], name=cfg.get("name", "vae"), guide=cfg.get("guide", "diagonal"),
            network=cfg.get("network", "mlp"),
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
