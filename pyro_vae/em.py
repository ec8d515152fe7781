"""A Gaussian mixture fitted by exact expectation-maximization (EM), on torch.

The model is ``p(x) = sum_k pi_k N(x | mu_k, Sigma_k)`` with a latent assignment ``z`` in
``{0, ..., K-1}``. For this model the posterior ``p(z|x)`` is available in closed form, so EM is
variational inference with an exact E step (Bishop, PRML section 9.2):

* **E step** -- set ``q(z|x) = p(z|x)``, the *responsibilities* ``r_nk``. After it, the evidence
  lower bound ``ELBO(q) = E_q[log p(x, z) - log q(z|x)]`` equals ``log p(x)`` (see
  :meth:`GaussianMixture.elbo`).
* **M step** -- maximize the ELBO over ``pi, mu, Sigma`` with ``q`` fixed; the maximizer is closed
  form (weighted counts, means and covariances). The log-likelihood therefore never decreases.

The fitted mixture is also a Pyro model/guide pair (:meth:`GaussianMixture.model` and
:meth:`GaussianMixture.guide`, site names ``"z"`` and ``"x"`` in the plate ``"data"``): with the
exact posterior as guide, the importance weight ``p(x, z) / q(z|x)`` equals ``p(x)`` for every
``z``, so an importance-sampling estimate of ``log p(x)`` is exact with zero variance.

Numerics. Everything is computed in log space with the Cholesky factors of the precision
matrices (as scikit-learn does), in float64 by default, vectorized over samples and components.
Two ways of evaluating the Mahalanobis terms ``(x - mu_k)^T P_k (x - mu_k)`` and the weighted
scatter matrices are implemented (``algorithm``):

* ``"centered"`` -- from the differences ``x - mu_k`` for every sample and component: exact up
  to rounding in the differences, the reference computation (scikit-learn's for full
  covariances). Cost: a few passes over an ``(N, K, d)`` array per iteration.
* ``"gram"`` -- from the second moments of the centered data: the quadratic form is a dot
  product of the features ``[vech(x x^T), x, 1]`` (``[x^2, x, 1]`` for diagonal types) with
  coefficients built from ``P_k`` and ``mu_k``, so the E step is one matrix product ``(N, F) x
  (F, K)`` and the M step statistics are ``resp^T Phi``, one more. The features depend only on
  the data and are computed once per fit (kept in memory up to 256 MB, otherwise recomputed
  chunk by chunk in every iteration). Rounding is larger: about ``eps * tr(P_k) *
  (|mu_k - c|^2 + tr(Sigma_k))`` absolute on the Mahalanobis terms (``c`` the data mean), the
  cancellation of the expanded form.
* ``"auto"`` (default) -- ``"gram"`` while that estimate is below ``1e-10`` nats for every
  component, ``"centered"`` otherwise (checked before every E step and after every M step). On
  standardized or moderately scaled data this is the gram path; a very tight component far from
  the data mean, badly scaled features or float32 computation switch to the centered one.

Data larger than memory, and several processes. :meth:`GaussianMixture.fit` also takes the data
in chunks (a list of arrays, a DataLoader, any re-iterable of arrays). Each EM iteration is then
one pass over the chunks that accumulates the sufficient statistics per component -- counts,
sums and second moments -- with the same two computations as in memory; under
:mod:`torch.distributed` every process passes its own part and the statistics are summed with
``all_reduce`` (see :mod:`pyro_vae.distributed`), so every process ends with the fit of all parts.
"""

import collections.abc
import logging
import math
import time
import warnings

import numpy as np
import pandas as pd
import torch

import pyro
import pyro.distributions as dist

from pyro_vae import distributed as _dist

__all__ = ["GaussianMixture", "ConvergenceWarning", "COVARIANCE_TYPES", "INIT_METHODS", "ALGORITHMS"]

log = logging.getLogger(__name__)

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_METHODS = ("kmeans", "kmeans++", "random", "random_from_data")
ALGORITHMS = ("auto", "gram", "centered")
_INIT_ALIASES = {"k-means++": "kmeans++", "k-means": "kmeans"}

