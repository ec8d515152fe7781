"""Synthetic Gaussian-mixture data whose generating density is known exactly.

:func:`make_gaussian_mixture` draws a random, well separated mixture and samples from it;
:class:`MixtureData` holds the samples with the exact parameters, and
:meth:`MixtureData.log_prob` evaluates the generating density (the oracle of
:func:`pyro_vae.compare_vae_em`).
"""

import dataclasses

import numpy as np
import torch

from pyro_vae.checks import check_float, check_positive_int, check_seed
from pyro_vae.data.splits import train_test_split

__all__ = ["MixtureData", "make_gaussian_mixture", "COVARIANCES"]

#: covariance structures :func:`make_gaussian_mixture` draws
COVARIANCES = ("random", "full", "diag", "spherical", "identity")


@dataclasses.dataclass(frozen=True)
class MixtureData:
    """Samples of a Gaussian mixture with its exact parameters.

    The parameters are float64; ``x`` has the dtype asked of :func:`make_gaussian_mixture`
    (float32 by default). Everything is on the CPU.

    :ivar torch.Tensor x: samples ``(N, d)``.
    :ivar torch.Tensor labels: component of each sample ``(N,)``, long.
    :ivar torch.Tensor weights: mixing weights ``(K,)``, float64, summing to 1.
    :ivar torch.Tensor means: component means ``(K, d)``, float64.
    :ivar torch.Tensor covariances: component covariances ``(K, d, d)``, float64.
    :ivar int seed: the seed the data were made with.
    """

    x: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    seed: int = 0

    @property
    def n_components(self):
        return self.weights.shape[0]

    @property
    def dim(self):
        return self.means.shape[1]

    def __len__(self):
        return self.x.shape[0]

    def distribution(self, device=None):
        """The generating mixture as a ``torch.distributions.MixtureSameFamily`` (float64)."""
        w, m, c = (t.to(device) if device is not None else t
                   for t in (self.weights, self.means, self.covariances))
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(probs=w),
            torch.distributions.MultivariateNormal(m, covariance_matrix=c))

    def log_prob(self, x):
        """Exact log density of the generating mixture at each row.

        :param torch.Tensor x: points ``(M, d)`` (tensor or array, any device).
        :returns: float64 tensor ``(M,)`` on ``x``'s device.
        """
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"log_prob: expected a tensor (M, {self.dim}), got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"log_prob: expected points of shape (M, {self.dim}), got {tuple(x.shape)}")
        return self.distribution(x.device).log_prob(x.to(torch.float64))

    def sample(self, n_samples, seed):
        """Fresh samples from the same mixture.

        :param int n_samples: number of points.
        :param int seed: seed of the draw.
        :returns: ``(x, labels)``: ``(n_samples, d)`` in ``self.x``'s dtype and ``(n_samples,)``.
        """
        n_samples = check_positive_int(n_samples, "n_samples")
        seed = check_seed(seed, allow_none=False)
        gen = torch.Generator().manual_seed(seed)
        x, labels = _draw(self.weights, self.means, self.covariances, n_samples, gen)
        return x.to(self.x.dtype), labels

    def split(self, test_fraction=0.1, seed=0):
        """Holdout split of ``x`` and ``labels`` (see :func:`pyro_vae.data.train_test_split`).

        :returns: ``(train_x, test_x, train_labels, test_labels)``.
        """
        return train_test_split(self.x, test_fraction=test_fraction, seed=seed, labels=self.labels)


