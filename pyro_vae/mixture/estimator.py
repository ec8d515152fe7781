"""A Gaussian mixture fitted by exact expectation-maximization (EM), a drop-in scikit-learn estimator.

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

One EM loop serves data in memory and data in chunks (:mod:`pyro_vae.mixture.sources`): every
iteration asks the data source for the statistics of the responsibilities, summed over its chunks
and over processes, and takes the M step (:mod:`pyro_vae.mixture.gaussian`). How the statistics
are computed (``algorithm``):

* ``"centered"`` -- from the differences ``x - mu_k``: the reference computation.
* ``"gram"`` -- from the features ``[vech(x x^T), x, 1]`` (``[x^2, x, 1]`` for diagonal types),
  computed once per fit for data in memory: the E step and the M step statistics are one matrix
  product each. Rounding is larger: about ``eps * tr(P_k) * (|mu_k - c|^2 + tr(Sigma_k))`` nats on
  the Mahalanobis terms (``c`` the data mean).
* ``"auto"`` (default) -- ``"gram"`` while that estimate is below ``1e-10`` nats for every
  component before and after the iteration, otherwise the iteration is done ``"centered"``. On
  standardized or moderately scaled data this is the gram path; a very tight component far from
  the data mean, badly scaled features or float32 computation switch to the centered one.
"""

import inspect
import math
import numbers
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

import pyro
import pyro.distributions as dist

from pyro_vae import distributed
from pyro_vae.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_positive_int,
    check_seed,
    resolve_device,
)
from pyro_vae.mixture.gaussian import (
    COVARIANCE_TYPES,
    GRAM_TOLERANCE,
    MixtureParams,
    collapse_error,
    gram_error,
    gram_log_prob_coefficients,
    m_step,
    moments_from_gram,
    precisions_from_prec_chol,
    resolution,
    scatter_kind,
    weighted_log_prob_centered,
)
from pyro_vae.mixture.initialization import INIT_ALIASES, INIT_METHODS, given_parameters, initial_parameters
from pyro_vae.mixture.sources import (
    ChunkSource,
    MemorySource,
    as_2d_tensor,
    as_tensor,
    check_dtype,
    checked_chunks,
    chunks_of,
    feature_names,
)
from pyro_vae.program_pair import data_plate

__all__ = ["GaussianMixture", "ConvergenceWarning", "NotFittedError", "ALGORITHMS"]

ALGORITHMS = ("auto", "gram", "centered")


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the change of the lower bound fell below ``tol``."""


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted mixture was called before :meth:`GaussianMixture.fit`.

    A :class:`ValueError` and an :class:`AttributeError`, as scikit-learn's
    ``sklearn.exceptions.NotFittedError``; when scikit-learn is imported the error raised is
    also an instance of scikit-learn's class, so ``except NotFittedError`` works with either.
    """


_SKLEARN_NOT_FITTED = None


def _not_fitted_error_class():
    """:class:`NotFittedError`, combined with scikit-learn's when scikit-learn is imported."""
    global _SKLEARN_NOT_FITTED
    sk = sys.modules.get("sklearn.exceptions")
    if sk is None:
        return NotFittedError
    if _SKLEARN_NOT_FITTED is None:
        _SKLEARN_NOT_FITTED = type("NotFittedError", (NotFittedError, sk.NotFittedError),
                                   {"__module__": __name__, "__qualname__": "_SklearnNotFittedError",
                                    "__doc__": NotFittedError.__doc__})
    return _SKLEARN_NOT_FITTED


def __getattr__(name):  # lets pickle find the combined class by name
    if name == "_SklearnNotFittedError":
        import sklearn.exceptions  # noqa: F401

        return _not_fitted_error_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Fitted:
    """What a fit leaves for the prediction methods (torch, on the device of the computation)."""

    __slots__ = ("covariance_type", "dtype", "device", "origin", "params", "numpy_output",
                 "n_features", "feature_names")


