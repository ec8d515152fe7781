"""The linear-Gaussian latent-variable model, whose log p(x) and posterior are exact.

p(z) = N(0, I_L), p(x|z) = N(W z + b, s^2 I_D). Then p(x) = N(b, W W^T + s^2 I) and
p(z|x) = N(S W^T (x - b) / s^2, S) with S = (I + W^T W / s^2)^-1. The tests of the VAE, of
importance sampling and of the inference gaps all measure against these formulas.
"""

import torch

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