def make_gaussian_mixture(n_samples=2000, n_components=3, dim=2, separation=4.0, seed=0,
                          covariance="random", weights="uniform", dtype=torch.float32):
    """Draw data from a random Gaussian mixture with well separated components.

    The result is a function of the arguments: the randomness comes from one
    ``torch.Generator`` seeded with ``seed`` (Dirichlet weights from numpy's generator, seeded
    by a draw from it).

    * **Covariances** have standard deviations between 0.5 and 1 along every principal axis:
      ``"random"`` (alias ``"full"``): ``Q diag(v) Qᵀ`` with a random rotation ``Q`` and
      variances ``v ~ Uniform(0.25, 1)``; ``"diag"``: ``diag(v)``; ``"spherical"``: ``v I`` with
      one ``v ~ Uniform(0.25, 1)`` per component; ``"identity"``: ``I``.
    * **Means** are placed one at a time, uniformly in a centred cube, rejecting a candidate
      closer than ``separation`` to an earlier mean (the cube grows when candidates keep being
      rejected). So every pair of means is at least ``separation`` apart: at least
      ``separation`` standard deviations of any component in any direction, and roughly that
      far for the closest pairs.
    * **Weights**: ``"uniform"`` (``1/K`` each), ``"dirichlet"`` (a draw from Dirichlet(5, ..., 5)
      by :meth:`numpy.random.Generator.dirichlet`, moderately unequal), or a sequence of ``K``
      non-negative numbers (normalised to sum to 1).
    * **Labels** are drawn from the weights, then ``x = mean[label] + L[label] @ eps`` with
      ``L`` the Cholesky factor of the covariance and ``eps ~ N(0, I)``.

    :param int n_samples: number of points N.
    :param int n_components: number of components K.
    :param int dim: dimension d.
    :param float separation: minimum distance between means, in units of the largest
        standard deviation (which is at most 1).
    :param int seed: seed (a non-negative integer).
    :param str covariance: ``"random"``, ``"full"``, ``"diag"``, ``"spherical"`` or ``"identity"``.
    :param weights: ``"uniform"``, ``"dirichlet"`` or ``K`` numbers.
    :param torch.dtype dtype: dtype of ``x`` (parameters are always float64).
    :returns: a :class:`MixtureData`.
    :raises TypeError: a count or seed that is not an integer, a separation that is not a number.
    :raises ValueError: a count below 1, a negative separation, an unknown covariance or weights.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    K = check_positive_int(n_components, "n_components")
    d = check_positive_int(dim, "dim")
    seed = check_seed(seed, allow_none=False)
    separation = check_float(separation, "separation")
    if separation < 0:
        raise ValueError(f"make_gaussian_mixture: separation must be a number >= 0, got {separation!r}")
    if not isinstance(covariance, str) or covariance not in COVARIANCES:
        raise ValueError(f"make_gaussian_mixture: covariance must be one of {', '.join(COVARIANCES)}, "
                         f"got {covariance!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"make_gaussian_mixture: dtype must be a floating torch dtype, got {dtype!r}")
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    # covariances
    if covariance == "identity":
        covs = torch.eye(d, dtype=f64).expand(K, d, d).clone()
    elif covariance == "spherical":
        v = 0.25 + 0.75 * torch.rand(K, generator=gen, dtype=f64)
        covs = v[:, None, None] * torch.eye(d, dtype=f64)
    else:
        v = 0.25 + 0.75 * torch.rand(K, d, generator=gen, dtype=f64)
        if covariance == "diag":
            covs = torch.diag_embed(v)
        else:
            q = _random_rotation(K, d, gen)
            covs = q @ torch.diag_embed(v) @ q.transpose(-1, -2)
            covs = 0.5 * (covs + covs.transpose(-1, -2))

    means = _place_means(K, d, separation, gen)

    # weights
    if isinstance(weights, str):
        if weights == "uniform":
            w = torch.full((K,), 1.0 / K, dtype=f64)
        elif weights == "dirichlet":
            # numpy's seeded Dirichlet sampler, seeded by the next draw of the one generator
            sub_seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
            w = torch.from_numpy(np.random.default_rng(sub_seed).dirichlet(np.full(K, 5.0)))
        else:
            raise ValueError(f"make_gaussian_mixture: weights must be 'uniform', 'dirichlet' or "
                             f"{K} numbers, got {weights!r}")
    else:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.shape != (K,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"make_gaussian_mixture: weights must be {K} non-negative numbers "
                             f"with a positive sum, got {weights!r}")
        w = w / w.sum()

    x, labels = _draw(w, means, covs, n_samples, gen)
    return MixtureData(x.to(dtype), labels, w, means, covs, seed)


def _random_rotation(K, d, gen):
    """K random orthogonal matrices (d, d), Haar-distributed (QR with a sign fix)."""
    a = torch.randn(K, d, d, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs[:, None, :]


def _place_means(K, d, separation, gen):
    """K means, pairwise at least ``separation`` apart, centred at the origin."""
    means = torch.zeros(K, d, dtype=torch.float64)
    # start with a cube just big enough to hold K points of that spacing in d dimensions
    side = max(separation, 1e-12) * max(1.0, K ** (1.0 / d))
    for k in range(K):
        tries = 0
        while True:
            cand = (torch.rand(d, generator=gen, dtype=torch.float64) - 0.5) * side
            if k == 0 or torch.linalg.vector_norm(means[:k] - cand, dim=1).min() >= separation:
                means[k] = cand
                break
            tries += 1
            if tries % 100 == 0:
                side *= 1.1
    return means - means.mean(dim=0)


def _draw(weights, means, covs, n, gen):
    labels = torch.multinomial(weights, n, replacement=True, generator=gen)
    chol = torch.linalg.cholesky(covs)
    eps = torch.randn(n, means.shape[1], generator=gen, dtype=torch.float64)
    x = means[labels] + torch.einsum("nij,nj->ni", chol[labels], eps)
    return x, labels