class GaussianMixture:
    """A Gaussian mixture fitted by exact EM, with the scikit-learn estimator interface.

    The constructor only stores its arguments (:meth:`get_params`, :meth:`set_params`,
    ``sklearn.base.clone`` work as for scikit-learn's estimators); they are checked by :meth:`fit`.
    The arguments up to ``verbose_interval`` are those of ``sklearn.mixture.GaussianMixture``.

    **Input and output types.** Data can be numpy arrays, pandas DataFrames, nested lists or
    torch tensors. numpy in, numpy out: methods given numpy-like data return numpy arrays, and a
    mixture fitted on numpy-like data has numpy arrays as learned attributes. torch in, torch
    out: given tensors, methods return tensors (on ``device``), and a mixture fitted on tensors
    (or on chunks that are tensors, or on no chunks) has tensors as attributes. Integer data are
    converted; scipy sparse matrices are refused with a :class:`TypeError`.

    :param int n_components: number of mixture components K (>= 1).
    :param str covariance_type: ``"full"`` (one full covariance per component), ``"tied"`` (one
        full covariance shared by all), ``"diag"`` (one diagonal covariance per component) or
        ``"spherical"`` (one variance per component).
    :param float tol: EM stops when the mean log-likelihood per sample improves by less than
        ``tol`` between iterations.
    :param float reg_covar: added to the diagonal of every covariance; keeps components from
        collapsing. With ``0`` a component that collapses (its covariance not positive definite
        at the precision of the computation) raises :class:`ValueError`.
    :param int max_iter: maximum number of EM iterations per initialization (>= 0).
    :param int n_init: number of initializations; the run with the largest lower bound is kept.
    :param str init_params: ``"kmeans"`` (k-means++ seeds refined by Lloyd iterations),
        ``"k-means++"`` (k-means++ seeds, each sample assigned to the nearest), ``"random"``
        (random responsibilities) or ``"random_from_data"`` (K distinct samples as means, each
        sample assigned to the nearest); ``"kmeans++"`` is accepted for ``"k-means++"``. The
        initial parameters are the M step of these responsibilities; a component whose initial
        covariance collapsed starts from the covariance of the whole data.
    :param weights_init: initial weights, shape ``(K,)``, non-negative, summing to 1.
    :param means_init: initial means, shape ``(K, d)``.
    :param precisions_init: initial precision matrices (inverse covariances): shape
        ``(K, d, d)`` for full, ``(d, d)`` for tied, ``(K, d)`` for diag, ``(K,)`` for spherical.
        Parameters given here replace those of ``init_params``; when all three are given,
        ``init_params`` and ``n_init`` are not used.
    :param random_state: seed of the initialization: an integer, a
        ``numpy.random.RandomState`` or ``numpy.random.Generator`` (a seed is drawn from it), or
        ``None`` (drawn from torch's global RNG). Also the default seed of :meth:`sample`.
    :param bool warm_start: start each :meth:`fit` after the first from the parameters of the
        previous one (with one initialization).
    :param int verbose: 0 silent, 1 prints each initialization and its end, 2 also the lower
        bound every ``verbose_interval`` iterations.
    :param int verbose_interval: iterations between two lines of ``verbose`` output.
    :param str algorithm: ``"auto"``, ``"gram"`` or ``"centered"``: how the statistics are
        computed while fitting (see the module documentation). Prediction methods always use
        the centered computation.
    :param dtype: floating point type of the computation: ``torch.float64`` (default for
        ``None``) or ``torch.float32`` (numpy types and their names are accepted too).
    :param device: device of the computation (``"cpu"``, ``"cuda"``, ``"auto"``); default: the
        device of the data given to :meth:`fit` (CPU for numpy and pandas input).

    Attributes after :meth:`fit`: ``weights_`` ``(K,)``, ``means_`` ``(K, d)``,
    ``covariances_`` and ``precisions_`` (shapes as ``precisions_init``),
    ``precisions_cholesky_`` (upper-triangular ``U`` with ``U U^T`` the precision, same shapes),
    ``converged_``, ``n_iter_``, ``lower_bound_`` (mean log-likelihood per sample computed by the
    last E step of the best run), ``lower_bounds_`` (that of every iteration), ``history_``
    (DataFrame: ``iteration``, ``log_likelihood`` per sample, ``seconds`` since the start of the
    run), ``n_features_in_`` and, for a DataFrame with string column names, ``feature_names_in_``.
    """

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", weights_init=None, means_init=None,
                 precisions_init=None, random_state=None, warm_start=False, verbose=0,
                 verbose_interval=10, algorithm="auto", dtype=None, device=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.algorithm = algorithm
        self.dtype = dtype
        self.device = device

    # ------------------------------------------------------------------ estimator protocol
    @classmethod
    def _get_param_names(cls):
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep=True):
        """The constructor arguments as a dict (scikit-learn's estimator protocol).

        :param bool deep: accepted for compatibility (no argument is itself an estimator).
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set constructor arguments by name; they are checked by :meth:`fit`.

        :returns: ``self``.
        :raises ValueError: an unknown name.
        """
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for GaussianMixture; valid "
                                 f"parameters are: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = []
        for name in self._get_param_names():
            value = getattr(self, name)
            if isinstance(value, (np.ndarray, torch.Tensor)):
                shown.append(f"{name}=<array of shape {tuple(value.shape)}>")
            elif value is not defaults[name] and not (
                    isinstance(value, (str, int, float, bool)) and type(value) is type(defaults[name])
                    and value == defaults[name]):
                shown.append(f"{name}={value!r}")
        return f"GaussianMixture({', '.join(shown)})"

    def __sklearn_tags__(self):
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type="density_estimator", target_tags=TargetTags(required=False),
                    input_tags=InputTags())

    def _settings(self):
        """The constructor arguments, checked and normalized (the attributes are left as given)."""
        s = {
            "n_components": check_positive_int(self.n_components, "n_components"),
            "covariance_type": check_choice(self.covariance_type, "covariance_type", COVARIANCE_TYPES),
            "tol": check_float(self.tol, "tol", minimum=0.0),
            "reg_covar": check_float(self.reg_covar, "reg_covar", minimum=0.0),
            "max_iter": check_int(self.max_iter, "max_iter", minimum=0),
            "n_init": check_positive_int(self.n_init, "n_init"),
            "init": check_choice(self.init_params, "init_params", INIT_METHODS + tuple(INIT_ALIASES)),
            "warm_start": check_bool(self.warm_start, "warm_start"),
            "verbose": check_int(int(self.verbose) if isinstance(self.verbose, bool) else self.verbose,
                                 "verbose", minimum=0),
            "verbose_interval": check_positive_int(self.verbose_interval, "verbose_interval"),
            "algorithm": check_choice(self.algorithm, "algorithm", ALGORITHMS),
            "dtype": check_dtype(self.dtype),
            "device": resolve_device(self.device, default=None),
        }
        s["init"] = INIT_ALIASES.get(s["init"], s["init"])
        return s

    def _seed(self):
        """The seed of this fit's random draws, from ``random_state``."""
        rs = self.random_state
        if rs is None:
            return int(torch.randint(0, 2**62, (1,)).item())
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(0, 2**31 - 1))
        if isinstance(rs, np.random.Generator):
            return int(rs.integers(0, 2**62))
        if isinstance(rs, (bool, np.bool_)) or not isinstance(rs, numbers.Integral):
            raise TypeError(f"random_state must be an integer, a numpy RandomState or Generator, or "
                            f"None, got {rs!r} ({type(rs).__name__})")
        return check_int(rs, "random_state", minimum=0, maximum=2**63 - 1)

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Estimate the parameters by EM.

        ``X`` is held in memory, or given **in chunks** for data larger than memory: a list of
        arrays, a :class:`torch.utils.data.DataLoader`, a :class:`pyro_vae.data.CsvChunks`, or
        any object whose ``__iter__`` returns a new iterator over ``(n_i, d)`` arrays each time
        (EM passes over the data once per iteration; a one-shot generator is refused). A chunk
        that is a tuple or list, as a DataLoader over a TensorDataset yields, contributes its
        first element (labels are ignored). Only one chunk is in memory at a time; the result
        equals the in-memory fit of the concatenated chunks up to rounding.

        **Under torch.distributed** (a process group of more than one process, or a job launched
        by ``torchrun``, whose process group is then joined as :func:`pyro_vae.fit` does), each
        process passes *its own part* of the data, in memory or in chunks, and the statistics are
        summed over processes with ``all_reduce``: the fit is that of the union of all parts and
        is identical on every process.

        Data-dependent initializations read the rows of rank 0 (of the only process, without
        torch.distributed): all of them for data in memory, the first ``100,000`` for data in
        chunks (all when there are fewer); rank 0 sends the initial parameters to the other
        processes. Given ``weights_init``, ``means_init`` and ``precisions_init`` need no data.

        :param X: data, shape ``(N, d)``, or chunks of such arrays as described above.
        :param y: ignored (scikit-learn convention).
        :returns: ``self``.
        """
        s = self._settings()
        seed = self._seed()
        k, ct = s["n_components"], s["covariance_type"]
        chunks = chunks_of(X)
        if chunks is None:
            device = s["device"] or (X.device if isinstance(X, torch.Tensor) else torch.device("cpu"))
            X_checked = as_2d_tensor(X, s["dtype"], device, "X")
            distributed.init_process_group(device)
            source = MemorySource(X_checked)
            numpy_output, names = not isinstance(X, torch.Tensor), feature_names(X)
        else:
            distributed.init_process_group(s["device"] or torch.device("cpu"))
            source = ChunkSource(chunks, s["dtype"], s["device"])
            source.first_pass()
            numpy_output, names = source.numpy_input, None
        if source.n < k:
            raise ValueError(f"X has {source.n} samples but n_components={k}; "
                             "use at most as many components as samples")
        previous = getattr(self, "_fitted", None) if s["warm_start"] else None
        if previous is not None and (previous.n_features != source.d or previous.covariance_type != ct):
            raise ValueError(
                f"warm_start continues the previous fit ({previous.n_features} features, "
                f"covariance_type={previous.covariance_type!r}), but X has {source.d} features and "
                f"covariance_type={ct!r}; set warm_start=False to start afresh")

        def floor(means):
            return resolution(means, source.origin, source.mean_square, "centered")

        if previous is not None:
            p = previous.params
            starts = [MixtureParams(*(None if t is None else t.to(source.device, s["dtype"]) for t in (
                p.weights, p.means + previous.origin - source.origin, p.cov, p.prec_chol)))]
        else:
            given = given_parameters(self.weights_init, self.means_init, self.precisions_init, k, ct,
                                     source)
            generator = torch.Generator().manual_seed(seed)
            n_runs = 1 if all(v is not None for v in given.values()) else s["n_init"]
            starts = (initial_parameters(source, k, ct, s["init"], generator, given, s["reg_covar"], floor)
                      for _ in range(n_runs))
        best = None
        for run, params in enumerate(starts):
            result = self._run_em(source, params, s, run)
            if best is None or result["lower_bound"] > best["lower_bound"]:
                best = result
        if not best["converged"] and s["max_iter"] > 0:
            warnings.warn(
                f"EM did not converge in max_iter={s['max_iter']} iterations (tol={s['tol']}); "
                "increase max_iter or tol, or check the data for degenerate features",
                ConvergenceWarning, stacklevel=2,
            )
        fitted = _Fitted()
        fitted.covariance_type, fitted.dtype, fitted.device = ct, s["dtype"], source.device
        fitted.origin, fitted.params, fitted.numpy_output = source.origin, best["params"], numpy_output
        fitted.n_features, fitted.feature_names = source.d, names
        self._set_attributes(fitted, best)
        return self

    def _run_em(self, source, params, s, run):
        """EM iterations from ``params`` until the lower bound changes by less than ``tol``."""
        verbose, interval = s["verbose"] and distributed.is_main_process(), s["verbose_interval"]
        if verbose:
            print(f"Initialization {run}", flush=True)
        lower_bound, converged, n_iter, history = -math.inf, False, 0, []
        t0 = t_last = time.perf_counter()
        for n_iter in range(1, s["max_iter"] + 1):
            previous = lower_bound
            lower_bound, params = self._em_step(source, params, s)
            now = time.perf_counter()
            history.append((n_iter, lower_bound, now - t0))
            change = lower_bound - previous
            if verbose and n_iter % interval == 0:
                detail = f"\t time lapse {now - t_last:.5f}s\t ll change {change:.5f}" if s["verbose"] >= 2 else ""
                print(f"  Iteration {n_iter}{detail}", flush=True)
                t_last = now
            if abs(change) < s["tol"]:
                converged = True
                break
        if verbose:
            state = "converged" if converged else "did not converge"
            detail = (f" time lapse {time.perf_counter() - t0:.5f}s\t lower bound {lower_bound:.5f}"
                      if s["verbose"] >= 2 else "")
            print(f"Initialization {state}.{detail}", flush=True)
        return {"params": params, "lower_bound": lower_bound, "converged": converged,
                "n_iter": n_iter, "history": history}

    @staticmethod
    def _em_step(source, params, s):
        """One E step and one M step over all rows of all processes.

        With ``algorithm="auto"`` the gram form is used while its error estimate allows, and the
        iteration is redone with the centered computation when the new parameters fail the
        check (or collapse).

        :returns: ``(mean log-likelihood under the incoming parameters, new parameters)``.
        """
        ct, algorithm, reg = s["covariance_type"], s["algorithm"], s["reg_covar"]
        kind, d = scatter_kind(ct), source.d

        def floor(form):
            return lambda means: resolution(means, source.origin, source.mean_square, form)

        if algorithm == "gram" or (algorithm == "auto" and gram_error(params, ct) <= GRAM_TOLERANCE):
            total, stats = source.gram_statistics(gram_log_prob_coefficients(params, ct), kind)
            new = m_step(*moments_from_gram(stats, kind, d), ct, reg, floor("gram"))
            if new is not None and (algorithm == "gram" or gram_error(new, ct) <= GRAM_TOLERANCE):
                return total / source.n, new
            if algorithm == "gram":
                raise collapse_error(reg)
        total, nk, sums, scatter = source.centered_statistics(params, ct)
        new = m_step(nk, sums, scatter, ct, reg, floor("centered"))
        if new is None:
            raise collapse_error(reg)
        return total / source.n, new

    def _set_attributes(self, fitted, best):
        ct, p = fitted.covariance_type, fitted.params
        out = _to_numpy if fitted.numpy_output else (lambda t: t)
        self._fitted = fitted
        self.weights_ = out(p.weights)
        self.means_ = out(p.means + fitted.origin)
        self.covariances_ = out(p.covariances(ct))
        self.precisions_ = out(precisions_from_prec_chol(p.prec_chol, ct))
        self.precisions_cholesky_ = out(p.prec_chol)
        self.converged_ = best["converged"]
        self.n_iter_ = best["n_iter"]
        self.lower_bound_ = best["lower_bound"]
        self.lower_bounds_ = [h[1] for h in best["history"]]
        self.history_ = pd.DataFrame(best["history"], columns=["iteration", "log_likelihood", "seconds"])
        self.n_features_in_ = fitted.n_features
        if fitted.feature_names is not None:
            self.feature_names_in_ = fitted.feature_names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def fit_predict(self, X, y=None):
        """:meth:`fit`, then :meth:`predict` on the same data (in memory or in chunks).

        :returns: component labels, shape ``(N,)``.
        """
        return self.fit(X).predict(X)

    # ------------------------------------------------------------------ prediction
    def _state(self):
        fitted = getattr(self, "_fitted", None)
        if fitted is None:
            raise _not_fitted_error_class()(
                "this GaussianMixture is not fitted yet; call fit(X) with appropriate arguments first")
        return fitted

    def _checked(self, X, name="X"):
        """``X`` in memory as a tensor on the fitted device, with the fitted number of features."""
        f = self._state()
        t = as_2d_tensor(X, f.dtype, f.device, name)
        self._check_features(t.shape[1], X)
        return t

    def _check_features(self, d, X=None):
        f = self._fitted
        if d != f.n_features:
            raise ValueError(f"X has {d} features, but GaussianMixture is expecting "
                             f"{f.n_features} features as input")
        names = feature_names(X)
        if f.feature_names is not None and names is not None and list(names) != list(f.feature_names):
            raise ValueError("the feature names of X differ from those seen by fit: "
                             f"{list(names)[:5]} against {list(f.feature_names)[:5]}; pass the "
                             "columns of the training data, in the same order")

    def _blocks(self, X):
        """The rows of ``X`` (in memory or in chunks), checked: ``(tensor, numpy output?)`` per block."""
        f = self._state()
        chunks = chunks_of(X)
        if chunks is None:
            yield self._checked(X), not isinstance(X, torch.Tensor)
            return
        empty = True
        for _, t, was_tensor in checked_chunks(chunks, f.dtype, f.device):
            self._check_features(t.shape[1])
            empty = False
            yield t, not was_tensor
        if empty:
            raise ValueError("X is empty: it holds no rows")

    def _per_row(self, X, fn):
        """``fn`` of the rows of ``X``, concatenated, in the output type of ``X`` (its first chunk's)."""
        parts, numpy_output = [], None
        for t, numpy_block in self._blocks(X):
            parts.append(fn(t))
            numpy_output = numpy_block if numpy_output is None else numpy_output
        result = parts[0] if len(parts) == 1 else torch.cat(parts)
        return _to_numpy(result) if numpy_output else result

    def _weighted_log_prob(self, X):
        """``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape ``(N, K)``."""
        f = self._fitted
        return weighted_log_prob_centered(X - f.origin, f.params, f.covariance_type)

    def _log_resp(self, X):
        wlp = self._weighted_log_prob(X)
        return wlp - torch.logsumexp(wlp, dim=1, keepdim=True)

    def score_samples(self, X):
        """Log-likelihood ``log p(x_n)`` of each sample.

        :param X: shape ``(N, d)``, in memory or in chunks (see :meth:`fit`).
        :returns: shape ``(N,)`` (over all chunks, in order).
        """
        return self._per_row(X, lambda t: torch.logsumexp(self._weighted_log_prob(t), dim=1))

    def _log_likelihood(self, X):
        """``(sum_n log p(x_n), N)`` of ``X`` in memory or in chunks, one chunk at a time."""
        total, n = 0.0, 0
        for t, _ in self._blocks(X):
            total += float(torch.logsumexp(self._weighted_log_prob(t), dim=1).sum())
            n += t.shape[0]
        return total, n

    def score(self, X, y=None):
        """Mean log-likelihood per sample (a float) of ``X``, in memory or in chunks.

        Under torch.distributed this is the score of this process's ``X`` only.
        """
        total, n = self._log_likelihood(X)
        return total / n

    def predict_proba(self, X):
        """Responsibilities ``p(z = k | x_n)``.

        :param X: shape ``(N, d)``, in memory or in chunks.
        :returns: shape ``(N, K)``; rows sum to 1.
        """
        return self._per_row(X, lambda t: torch.exp(self._log_resp(t)))

    def predict(self, X):
        """Most probable component of each sample.

        :param X: shape ``(N, d)``, in memory or in chunks.
        :returns: integer labels, shape ``(N,)``.
        """
        return self._per_row(X, lambda t: self._weighted_log_prob(t).argmax(dim=1))

    def sample(self, n_samples=1, seed=None):
        """Draw samples from the fitted mixture.

        :param int n_samples: number of samples.
        :param int seed: seed; default ``random_state`` when it is an integer, else one drawn
            from torch's global RNG.
        :returns: ``(X, labels)``: samples of shape ``(n_samples, d)`` and their components,
            shape ``(n_samples,)`` (numpy arrays if the mixture was fitted on numpy-like data).
        """
        f = self._state()
        n_samples = check_positive_int(n_samples, "n_samples")
        if seed is None:
            rs = self.random_state
            integer = isinstance(rs, numbers.Integral) and not isinstance(rs, (bool, np.bool_))
            seed = int(rs) if integer else int(
                torch.randint(0, 2**62, (1,)).item())
        generator = torch.Generator().manual_seed(check_seed(seed, "seed"))
        p = f.params
        labels = torch.multinomial(p.weights.detach().cpu(), n_samples, replacement=True,
                                   generator=generator)
        noise = torch.randn(n_samples, f.n_features, generator=generator, dtype=f.dtype)
        labels, noise = labels.to(f.device), noise.to(f.device)
        scale = self._scale()
        if f.covariance_type == "full":
            out = torch.empty_like(noise)
            for k in range(p.weights.shape[0]):  # not a hot path; avoids (n, d, d) intermediates
                idx = (labels == k).nonzero(as_tuple=True)[0]
                out[idx] = noise[idx] @ scale[k].T
        elif f.covariance_type == "tied":
            out = noise @ scale.T
        else:
            out = noise * scale[labels]
        X, labels = out + p.means[labels] + f.origin, labels
        return (_to_numpy(X), _to_numpy(labels)) if f.numpy_output else (X, labels)

    def _scale(self):
        """Cholesky factor of the covariances: full ``(K, d, d)``, tied ``(d, d)``, else ``(K, d)``."""
        f = self._fitted
        ct, cov = f.covariance_type, f.params.covariances(f.covariance_type)
        if ct in ("full", "tied"):
            return torch.linalg.cholesky(cov)
        if ct == "diag":
            return cov.sqrt()
        return cov.sqrt()[:, None].expand(f.params.weights.shape[0], f.n_features)

    # ------------------------------------------------------------------ model selection
    def n_parameters(self):
        """Number of free parameters: covariances, means and ``K - 1`` weights."""
        f = self._state()
        k, d = f.params.weights.shape[0], f.n_features
        cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d,
               "spherical": k}[f.covariance_type]
        return cov + k * d + k - 1

    def bic(self, X):
        """Bayesian information criterion ``-2 log L + p log N`` on ``X`` (in memory or in chunks; lower is better)."""
        return self.information_criteria(*self._log_likelihood(X))["bic"]

    def aic(self, X):
        """Akaike information criterion ``-2 log L + 2 p`` on ``X`` (in memory or in chunks; lower is better)."""
        return self.information_criteria(*self._log_likelihood(X))["aic"]

    def information_criteria(self, total_log_likelihood, n_samples):
        """BIC and AIC from a total log-likelihood already computed (e.g. the sum of
        :meth:`score_samples`), without another pass over the data.

        :param float total_log_likelihood: ``log L``, summed over the samples.
        :param int n_samples: ``N``, the number of samples summed.
        :returns: ``{"bic": -2 log L + p log N, "aic": -2 log L + 2 p}`` with ``p`` :meth:`n_parameters`.
        """
        p = self.n_parameters()
        return {"bic": -2.0 * total_log_likelihood + p * math.log(n_samples),
                "aic": -2.0 * total_log_likelihood + 2 * p}

    # ------------------------------------------------------------------ the ELBO view
    def elbo(self, X, resp=None):
        """Per-sample evidence lower bound for assignment distributions ``q(z = k | x_n) = resp``.

        ``ELBO_n = sum_k r_nk (log pi_k + log N(x_n | mu_k, Sigma_k) - log r_nk)`` (with
        ``0 log 0 = 0``) ``= log p(x_n) - KL(q(z|x_n) || p(z|x_n))``: it equals
        :meth:`score_samples` for the exact posterior (:meth:`predict_proba`, the E step) and is
        smaller for any other ``resp``.

        :param X: data in memory, shape ``(N, d)``.
        :param resp: responsibilities, shape ``(N, K)``, non-negative rows summing to 1; default
            the exact posterior.
        :returns: shape ``(N,)``.
        """
        f = self._state()
        t = self._checked(X)
        wlp = self._weighted_log_prob(t)
        if resp is None:
            log_resp = wlp - torch.logsumexp(wlp, dim=1, keepdim=True)
            resp = log_resp.exp()
        else:
            resp = as_tensor(resp, f.dtype, f.device, "resp")
            if resp.shape != wlp.shape:
                raise ValueError(f"resp must have shape {tuple(wlp.shape)}, got {tuple(resp.shape)}")
            if not torch.isfinite(resp).all() or (resp < 0).any():
                raise ValueError("resp must contain finite non-negative values")
            if (resp.sum(1) - 1).abs().max() > 1e-6:
                raise ValueError("each row of resp must sum to 1")
            log_resp = torch.where(resp > 0, resp.log(), torch.zeros_like(resp))
        terms = torch.where(resp > 0, resp * (wlp - log_resp), torch.zeros_like(resp))
        out = terms.sum(1)
        return out if isinstance(X, torch.Tensor) else _to_numpy(out)

    # ------------------------------------------------------------------ Pyro model and guide
    def _pyro_x(self, x):
        f = self._state()
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (N, {f.n_features})")
        if x.dim() != 2 or x.shape[1] != f.n_features:
            raise ValueError(f"x must have shape (N, {f.n_features}), got {tuple(x.shape)}")
        return x.to(device=f.device, dtype=f.dtype)

    def model(self, x, num_data=None):
        """The fitted mixture as a Pyro model: ``z ~ Categorical(weights)``, ``x ~ N(mu_z, Sigma_z)``.

        Site ``"z"`` (component index) and observed site ``"x"``, in ``pyro.plate("data")``.
        ``z`` can be enumerated (``pyro.infer.config_enumerate``), which sums it out exactly.

        :param torch.Tensor x: data, shape ``(N, d)``; a minibatch when ``num_data`` is given.
        :param int num_data: size of the full data set (default ``N``).
        """
        x = self._pyro_x(x)
        logits = torch.log(self._fitted.params.weights)
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Categorical(logits=logits))
            pyro.sample("x", self._component(z), obs=x)

    def guide(self, x, num_data=None):
        """The exact posterior as a Pyro guide: ``z ~ Categorical(p(z | x))`` (the E step).

        :param torch.Tensor x: data, shape ``(N, d)``.
        :param int num_data: size of the full data set (default ``N``).
        """
        x = self._pyro_x(x)
        log_resp = self._log_resp(x)
        with data_plate(x, num_data):
            pyro.sample("z", dist.Categorical(logits=log_resp))

    def _component(self, z):
        """``p(x | z)`` for component indices ``z`` of any shape."""
        f = self._fitted
        scale, means = self._scale(), f.params.means + f.origin
        if f.covariance_type == "full":
            return dist.MultivariateNormal(means[z], scale_tril=scale[z])
        if f.covariance_type == "tied":
            return dist.MultivariateNormal(means[z], scale_tril=scale)
        return dist.Normal(means[z], scale[z]).to_event(1)


# ---------------------------------------------------------------------------------------
def _to_numpy(t):
    return t.detach().cpu().numpy()
