"""A VAE with an explicit discrete component: :class:`MixtureVAE`.

``model(x)``::

    y ~ Categorical(pi)                      the component, one of K
    z | y ~ Normal(mu_y, diag(sigma_y^2))    the continuous latent
    x | z ~ p(x|z)                           any likelihood of pyro_vae.likelihoods

with pi, mu and sigma learned (:class:`pyro_vae.priors.MixtureOfGaussians`: summing y out
gives the VAE's ``"mixture"`` prior, here with the component made a latent site of its own).

``guide(x)``: y ~ q(y|x) (a network giving K logits), then z ~ q(z|x, y), a diagonal Gaussian
from an encoder that reads x and the one-hot y. This is the VAE analogue of the Gaussian
mixture, whose assignment variable is the one EM's E step computes exactly.

The same two programs serve the three estimators of the gradient with respect to q(y|x)
(``fit(..., objective=...)``, :func:`pyro_vae.gradients.gradient_variance`):

* ``"trace"`` -- :class:`pyro.infer.Trace_ELBO` samples y and weights the score function of
  q(y_i|x_i) by datapoint i's whole ELBO term (Pyro's plate-wise Rao-Blackwellization, no
  baseline);
* ``"tracegraph"`` -- :class:`pyro.infer.TraceGraph_ELBO` samples y and weights the score
  function by the downstream cost of y_i minus the baseline the guide declares at the site
  (the ``baseline`` argument): ``"decaying"``, Pyro's decaying average of the cost, or
  ``"neural"``, a network of x on top of that average (Mnih & Gregor, 2014), trained by the
  baseline loss of TraceGraph_ELBO;
* ``"enum"`` -- :class:`pyro.infer.TraceEnum_ELBO` sums over the K values of y exactly (the
  site is marked ``infer={"enumerate": "parallel"}``), leaving only z to sample.

Trace_ELBO and TraceGraph_ELBO ignore the enumeration mark and TraceEnum_ELBO ignores the
baseline. Sites ``"y"``, ``"z"`` and ``"x"`` lie in ``pyro.plate("data", size=num_data,
subsample=...)`` as in :class:`pyro_vae.VAE`, so minibatch objectives are unbiased for the
full-data ones.
"""

import torch
from torch.nn import functional as F

import pyro
import pyro.distributions as dist

from pyro_vae.checks import (check_choice, check_float, check_int, check_positive_int, check_seed, fork_rng,
                             parse_spec)
from pyro_vae.distributions import NormalEvent
from pyro_vae.likelihoods import check_likelihood, make_likelihood
from pyro_vae.networks import ACTIVATIONS, MLP, Decoder, Encoder
from pyro_vae.priors import MixtureOfGaussians
from pyro_vae.program_pair import BASELINE_STATE_PREFIX, data_plate
from pyro_vae.vae import VAEBase

__all__ = ["MixtureVAE", "BASELINES", "COMPONENT_SITE", "minibatch_baseline"]

#: baselines the guide can declare at the component site for ``TraceGraph_ELBO``
BASELINES = (None, "decaying", "neural")
#: name of the component's sample site
COMPONENT_SITE = "y"


