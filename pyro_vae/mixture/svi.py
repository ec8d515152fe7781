"""The Gaussian mixture fitted by SVI with an amortized posterior: :class:`GaussianMixtureSVI`.

The model is the one :class:`~pyro_vae.mixture.GaussianMixture` fits by EM::

    z ~ Categorical(weights)                 the component, one of K
    x | z ~ Normal(mu_z, Sigma_z)            full or diagonal covariances

but the posterior over the component is a network, ``q(z|x) = Categorical(logits=f(x))``,
and everything -- weights, means, covariances and the network -- is trained together by
stochastic gradient ascent on the ELBO (:func:`pyro_vae.fit`), with the component either
summed out exactly (``objective="enum"``) or sampled with a score-function gradient
(``objective="tracegraph"``, with a baseline).

Because the model is a finite mixture, everything an evaluation needs is exact:

* ``log p(x) = logsumexp_k (log pi_k + log N(x | mu_k, Sigma_k))`` (:meth:`score_samples`);
* ``ELBO(x) = sum_k q(k|x) (log pi_k + log N(x | mu_k, Sigma_k) - log q(k|x))``
  (:meth:`elbo`);
* the inference gap ``log p(x) - ELBO(x) = KL(q(z|x) || p(z|x))``, a sum over the K
  components (:meth:`gap`).

Next to EM on the same data this separates what inference costs (EM's exact E step against an
amortized, stochastically trained q) from what the model costs (the same mixture against a
VAE).
"""

import torch
from torch import nn
from torch.nn import functional as F

import pyro
import pyro.distributions as dist

from pyro_vae.checks import (as_data_tensor, check_choice, check_float, check_positive_float, check_positive_int,
                             check_seed, fork_rng)
from pyro_vae.mixture.initialization import kmeans_plusplus, lloyd
from pyro_vae.mixture_vae import BASELINES, minibatch_baseline
from pyro_vae.networks import ACTIVATIONS, MLP
from pyro_vae.program_pair import data_plate

__all__ = ["GaussianMixtureSVI", "SVI_COVARIANCE_TYPES", "SVI_OBJECTIVES"]

#: covariance types of :class:`GaussianMixtureSVI`
SVI_COVARIANCE_TYPES = ("full", "diag")
#: objectives of :class:`GaussianMixtureSVI` (names of :func:`pyro_vae.fit`)
SVI_OBJECTIVES = ("enum", "tracegraph", "trace")
#: name of the component's sample site (as in GaussianMixture.model)
COMPONENT_SITE = "z"


