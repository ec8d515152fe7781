"""The linear-Gaussian latent-variable model, whose log p(x) and posterior are exact.

p(z) = N(0, I_L), p(x|z) = N(W z + b, s^2 I_D). Then p(x) = N(b, W W^T + s^2 I) and
p(z|x) = N(S W^T (x - b) / s^2, S) with S = (I + W^T W / s^2)^-1. The tests of the VAE, of
importance sampling and of the inference gaps all measure against these formulas;
:class:`PyroModel` is the model as a Pyro program with guides of known quality.
"""

import torch

import pyro
import pyro.distributions as dist

F64 = torch.float64


def log_px(x, w, b, sigma):
    """Exact log p(x) per row: x ``(N, D)``, w ``(D, L)``, b ``(D,)`` -> ``(N,)``."""
    cov = w @ w.T + sigma ** 2 * torch.eye(w.shape[0], dtype=w.dtype)
    return dist.MultivariateNormal(b, cov).log_prob(x)


def posterior(x, w, b, sigma):
    """Exact p(z|x): mean ``(N, L)`` and the covariance S ``(L, L)`` shared by all rows."""
    cov = torch.linalg.inv(torch.eye(w.shape[1], dtype=w.dtype) + w.T @ w / sigma ** 2)
    return (x - b) @ w @ cov / sigma ** 2, cov


def sample(n, w, b, sigma, seed=1):
    """``n`` draws of x from the model, ``(n, D)``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, w.shape[1], generator=g, dtype=w.dtype)
    return z @ w.T + b + sigma * torch.randn(n, w.shape[0], generator=g, dtype=w.dtype)


class PyroModel:
    """The linear-Gaussian model as a Pyro program (latent site ``"z"``, observed ``"x"``, plate
    ``"data"``), with random float64 parameters W ``(d, latent)`` and b ``(d,)`` drawn from
    ``seed``, and guides whose log p(x) is known: the exact posterior and two that are off."""

    def __init__(self, d=5, latent=3, sigma=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(d, latent, generator=g, dtype=F64)
        self.b = torch.randn(d, generator=g, dtype=F64)
        self.sigma, self.d, self.latent = sigma, d, latent
        self.post_cov = posterior(self.b[None], self.w, self.b, sigma)[1]
        self.post_sd = self.post_cov.diagonal().sqrt()

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T + self.b, self.sigma).to_event(1), obs=x)

    def post_loc(self, x):
        """Mean of p(z|x), ``(N, latent)``."""
        return posterior(x, self.w, self.b, self.sigma)[0]

    def exact_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.post_loc(x), covariance_matrix=self.post_cov))

    def perturbed_guide(self, x, shift=0.3, stretch=1.5):
        """A diagonal Gaussian shifted by ``shift`` and ``stretch`` times as wide as the posterior."""
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.post_loc(x) + shift, stretch * self.post_sd).to_event(1))

    def poor_guide(self, x):
        """Three posterior standard deviations off, and half as wide."""
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.post_loc(x) + 3 * self.post_sd, 0.5 * self.post_sd).to_event(1))

    def global_model(self, x):
        """Another model of the same data, whose latent w is shared by all datapoints (outside the
        plate), so that log p(x) does not split into one term per datapoint."""
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            loc = w.unsqueeze(-1) * torch.ones(self.d, dtype=F64)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def global_guide(self, x):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    def log_px(self, x):
        return log_px(x, self.w, self.b, self.sigma)

    def sample(self, n, seed=1):
        return sample(n, self.w, self.b, self.sigma, seed)


class LinearNet(torch.nn.Module):
    """A linear encoder and decoder, ``(d, latent)``, as a user's network registered with
    ``pyro.module`` by :meth:`model` and :meth:`guide` (to check that estimators leave its
    parameters and Pyro's param store as they were)."""

    def __init__(self, d, latent):
        super().__init__()
        self.latent = latent
        self.enc = torch.nn.Linear(d, 2 * latent)
        self.dec = torch.nn.Linear(latent, d)

    def model(self, x):
        pyro.module("net", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("net", self)
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class LinearDecoder(torch.nn.Module):
    """The model's decoder z -> W z + b as a float64 ``nn.Linear`` holding ``w`` ``(D, L)`` and
    ``b`` ``(D,)``: a VAE with it and a Gaussian likelihood of scale sigma is the model."""

    def __init__(self, w, b):
        super().__init__()
        self.lin = torch.nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            self.lin.weight.copy_(w)
            self.lin.bias.copy_(b)

    def forward(self, z):
        return self.lin(z)