class MixtureVAE(VAEBase):
    """A variational autoencoder with a discrete component y and a continuous latent z.

    :param int data_dim: size D of a (flattened) datapoint.
    :param int latent_dim: size L of z.
    :param int n_components: number K of components.
    :param tuple hidden: hidden layer sizes of every network (q(y|x), q(z|x,y), decoder, neural
        baseline).
    :param likelihood: p(x|z), as for :class:`pyro_vae.VAE`: a name (``"bernoulli"``,
        ``"gaussian_feature"``...), a ``(name, kwargs)`` pair or dict, a Likelihood, or a
        callable from decoder output to a distribution with event shape ``(D,)``.
    :param int likelihood_outputs: decoder outputs per feature of a user callable likelihood.
    :param str activation: nonlinearity of the networks.
    :param str baseline: what the guide declares at the ``"y"`` site for ``TraceGraph_ELBO``:
        ``None`` (no baseline), ``"decaying"`` (a decaying average of the downstream cost) or
        ``"neural"`` (a network of x, trained to predict the cost, on top of the decaying
        average). It can be changed after construction; other objectives ignore it.
    :param float baseline_beta: decay of the average, in [0, 1).
    :param str name: the name under which model and guide register the module in Pyro's param
        store (``pyro.module(name, self)``; parameter ``p`` is ``"<name>$$$p"`` there).
    :param int seed: seed for the initial weights (default: the global RNG).

    The decaying average is kept in Pyro's param store (``"__baseline_avg_downstream_cost_y"``)
    as one number for the whole minibatch: Pyro keeps one per position in the minibatch, which
    fails when the last minibatch of an epoch is smaller and, with shuffled minibatches, averages
    over fewer draws; the guide folds it to its mean before each step.
    """

    def __init__(self, data_dim, latent_dim=16, n_components=10, hidden=(400,), likelihood="bernoulli",
                 likelihood_outputs=None, activation="softplus", baseline=None, baseline_beta=0.9,
                 name="mixture_vae", seed=None):
        super().__init__()
        self.data_dim = check_positive_int(data_dim, "data_dim")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.n_components = check_positive_int(n_components, "n_components")
        self.hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.activation = activation
        self.baseline = baseline
        self.baseline_beta = check_float(baseline_beta, "baseline_beta", minimum=0.0, maximum=1.0)
        if self.baseline_beta >= 1.0:
            raise ValueError(f"baseline_beta must be smaller than 1 (the weight of the old average), got "
                             f"{self.baseline_beta:g}")
        if not isinstance(name, str) or "$$$" in name:
            raise ValueError(f"name must be a string without '$$$', got {name!r}")
        self.name = name
        seed = check_seed(seed)
        with fork_rng(seed):
            # built in this order so that a seed gives the same weights whatever the baseline
            self.likelihood = make_likelihood(likelihood, self.data_dim, outputs_per_feature=likelihood_outputs)
            k = int(self.likelihood.outputs_per_feature)
            self.y_encoder = MLP(self.data_dim, self.hidden, self.n_components, activation)
            self.z_encoder = Encoder(self.data_dim + self.n_components, self.latent_dim, self.hidden, activation)
            self.decoder = Decoder(self.latent_dim, self.data_dim * k, self.hidden, activation)
            prior_seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
            self.prior = MixtureOfGaussians(self.latent_dim, self.n_components, seed=prior_seed)
            self.baseline_net = MLP(self.data_dim, self.hidden, 1, activation)
        check_likelihood(self.likelihood, self.data_dim)

    # ------------------------------------------------------------------ properties
    @property
    def baseline(self):
        """The baseline the guide declares at ``"y"`` (``None``, ``"decaying"``, ``"neural"``)."""
        return self._baseline

    @baseline.setter
    def baseline(self, value):
        self._baseline = check_choice(value, "baseline", BASELINES)

    def parameter_groups(self):
        """The parameters by role, for :func:`pyro_vae.gradients.gradient_variance`.

        :returns: dict ``{"encoder_y": [...], "encoder_z": [...], "decoder": [...],
            "prior": [...]}`` (the decoder group holds the likelihood's learned parameters
            too); the neural baseline's parameters are in none of them.
        """
        return {"encoder_y": list(self.y_encoder.parameters()),
                "encoder_z": list(self.z_encoder.parameters()),
                "decoder": list(self.decoder.parameters()) + list(self.likelihood.parameters()),
                "prior": list(self.prior.parameters())}

    def unregister(self):
        """Remove the entries under this module's name from Pyro's param store.

        Pyro's ``pyro.module`` takes the tensors already stored under a name, so a new module
        with the name of an earlier one must not find the earlier one's there (fit refuses to
        train them); call this (or ``pyro.clear_param_store()``) before training it.
        """
        store = pyro.get_param_store()
        for key in [k for k in store.keys() if k.startswith(self.name + "$$$")]:
            del store[key]

    def load_store_state(self, named):
        """Load parameters kept under their names in Pyro's param store.

        Model and guide register the whole module as ``pyro.module(name, self)``, so that
        parameter ``p`` is ``"<name>$$$p"`` there, and :func:`pyro_vae.fit` checkpoints it
        under that name (``checkpoint["model"]``).

        :param dict named: store name -> tensor, one for every parameter of the module.
        :raises ValueError: a name of another module, or a parameter missing.
        """
        prefix = self.name + "$$$"
        state = dict(self.state_dict())
        wrong = sorted(k for k in named if not k.startswith(prefix) or k[len(prefix):] not in state)
        if wrong:
            raise ValueError(f"these tensors are not parameters of the MixtureVAE named {self.name!r}: "
                             f"{wrong[:3]}; was the checkpoint written for another model?")
        missing = sorted(k for k, _ in self.named_parameters() if prefix + k not in named)
        if missing:
            raise ValueError(f"the tensors miss the parameters {missing[:3]} of the MixtureVAE")
        state.update({k[len(prefix):]: v for k, v in named.items()})
        self.load_state_dict(state)

    def baseline_parameters(self):
        """The neural baseline's parameters (trained by ``TraceGraph_ELBO``'s baseline loss)."""
        return list(self.baseline_net.parameters())

    # ------------------------------------------------------------------ the networks
    def component_posterior(self, x):
        """q(y|x), with gradients.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: :class:`pyro.distributions.Categorical` with batch shape ``(N,)``.
        """
        return dist.Categorical(logits=self.y_encoder(x))

    def latent_posterior(self, x, y):
        """q(z|x, y), with gradients.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :param torch.Tensor y: components, shape broadcastable with ``(N,)`` (e.g. ``(K, 1)``
            when y is enumerated).
        :returns: a diagonal Gaussian with batch shape ``broadcast(y.shape, (N,))`` and event
            shape ``(L,)``.
        """
        onehot = F.one_hot(y.long(), self.n_components).to(x.dtype)
        batch = torch.broadcast_shapes(x.shape[:-1], onehot.shape[:-1])
        inputs = torch.cat([x.expand(batch + x.shape[-1:]), onehot.expand(batch + onehot.shape[-1:])], -1)
        loc, scale = self.z_encoder(inputs)
        return NormalEvent(loc, scale)

    def component_prior(self, y):
        """p(z|y) for components ``y`` (any shape): a diagonal Gaussian with batch shape ``y.shape``."""
        return NormalEvent(self.prior.means[y], self.prior.scales[y])

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x, num_data=None):
        """p(y) p(z|y) p(x|z).

        :param torch.Tensor x: data, shape ``(N, D)``; a minibatch when ``num_data`` is given.
        :param int num_data: size of the full dataset (default ``N``).
        """
        self._check_x(x)
        pyro.module(self.name, self)
        with data_plate(x, num_data):
            y = pyro.sample(COMPONENT_SITE, dist.Categorical(logits=self.prior.logits))
            z = pyro.sample("z", self.component_prior(y))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, num_data=None):
        """q(y|x) q(z|x, y); the ``"y"`` site is marked for parallel enumeration and carries
        the baseline of :attr:`baseline`.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :param int num_data: size of the full dataset (default ``N``).
        """
        self._guide(x, num_data, self.baseline)

    def baseline_guide(self, baseline):
        """The guide with another baseline at ``"y"`` (the same networks and parameters).

        :param str baseline: ``None``, ``"decaying"`` or ``"neural"``.
        :returns: a guide program ``guide(x, num_data=None)``.
        """
        baseline = check_choice(baseline, "baseline", BASELINES)

        def guide(x, num_data=None):
            self._guide(x, num_data, baseline)

        guide.__doc__ = f"q(y|x) q(z|x, y) with baseline {baseline!r} at 'y'."
        return guide

    def gradient_estimators(self):
        """The estimators :func:`pyro_vae.gradients.gradient_variance` compares by default.

        :returns: dict label -> ``(objective, guide)``: ``"trace"``; ``"tracegraph"`` without a
            baseline, with the decaying average (``"tracegraph_decaying"``) and with the neural
            baseline (``"tracegraph_neural"``); ``"enum"``.
        """
        return {"trace": ("trace", self.baseline_guide(None)),
                "tracegraph": ("tracegraph", self.baseline_guide(None)),
                "tracegraph_decaying": ("tracegraph", self.baseline_guide("decaying")),
                "tracegraph_neural": ("tracegraph", self.baseline_guide("neural")),
                "enum": ("enum", self.baseline_guide(None))}

    def _guide(self, x, num_data, baseline):
        self._check_x(x)
        pyro.module(self.name, self)
        infer = {"enumerate": "parallel"}
        if baseline is not None:
            infer["baseline"] = self._baseline_options(x, baseline)
        with data_plate(x, num_data):
            y = pyro.sample(COMPONENT_SITE, self.component_posterior(x), infer=infer)
            pyro.sample("z", self.latent_posterior(x, y))

    def _baseline_options(self, x, baseline):
        """``infer["baseline"]`` of the ``"y"`` site (see the class documentation)."""
        net = None
        if baseline == "neural":
            net = self.baseline_net
        return minibatch_baseline(COMPONENT_SITE, x, self.baseline_beta, net)

    # ------------------------------------------------------------------ conveniences
    @torch.no_grad()
    def predict_proba(self, x):
        """q(y|x) as probabilities, without gradients.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: tensor ``(N, K)``, rows summing to 1.
        """
        self._check_x(x)
        return torch.softmax(self.y_encoder(x), -1)

    @torch.no_grad()
    def predict(self, x):
        """The component of each datapoint, ``argmax_y q(y|x)``.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: long tensor ``(N,)``.
        """
        return self.predict_proba(x).argmax(-1)

    @torch.no_grad()
    def encode(self, x):
        """q(y|x) and q(z|x, y) for every component, without gradients.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: ``(probs, loc, scale)``: q(y|x) of shape ``(N, K)``, and the means and
            standard deviations of q(z|x, y=k), each of shape ``(N, K, L)``.
        """
        self._check_x(x)
        ks = torch.arange(self.n_components, device=x.device).unsqueeze(-1)  # (K, 1)
        q = self.latent_posterior(x, ks)                                      # batch (K, N)
        return self.predict_proba(x), q.loc.transpose(0, 1), q.scale.expand_as(q.loc).transpose(0, 1)

    @torch.no_grad()
    def sample(self, num_samples, seed=None, component=None, mean=True):
        """Draw new data from the model: y ~ p(y) (or the given component), z ~ p(z|y), then
        x ~ p(x|z) or its mean.

        :param int num_samples: number of samples ``n``.
        :param int seed: seed for the draws (default: the global RNG).
        :param int component: draw every sample from this component (``0 <= component < K``).
        :param bool mean: return the mean of p(x|z) (smooth images) instead of a draw.
        :returns: tensor of shape ``(n, D)``.
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        if component is not None:
            component = check_int(component, "component", minimum=0, maximum=self.n_components - 1)
        with fork_rng(seed, self.device):
            if component is None:
                y = dist.Categorical(logits=self.prior.logits).sample((num_samples,))
            else:
                y = torch.full((num_samples,), component, dtype=torch.long, device=self.device)
            z = self.component_prior(y).sample()
            out = self.decoder(z)
            return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    @torch.no_grad()
    def reconstruct(self, x):
        """Mean of p(x|z) at z = the mean of q(z|x, y) for the most probable component y.

        :param torch.Tensor x: data, shape ``(N, D)``.
        :returns: reconstructions, shape ``(N, D)``.
        """
        self._check_x(x)
        z = self.latent_posterior(x, self.predict(x)).loc
        return self.likelihood.mean(self.decoder(z))

    def config(self):
        """A JSON-able description from which :meth:`from_config` rebuilds the model."""
        lik = self.likelihood.describe()
        if lik.get("name") == "user":
            raise ValueError("a MixtureVAE with a user-declared likelihood cannot be described by a config; "
                             "save its state_dict and rebuild it in code")
        return {"model": "mixture_vae", "data_dim": self.data_dim, "latent_dim": self.latent_dim,
                "n_components": self.n_components, "hidden": list(self.hidden), "likelihood": lik,
                "activation": self.activation, "baseline": self.baseline,
                "baseline_beta": self.baseline_beta, "name": self.name}

    @classmethod
    def from_config(cls, config):
        """Rebuild a MixtureVAE (with fresh weights) from :meth:`config` output."""
        cfg = dict(config)
        if cfg.pop("model", "mixture_vae") != "mixture_vae":
            raise ValueError(f"this config describes a {config.get('model')!r}, not a mixture_vae")
        name, _ = parse_spec(cfg.get("likelihood"), "likelihood")
        if name == "user":
            raise ValueError("this model used a user-declared likelihood; rebuild it in code and load its "
                             "state_dict")
        return cls(cfg["data_dim"], cfg["latent_dim"], cfg["n_components"], hidden=tuple(cfg["hidden"]),
                   likelihood=cfg["likelihood"], activation=cfg["activation"], baseline=cfg["baseline"],
                   baseline_beta=cfg["baseline_beta"], name=cfg["name"])


def minibatch_baseline(site, x, beta, net=None):
    """``infer["baseline"]`` options of a discrete guide site in the data plate, for
    :class:`pyro.infer.TraceGraph_ELBO`: Pyro's decaying average of the downstream cost, plus a
    neural baseline when ``net`` is given.

    Pyro keeps the average in its param store (``"__baseline_avg_downstream_cost_<site>"``)
    with one entry per position in the minibatch, which fails when the last minibatch of an
    epoch is smaller and, with shuffled minibatches, averages over fewer draws. Here it is
    folded to one number for the whole minibatch before each step (call this from the guide,
    once per step).

    :param str site: name of the sample site.
    :param torch.Tensor x: the minibatch, shape ``(N, D)``.
    :param float beta: decay of the average, in [0, 1).
    :param net: ``None``, or a module ``(N, D) -> (N, 1)`` predicting the downstream cost
        (registered with the guide's module so that it is trained by the baseline loss).
    :returns: dict for ``infer={"baseline": ...}``.
    """
    store = pyro.get_param_store()
    name = BASELINE_STATE_PREFIX + site
    if name in store:
        avg = store[name].detach()
        store[name] = avg.mean().expand(x.shape[0]).clone()
    options = {"use_decaying_avg_baseline": True, "baseline_beta": beta}
    if net is not None:
        # its output (N, 1) as the shape (N,) of the downstream cost
        options["nn_baseline"] = lambda inputs: net(inputs).squeeze(-1)
        options["nn_baseline_input"] = x
    return options