class GaussianMixtureSVI(nn.Module):
    """A Gaussian mixture with an amortized q(z|x), fitted by SVI.

    :param int n_components: number K of components.
    :param str covariance_type: ``"full"`` or ``"diag"``.
    :param tuple hidden: hidden layers of the network of q(z|x) (``()``: a linear map).
    :param str activation: its nonlinearity.
    :param str objective: ``"enum"`` (exact sum over the component), ``"tracegraph"``
        (score function with the baseline ``baseline``) or ``"trace"`` (score function,
        no baseline).
    :param str baseline: baseline of ``"tracegraph"``: ``None``, ``"decaying"`` (Pyro's
        decaying average) or ``"neural"`` (a network of x on top of it).
    :param int epochs: passes over the data.
    :param int batch_size: minibatch size.
    :param float lr: Adam learning rate.
    :param float min_scale: smallest standard deviation along a covariance's axes (added to a
        softplus), which keeps a component from collapsing onto one point.
    :param dtype: floating-point type of the parameters (data are converted to it).
    :param int seed: seed of the initialization and of training.
    :param str name: the name under which model and guide register the module in Pyro's param
        store; :meth:`fit` clears the entries under it first.

    Learned values (after :meth:`fit`): :attr:`weights_` ``(K,)``, :attr:`means_` ``(K, d)``,
    :attr:`covariances_` (``(K, d, d)`` full, ``(K, d)`` diag), ``history_`` (the
    :func:`pyro_vae.fit` history), ``n_features_in_``.
    """

    def __init__(self, n_components=1, *, covariance_type="full", hidden=(32,), activation="softplus",
                 objective="enum", baseline="decaying", epochs=100, batch_size=256, lr=1e-2, min_scale=1e-3,
                 dtype=torch.float32, seed=0, name="gmm_svi"):
        super().__init__()
        self.n_components = check_positive_int(n_components, "n_components")
        self.covariance_type = check_choice(covariance_type, "covariance_type", SVI_COVARIANCE_TYPES)
        self.hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.activation = check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.objective = check_choice(objective, "objective", SVI_OBJECTIVES)
        self.baseline = check_choice(baseline, "baseline", BASELINES)
        self.epochs = check_positive_int(epochs, "epochs")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.lr = check_positive_float(lr, "lr")
        self.min_scale = check_float(min_scale, "min_scale", minimum=0.0)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.dtype = dtype
        self.seed = check_seed(seed)
        if not isinstance(name, str) or "$$$" in name:
            raise ValueError(f"name must be a string without '$$$', got {name!r}")
        self.name = name
        self._built = False

    # ------------------------------------------------------------------ parameters
    def _build(self, d, device):
        """Create the parameters for ``d`` features (uninitialized values)."""
        k = self.n_components
        with fork_rng(self.seed):
            self.encoder = MLP(d, self.hidden, k, self.activation).to(device=device, dtype=self.dtype)
            self.baseline_net = MLP(d, self.hidden, 1, self.activation).to(device=device, dtype=self.dtype)
        kw = {"device": device, "dtype": self.dtype}
        self.logits = nn.Parameter(torch.zeros(k, **kw))
        self.loc = nn.Parameter(torch.zeros(k, d, **kw))
        self.raw_scale = nn.Parameter(torch.zeros(k, d, **kw))                 # softplus -> axis scales
        if self.covariance_type == "full":
            self.raw_tril = nn.Parameter(torch.zeros(k, d * (d - 1) // 2, **kw))  # below the diagonal
        self.register_buffer("shift", torch.zeros(d, **kw))                   # input standardization
        self.register_buffer("spread", torch.ones(d, **kw))
        self.n_features_in_ = d
        self._built = True

    def _state(self):
        if not self._built:
            raise ValueError("this GaussianMixtureSVI is not fitted yet; call fit(X) or set_parameters(...) first")

    def _scales(self):
        """Standard deviations along the axes, ``(K, d)``."""
        return F.softplus(self.raw_scale) + self.min_scale

    def _scale_tril(self):
        """Cholesky factors of the covariances, ``(K, d, d)`` (full only)."""
        k, d = self.loc.shape
        rows, cols = torch.tril_indices(d, d, offset=-1, device=self.loc.device)
        flat = torch.zeros(k, d * d, dtype=self.loc.dtype, device=self.loc.device)
        flat = flat.index_copy(1, rows * d + cols, self.raw_tril)
        return flat.view(k, d, d) + torch.diag_embed(self._scales())

    def component_distribution(self, z=None):
        """p(x|z) for components ``z`` (any shape; default all K, batch shape ``(K,)``)."""
        idx = slice(None) if z is None else z
        if self.covariance_type == "full":
            return dist.MultivariateNormal(self.loc[idx], scale_tril=self._scale_tril()[idx])
        return dist.Normal(self.loc[idx], self._scales()[idx]).to_event(1)

    @staticmethod
    def _inverse_softplus(v):
        return v + torch.log(-torch.expm1(-v))

    @torch.no_grad()
    def set_parameters(self, weights, means, covariances):
        """Set the mixture's parameters (the network of q(z|x) is kept, or created).

        :param weights: ``(K,)``, positive, summing to 1.
        :param means: ``(K, d)``.
        :param covariances: ``(K, d, d)`` (full) or ``(K, d)`` variances (diag); every
            standard deviation along the axes must exceed ``min_scale``.
        :returns: ``self``.
        """
        means = as_data_tensor(means, "means").to(self.dtype)
        k, d = self.n_components, means.shape[-1]
        if means.shape != (k, d):
            raise ValueError(f"means must have shape ({k}, d), got {tuple(means.shape)}")
        if not self._built:
            self._build(d, means.device)
        elif d != self.n_features_in_:
            raise ValueError(f"means have {d} features, the mixture {self.n_features_in_}")
        dev = self.loc.device
        w = torch.as_tensor(weights, dtype=self.dtype, device=dev)
        if w.shape != (k,) or (w <= 0).any() or abs(float(w.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must be {k} positive numbers summing to 1")
        cov = torch.as_tensor(covariances, dtype=self.dtype, device=dev)
        if self.covariance_type == "full":
            if cov.shape != (k, d, d):
                raise ValueError(f"full covariances must have shape ({k}, {d}, {d}), got {tuple(cov.shape)}")
            tril = torch.linalg.cholesky(cov)
            diag = tril.diagonal(dim1=-2, dim2=-1)
        else:
            if cov.shape != (k, d):
                raise ValueError(f"diag covariances must have shape ({k}, {d}), got {tuple(cov.shape)}")
            diag = cov.sqrt()
        if (diag <= self.min_scale).any():
            raise ValueError(f"every standard deviation along the axes must exceed min_scale={self.min_scale:g}")
        self.logits.copy_(w.log())
        self.loc.copy_(means.to(dev))
        self.raw_scale.copy_(self._inverse_softplus(diag - self.min_scale))
        if self.covariance_type == "full":
            rows, cols = torch.tril_indices(d, d, offset=-1, device=dev)
            self.raw_tril.copy_(tril[:, rows, cols])
        return self

    def set_from_gaussian_mixture(self, gm):
        """Take the parameters of a fitted :class:`~pyro_vae.mixture.GaussianMixture` (``"full"``
        or ``"diag"`` as this one; ``"tied"`` into full, ``"spherical"`` into diag).

        :returns: ``self``.
        """
        cov = torch.as_tensor(gm.covariances_, dtype=torch.float64)
        k = self.n_components
        if gm.covariance_type == "tied":
            cov = cov.expand(k, *cov.shape)
        elif gm.covariance_type == "spherical":
            cov = cov[:, None].expand(k, torch.as_tensor(gm.means_).shape[-1])
        if (self.covariance_type == "full") != (cov.dim() == 3):
            raise ValueError(f"a GaussianMixture with covariance_type={gm.covariance_type!r} does not fit a "
                             f"{self.covariance_type!r} GaussianMixtureSVI")
        return self.set_parameters(torch.as_tensor(gm.weights_), torch.as_tensor(gm.means_), cov)

    @property
    def weights_(self):
        """Mixing weights ``(K,)``."""
        self._state()
        return torch.softmax(self.logits.detach(), -1)

    @property
    def means_(self):
        """Component means ``(K, d)``."""
        self._state()
        return self.loc.detach().clone()

    @property
    def covariances_(self):
        """Covariances: ``(K, d, d)`` full, ``(K, d)`` variances diag."""
        self._state()
        with torch.no_grad():
            if self.covariance_type == "full":
                tril = self._scale_tril()
                return tril @ tril.transpose(-1, -2)
            return self._scales() ** 2

    # ------------------------------------------------------------------ Pyro programs
    def _checked(self, x):
        self._state()
        x = as_data_tensor(x, "X")
        if x.dim() != 2 or x.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (N, {self.n_features_in_}), got {tuple(x.shape)}")
        return x.to(device=self.loc.device, dtype=self.dtype)

    def model(self, x, num_data=None):
        """``z ~ Categorical(weights)``, ``x ~ N(mu_z, Sigma_z)``; sites ``"z"`` and ``"x"`` in
        ``pyro.plate("data")`` (as :meth:`GaussianMixture.model <pyro_vae.mixture.GaussianMixture.model>`).

        :param torch.Tensor x: data ``(N, d)``; a minibatch when ``num_data`` is given.
        :param int num_data: size of the full data set (default ``N``).
        """
        x = self._checked(x)
        pyro.module(self.name, self)
        with data_plate(x, num_data):
            z = pyro.sample(COMPONENT_SITE, dist.Categorical(logits=self.logits))
            pyro.sample("x", self.component_distribution(z), obs=x)

    def guide(self, x, num_data=None):
        """``z ~ q(z|x)``, marked for parallel enumeration and carrying the baseline of
        ``"tracegraph"`` (each objective ignores what is not its own).

        :param torch.Tensor x: data ``(N, d)``.
        :param int num_data: size of the full data set (default ``N``).
        """
        x = self._checked(x)
        pyro.module(self.name, self)
        infer = {"enumerate": "parallel"}
        if self.baseline is not None:
            net = self.baseline_net if self.baseline == "neural" else None
            infer["baseline"] = minibatch_baseline(COMPONENT_SITE, self._standardize(x), 0.9, net)
        with data_plate(x, num_data):
            pyro.sample(COMPONENT_SITE, dist.Categorical(logits=self.encoder(self._standardize(x))), infer=infer)

    def _standardize(self, x):
        return (x - self.shift) / self.spread

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, val_data=None, quiet=True):
        """Initialize the means by k-means (k-means++ seeding, then Lloyd), the axis scales by
        the data's spread, the weights uniformly, then train everything by :func:`pyro_vae.fit`
        with :attr:`objective`.

        :param X: data ``(N, d)`` (tensor, array, DataFrame).
        :param y: ignored (scikit-learn convention).
        :param val_data: held-out data whose ELBO is recorded per epoch.
        :param bool quiet: no progress bar.
        :returns: ``self``.
        """
        from pyro_vae.training import fit as svi_fit

        x = as_data_tensor(X, "X").to(self.dtype)
        if x.dim() != 2 or x.shape[0] < self.n_components:
            raise ValueError(f"X must have shape (N, d) with N >= n_components={self.n_components}, got "
                             f"{tuple(x.shape)}")
        n, d = x.shape
        self._build(d, x.device)
        store = pyro.get_param_store()
        for key in [k for k in store.keys() if k.startswith(self.name + "$$$")]:
            del store[key]
        g = torch.Generator(device="cpu").manual_seed(self.seed if self.seed is not None else 0)
        xc = x.detach().double().cpu()
        centers = lloyd(xc, kmeans_plusplus(xc, self.n_components, g))
        spread = xc.std(0).clamp_min(1e-6)
        labels = torch.cdist(xc, centers).argmin(1)
        with torch.no_grad():
            self.shift.copy_(xc.mean(0).to(self.shift))
            self.spread.copy_(spread.to(self.spread))
            k = self.n_components
            var = torch.stack([xc[labels == j].var(0) if (labels == j).sum() > 1 else spread ** 2
                               for j in range(k)]).clamp_min(self.min_scale ** 2 * 4 + 1e-12)
        cov = torch.diag_embed(var) if self.covariance_type == "full" else var
        self.set_parameters(torch.full((self.n_components,), 1.0 / self.n_components, dtype=torch.float64),
                            centers, cov)
        self.history_ = svi_fit(self, x, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                objective=self.objective, val_data=val_data, seed=self.seed or 0,
                                quiet=quiet)
        return self

    # ------------------------------------------------------------------ exact evaluation
    @torch.no_grad()
    def weighted_log_prob(self, X):
        """``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape ``(N, K)``."""
        x = self._checked(X)
        return torch.log_softmax(self.logits, -1) + self.component_distribution().log_prob(x.unsqueeze(-2))

    def score_samples(self, X):
        """Exact log-likelihood per sample, ``log p(x_n)``, shape ``(N,)``."""
        return torch.logsumexp(self.weighted_log_prob(X), -1)

    def score(self, X, y=None):
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean())

    def posterior_proba(self, X):
        """The exact posterior p(z = k | x_n), shape ``(N, K)``."""
        return torch.softmax(self.weighted_log_prob(X), -1)

    @torch.no_grad()
    def predict_proba(self, X):
        """The amortized posterior q(z = k | x_n), shape ``(N, K)``."""
        x = self._checked(X)
        return torch.softmax(self.encoder(self._standardize(x)), -1)

    def predict(self, X):
        """The component of each sample, ``argmax_k q(z = k | x_n)``, shape ``(N,)``."""
        return self.predict_proba(X).argmax(-1)

    @torch.no_grad()
    def elbo(self, X):
        """The ELBO per sample with the amortized q, summed over the components exactly:
        ``sum_k q_k (log pi_k + log N(x | mu_k, Sigma_k) - log q_k)``, shape ``(N,)``."""
        x = self._checked(X)
        log_q = torch.log_softmax(self.encoder(self._standardize(x)), -1)
        return (log_q.exp() * (self.weighted_log_prob(x) - log_q)).sum(-1)

    @torch.no_grad()
    def gap(self, X):
        """The inference gap ``log p(x) - ELBO(x) = KL(q(z|x) || p(z|x))`` per sample, in
        closed form (a sum over the K components), shape ``(N,)``."""
        x = self._checked(X)
        log_q = torch.log_softmax(self.encoder(self._standardize(x)), -1)
        log_p = torch.log_softmax(self.weighted_log_prob(x), -1)
        return (log_q.exp() * (log_q - log_p)).sum(-1).clamp_min(0.0)

    @torch.no_grad()
    def sample(self, n_samples=1, seed=None, mean=False):
        """Draw from the mixture.

        :param int n_samples: number of samples.
        :param int seed: seed of the draws.
        :param bool mean: return the component means instead of draws (for a common
            ``sample(n, seed, mean)`` interface with the VAEs).
        :returns: tensor ``(n, d)``.
        """
        self._state()
        n = check_positive_int(n_samples, "n_samples")
        with fork_rng(seed, self.loc.device):
            z = dist.Categorical(logits=self.logits).sample((n,))
            return self.loc[z].clone() if mean else self.component_distribution(z).sample()

    def n_parameters(self):
        """Free parameters of the mixture (not of the network): covariances, means, ``K - 1`` weights."""
        self._state()
        k, d = self.n_components, self.n_features_in_
        cov = k * d * (d + 1) // 2 if self.covariance_type == "full" else k * d
        return cov + k * d + k - 1

    def extra_repr(self):
        return (f"n_components={self.n_components}, covariance_type={self.covariance_type!r}, "
                f"objective={self.objective!r}, baseline={self.baseline!r}")