# largest estimated absolute error (nats) of the Mahalanobis terms for which "auto" uses "gram"
GRAM_TOLERANCE = 1e-10
# the gram features of the whole data set are kept in memory up to this many bytes
_FEATURE_CACHE_BYTES = 1 << 28
# number of elements of the largest per-chunk intermediate array
_CHUNK_ELEMENTS = 1 << 19
# data-dependent initializations of chunked or distributed data use this many rows of rank 0
_INIT_ROWS = 100_000
# added to the component counts so that an empty component does not divide by zero
_COUNT_FLOOR = 10.0


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the change of the lower bound fell below ``tol``."""


class GaussianMixture:
    """A Gaussian mixture fitted by exact EM, with the scikit-learn estimator interface.

    :param int n_components: number of mixture components K (>= 1).
    :param str covariance_type: ``"full"`` (one full covariance per component), ``"tied"`` (one
        full covariance shared by all), ``"diag"`` (one diagonal covariance per component) or
        ``"spherical"`` (one variance per component).
    :param float tol: EM stops when the mean log-likelihood per sample improves by less than
        ``tol`` between iterations.
    :param float reg_covar: added to the diagonal of every covariance; keeps components from
        collapsing. With ``0`` a component that collapses raises :class:`ValueError`.
    :param int max_iter: maximum number of EM iterations per initialization.
    :param int n_init: number of initializations; the run with the largest lower bound is kept.
    :param str init: ``"kmeans"`` (k-means++ seeds refined by Lloyd iterations), ``"kmeans++"``
        (k-means++ seeds, each sample assigned to the nearest), ``"random"`` (random
        responsibilities) or ``"random_from_data"`` (K distinct samples as means, each sample
        assigned to the nearest). The initial parameters are the M step of these
        responsibilities; a component whose initial covariance is singular starts from the
        covariance of the whole data.
    :param weights_init: initial weights, shape ``(K,)``, non-negative, summing to 1.
    :param means_init: initial means, shape ``(K, d)``.
    :param precisions_init: initial precision matrices (inverse covariances): shape
        ``(K, d, d)`` for full, ``(d, d)`` for tied, ``(K, d)`` for diag, ``(K,)`` for spherical.
        Parameters given here replace those of ``init``; when all three are given, ``init`` and
        ``n_init`` are not used.
    :param torch.dtype dtype: floating point type of the computation (default float64; input
        of any float type is converted).
    :param device: device of the computation; default: the device of the first tensor given to
        :meth:`fit` (CPU for numpy and pandas input).
    :param int seed: seed of the initialization; ``None`` draws one from torch's global RNG.
    :param str algorithm: ``"auto"``, ``"gram"`` or ``"centered"``; how Mahalanobis terms and
        scatter matrices are computed while fitting (see the module documentation). Prediction
        methods always use the centered computation.

    Attributes after :meth:`fit` (torch tensors on ``device``): ``weights_`` ``(K,)``,
    ``means_`` ``(K, d)``, ``covariances_`` and ``precisions_`` (shapes as ``precisions_init``),
    ``precisions_cholesky_`` (upper-triangular ``U`` with ``U U^T`` the precision, same shapes),
    ``converged_``, ``n_iter_``, ``lower_bound_`` (mean log-likelihood per sample computed by the
    last E step of the best run), ``history_`` (DataFrame: ``iteration``, ``log_likelihood``
    per sample, ``seconds`` since the start of the run) and ``n_features_in_``.
    """

    def __init__(self, n_components=1, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init="kmeans", weights_init=None, means_init=None,
                 precisions_init=None, dtype=torch.float64, device=None, seed=None,
                 algorithm="auto"):
        self.n_components = _check_int(n_components, "n_components", 1)
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"unknown covariance_type {covariance_type!r}; use one of {', '.join(COVARIANCE_TYPES)}"
            )
        self.covariance_type = covariance_type
        self.tol = _check_float(tol, "tol", 0.0)
        self.reg_covar = _check_float(reg_covar, "reg_covar", 0.0)
        self.max_iter = _check_int(max_iter, "max_iter", 0)
        self.n_init = _check_int(n_init, "n_init", 1)
        init = _INIT_ALIASES.get(init, init)
        if init not in INIT_METHODS:
            raise ValueError(f"unknown init {init!r}; use one of {', '.join(INIT_METHODS)}")
        self.init = init
        if dtype not in (torch.float64, torch.float32):
            raise TypeError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
        self.dtype = dtype
        try:
            self.device = None if device is None else torch.device(device)
        except RuntimeError:
            raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'") from None
        if seed is not None:
            seed = _check_int(seed, "seed", 0)
        self.seed = seed
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
        self.algorithm = algorithm
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init

    def __repr__(self):
        return (f"GaussianMixture(n_components={self.n_components}, "
                f"covariance_type={self.covariance_type!r}, tol={self.tol}, "
                f"reg_covar={self.reg_covar}, max_iter={self.max_iter}, n_init={self.n_init}, "
                f"init={self.init!r}, seed={self.seed})")

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Estimate the parameters by EM.

        ``X`` is held in memory, or given **in chunks** for data larger than memory: a list of
        arrays, a :class:`torch.utils.data.DataLoader`, or any object whose ``__iter__`` returns a
        new iterator over ``(n_i, d)`` arrays each time (EM passes over the data once per
        iteration; a one-shot generator is refused). A chunk that is a tuple or list, as a
        DataLoader over a :class:`~torch.utils.data.TensorDataset` yields, contributes its first
        element (labels are ignored). Chunked data is fitted from sufficient statistics summed
        chunk by chunk (counts, sums and second moments per component), computed as in memory
        (``algorithm``); only one chunk is in memory at a time. The result equals the in-memory
        fit of the concatenated chunks up to rounding, when both start from the same parameters.

        **Under torch.distributed** (a process group of more than one process, or a job launched
        by ``torchrun``, whose process group is then joined as :func:`pyro_vae.fit` does), each
        process passes *its own part* of the data, in memory or in chunks, and the statistics are
        summed over processes with ``all_reduce``: the fit is that of the union of all parts and
        is identical on every process.

        Data-dependent initializations (``kmeans``, ``kmeans++``, ``random_from_data``,
        ``random``) of chunked or distributed data run on the first ``100,000`` rows that rank 0
        sees (all rows when there are fewer), and rank 0 sends the initial parameters to the
        other processes; given ``weights_init``, ``means_init`` and ``precisions_init`` need no
        data.

        :param X: data, shape ``(N, d)``: numpy array, torch tensor or pandas DataFrame of
            numbers; or chunks of such arrays as described above.
        :param y: ignored (scikit-learn convention).
        :returns: ``self``.
        """
        chunks = _chunks_of(X)
        if chunks is None and self.device is None and isinstance(X, torch.Tensor):
            device = X.device
        else:
            device = self.device or torch.device("cpu")
        _dist.init_process_group(device)
        if chunks is not None:   # the device of chunks is that of the first one unless given
            return self._fit_chunks(_ChunkedData(chunks, self.dtype, self.device, self.covariance_type,
                                                 self.n_components, self.algorithm))
        if _dist.is_initialized() and _dist.get_world_size() > 1:
            return self._fit_chunks(_ChunkedData([X], self.dtype, device, self.covariance_type,
                                                 self.n_components, self.algorithm))
        X = _as_2d_tensor(X, self.dtype, device, "X")
        n, d = X.shape
        if n < self.n_components:
            raise ValueError(
                f"X has {n} samples but n_components={self.n_components}; "
                "use at most as many components as samples"
            )
        self._device = device
        self.n_features_in_ = d
        given = self._given_parameters(d, device)

        shift = X.mean(0)
        ws = _Workspace(X - shift, self.covariance_type, self.algorithm, self.n_components)
        gen = torch.Generator().manual_seed(self._seed())
        all_given = all(v is not None for v in given.values())
        n_runs = 1 if all_given else self.n_init

        best = None
        for run in range(n_runs):
            params = self._initial_parameters(ws, gen, given, shift)
            result = self._run_em(lambda p: self._em_iteration(ws, p), params)
            log.debug("init %d: lower bound %.6f after %d iterations", run, result["lower_bound"],
                      result["n_iter"])
            if best is None or result["lower_bound"] > best["lower_bound"]:
                best = result
        return self._finish_fit(best, shift, stacklevel=3)

    def _finish_fit(self, best, shift, stacklevel):
        if not best["converged"] and self.max_iter > 0:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations (tol={self.tol}); "
                "increase max_iter or tol, or check the data for degenerate features",
                ConvergenceWarning, stacklevel=stacklevel,
            )
        self._set_parameters(best["params"], shift)
        self.converged_ = best["converged"]
        self.n_iter_ = best["n_iter"]
        self.lower_bound_ = best["lower_bound"]
        self.history_ = pd.DataFrame(best["history"], columns=["iteration", "log_likelihood", "seconds"])
        return self

    def _fit_chunks(self, data):
        """EM from sufficient statistics accumulated chunk by chunk and summed over processes."""
        k = self.n_components
        shift = data.first_pass()
        if data.n < k:
            raise ValueError(f"X has {data.n} samples but n_components={k}; "
                             "use at most as many components as samples")
        self._device = data.device
        self.n_features_in_ = data.d
        given = self._given_parameters(data.d, data.device)
        all_given = all(v is not None for v in given.values())
        gen = torch.Generator().manual_seed(self._seed())
        ws = None   # rank 0's first rows, for a data-dependent initialization
        if not all_given and _dist.is_main_process():
            ws = _Workspace(data.head(_INIT_ROWS), self.covariance_type, "centered", k)
        best = None
        for run in range(1 if all_given else self.n_init):
            params = self._shared_initial_parameters(ws, gen, given, shift, data)
            result = self._run_em(lambda p: self._chunked_iteration(data, p), params)
            if best is None or result["lower_bound"] > best["lower_bound"]:
                best = result
        return self._finish_fit(best, shift, stacklevel=4)

    def _seed(self):
        if self.seed is not None:
            return self.seed
        return int(torch.randint(0, 2**62, (1,)).item())

    def _shared_initial_parameters(self, ws, gen, given, shift, data):
        """Initial parameters computed on rank 0's first rows (``ws``) and sent to every process."""
        if all(v is not None for v in given.values()):
            return self._initial_parameters(None, gen, given, shift)
        k, d, ct = self.n_components, data.d, self.covariance_type
        params, error = None, None
        if _dist.is_main_process():
            try:
                if ws.n < k:
                    raise ValueError(
                        f"rank 0 holds {ws.n} samples, fewer than n_components={k}, to "
                        "initialize from; give it more data, or pass weights_init, means_init and "
                        "precisions_init")
                params = self._initial_parameters(ws, gen, given, shift)
            except ValueError as e:
                error = e
        ok = _dist.broadcast(torch.tensor([0.0 if error else 1.0], dtype=self.dtype, device=data.device),
                             "broadcast of the initialization status")
        if error is not None:
            raise error
        if float(ok[0]) != 1.0:
            raise ValueError("the initialization of the mixture failed on rank 0; its error says why")
        if _dist.get_world_size() == 1 or not _dist.is_initialized():
            return params
        shape = _param_shape(ct, k, d)
        if params is None:
            params = _Params(*(torch.empty(sh, dtype=self.dtype, device=data.device)
                               for sh in ((k,), (k, d), shape, shape)))
        elif params.cov is None:
            params.cov = _cov_from_prec_chol(params.prec_chol, ct)
        for t in (params.weights, params.means, params.cov, params.prec_chol):
            _dist.broadcast(t, "broadcast of the initial mixture parameters")
        return params

    def _chunked_iteration(self, data, params):
        """One E step and one M step over all chunks of all processes.

        As in memory, with ``algorithm="auto"`` the gram form is used while its error estimate
        allows (:func:`_gram_error`), and the iteration is redone with the centered computation
        when the new parameters fail the check.

        :returns: ``(mean log-likelihood of the incoming parameters, new parameters)``.
        """
        ct = self.covariance_type
        if data.algorithm == "gram" or (data.algorithm == "auto"
                                         and _gram_error(params, ct) <= GRAM_TOLERANCE):
            out = self._chunked_gram_iteration(data, params)
            if out is not None:
                return out
        return self._chunked_centered_iteration(data, params)

    def _chunked_gram_iteration(self, data, params):
        """The gram-form iteration over chunks; ``None`` if its new parameters fail the check."""
        k, d, ct, kind = self.n_components, data.d, self.covariance_type, data.kind
        q = _gram_log_prob_coefficients(params, ct, k, d)
        n_features = q.shape[0]
        rows = _chunk_rows(n_features + k)
        stats = torch.zeros(k, n_features, dtype=self.dtype, device=data.device)
        total = torch.zeros(1, dtype=self.dtype, device=data.device)
        for x in data:
            for s in range(0, x.shape[0], rows):
                f = _gram_features(x[s:s + rows], kind, torch.empty(
                    min(rows, x.shape[0] - s), n_features, dtype=x.dtype, device=x.device))
                wlp = f @ q
                total += _normalize_(wlp, wlp).sum()     # wlp now holds the responsibilities
                stats.addmm_(wlp.T, f)
        flat = _dist.all_reduce_sum(torch.cat([total, stats.reshape(-1)]),
                                    "all_reduce of the EM statistics")
        nk, sums, scatter = _stats_from_gram(flat[1:].view(k, n_features), kind, d)
        n_eff = nk + _COUNT_FLOOR * torch.finfo(nk.dtype).eps
        new = self._finish_m_step(n_eff, sums / n_eff[:, None], scatter, raise_on_failure=False)
        if new is not None and data.algorithm == "auto" and _gram_error(new, ct) > GRAM_TOLERANCE:
            new = None
        if new is None:
            if data.algorithm == "gram":
                raise _collapse_error(self.reg_covar)
            return None
        return float(flat[0]) / data.n, new

    def _chunked_centered_iteration(self, data, params):
        """The centered iteration over chunks.

        The scatter of each chunk is taken about the incoming means ``m0`` (no cancellation
        while ``m0`` is near the data); about the new means ``m`` it is
        ``S0 - a d^T - d a^T + n_k d d^T`` with ``a = sum_n r_nk (x_n - m0)`` and ``d = m - m0``.

        :returns: ``(mean log-likelihood of the incoming parameters, new parameters)``.
        """
        k, d, ct, kind = self.n_components, data.d, self.covariance_type, data.kind
        dt, dev = self.dtype, data.device
        total = torch.zeros(1, dtype=dt, device=dev)
        nk = torch.zeros(k, dtype=dt, device=dev)
        sums = torch.zeros(k, d, dtype=dt, device=dev)
        second = torch.zeros((k, d, d) if kind == "matrix" else (k, d), dtype=dt, device=dev)
        old = params.means
        for x in data:
            log_norm, resp = _e_step_centered(x, params, ct, data.chunk)
            total += log_norm.sum()
            nk += resp.sum(0)
            sums.addmm_(resp.T, x)
            second += _scatter_centered(x, resp, old, kind, data.chunk)
        flat = _dist.all_reduce_sum(torch.cat([total, nk, sums.reshape(-1), second.reshape(-1)]),
                                    "all_reduce of the EM statistics")
        total, nk = flat[0], flat[1:k + 1]
        sums = flat[k + 1:k + 1 + k * d].view(k, d)
        second = flat[k + 1 + k * d:].view(second.shape)
        n_eff = nk + _COUNT_FLOOR * torch.finfo(nk.dtype).eps
        means = sums / n_eff[:, None]
        a = sums - nk[:, None] * old
        delta = means - old
        if kind == "matrix":
            cross = a[:, :, None] * delta[:, None, :]
            scatter = second - cross - cross.transpose(1, 2) + nk[:, None, None] * (
                delta[:, :, None] * delta[:, None, :])
        else:
            scatter = second - 2.0 * a * delta + nk[:, None] * delta ** 2
        new = self._finish_m_step(n_eff, means, scatter, raise_on_failure=True)
        return float(total) / data.n, new

    def fit_predict(self, X, y=None):
        """:meth:`fit`, then :meth:`predict` on the same data.

        :returns: component labels, shape ``(N,)``.
        """
        if _chunks_of(X) is not None:
            raise ValueError("fit_predict needs X in memory; for data in chunks call fit(chunks), "
                             "then predict(chunk) for each chunk")
        return self.fit(X).predict(X)

    def _run_em(self, iteration, params):
        lower_bound = -math.inf
        converged = False
        history = []
        n_iter = 0
        t0 = time.perf_counter()
        for n_iter in range(1, self.max_iter + 1):
            previous = lower_bound
            lower_bound, params = iteration(params)
            history.append((n_iter, lower_bound, time.perf_counter() - t0))
            if abs(lower_bound - previous) < self.tol:
                converged = True
                break
        return {"params": params, "lower_bound": lower_bound, "converged": converged,
                "n_iter": n_iter, "history": history}

    def _em_iteration(self, ws, params):
        """One E step and one M step.

        :returns: ``(mean log-likelihood of the incoming parameters, new parameters)``.
        """
        kind = ws.kind
        use_gram = ws.algorithm == "gram" or (
            ws.algorithm == "auto" and _gram_error(params, self.covariance_type) <= GRAM_TOLERANCE)
        if use_gram:
            log_norm_sum, resp, stats = ws.gram_pass(params, self.covariance_type)
            nk, sums, scatter = _stats_from_gram(stats, kind, ws.d)
        else:
            log_norm, resp = _e_step_centered(ws.X, params, self.covariance_type, ws.chunk)
            log_norm_sum = log_norm.sum()
            nk = resp.sum(0)
            sums = resp.T @ ws.X
            scatter = None
        n_eff = nk + _COUNT_FLOOR * torch.finfo(nk.dtype).eps
        means = sums / n_eff[:, None]
        new = None
        if scatter is not None:
            new = self._finish_m_step(n_eff, means, scatter, raise_on_failure=False)
            if new is not None and ws.algorithm == "auto" and _gram_error(
                    new, self.covariance_type) > GRAM_TOLERANCE:
                new = None  # the second-moment form may have lost precision: recompute centered
            if new is None and ws.algorithm == "gram":
                raise _collapse_error(self.reg_covar)
        if new is None:
            scatter = _scatter_centered(ws.X, resp, means, kind, ws.chunk)
            new = self._finish_m_step(n_eff, means, scatter, raise_on_failure=True)
        return float(log_norm_sum) / ws.n, new

    def _finish_m_step(self, n_eff, means, scatter, raise_on_failure):
        """Weights, covariances and precision Cholesky factors from the M step statistics.

        :param n_eff: responsibilities summed per component plus a tiny floor, ``(K,)``.
        :param means: the new means, ``(K, d)``.
        :param scatter: ``sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T``: ``(K, d, d)`` for full and tied,
            its diagonal ``(K, d)`` for diag and spherical.
        :returns: :class:`_Params`, or ``None`` if a covariance is not positive definite and
            ``raise_on_failure`` is false.
        """
        ct = self.covariance_type
        cov = _covariance_from_scatter(scatter, n_eff, ct, self.reg_covar)
        prec_chol = _prec_chol_from_cov(cov, ct)
        if prec_chol is None:
            if raise_on_failure:
                raise _collapse_error(self.reg_covar)
            return None
        weights = n_eff / n_eff.sum()
        return _Params(weights, means, cov, prec_chol)

    # ------------------------------------------------------------------ initialization
    def _given_parameters(self, d, device):
        k, ct = self.n_components, self.covariance_type
        out = {"weights": None, "means": None, "prec_chol": None}
        if self.weights_init is not None:
            w = _as_tensor(self.weights_init, self.dtype, device, "weights_init")
            if w.shape != (k,):
                raise ValueError(f"weights_init must have shape ({k},), got {tuple(w.shape)}")
            if not torch.isfinite(w).all() or (w < 0).any() or (w > 1).any():
                raise ValueError("weights_init must contain finite values in [0, 1]")
            if abs(float(w.sum()) - 1.0) > (1e-6 if self.dtype == torch.float32 else 1e-8):
                raise ValueError(f"weights_init must sum to 1, got {float(w.sum()):.10g}")
            out["weights"] = w
        if self.means_init is not None:
            m = _as_tensor(self.means_init, self.dtype, device, "means_init")
            if m.shape != (k, d):
                raise ValueError(f"means_init must have shape ({k}, {d}), got {tuple(m.shape)}")
            if not torch.isfinite(m).all():
                raise ValueError("means_init contains NaN or infinite values")
            out["means"] = m
        if self.precisions_init is not None:
            p = _as_tensor(self.precisions_init, self.dtype, device, "precisions_init")
            shape = _param_shape(ct, k, d)
            if p.shape != shape:
                raise ValueError(
                    f"precisions_init for covariance_type={ct!r} must have shape {shape}, "
                    f"got {tuple(p.shape)}"
                )
            if not torch.isfinite(p).all():
                raise ValueError("precisions_init contains NaN or infinite values")
            if ct in ("full", "tied") and not torch.allclose(p, p.transpose(-1, -2), rtol=0,
                                                              atol=1e-8 * float(p.abs().max())):
                raise ValueError("precisions_init must be symmetric")
            pc = _prec_chol_from_precisions(p, ct)
            if pc is None:
                raise ValueError("precisions_init must be positive definite")
            out["prec_chol"] = pc
        return out

    def _initial_parameters(self, ws, gen, given, shift):
        """Initial :class:`_Params` (means in the centered coordinates of the workspace)."""
        ct, k = self.covariance_type, self.n_components
        means = None if given["means"] is None else given["means"] - shift
        if all(v is not None for v in given.values()):
            return _Params(given["weights"], means, None, given["prec_chol"])
        resp = _initial_responsibilities(ws.X, k, self.init, gen)
        nk = resp.sum(0)
        n_eff = nk + _COUNT_FLOOR * torch.finfo(nk.dtype).eps
        m = (resp.T @ ws.X) / n_eff[:, None]
        if given["prec_chol"] is not None:
            pc, cov = given["prec_chol"], None
        else:
            scatter = _scatter_centered(ws.X, resp, m, ws.kind, ws.chunk)
            cov = _covariance_from_scatter(scatter, n_eff, ct, self.reg_covar)
            cov = _replace_singular(cov, ct, ws.X, self.reg_covar)
            pc = _prec_chol_from_cov(cov, ct)
            if pc is None:
                raise _collapse_error(self.reg_covar)
        weights = given["weights"] if given["weights"] is not None else n_eff / n_eff.sum()
        return _Params(weights, m if means is None else means, cov, pc)

    def _set_parameters(self, params, shift):
        ct = self.covariance_type
        self.weights_ = params.weights
        self.means_ = params.means + shift
        self.precisions_cholesky_ = params.prec_chol
        self.covariances_ = params.cov if params.cov is not None else _cov_from_prec_chol(params.prec_chol, ct)
        if ct in ("full", "tied"):
            self.precisions_ = params.prec_chol @ params.prec_chol.transpose(-1, -2)
        else:
            self.precisions_ = params.prec_chol ** 2
        self._shift = shift

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise ValueError("this GaussianMixture is not fitted yet; call fit(X) first")

    def _prepare(self, X):
        self._check_fitted()
        X = _as_2d_tensor(X, self.dtype, self._device, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features but the mixture was fitted on {self.n_features_in_}"
            )
        return X

    def _weighted_log_prob(self, X):
        """``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape ``(N, K)``."""
        params = _Params(self.weights_, self.means_ - self._shift, None, self.precisions_cholesky_)
        chunk = _chunk_rows(self.n_components * self.n_features_in_)
        return _weighted_log_prob_centered(X - self._shift, params, self.covariance_type, chunk)

    def score_samples(self, X):
        """Log-likelihood ``log p(x_n)`` of each sample.

        :param X: shape ``(N, d)``.
        :returns: tensor of shape ``(N,)``.
        """
        return torch.logsumexp(self._weighted_log_prob(self._prepare(X)), dim=1)

    def score(self, X, y=None):
        """Mean log-likelihood per sample (a float)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X):
        """Responsibilities ``p(z = k | x_n)``.

        :returns: tensor of shape ``(N, K)``; rows sum to 1.
        """
        return torch.exp(self._log_resp(self._prepare(X)))

    def _log_resp(self, X):
        wlp = self._weighted_log_prob(X)
        return wlp - torch.logsumexp(wlp, dim=1, keepdim=True)

    def predict(self, X):
        """Most probable component of each sample.

        :returns: long tensor of shape ``(N,)``.
        """
        return self._weighted_log_prob(self._prepare(X)).argmax(dim=1)

    def sample(self, n_samples=1, seed=None):
        """Draw samples from the fitted mixture.

        :param int n_samples: number of samples.
        :param int seed: seed; ``None`` draws one from torch's global RNG.
        :returns: ``(X, labels)``: samples of shape ``(n_samples, d)`` and their components,
            shape ``(n_samples,)``.
        """
        self._check_fitted()
        n_samples = _check_int(n_samples, "n_samples", 1)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        gen = torch.Generator().manual_seed(_check_int(seed, "seed", 0))
        w = self.weights_.detach().cpu()
        labels = torch.multinomial(w, n_samples, replacement=True, generator=gen)
        noise = torch.randn(n_samples, self.n_features_in_, generator=gen, dtype=self.dtype)
        labels, noise = labels.to(self._device), noise.to(self._device)
        scale = self._scale()
        if self.covariance_type == "full":
            out = torch.empty_like(noise)
            for k in range(self.n_components):  # not a hot path; avoids (n, d, d) intermediates
                idx = (labels == k).nonzero(as_tuple=True)[0]
                out[idx] = noise[idx] @ scale[k].T
        elif self.covariance_type == "tied":
            out = noise @ scale.T
        else:
            out = noise * scale[labels]
        return out + self.means_[labels], labels

    def _scale(self):
        """Cholesky factor of the covariances: full ``(K, d, d)``, tied ``(d, d)``, else ``(K, d)``."""
        ct, cov = self.covariance_type, self.covariances_
        if ct in ("full", "tied"):
            return torch.linalg.cholesky(cov)
        if ct == "diag":
            return cov.sqrt()
        return cov.sqrt()[:, None].expand(self.n_components, self.n_features_in_)

    # ------------------------------------------------------------------ model selection
    def n_parameters(self):
        """Number of free parameters: covariances, means and ``K - 1`` weights."""
        self._check_fitted()
        k, d = self.n_components, self.n_features_in_
        cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d,
               "spherical": k}[self.covariance_type]
        return cov + k * d + k - 1

    def bic(self, X):
        """Bayesian information criterion ``-2 log L + p log N`` on ``X`` (lower is better)."""
        X = self._prepare(X)
        return -2.0 * self.score(X) * X.shape[0] + self.n_parameters() * math.log(X.shape[0])

    def aic(self, X):
        """Akaike information criterion ``-2 log L + 2 p`` on ``X`` (lower is better)."""
        X = self._prepare(X)
        return -2.0 * self.score(X) * X.shape[0] + 2 * self.n_parameters()

    # ------------------------------------------------------------------ the ELBO view
    def elbo(self, X, resp=None):
        """Per-sample evidence lower bound for assignment distributions ``q(z = k | x_n) = resp``.

        ``ELBO_n = sum_k r_nk (log pi_k + log N(x_n | mu_k, Sigma_k) - log r_nk)`` (with
        ``0 log 0 = 0``) ``= log p(x_n) - KL(q(z|x_n) || p(z|x_n))``: it equals
        :meth:`score_samples` for the exact posterior (:meth:`predict_proba`, the E step) and is
        smaller for any other ``resp``.

        :param X: data, shape ``(N, d)``.
        :param resp: responsibilities, shape ``(N, K)``, non-negative rows summing to 1; default
            the exact posterior.
        :returns: tensor of shape ``(N,)``.
        """
        X = self._prepare(X)
        wlp = self._weighted_log_prob(X)
        if resp is None:
            log_resp = wlp - torch.logsumexp(wlp, dim=1, keepdim=True)
            resp = log_resp.exp()
        else:
            resp = _as_tensor(resp, self.dtype, self._device, "resp")
            if resp.shape != wlp.shape:
                raise ValueError(f"resp must have shape {tuple(wlp.shape)}, got {tuple(resp.shape)}")
            if not torch.isfinite(resp).all() or (resp < 0).any():
                raise ValueError("resp must contain finite non-negative values")
            if (resp.sum(1) - 1).abs().max() > 1e-6:
                raise ValueError("each row of resp must sum to 1")
            log_resp = torch.where(resp > 0, resp.log(), torch.zeros_like(resp))
        terms = torch.where(resp > 0, resp * (wlp - log_resp), torch.zeros_like(resp))
        return terms.sum(1)

    # ------------------------------------------------------------------ Pyro model and guide
    def _pyro_x(self, x):
        self._check_fitted()
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (N, {self.n_features_in_})")
        if x.dim() != 2 or x.shape[1] != self.n_features_in_:
            raise ValueError(f"x must have shape (N, {self.n_features_in_}), got {tuple(x.shape)}")
        return x.to(device=self._device, dtype=self.dtype)

    @staticmethod
    def _plate(x, num_data):
        n = x.shape[0]
        if num_data is None or num_data == n:
            return pyro.plate("data", n)
        if int(num_data) < n:
            raise ValueError(f"num_data={num_data} is smaller than the batch size {n}")
        return pyro.plate("data", size=int(num_data), subsample=torch.arange(n, device=x.device))

    def model(self, x, num_data=None):
        """The fitted mixture as a Pyro model: ``z ~ Categorical(weights)``, ``x ~ N(mu_z, Sigma_z)``.

        Site ``"z"`` (component index) and observed site ``"x"``, in ``pyro.plate("data")``.
        ``z`` can be enumerated (``pyro.infer.config_enumerate``), which sums it out exactly.

        :param torch.Tensor x: data, shape ``(N, d)``; a minibatch when ``num_data`` is given.
        :param int num_data: size of the full data set (default ``N``).
        """
        x = self._pyro_x(x)
        logits = torch.log(self.weights_)
        with self._plate(x, num_data):
            z = pyro.sample("z", dist.Categorical(logits=logits))
            pyro.sample("x", self._component(z), obs=x)

    def guide(self, x, num_data=None):
        """The exact posterior as a Pyro guide: ``z ~ Categorical(p(z | x))`` (the E step).

        :param torch.Tensor x: data, shape ``(N, d)``.
        :param int num_data: size of the full data set (default ``N``).
        """
        x = self._pyro_x(x)
        log_resp = self._log_resp(x)
        with self._plate(x, num_data):
            pyro.sample("z", dist.Categorical(logits=log_resp))

    def _component(self, z):
        """``p(x | z)`` for component indices ``z`` of any shape."""
        scale = self._scale()
        if self.covariance_type == "full":
            return dist.MultivariateNormal(self.means_[z], scale_tril=scale[z])
        if self.covariance_type == "tied":
            return dist.MultivariateNormal(self.means_[z], scale_tril=scale)
        return dist.Normal(self.means_[z], scale[z]).to_event(1)


# ---------------------------------------------------------------------------------------
# parameters and their conversions
# ---------------------------------------------------------------------------------------
class _Params:
    """Mixture parameters during fitting; ``means`` are relative to the data mean.

    ``cov`` may be ``None`` (parameters given as precisions); ``gram_error`` caches
    :func:`_gram_error`.
    """

    __slots__ = ("weights", "means", "cov", "prec_chol", "gram_error")

    def __init__(self, weights, means, cov, prec_chol):
        self.weights, self.means, self.cov, self.prec_chol = weights, means, cov, prec_chol
        self.gram_error = None


def _param_shape(ct, k, d):
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[ct]


def _covariance_from_scatter(scatter, n_eff, ct, reg_covar):
    """The M step covariances of type ``ct`` from the per-component scatter, plus ``reg_covar``.

    :param scatter: ``sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T``, ``(K, d, d)``, or its diagonal ``(K, d)``.
    :param n_eff: responsibilities summed per component (plus a tiny floor), ``(K,)``.
    """
    if ct == "full":
        cov = scatter / n_eff[:, None, None]
    elif ct == "tied":
        cov = scatter.sum(0) / n_eff.sum()
    elif ct == "diag":
        cov = scatter / n_eff[:, None]
    else:
        cov = (scatter / n_eff[:, None]).mean(1)
    return _add_to_diagonal(cov, ct, reg_covar)


def _add_to_diagonal(cov, ct, value):
    if value == 0:
        return cov
    if ct in ("full", "tied"):
        cov = cov.clone()
        cov.diagonal(dim1=-2, dim2=-1).add_(value)
        return cov
    return cov + value


def _prec_chol_from_cov(cov, ct):
    """Upper-triangular ``U`` with ``U U^T = cov^{-1}``; ``None`` if ``cov`` is not positive definite."""
    if ct in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(cov)
        if (info != 0).any() or not torch.isfinite(chol).all():
            return None
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
        return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)
    if not torch.isfinite(cov).all() or (cov <= 0).any():
        return None
    return torch.rsqrt(cov)


def _prec_chol_from_precisions(prec, ct):
    """Upper-triangular ``U`` with ``U U^T = prec``; ``None`` if ``prec`` is not positive definite."""
    if ct in ("full", "tied"):
        # Cholesky of the index-reversed matrix, reversed back, is upper triangular
        chol, info = torch.linalg.cholesky_ex(prec.flip(-2, -1))
        if (info != 0).any():
            return None
        return chol.flip(-2, -1)
    if (prec <= 0).any():
        return None
    return prec.sqrt()


def _cov_from_prec_chol(pc, ct):
    if ct in ("full", "tied"):
        eye = torch.eye(pc.shape[-1], dtype=pc.dtype, device=pc.device).expand_as(pc)
        inv = torch.linalg.solve_triangular(pc, eye, upper=True)  # U^{-1}
        return inv.transpose(-1, -2) @ inv
    return 1.0 / pc ** 2


def _log_det_prec_chol(pc, ct, k, d):
    """``log det U`` per component, shape ``(K,)`` (half the log-determinant of the precision)."""
    if ct == "full":
        return torch.log(torch.diagonal(pc, dim1=-2, dim2=-1)).sum(-1)
    if ct == "tied":
        return torch.log(torch.diagonal(pc)).sum().expand(k)
    if ct == "diag":
        return torch.log(pc).sum(-1)
    return d * torch.log(pc)


def _prec_chol_as(pc, ct, k, d):
    """The factor per component: ``(K, d, d)`` for full and tied, ``(K, d)`` for diag and spherical."""
    if ct == "tied":
        return pc.expand(k, d, d)
    if ct == "spherical":
        return pc[:, None].expand(k, d)
    return pc


def _gram_error(params, ct):
    """Estimated absolute error of the gram-form Mahalanobis terms, the largest over components.

    ``eps * tr(P_k) * (|mu_k|^2 + tr(Sigma_k))`` with ``mu_k`` relative to the data mean (the
    origin of the gram features). Cached on ``params``.
    """
    if params.gram_error is not None:
        return params.gram_error
    means, pc, cov = params.means, params.prec_chol, params.cov
    k, d = means.shape
    if ct in ("full", "tied"):
        tr_p = (pc ** 2).sum((-2, -1))
        if cov is None:
            cov = _cov_from_prec_chol(pc, ct)
        tr_s = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
    elif ct == "diag":
        tr_p = (pc ** 2).sum(-1)
        tr_s = (pc ** -2).sum(-1)
    else:
        tr_p = d * pc ** 2
        tr_s = d * pc ** -2
    bound = (torch.finfo(means.dtype).eps * tr_p * ((means ** 2).sum(-1) + tr_s)).expand(k)
    params.gram_error = float(bound.max()) if torch.isfinite(bound).all() else math.inf
    return params.gram_error


def _collapse_error(reg_covar):
    return ValueError(
        "a component covariance is not positive definite: a component collapsed onto too few "
        f"distinct points (reg_covar={reg_covar}); increase reg_covar, reduce n_components, or "
        "rescale the data (e.g. standardize the features)"
    )


def _replace_singular(cov, ct, X, reg_covar):
    """Initial covariances that are not positive definite are replaced by that of all the data."""
    n, d = X.shape
    if ct in ("full", "tied"):
        _, info = torch.linalg.cholesky_ex(cov)
        bad = info != 0
        if not bad.any():
            return cov
        total = _add_to_diagonal((X.T @ X) / n, "full", reg_covar)
        if ct == "tied":
            return total
        cov = cov.clone()
        cov[bad] = total
        return cov
    var = (X ** 2).mean(0) + reg_covar
    if ct == "spherical":
        var = var.mean()
    bad = ~(cov > 0) if ct == "spherical" else ~(cov > 0).all(-1)
    if not bad.any():
        return cov
    cov = cov.clone()
    cov[bad] = var
    return cov


# ---------------------------------------------------------------------------------------
# centered computation (reference numerics)
# ---------------------------------------------------------------------------------------
def _chunk_rows(width):
    return max(1, _CHUNK_ELEMENTS // max(1, width))


def _weighted_log_prob_centered(X, params, ct, chunk):
    """``log pi_k + log N(x_n | mu_k, Sigma_k)`` from the differences ``x_n - mu_k``, ``(N, K)``."""
    n, d = X.shape
    k = params.means.shape[0]
    pc = _prec_chol_as(params.prec_chol, ct, k, d)
    const = (torch.log(params.weights) + _log_det_prec_chol(params.prec_chol, ct, k, d)
             - 0.5 * d * math.log(2 * math.pi))
    out = torch.empty(n, k, dtype=X.dtype, device=X.device)
    if ct in ("full", "tied"):
        # (x - mu_k) U_k for all k at once: x [U_1 ... U_K] - [mu_1 U_1 ... mu_K U_K]
        w = pc.permute(1, 0, 2).reshape(d, k * d)
        b = torch.einsum("ki,kij->kj", params.means, pc).reshape(k * d)
        for s in range(0, n, chunk):
            y = torch.addmm(b, X[s:s + chunk], w, alpha=1.0, beta=-1.0)
            out[s:s + chunk] = y.view(-1, k, d).square_().sum(-1)
    else:
        for s in range(0, n, chunk):
            y = (X[s:s + chunk, None, :] - params.means) * pc
            out[s:s + chunk] = y.square_().sum(-1)
    return out.mul_(-0.5).add_(const)


def _e_step_centered(X, params, ct, chunk):
    """:returns: ``(log p(x_n), shape (N,); responsibilities, shape (N, K))``."""
    wlp = _weighted_log_prob_centered(X, params, ct, chunk)
    log_norm = _normalize_(wlp, wlp)
    return log_norm, wlp


def _normalize_(wlp, out):
    """Log-sum-exp over components and the normalized exponentials (the E step).

    ``wlp`` (``(c, K)``, finite row maxima) is overwritten; ``out`` (may be ``wlp``) receives
    ``exp(wlp - logsumexp(wlp))``. Ratios ``exp(wlp - max)`` below ``sqrt(tiny)`` (about 1e-154
    in float64) are set to exactly zero: a change far below rounding that keeps subnormal
    numbers, which make the exponential and the M step products very slow on CPUs, out of the
    computation (and lets a component that collapses onto a few points reach a zero covariance).

    :returns: ``logsumexp(wlp, dim=1)``, shape ``(c,)``.
    """
    log_floor = 0.5 * math.log(torch.finfo(wlp.dtype).tiny)
    top = wlp.amax(dim=1, keepdim=True)
    torch.exp(wlp.sub_(top).clamp_min_(log_floor), out=out)
    torch.nn.functional.threshold_(out, math.exp(log_floor), 0.0)
    total = out.sum(dim=1, keepdim=True)
    out.div_(total)
    return (top + total.log()).squeeze(1)


def _scatter_centered(X, resp, means, kind, chunk):
    """``sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T``: ``(K, d, d)`` (kind "matrix") or its diagonal ``(K, d)``.

    ``chunk`` rows of ``X`` are processed at a time (intermediates of shape ``(K, chunk, d)``).
    """
    n, d = X.shape
    k = means.shape[0]
    rows = chunk
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
# gram computation (second moments of the centered data)
# ---------------------------------------------------------------------------------------
def _n_gram_features(kind, d):
    return (d * (d + 1) // 2 if kind == "matrix" else d) + d + 1


def _gram_features(X, kind, out):
    """Write ``[vech(x x^T), x, 1]`` (kind "matrix") or ``[x^2, x, 1]`` per row of ``X`` into ``out``."""
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


def _gram_coefficients(params, ct, k, d):
    """``Q`` of shape ``(F, K)`` with ``features(x) @ Q = (x - mu_k)^T P_k (x - mu_k)``."""
    pc = _prec_chol_as(params.prec_chol, ct, k, d)
    means = params.means
    if ct in ("full", "tied"):
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


def _gram_log_prob_coefficients(params, ct, k, d):
    """``q`` of shape ``(F, K)`` with ``features(x) @ q = log pi_k + log N(x | mu_k, Sigma_k)``."""
    const = (torch.log(params.weights) + _log_det_prec_chol(params.prec_chol, ct, k, d)
             - 0.5 * d * math.log(2 * math.pi))
    q = -0.5 * _gram_coefficients(params, ct, k, d)
    q[-1] += const   # the last feature is 1
    return q


def _stats_from_gram(stats, kind, d):
    """Counts, sums and scatter about the weighted means from ``resp^T features``, ``(K, F)``."""
    nk = stats[:, -1]
    sums = stats[:, -d - 1:-1]
    second = stats[:, :-d - 1]
    n_eff = nk + _COUNT_FLOOR * torch.finfo(nk.dtype).eps
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


class _Workspace:
    """The centered data of one fit, its chunking, reusable buffers and the gram features.

    The features of all rows are kept (row-major for the E step product and column-major for
    the M step product, which are the fastest layouts for the two) when both copies take at most
    ``_FEATURE_CACHE_BYTES``; otherwise they are recomputed chunk by chunk in every iteration.
    """

    def __init__(self, X, ct, algorithm, k):
        self.X = X
        self.n, self.d = X.shape
        self.k = k
        self.kind = "matrix" if ct in ("full", "tied") else "vector"
        self.algorithm = algorithm
        self.chunk = _chunk_rows(k * self.d)   # rows per chunk of (chunk, K, d) intermediates
        self.n_features = _n_gram_features(self.kind, self.d)
        self.cached = (algorithm != "centered"
                       and 2 * self.n * self.n_features * X.element_size() <= _FEATURE_CACHE_BYTES)
        # with cached features, one pass over all rows: few large operations parallelize best
        self.gram_chunk = self.n if self.cached else min(self.n, _chunk_rows(self.n_features))
        self._features = None
        self._buffers = None

    def _gram_buffers(self):
        """``(responsibilities (N, K), log-probabilities (chunk, K), features (chunk, F) or None)``."""
        if self._buffers is None:
            X, rows = self.X, self.gram_chunk
            self._buffers = (
                torch.empty(self.n, self.k, dtype=X.dtype, device=X.device),
                torch.empty(rows, self.k, dtype=X.dtype, device=X.device),
                None if self.cached else torch.empty(rows, self.n_features, dtype=X.dtype,
                                                     device=X.device))
        return self._buffers

    def _cached_features(self):
        """The features of all rows, ``(N, F)`` row-major and ``(F, N)`` row-major."""
        if self._features is None:
            X = self.X
            # built column-major (contiguous writes), then copied row-major block by block
            phi_t = torch.empty(self.n_features, self.n, dtype=X.dtype, device=X.device)
            _gram_features(X.T.contiguous().T, self.kind, phi_t.T)
            phi = torch.empty(self.n, self.n_features, dtype=X.dtype, device=X.device)
            rows = _chunk_rows(self.n_features)
            for s in range(0, self.n, rows):
                phi[s:s + rows].copy_(phi_t[:, s:s + rows].T)
            self._features = (phi, phi_t)
        return self._features

    def gram_pass(self, params, ct):
        """The E step and the M step statistics from the gram features.

        :returns: ``(sum_n log p(x_n), responsibilities (N, K), resp^T features (K, F))``.
        """
        k = self.k
        q = _gram_log_prob_coefficients(params, ct, k, self.d)
        resp, wlp_buf, buf = self._gram_buffers()
        if self.cached:
            phi, phi_t = self._cached_features()
            log_norm = _normalize_(torch.mm(phi, q, out=wlp_buf), resp)
            return log_norm.sum(), resp, torch.mm(phi_t, resp).T
        X = self.X
        stats = torch.zeros(k, self.n_features, dtype=X.dtype, device=X.device)
        total = torch.zeros((), dtype=X.dtype, device=X.device)
        for s in range(0, self.n, self.gram_chunk):
            m = min(self.gram_chunk, self.n - s)
            f = _gram_features(X[s:s + m], self.kind, buf[:m])
            log_norm = _normalize_(torch.mm(f, q, out=wlp_buf[:m]), resp[s:s + m])
            stats.addmm_(resp[s:s + m].T, f)
            total += log_norm.sum()
        return total, resp, stats


# ---------------------------------------------------------------------------------------
# data in chunks
# ---------------------------------------------------------------------------------------
def _is_array(x):
    return isinstance(x, (np.ndarray, torch.Tensor, pd.DataFrame))


def _chunks_of(X):
    """The chunks of ``X`` if it is given in chunks, ``None`` if it is one in-memory array."""
    if isinstance(X, (np.ndarray, torch.Tensor, pd.DataFrame, pd.Series, str, bytes)):
        return None
    if isinstance(X, (list, tuple)):
        if not len(X):
            return X                                    # no chunks: no rows on this process
        first = X[0]
        if isinstance(first, (list, tuple)) and len(first) and _is_array(first[0]):
            return X                                    # (features, labels) pairs
        if isinstance(first, pd.DataFrame) or (_is_array(first) and first.ndim >= 2):
            return X
        return None                                     # nested lists of numbers: one array
    if isinstance(X, collections.abc.Iterator):
        raise ValueError(
            "X is a one-shot iterator (such as a generator), but EM passes over the data once per "
            "iteration; pass a list of arrays, a DataLoader, or an object whose __iter__ returns a "
            "new iterator each time")
    if isinstance(X, collections.abc.Iterable):
        return X
    return None


class _ChunkedData:
    """This process's data as a sequence of chunks, passed over once per EM iteration.

    After :meth:`first_pass`: ``n`` (rows over all processes), ``d``, ``device``, ``shift``
    (the mean of all rows, ``(d,)``) and ``chunk`` (rows per block of ``(K, rows, d)``
    intermediates). Iterating yields the chunks as tensors minus ``shift``.
    """

    def __init__(self, source, dtype, device, ct, k, algorithm):
        self.source, self.dtype, self.device, self.k = source, dtype, device, k
        self.algorithm = algorithm
        self.kind = "matrix" if ct in ("full", "tied") else "vector"
        self.n = self.d = self.shift = self.chunk = None

    def _tensors(self):
        """The non-empty chunks, checked, as 2-D tensors of ``dtype`` on ``device``."""
        for i, c in enumerate(self.source):
            if isinstance(c, (list, tuple)) and len(c) and _is_array(c[0]):
                c = c[0]
            if self.device is None:
                self.device = c.device if isinstance(c, torch.Tensor) else torch.device("cpu")
            name = f"chunk {i} of X"
            t = _as_tensor(c, self.dtype, self.device, name)
            if t.dim() != 2:
                raise ValueError(f"{name} must be 2-D with shape (n_samples, n_features), got "
                                 f"shape {tuple(t.shape)}")
            if t.shape[0] == 0:
                continue
            if self.d is not None and t.shape[1] != self.d:
                raise ValueError(f"{name} has {t.shape[1]} features but the data has {self.d}; "
                                 "every chunk needs the same features")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contains NaN or infinite values; remove or impute them first")
            yield t

    def first_pass(self):
        """Count, check and sum the rows of all processes.

        :returns: ``shift``, the mean row, shape ``(d,)``.
        """
        n, total = 0, None
        for t in self._tensors():
            if self.d is None:
                self.d = t.shape[1]
                total = torch.zeros(self.d, dtype=self.dtype, device=self.device)
            n += t.shape[0]
            total += t.sum(0)
        if self.device is None:
            self.device = torch.device("cpu")
        local_d = self.d
        if _dist.is_initialized() and _dist.get_world_size() > 1:
            dims = torch.tensor([local_d or 0, -local_d if local_d else -(2 ** 40)],
                                dtype=torch.float64, device=self.device)
            _dist.all_reduce(dims, "max", "all_reduce of the number of features")
            d_max, d_min = int(dims[0]), int(-dims[1])
            if d_max and d_min != d_max:
                raise ValueError(f"the processes hold data with different numbers of features "
                                 f"({d_min} to {d_max}); every part needs the same features")
            self.d = d_max or None
        if self.d is None:
            raise ValueError("X is empty: it holds no rows")
        if total is None:  # this process holds no rows
            total = torch.zeros(self.d, dtype=self.dtype, device=self.device)
        sums = _dist.all_reduce_sum(torch.cat([torch.tensor([float(n)], dtype=self.dtype,
                                                            device=self.device), total]),
                                    "all_reduce of the data size")
        self.n = int(round(float(sums[0])))
        self.shift = sums[1:] / self.n
        self.chunk = _chunk_rows(self.k * self.d)
        if local_d is None:
            log.warning("this process (rank %d) holds no data", _dist.get_rank())
        return self.shift

    def head(self, rows):
        """The first ``rows`` rows (or all, if fewer), minus ``shift``: ``(m, d)``."""
        parts, m = [], 0
        for t in self:
            parts.append(t[:rows - m])
            m += parts[-1].shape[0]
            if m >= rows:
                break
        if not parts:
            return torch.empty(0, self.d, dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def __iter__(self):
        for t in self._tensors():
            yield t - self.shift


# ---------------------------------------------------------------------------------------
# initialization
# ---------------------------------------------------------------------------------------
def _initial_responsibilities(X, k, method, gen):
    """Responsibilities ``(N, K)`` that start EM: hard assignments, or random for ``"random"``."""
    n = X.shape[0]
    if method == "random":
        r = torch.rand(n, k, generator=gen, dtype=torch.float64).to(X.device, X.dtype)
        return r / r.sum(1, keepdim=True)
    if method == "random_from_data":
        centers = X[torch.randperm(n, generator=gen)[:k].to(X.device)]
    else:
        centers = _kmeans_plusplus(X, k, gen)
        if method == "kmeans":
            centers = _lloyd(X, centers)
    labels = _sq_distances(X, centers).argmin(1)
    return torch.nn.functional.one_hot(labels, k).to(X.dtype)


def _sq_distances(X, centers):
    d2 = (X ** 2).sum(1, keepdim=True) - 2.0 * X @ centers.T + (centers ** 2).sum(1)
    return d2.clamp_min_(0.0)


def _kmeans_plusplus(X, k, gen):
    """k-means++ seeding (greedy: the best of ``2 + log k`` candidates per center)."""
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [X[first]]
    closest = _sq_distances(X, X[first:first + 1])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        u = torch.rand(trials, generator=gen, dtype=torch.float64).to(X.device, X.dtype)
        if float(total) > 0:
            cand = torch.searchsorted(torch.cumsum(closest, 0), u * total).clamp_max_(n - 1)
        else:  # every sample coincides with a center already
            cand = (u * n).long().clamp_max_(n - 1)
        d2 = torch.minimum(closest[None, :], _sq_distances(X, X[cand]).T)   # (trials, N)
        best = int(d2.sum(1).argmin())
        centers.append(X[cand[best]])
        closest = d2[best]
    return torch.stack(centers)


def _lloyd(X, centers, max_iter=100):
    """Lloyd's k-means iterations until the assignments stop changing."""
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


