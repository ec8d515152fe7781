"""Data and reference computations shared by the tests of pyro_vae.mixture.

Samples of known Gaussian mixtures, random valid parameters, and naive per-component
torch.distributions computations to compare the vectorized numerics with.
"""

import warnings

import torch

from pyro_vae.mixture import ConvergenceWarning

F64 = torch.float64

TRUE_MEANS = torch.tensor([[-4.0, 0.0], [3.0, 3.0], [3.0, -3.0]], dtype=F64)
TRUE_COVS = torch.tensor([[[1.0, 0.6], [0.6, 0.8]],
                          [[0.5, 0.0], [0.0, 0.3]],
                          [[1.2, -0.4], [-0.4, 0.4]]], dtype=F64)
TRUE_WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=F64)


def mixture_data(n, seed=0, means=TRUE_MEANS, covs=TRUE_COVS, weights=TRUE_WEIGHTS):
    """Samples of a known Gaussian mixture, shape (n, d), and their components."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    noise = torch.randn(n, means.shape[1], generator=g, dtype=F64)
    chol = torch.linalg.cholesky(covs)
    x = means[labels] + torch.einsum("nij,nj->ni", chol[labels], noise)
    return x, labels


def overlapping_data(n=400, d=3, seed=1):
    """Three overlapping clusters: EM needs many iterations, so its path is a real test."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, d, generator=g, dtype=F64) * 1.5
    scales = torch.rand(3, d, generator=g, dtype=F64) + 0.5
    labels = torch.arange(n) % 3
    return centers[labels] + torch.randn(n, d, generator=g, dtype=F64) * scales[labels]


def random_parameters(x, k, covariance_type, seed):
    """Weights on the simplex, k data points as means, random positive-definite precisions."""
    g = torch.Generator().manual_seed(seed)
    n, d = x.shape
    weights = torch.rand(k, generator=g, dtype=F64) + 0.5
    weights = weights / weights.sum()
    means = x[torch.randperm(n, generator=g)[:k]].clone()
    a = torch.randn(k, d, d, generator=g, dtype=F64) * 0.3
    prec_full = a @ a.transpose(-1, -2) + torch.eye(d, dtype=F64)
    prec = {"full": prec_full, "tied": prec_full[0],
            "diag": torch.rand(k, d, generator=g, dtype=F64) + 0.5,
            "spherical": torch.rand(k, generator=g, dtype=F64) + 0.5}[covariance_type]
    return weights, means, prec


def full_covariances(gm):
    """Covariance matrices (K, d, d) of any covariance type (as a tensor)."""
    means, cov = torch.as_tensor(gm.means_), torch.as_tensor(gm.covariances_)
    k, d = means.shape
    if gm.covariance_type == "full":
        return cov
    if gm.covariance_type == "tied":
        return cov.expand(k, d, d)
    if gm.covariance_type == "diag":
        return torch.diag_embed(cov)
    return cov[:, None, None] * torch.eye(d, dtype=cov.dtype)


def naive_weighted_log_prob(x, weights, means, covs):
    """log w_k + log N(x | mu_k, Sigma_k), one torch.distributions object per component."""
    cols = [torch.log(weights[k]) + torch.distributions.MultivariateNormal(means[k], covs[k]).log_prob(x)
            for k in range(len(weights))]
    return torch.stack(cols, dim=1)


def precisions_to_covariances(prec, covariance_type, k, d):
    """Covariance matrices (K, d, d) from precisions of any covariance type."""
    if covariance_type == "full":
        return torch.linalg.inv(prec)
    if covariance_type == "tied":
        return torch.linalg.inv(prec).expand(k, d, d)
    if covariance_type == "diag":
        return torch.diag_embed(1.0 / prec)
    return (1.0 / prec)[:, None, None] * torch.eye(d, dtype=F64)


def fit_quietly(gm, x):
    """Fit without the "did not converge" warning (ours or scikit-learn's) of tol=0 runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*did not converge")
        return gm.fit(x)


class LazyChunks:
    """Chunks made on the fly, never all in memory: an iterable that restarts on every pass."""

    def __init__(self, x, rows):
        self.x, self.rows, self.passes = x, rows, 0

    def __iter__(self):
        self.passes += 1
        for s in range(0, self.x.shape[0], self.rows):
            yield self.x[s:s + self.rows].numpy().copy()
