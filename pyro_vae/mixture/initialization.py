"""Initial parameters of the Gaussian mixture: k-means++, Lloyd's k-means, random responsibilities.

Initial parameters the user gave are checked by :func:`given_parameters`. An initialization is
a set of responsibilities (hard assignments, or random ones); the initial
parameters are the M step of those responsibilities, and any of the weights, means or precisions
the user gave replace theirs. Under :mod:`torch.distributed` rank 0 computes them on its rows
and sends them to the other processes (:func:`initial_parameters`).
"""

import math

import torch

from pyro_vae import distributed
from pyro_vae.mixture.gaussian import (
    MixtureParams,
    add_to_diagonal,
    collapse_error,
    collapsed,
    covariance_from_scatter,
    effective_counts,
    parameter_shape,
    prec_chol_from_precisions,
    scatter_centered,
    scatter_kind,
)
from pyro_vae.mixture.sources import as_tensor

__all__ = [
    "INIT_METHODS",
    "INIT_ALIASES",
    "initial_responsibilities",
    "kmeans_plusplus",
    "lloyd",
    "given_parameters",
    "initial_parameters",
]

INIT_METHODS = ("kmeans", "kmeans++", "random", "random_from_data")
# scikit-learn's spelling of the same methods
INIT_ALIASES = {"k-means++": "kmeans++", "k-means": "kmeans"}


def initial_responsibilities(X, k, method, generator):
    """Responsibilities that start EM: hard assignments, or random ones for ``"random"``.

    :param X: ``(N, d)``.
    :param int k: number of components.
    :param str method: one of ``INIT_METHODS``: ``"kmeans"`` (k-means++ seeds refined by Lloyd
        iterations), ``"kmeans++"`` (k-means++ seeds, each sample assigned to the nearest),
        ``"random"`` (uniform random responsibilities, normalized) or ``"random_from_data"``
        (``k`` distinct samples as centers, each sample assigned to the nearest).
    :param torch.Generator generator: CPU generator of the random draws.
    :returns: ``(N, K)``.
    """
    n = X.shape[0]
    if method == "random":
        r = torch.rand(n, k, generator=generator, dtype=torch.float64).to(X.device, X.dtype)
        return r / r.sum(1, keepdim=True)
    if method == "random_from_data":
        centers = X[torch.randperm(n, generator=generator)[:k].to(X.device)]
    else:
        centers = kmeans_plusplus(X, k, generator)
        if method == "kmeans":
            centers = lloyd(X, centers)
    labels = _sq_distances(X, centers).argmin(1)
    return torch.nn.functional.one_hot(labels, k).to(X.dtype)


def _sq_distances(X, centers):
    d2 = (X ** 2).sum(1, keepdim=True) - 2.0 * X @ centers.T + (centers ** 2).sum(1)
    return d2.clamp_min_(0.0)


def kmeans_plusplus(X, k, generator):
    """k-means++ seeding (greedy: the best of ``2 + log k`` candidates per center).

    :returns: ``k`` rows of ``X``, ``(K, d)``.
    """
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [X[first]]
    closest = _sq_distances(X, X[first:first + 1])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        u = torch.rand(trials, generator=generator, dtype=torch.float64).to(X.device, X.dtype)
        if float(total) > 0:
            cand = torch.searchsorted(torch.cumsum(closest, 0), u * total).clamp_max_(n - 1)
        else:  # every sample coincides with a center already
            cand = (u * n).long().clamp_max_(n - 1)
        d2 = torch.minimum(closest[None, :], _sq_distances(X, X[cand]).T)   # (trials, N)
        best = int(d2.sum(1).argmin())
        centers.append(X[cand[best]])
        closest = d2[best]
    return torch.stack(centers)


def lloyd(X, centers, max_iter=100):
    """Lloyd's k-means iterations from ``centers`` until the assignments stop changing.

    :returns: the final centers, ``(K, d)``.
    """
    k = centers.shape[0]
    labels = None
    for _ in range(max_iter):
        new = _sq_distances(X, centers).argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=k).to(X.dtype)
        sums = torch.zeros_like(centers).index_add_(0, labels, X)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
    return centers


def _from_responsibilities(X, resp, covariance_type, reg_covar, floor, given):
    """The M step of ``resp``; given parameters replace the computed ones."""
    nk = resp.sum(0)
    n_eff = effective_counts(nk)
    means = (resp.T @ X) / n_eff[:, None]
    if given["prec_chol"] is not None:
        prec_chol, cov = given["prec_chol"], None
    else:
        scatter = scatter_centered(X, resp, means, scatter_kind(covariance_type))
        cov = covariance_from_scatter(scatter, n_eff, covariance_type, reg_covar)
        cov, prec_chol = _replace_collapsed(cov, covariance_type, X, reg_covar, floor(means))
    weights = given["weights"] if given["weights"] is not None else n_eff / n_eff.sum()
    return MixtureParams(weights, means if given["means"] is None else given["means"], cov, prec_chol)