# ---------------------------------------------------------------------------------------
# input checking
# ---------------------------------------------------------------------------------------
def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value}")
    return float(value)


def _as_tensor(value, dtype, device, name):
    """numpy array, torch tensor, pandas object or nested list -> tensor of ``dtype`` on ``device``."""
    if isinstance(value, (pd.DataFrame, pd.Series)):
        frame = value.to_frame() if isinstance(value, pd.Series) else value
        bad = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])
               or pd.api.types.is_bool_dtype(frame[c])]
        if bad:
            raise ValueError(f"{name} has non-numeric columns: {', '.join(bad[:5])}; "
                             "drop them or encode them as numbers")
        value = value.to_numpy(dtype=np.float64, na_value=np.nan)
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            arr = np.asarray(value)
        except Exception as e:  # ragged lists and the like
            raise ValueError(f"{name} could not be converted to an array: {e}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must contain numbers, got an array of dtype {arr.dtype}")
        if not arr.flags.writeable:  # e.g. np.load(..., mmap_mode="r"): torch wants writable memory
            arr = arr.copy()
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued")
    return t.to(device=device, dtype=dtype)


def _as_2d_tensor(X, dtype, device, name):
    t = _as_tensor(X, dtype, device, name)
    if t.dim() != 2:
        hint = " (reshape 1-D data with X.reshape(-1, 1))" if t.dim() == 1 else ""
        raise ValueError(f"{name} must be 2-D with shape (n_samples, n_features), got shape "
                         f"{tuple(t.shape)}{hint}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; remove or impute them first")
    return t
