"""Numerics of Gaussian mixture components: parameter conversions, the E step and the M step.

Everything is computed in log space with the Cholesky factors of the precision matrices (as
scikit-learn does), vectorized over samples and components. Parameters are held in a
:class:`MixtureParams` whose means are relative to an origin (the data mean) that the caller
chooses; the data passed in are relative to the same origin.

Two computations of the Mahalanobis terms ``(x - mu_k)^T P_k (x - mu_k)`` and of the weighted
scatter matrices exist:

* **centered** -- from the differences ``x - mu_k`` for every sample and component: exact up to
  rounding in the differences, the reference computation
  (:func:`weighted_log_prob_centered`, :func:`scatter_centered`). Cost: a few passes over an
  ``(N, K, d)`` array, done ``chunk_rows(K * d)`` rows at a time.
* **gram** -- from the second moments of the data: the quadratic form is a dot product of the
  features ``[vech(x x^T), x, 1]`` (``[x^2, x, 1]`` for diagonal types, :func:`gram_features`)
  with coefficients built from ``P_k`` and ``mu_k`` (:func:`gram_log_prob_coefficients`), so the
  E step is one matrix product ``(K, F) x (F, N)`` and the M step statistics are one more,
  ``resp^T features`` (:func:`moments_from_gram`). Rounding is larger: about
  :func:`gram_error` nats on the Mahalanobis terms, the cancellation of the expanded form.

A covariance is *collapsed* when it is not positive definite at the precision of the
computation that produced it (:func:`m_step`, :func:`resolution`): a component that shrinks onto
one point gets a variance of pure rounding noise (``1e-28`` instead of ``0``), and must be
refused rather than scored at +60 nats.
"""

import math

import torch