def _replace_collapsed(cov, covariance_type, X, reg_covar, floor):
    """Initial covariances that collapsed are replaced by that of all the rows."""
    prec_chol, bad = collapsed(cov, covariance_type, floor)
    if prec_chol is not None:
        return cov, prec_chol
    n = X.shape[0]
    if covariance_type in ("full", "tied"):
        total = add_to_diagonal((X.T @ X) / n, "full", reg_covar)
        cov = total if covariance_type == "tied" else torch.where(bad[:, None, None], total, cov)
    else:
        var = (X ** 2).mean(0) + reg_covar
        if covariance_type == "spherical":
            var = var.mean()
        cov = torch.where(bad[:, None] if covariance_type == "diag" else bad, var, cov)
    prec_chol, _ = collapsed(cov, covariance_type, floor)
    if prec_chol is None:
        raise collapse_error(reg_covar)
    return cov, prec_chol


def given_parameters(weights_init, means_init, precisions_init, n_components, covariance_type,
                     source):
    """The initial parameters a user gave, checked against the data.

    :param source: the data (:class:`~pyro_vae.mixture.sources.ChunkSource`, after its first
        pass): number of features, mean, dtype and device.
    :returns: dict ``"weights"`` ``(K,)``, ``"means"`` (relative to the data mean) ``(K, d)``,
        ``"prec_chol"`` (precision Cholesky factors), each ``None`` when not given.
    :raises ValueError: a shape, value or property (sum to 1, symmetric, positive definite) is wrong.
    """
    k, ct, d = n_components, covariance_type, source.d
    dtype, device = source.dtype, source.device
    out = {"weights": None, "means": None, "prec_chol": None}
    if weights_init is not None:
        w = as_tensor(weights_init, dtype, device, "weights_init")
        if w.shape != (k,):
            raise ValueError(f"weights_init must have shape ({k},), got {tuple(w.shape)}")
        if not torch.isfinite(w).all() or (w < 0).any() or (w > 1).any():
            raise ValueError("weights_init must contain finite values in [0, 1]")
        if abs(float(w.sum()) - 1.0) > (1e-6 if dtype == torch.float32 else 1e-8):
            raise ValueError(f"weights_init must sum to 1, got {float(w.sum()):.10g}")
        out["weights"] = w
    if means_init is not None:
        m = as_tensor(means_init, dtype, device, "means_init")
        if m.shape != (k, d):
            raise ValueError(f"means_init must have shape ({k}, {d}), got {tuple(m.shape)}")
        if not torch.isfinite(m).all():
            raise ValueError("means_init contains NaN or infinite values")
        out["means"] = m - source.origin
    if precisions_init is not None:
        p = as_tensor(precisions_init, dtype, device, "precisions_init")
        shape = parameter_shape(ct, k, d)
        if p.shape != shape:
            raise ValueError(f"precisions_init for covariance_type={ct!r} must have shape "
                             f"{shape}, got {tuple(p.shape)}")
        if not torch.isfinite(p).all():
            raise ValueError("precisions_init contains NaN or infinite values")
        if ct in ("full", "tied") and not torch.allclose(p, p.transpose(-1, -2), rtol=0,
                                                          atol=1e-8 * float(p.abs().max())):
            raise ValueError("precisions_init must be symmetric")
        out["prec_chol"] = prec_chol_from_precisions(p, ct)
        if out["prec_chol"] is None:
            raise ValueError("precisions_init must be positive definite")
    return out


def initial_parameters(source, n_components, covariance_type, method, generator, given, reg_covar,
                       floor):
    """Initial :class:`~pyro_vae.mixture.gaussian.MixtureParams`, the same on every process.

    :param source: the data (:class:`~pyro_vae.mixture.sources.ChunkSource`); rank 0 initializes
        on its :meth:`init_rows`.
    :param str method: one of ``INIT_METHODS``.
    :param torch.Generator generator: CPU generator of the random draws.
    :param dict given: ``"weights"``, ``"means"`` (relative to the data mean), ``"prec_chol"``:
        given parameters or ``None``; when all three are given no data are read.
    :param float reg_covar: added to the covariance diagonals.
    :param floor: a function of the means ``(K, d)`` giving the variance below which a
        component collapsed (:func:`~pyro_vae.mixture.gaussian.resolution`).
    :raises ValueError: rank 0 has fewer rows than components, or an initial covariance collapsed.
    """
    if all(v is not None for v in given.values()):
        return MixtureParams(given["weights"], given["means"], None, given["prec_chol"])
    k, d = n_components, source.d
    params, error = None, None
    if distributed.is_main_process():
        try:
            X = source.init_rows()
            if X.shape[0] < k:
                raise ValueError(
                    f"rank 0 holds {X.shape[0]} samples, fewer than n_components={k}, to "
                    "initialize from; give it more data, or pass weights_init, means_init and "
                    "precisions_init")
            resp = initial_responsibilities(X, k, method, generator)
            params = _from_responsibilities(X, resp, covariance_type, reg_covar, floor, given)
        except ValueError as e:
            error = e
    if not (distributed.is_initialized() and distributed.get_world_size() > 1):
        if error is not None:
            raise error
        return params
    ok = distributed.broadcast(torch.tensor([0.0 if error else 1.0], dtype=source.dtype, device=source.device),
                         "broadcast of the initialization status")
    if error is not None:
        raise error
    if float(ok[0]) != 1.0:
        raise ValueError("the initialization of the mixture failed on rank 0; its error says why")
    shape = parameter_shape(covariance_type, k, d)
    if params is None:
        params = MixtureParams(*(torch.empty(sh, dtype=source.dtype, device=source.device)
                                 for sh in ((k,), (k, d), shape, shape)))
    for t in params.tensors(covariance_type):
        distributed.broadcast(t, "broadcast of the initial mixture parameters")
    return params