__all__ = [
    "COVARIANCE_TYPES",
    "CHUNK_ELEMENTS",
    "GRAM_BLOCK_ELEMENTS",
    "GRAM_TOLERANCE",
    "MixtureParams",
    "scatter_kind",
    "parameter_shape",
    "chunk_rows",
    "gram_block_rows",
    "effective_counts",
    "covariance_from_scatter",
    "add_to_diagonal",
    "prec_chol_from_cov",
    "prec_chol_from_precisions",
    "cov_from_prec_chol",
    "precisions_from_prec_chol",
    "log_det_prec_chol",
    "resolution",
    "collapsed",
    "collapse_error",
    "m_step",
    "gram_error",
    "weighted_log_prob_centered",
    "normalize_",
    "scatter_centered",
    "n_gram_features",
    "gram_features",
    "gram_log_prob_coefficients",
    "moments_from_gram",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
# largest estimated absolute error (nats) of the Mahalanobis terms for which "auto" uses "gram"
GRAM_TOLERANCE = 1e-10
# number of elements of the largest per-chunk intermediate array of the centered computation
CHUNK_ELEMENTS = 1 << 19
# number of elements of the gram features of one block of rows: a block, its (K, rows)
# responsibilities and the passes over them stay in the CPU cache between the E step product,
# the normalization and the M step product
GRAM_BLOCK_ELEMENTS = 1 << 18
# added (times the machine epsilon) to the component counts: an empty component divides by a
# tiny number instead of zero
_COUNT_FLOOR = 10.0
# a variance at most (_CENTERED_ULPS * eps * scale)^2 is rounding noise of the centered
# computation: the points of the component coincide to within a few hundred units in the last place
_CENTERED_ULPS = 256.0
# a variance at most _GRAM_ULPS * eps * scale^2 is rounding noise of the gram form
_GRAM_ULPS = 16.0


class MixtureParams:
    """Mixture parameters during fitting; ``means`` are relative to the data's origin.

    :param weights: ``(K,)``.
    :param means: ``(K, d)``.
    :param cov: covariances (shapes of :func:`parameter_shape`), or ``None`` when the parameters
        were given as precisions (computed on demand by :attr:`covariances`).
    :param prec_chol: upper-triangular ``U`` with ``U U^T`` the precision: ``(K, d, d)`` for
        full, ``(d, d)`` for tied, ``(K, d)`` for diag, ``(K,)`` for spherical.
    """

    __slots__ = ("weights", "means", "cov", "prec_chol", "_gram_error")

    def __init__(self, weights, means, cov, prec_chol):
        self.weights, self.means, self.cov, self.prec_chol = weights, means, cov, prec_chol
        self._gram_error = None

    def covariances(self, covariance_type):
        """The covariances, computed from ``prec_chol`` when not known."""
        if self.cov is None:
            self.cov = cov_from_prec_chol(self.prec_chol, covariance_type)
        return self.cov

    def tensors(self, covariance_type):
        """``(weights, means, covariances, prec_chol)``, e.g. to broadcast them."""
        return self.weights, self.means, self.covariances(covariance_type), self.prec_chol


def scatter_kind(covariance_type):
    """``"matrix"`` (full scatter matrices) for full and tied, ``"vector"`` (their diagonals) otherwise."""
    return "matrix" if covariance_type in ("full", "tied") else "vector"


def parameter_shape(covariance_type, k, d):
    """Shape of the covariances, precisions and their Cholesky factors."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def chunk_rows(width):
    """Rows per chunk so that a ``(rows, width)`` intermediate holds at most ``CHUNK_ELEMENTS``."""
    return max(1, CHUNK_ELEMENTS // max(1, width))


def gram_block_rows(n_features, k):
    """Rows per block of the gram computation: ``GRAM_BLOCK_ELEMENTS`` over ``max(F, K)``."""
    return max(1, GRAM_BLOCK_ELEMENTS // max(1, n_features, k))


def effective_counts(nk):
    """The responsibilities summed per component plus a tiny floor, ``(K,)``: safe to divide by."""
    return nk + _COUNT_FLOOR * torch.finfo(nk.dtype).eps


# ---------------------------------------------------------------------------------------
# parameter conversions
# ---------------------------------------------------------------------------------------
def covariance_from_scatter(scatter, n_eff, covariance_type, reg_covar):
    """The M step covariances from the per-component scatter, plus ``reg_covar`` on the diagonal.

    :param scatter: ``sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T``, ``(K, d, d)``, or its diagonal ``(K, d)``.
    :param n_eff: :func:`effective_counts`, ``(K,)``.
    :returns: covariances of ``covariance_type`` (shapes of :func:`parameter_shape`).
    """
    if covariance_type == "full":
        cov = scatter / n_eff[:, None, None]
    elif covariance_type == "tied":
        cov = scatter.sum(0) / n_eff.sum()
    elif covariance_type == "diag":
        cov = scatter / n_eff[:, None]
    else:
        cov = (scatter / n_eff[:, None]).mean(1)
    return add_to_diagonal(cov, covariance_type, reg_covar)


def add_to_diagonal(cov, covariance_type, value):
    """``cov`` plus ``value`` on the diagonal (a new tensor unless ``value`` is 0)."""
    if value == 0:
        return cov
    if covariance_type in ("full", "tied"):
        cov = cov.clone()
        cov.diagonal(dim1=-2, dim2=-1).add_(value)
        return cov
    return cov + value


def prec_chol_from_cov(cov, covariance_type):
    """Upper-triangular ``U`` with ``U U^T = cov^{-1}``; ``None`` if ``cov`` is not positive definite."""
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(cov)
        if (info != 0).any() or not torch.isfinite(chol).all():
            return None
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
        return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)
    if not torch.isfinite(cov).all() or (cov <= 0).any():
        return None
    return torch.rsqrt(cov)


def prec_chol_from_precisions(prec, covariance_type):
    """Upper-triangular ``U`` with ``U U^T = prec``; ``None`` if ``prec`` is not positive definite."""
    if covariance_type in ("full", "tied"):
        # the Cholesky factor of the index-reversed matrix, reversed back, is upper triangular
        chol, info = torch.linalg.cholesky_ex(prec.flip(-2, -1))
        if (info != 0).any():
            return None
        return chol.flip(-2, -1)
    if (prec <= 0).any():
        return None
    return prec.sqrt()


def cov_from_prec_chol(prec_chol, covariance_type):
    """The covariances ``(U U^T)^{-1}`` from the precision Cholesky factors."""
    if covariance_type in ("full", "tied"):
        eye = torch.eye(prec_chol.shape[-1], dtype=prec_chol.dtype,
                        device=prec_chol.device).expand_as(prec_chol)
        inv = torch.linalg.solve_triangular(prec_chol, eye, upper=True)  # U^{-1}
        return inv.transpose(-1, -2) @ inv
    return 1.0 / prec_chol ** 2


def precisions_from_prec_chol(prec_chol, covariance_type):
    """The precisions ``U U^T`` from their Cholesky factors."""
    if covariance_type in ("full", "tied"):
        return prec_chol @ prec_chol.transpose(-1, -2)
    return prec_chol ** 2


def log_det_prec_chol(prec_chol, covariance_type, k, d):
    """``log det U`` per component, ``(K,)``: half the log-determinant of the precision."""
    if covariance_type == "full":
        return torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)
    if covariance_type == "tied":
        return torch.log(torch.diagonal(prec_chol)).sum().expand(k)
    if covariance_type == "diag":
        return torch.log(prec_chol).sum(-1)
    return d * torch.log(prec_chol)


def _prec_chol_as(prec_chol, covariance_type, k, d):
    """The factor per component: ``(K, d, d)`` for full and tied, ``(K, d)`` for diag and spherical."""
    if covariance_type == "tied":
        return prec_chol.expand(k, d, d)
    if covariance_type == "spherical":
        return prec_chol[:, None].expand(k, d)
    return prec_chol


# ---------------------------------------------------------------------------------------
# the M step and collapse detection
# ---------------------------------------------------------------------------------------
def resolution(means, origin, mean_square, form="centered"):
    """The smallest variance a computation can tell from zero, per component and feature.

    A variance is computed from differences of numbers of magnitude about ``|mu_kj + origin_j|``
    (the component's location) and ``sqrt(mean_square_j)`` (the data's, which bounds the rounding
    of the centering). Below ``(256 eps scale)^2`` (centered computation) or ``16 eps scale^2``
    (gram form, which cancels squares) it is rounding noise: the points coincide.

    :param means: component means relative to ``origin``, ``(K, d)``.
    :param origin: the data mean the means are relative to, ``(d,)``.
    :param mean_square: mean of the squared raw data per feature, ``(d,)``.
    :param str form: ``"centered"`` or ``"gram"``.
    :returns: ``(K, d)``.
    """
    eps = torch.finfo(means.dtype).eps
    scale2 = (means + origin) ** 2 + mean_square
    if form == "gram":
        return scale2 * (_GRAM_ULPS * eps)
    return scale2 * (_CENTERED_ULPS * eps) ** 2


def collapsed(cov, covariance_type, floor):
    """Which components have a covariance that is not positive definite above ``floor``.

    :param cov: covariances of ``covariance_type``.
    :param floor: :func:`resolution`, ``(K, d)``: the largest variance that counts as zero.
    :returns: ``(prec_chol or None, bad)``: the precision Cholesky factors when every component
        passes, and a boolean ``(K,)`` (``(1,)`` for tied) marking the failing components. For
        full and tied covariances a Cholesky pivot (a conditional variance) at most ``floor`` fails.
    """
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(cov)
        pivots = torch.diagonal(chol, dim1=-2, dim2=-1) ** 2
        limit = floor.amax(0) if covariance_type == "tied" else floor
        bad = (info != 0) | ~torch.isfinite(chol).all(-1).all(-1) | (pivots <= limit).any(-1)
        bad = bad.reshape(-1)
        if bad.any():
            return None, bad
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
        return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2), bad
    limit = floor.mean(1) if covariance_type == "spherical" else floor
    bad = ~torch.isfinite(cov) | (cov <= limit)
    if covariance_type == "diag":
        bad = bad.any(-1)
    if bad.any():
        return None, bad
    return torch.rsqrt(cov), bad


def collapse_error(reg_covar):
    """The :class:`ValueError` of a collapsed component, saying what to do."""
    return ValueError(
        "a component covariance is not positive definite: a component collapsed onto too few "
        f"distinct points (reg_covar={reg_covar}); increase reg_covar, reduce n_components, or "
        "rescale the data (e.g. standardize the features)"
    )


def m_step(nk, sums, scatter, covariance_type, reg_covar, floor):
    """New parameters from the statistics of the responsibilities.

    :param nk: responsibilities summed per component, ``(K,)``.
    :param sums: ``sum_n r_nk x_n``, ``(K, d)``.
    :param scatter: ``sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T`` about the new means ``mu_k =
        sums / n_eff``: ``(K, d, d)`` for full and tied, its diagonal ``(K, d)`` otherwise.
    :param float reg_covar: added to the covariance diagonals.
    :param floor: a function of the new means ``(K, d)`` giving :func:`resolution`.
    :returns: :class:`MixtureParams`, or ``None`` if a covariance collapsed.
    """
    n_eff = effective_counts(nk)
    means = sums / n_eff[:, None]
    cov = covariance_from_scatter(scatter, n_eff, covariance_type, reg_covar)
    prec_chol, _ = collapsed(cov, covariance_type, floor(means))
    if prec_chol is None:
        return None
    return MixtureParams(n_eff / n_eff.sum(), means, cov, prec_chol)


def gram_error(params, covariance_type):
    """Estimated absolute error (nats) of the gram-form Mahalanobis terms, largest over components.

    ``eps * tr(P_k) * (|mu_k|^2 + tr(Sigma_k))`` with ``mu_k`` relative to the data mean (the
    origin of the gram features). Cached on ``params``.
    """
    if params._gram_error is not None:
        return params._gram_error
    means, pc = params.means, params.prec_chol
    k, d = means.shape
    if covariance_type in ("full", "tied"):
        tr_p = (pc ** 2).sum((-2, -1))
        tr_s = torch.diagonal(params.covariances(covariance_type), dim1=-2, dim2=-1).sum(-1)
    elif covariance_type == "diag":
        tr_p = (pc ** 2).sum(-1)
        tr_s = (pc ** -2).sum(-1)
    else:
        tr_p = d * pc ** 2
        tr_s = d * pc ** -2
    bound = (torch.finfo(means.dtype).eps * tr_p * ((means ** 2).sum(-1) + tr_s)).expand(k)
    params._gram_error = float(bound.max()) if torch.isfinite(bound).all() else math.inf
    return params._gram_error


# ---------------------------------------------------------------------------------------
# centered computation (reference numerics)
# ---------------------------------------------------------------------------------------
def _log_prob_constant(params, covariance_type, k, d):
    """``log pi_k + log det U_k - d/2 log(2 pi)``, ``(K,)``."""
    return (torch.log(params.weights) + log_det_prec_chol(params.prec_chol, covariance_type, k, d)
            - 0.5 * d * math.log(2 * math.pi))


def weighted_log_prob_centered(X, params, covariance_type, rows=None):
    """``log pi_k + log N(x_n | mu_k, Sigma_k)`` from the differences ``x_n - mu_k``.

    :param X: data relative to the origin of ``params``, ``(N, d)``.
    :param int rows: rows per block of ``(rows, K, d)`` intermediates (default
        :func:`chunk_rows` of ``K d``).
    :returns: ``(N, K)``.
    """
    n, d = X.shape
    k = params.means.shape[0]
    rows = rows or chunk_rows(k * d)
    pc = _prec_chol_as(params.prec_chol, covariance_type, k, d)
    const = _log_prob_constant(params, covariance_type, k, d)
    out = torch.empty(n, k, dtype=X.dtype, device=X.device)
    if covariance_type in ("full", "tied"):
        # (x - mu_k) U_k for all k at once: x [U_1 ... U_K] - [mu_1 U_1 ... mu_K U_K]
        w = pc.permute(1, 0, 2).reshape(d, k * d)
        b = torch.einsum("ki,kij->kj", params.means, pc).reshape(k * d)
        for s in range(0, n, rows):
            y = torch.addmm(b, X[s:s + rows], w, alpha=1.0, beta=-1.0)
            out[s:s + rows] = y.view(-1, k, d).square_().sum(-1)
    else:
        for s in range(0, n, rows):
            y = (X[s:s + rows, None, :] - params.means) * pc
            out[s:s + rows] = y.square_().sum(-1)
    return out.mul_(-0.5).add_(const)


def normalize_(wlp, out, dim=1):
    """Log-sum-exp over components and the normalized exponentials (the E step).

    ``wlp`` (finite maxima along ``dim``) is overwritten; ``out`` (may be ``wlp``) receives
    ``exp(wlp - logsumexp(wlp))``. Ratios ``exp(wlp - max)`` below ``sqrt(tiny)`` (about 1e-154
    in float64) are set to exactly zero: a change far below rounding that keeps subnormal
    numbers, which make the exponential and the M step products very slow on CPUs, out of the
    computation (and lets a component that collapses onto a few points reach a zero covariance).

    :param wlp: log-probabilities, components along ``dim``: ``(c, K)`` (``dim=1``) or ``(K, c)``
        (``dim=0``).
    :param int dim: the dimension of the components.
    :returns: ``logsumexp(wlp, dim)``, shape ``(c,)``.
    """
    floor = math.sqrt(torch.finfo(wlp.dtype).tiny)
    top = wlp.amax(dim=dim, keepdim=True)
    # exp(log(floor) - 1) is below the floor, so the clamp changes no result; it keeps the
    # exponential off arguments whose results are subnormal or zero, which take a slow path
    torch.exp(wlp.sub_(top).clamp_(min=math.log(floor) - 1.0), out=out)
    torch.nn.functional.threshold_(out, floor, 0.0)   # also every subnormal exp(...) -> 0
    total = out.sum(dim=dim, keepdim=True)            # >= 1: the maximum contributes exp(0)
    out.mul_(total.reciprocal())
    return (top + total.log_()).squeeze(dim)


def scatter_centered(X, resp, means, kind, rows=None):
    """``sum_n r_nk (x_n - m_k)(x_n - m_k)^T``: ``(K, d, d)`` (kind "matrix") or its diagonal ``(K, d)``.

    :param X: ``(N, d)``.
    :param resp: ``(N, K)``.
    :param means: the centers ``m_k``, ``(K, d)``.
    :param int rows: rows per block of ``(K, rows, d)`` intermediates.
    """
    n, d = X.shape
    k = means.shape[0]
    rows = rows or chunk_rows(k * d)
    if kind == "matrix":
        out = torch.zeros(k, d, d, dtype=X.dtype, device=X.device)
        for s in range(0, n, rows):
            diff = X[None, s:s + rows] - means[:, None]           # (K, c, d)
            weighted = diff * resp[s:s + rows].T[:, :, None]
            out.baddbmm_(weighted.transpose(1, 2), diff)
        return out
    out = torch.zeros(k, d, dtype=X.dtype, device=X.device)
    for s in range(0, n, rows):
        diff = X[None, s:s + rows] - means[:, None]
        out.add_(torch.einsum("kc,kcd->kd", resp[s:s + rows].T, diff.square_()))
    return out


# ---------------------------------------------------------------------------------------
# gram computation (second moments of the data)
# ---------------------------------------------------------------------------------------
def n_gram_features(kind, d):
    """``F``: ``d (d + 1) / 2 + d + 1`` (kind "matrix") or ``2 d + 1``."""
    return (d * (d + 1) // 2 if kind == "matrix" else d) + d + 1


def gram_features(X, kind, out):
    """Write ``[vech(x x^T), x, 1]`` (kind "matrix") or ``[x^2, x, 1]`` per row of ``X`` into ``out``.

    :param X: ``(N, d)``.
    :param out: ``(N, F)`` (any strides).
    :returns: ``out``.
    """
    n, d = X.shape
    col = 0
    if kind == "matrix":
        for i in range(d):
            torch.mul(X[:, i:i + 1], X[:, i:], out=out[:, col:col + d - i])
            col += d - i
    else:
        torch.mul(X, X, out=out[:, :d])
        col = d
    out[:, col:col + d] = X
    out[:, col + d] = 1.0
    return out


def _gram_coefficients(params, covariance_type, k, d):
    """``Q`` of shape ``(F, K)`` with ``features(x) @ Q = (x - mu_k)^T P_k (x - mu_k)``."""
    pc = _prec_chol_as(params.prec_chol, covariance_type, k, d)
    means = params.means
    if covariance_type in ("full", "tied"):
        prec = pc @ pc.transpose(-1, -2)
        iu = torch.triu_indices(d, d, device=means.device)
        quad = prec[:, iu[0], iu[1]] * torch.where(iu[0] == iu[1], 1.0, 2.0).to(means.dtype)
        lin = torch.einsum("kij,kj->ki", prec, means)
        mu_u = torch.einsum("ki,kij->kj", means, pc)
        const = (mu_u ** 2).sum(-1, keepdim=True)
    else:
        prec = pc ** 2
        quad = prec
        lin = prec * means
        const = (lin * means).sum(-1, keepdim=True)
    return torch.cat([quad, -2.0 * lin, const], dim=1).T.contiguous()


def gram_log_prob_coefficients(params, covariance_type):
    """``q`` of shape ``(F, K)`` with ``features(x) @ q = log pi_k + log N(x | mu_k, Sigma_k)``."""
    k, d = params.means.shape
    q = -0.5 * _gram_coefficients(params, covariance_type, k, d)
    q[-1] += _log_prob_constant(params, covariance_type, k, d)   # the last feature is 1
    return q


def moments_from_gram(stats, kind, d):
    """Counts, sums and scatter about the weighted means from ``resp^T features``.

    :param stats: ``sum_n r_nk features(x_n)``, ``(K, F)``.
    :returns: ``(nk (K,), sums (K, d), scatter)`` with the scatter about ``sums / n_eff``:
        ``(K, d, d)`` (kind "matrix") or its diagonal ``(K, d)``.
    """
    nk = stats[:, -1]
    sums = stats[:, -d - 1:-1]
    second = stats[:, :-d - 1]
    n_eff = effective_counts(nk)
    if kind == "matrix":
        k = stats.shape[0]
        iu = torch.triu_indices(d, d, device=stats.device)
        full = torch.zeros(k, d, d, dtype=stats.dtype, device=stats.device)
        full[:, iu[0], iu[1]] = second
        full = full + full.triu(1).transpose(-1, -2)
        scatter = full - sums[:, :, None] * sums[:, None, :] / n_eff[:, None, None]
    else:
        scatter = second - sums ** 2 / n_eff[:, None]
    return nk, sums, scatter
