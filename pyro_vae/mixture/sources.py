"""Data for the Gaussian mixture: input conversion, and the rows EM passes over, in one or many chunks.

EM passes over the data once per iteration. A *source* is those rows, relative to their mean
(the origin of the fit), and computes what an iteration needs from them: the sufficient
statistics of the responsibilities under given parameters (counts, sums and scatter per
component), summed over its chunks and, under :mod:`torch.distributed`, over all processes.

* :class:`ChunkSource` -- rows given in chunks (a list of arrays, a DataLoader, a
  :class:`pyro_vae.data.CsvChunks`, any re-iterable of arrays): one chunk is in memory at a time.
* :class:`MemorySource` -- rows held in memory: one chunk, whose gram features are computed once
  and kept (up to ``FEATURE_CACHE_BYTES``).

Input of the estimator's methods is converted by :func:`as_tensor` and :func:`as_2d_tensor`
(numpy arrays, torch tensors, pandas DataFrames, nested lists; scipy sparse matrices are refused),
and :func:`chunks_of` tells data in chunks from one array.
"""

import collections.abc
import logging

import numpy as np
import pandas as pd
import torch

from pyro_vae import distributed
from pyro_vae.checks import check_finite
from pyro_vae.mixture.gaussian import (
    chunk_rows,
    effective_counts,
    gram_block_rows,
    gram_features,
    n_gram_features,
    normalize_,
    scatter_centered,
    scatter_kind,
    weighted_log_prob_centered,
)
from pyro_vae.mixture.parallel import map_blocks

__all__ = [
    "FEATURE_CACHE_BYTES",
    "INIT_ROWS",
    "as_tensor",
    "as_2d_tensor",
    "is_sparse",
    "check_dtype",
    "feature_names",
    "chunks_of",
    "checked_chunks",
    "first_rows",
    "ChunkSource",
    "MemorySource",
]

log = logging.getLogger(__name__)

# the gram features of data in memory are kept up to this many bytes
FEATURE_CACHE_BYTES = 1 << 28
# data-dependent initializations of data in chunks use this many rows of rank 0
INIT_ROWS = 100_000
# the centered M step recomputes the scatter about the new means when a mean moved so far that
# the update from the incoming means loses more than about 1e-12 (relative)
_MOVE_RATIO = 1e3


# ---------------------------------------------------------------------------------------
# input conversion
# ---------------------------------------------------------------------------------------
def is_sparse(value):
    """Whether ``value`` is a scipy sparse matrix or array, or a sparse torch tensor."""
    if isinstance(value, torch.Tensor):
        return value.layout != torch.strided
    return type(value).__module__.startswith("scipy.sparse")


def as_tensor(value, dtype, device, name):
    """numpy array, torch tensor, pandas object or nested list -> tensor of ``dtype`` on ``device``.

    :raises TypeError: sparse input, or objects that are not numbers.
    :raises ValueError: strings, complex numbers, ragged lists.
    """
    if is_sparse(value):
        raise TypeError(f"{name} is a sparse matrix, but the Gaussian mixture needs dense data; "
                        "convert it with .toarray() (or .to_dense() for torch) if it fits in memory")
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
        if np.iscomplexobj(arr):
            raise ValueError(f"{name} holds complex numbers: Complex data not supported; pass "
                             "real-valued data")
        if arr.dtype == object:
            try:
                arr = arr.astype(np.float64)
            except TypeError as e:
                raise TypeError(f"{name} must contain numbers: {e}") from None
            except ValueError:
                raise ValueError(f"{name} must contain numbers, got an array of objects that are "
                                 "not all numbers") from None
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must contain numbers, got an array of dtype {arr.dtype}")
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if not arr.flags.writeable:  # e.g. np.load(..., mmap_mode="r"): torch wants writable memory
            arr = arr.copy()
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError(f"{name} holds complex numbers: Complex data not supported; pass "
                         "real-valued data")
    return t.to(device=device, dtype=dtype)


def as_2d_tensor(X, dtype, device, name="X"):
    """:func:`as_tensor`, then checked: 2-D, at least one row and one column, all finite.

    :returns: ``(N, d)`` tensor.
    """
    t = as_tensor(X, dtype, device, name)
    if t.dim() != 2:
        hint = ("; Reshape your data: reshape 1-D data with X.reshape(-1, 1) (one feature) or "
                "X.reshape(1, -1) (one sample)") if t.dim() == 1 else ""
        raise ValueError(f"{name} must be 2-D with shape (n_samples, n_features), got shape "
                         f"{tuple(t.shape)}{hint}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 "
                         "is required.")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has 0 sample(s) (shape={tuple(t.shape)}) while a minimum of 1 "
                         "is required.")
    check_finite(t, name)
    return t


def check_dtype(dtype):
    """``None`` (float64), a torch or numpy float type or its name -> torch.float64 or torch.float32."""
    if dtype is None:
        return torch.float64
    names = {"float64": torch.float64, "float32": torch.float32}
    if isinstance(dtype, str):
        if dtype in names:
            return names[dtype]
    elif isinstance(dtype, torch.dtype):
        if dtype in (torch.float64, torch.float32):
            return dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
        if name in ("float64", "float32"):
            return names[name]
    raise TypeError(f"dtype must be torch.float64 or torch.float32 (or None for float64), got {dtype!r}")


def feature_names(X):
    """The column names of a DataFrame whose columns are all strings, as a numpy array; else ``None``."""
    if isinstance(X, pd.DataFrame) and len(X.columns) and all(isinstance(c, str) for c in X.columns):
        return np.asarray(X.columns, dtype=object)
    return None


def _is_array(x):
    return isinstance(x, (np.ndarray, torch.Tensor, pd.DataFrame))


def chunks_of(X):
    """The chunks of ``X`` if it is given in chunks, ``None`` if it is one in-memory array.

    Chunks are a list or tuple of 2-D arrays (or of ``(features, labels)`` pairs), or any
    iterable that is not an iterator (a DataLoader, an object whose ``__iter__`` starts afresh).

    :raises ValueError: a one-shot iterator (EM passes over the data many times).
    """
    if isinstance(X, (np.ndarray, torch.Tensor, pd.DataFrame, pd.Series, str, bytes)) or is_sparse(X):
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


def checked_chunks(chunks, dtype, device, n_features=None):
    """The non-empty chunks as checked 2-D tensors of ``dtype`` on ``device``.

    A chunk that is a tuple or list (as a DataLoader over a TensorDataset yields) contributes its
    first element. ``device=None`` means the first chunk's (CPU for numpy).

    :param int n_features: required number of columns (default: that of the first chunk).
    :yields: ``(index, tensor, whether the chunk was a tensor)``.
    """
    for i, c in enumerate(chunks):
        if isinstance(c, (list, tuple)) and len(c) and _is_array(c[0]):
            c = c[0]
        was_tensor = isinstance(c, torch.Tensor)
        if device is None:
            device = c.device if isinstance(c, torch.Tensor) else torch.device("cpu")
        name = f"chunk {i} of X"
        t = as_tensor(c, dtype, device, name)
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D with shape (n_samples, n_features), got "
                             f"shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            continue
        if n_features is not None and t.shape[1] != n_features:
            raise ValueError(f"{name} has {t.shape[1]} features but the data has {n_features}; "
                             "every chunk needs the same features")
        n_features = t.shape[1]
        check_finite(t, name)
        yield i, t, was_tensor


def first_rows(chunks, rows):
    """The first ``rows`` rows of data in chunks (all, if fewer), as one tensor; ``None`` without rows.

    Reads only as many chunks as it needs.

    :param chunks: an iterable of ``(n_i, d)`` tensors.
    """
    parts, n = [], 0
    for block in chunks:
        parts.append(block[:rows - n])
        n += parts[-1].shape[0]
        if n >= rows:
            break
    return torch.cat(parts) if parts else None


# ---------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------
class ChunkSource:
    """This process's rows as a sequence of chunks, passed over once per EM iteration.

    After :meth:`first_pass`: ``n`` (rows over all processes), ``d``, ``device``, ``origin``
    (the mean of all rows, ``(d,)``), ``mean_square`` (mean of the squared rows, ``(d,)``) and
    ``numpy_input`` (whether this process's first chunk was not a tensor; ``False`` without
    chunks). Iterating yields the chunks as tensors minus ``origin``.

    :param chunks: the chunks (see :func:`chunks_of`).
    :param torch.dtype dtype: floating point type of the computation.
    :param device: device of the computation; ``None``: that of the first chunk.
    """

    def __init__(self, chunks, dtype, device):
        self.chunks, self.dtype, self.device = chunks, dtype, device
        self.n = self.d = self.origin = self.mean_square = None
        self.numpy_input = None

    def _tensors(self):
        for _, t, was_tensor in checked_chunks(self.chunks, self.dtype, self.device, self.d):
            if self.numpy_input is None:
                self.numpy_input = not was_tensor
            if self.device is None:
                self.device = t.device
            if self.d is None:
                self.d = t.shape[1]
            yield t

    def first_pass(self):
        """Count, check and sum the rows of all processes; sets ``n``, ``d``, ``origin``, ``mean_square``.

        :raises ValueError: no rows at all, or processes with different numbers of features.
        """
        n, total = 0, None
        for t in self._tensors():
            if total is None:
                total = torch.zeros(2, self.d, dtype=self.dtype, device=self.device)
            n += t.shape[0]
            total[0] += t.sum(0)
            rows = chunk_rows(self.d)   # squares of a block at a time: no temporary (n, d) array
            for s in range(0, t.shape[0], rows):
                total[1] += t[s:s + rows].square().sum(0)
        if self.device is None:
            self.device = torch.device("cpu")
        local_d = self.d
        if distributed.is_initialized() and distributed.get_world_size() > 1:
            dims = torch.tensor([local_d or 0, -local_d if local_d else -(2 ** 40)],
                                dtype=torch.float64, device=self.device)
            distributed.all_reduce(dims, "max", "all_reduce of the number of features")
            d_max, d_min = int(dims[0]), int(-dims[1])
            if d_max and d_min != d_max:
                raise ValueError(f"the processes hold data with different numbers of features "
                                 f"({d_min} to {d_max}); every part needs the same features")
            self.d = d_max or None
        if self.d is None:
            raise ValueError("X is empty: it holds no rows")
        self.numpy_input = bool(self.numpy_input)
        if total is None:  # this process holds no rows
            total = torch.zeros(2, self.d, dtype=self.dtype, device=self.device)
        count = torch.tensor([float(n)], dtype=self.dtype, device=self.device)
        sums = distributed.all_reduce_sum(torch.cat([count, total.reshape(-1)]), "all_reduce of the data size")
        self.n = int(round(float(sums[0])))
        self.origin = sums[1:1 + self.d] / self.n
        self.mean_square = sums[1 + self.d:] / self.n
        if local_d is None:
            log.warning("this process (rank %d) holds no data", distributed.get_rank())

    def __iter__(self):
        for t in self._tensors():
            yield t - self.origin

    def init_rows(self):
        """The rows a data-dependent initialization uses: the first ``INIT_ROWS`` (or all, if fewer)."""
        rows = first_rows(self, INIT_ROWS)
        if rows is None:
            return torch.empty(0, self.d, dtype=self.dtype, device=self.device)
        return rows

    # ------------------------------------------------------------------ statistics
    def _feature_chunks(self, kind):
        """Per chunk, ``(rows, features)``: ``features(s, e)`` are the gram features of its rows
        ``s:e``, transposed, ``(F, e - s)`` (a new tensor per call: calls may run concurrently)."""
        n_features = n_gram_features(kind, self.d)
        for x in self:
            def features(s, e, x=x):
                out = torch.empty(n_features, e - s, dtype=x.dtype, device=x.device)
                return gram_features(x[s:e], kind, out.T).T
            yield x.shape[0], features

    def gram_statistics(self, q, kind):
        """The E step and the M step statistics of all rows from their gram features.

        The rows of each chunk are taken in blocks of
        :func:`~pyro_vae.mixture.gaussian.gram_block_rows`, run side by side on the CPU's threads
        (:func:`~pyro_vae.mixture.parallel.map_blocks`) and summed in block order, so the result
        does not depend on the number of threads. Components run along the rows of the products,
        ``(K, F) x (F, r)`` and ``(K, r) x (r, F)``: for a few components and many samples the
        fastest layout for both.

        :param q: :func:`~pyro_vae.mixture.gaussian.gram_log_prob_coefficients`, ``(F, K)``.
        :param str kind: ``"matrix"`` or ``"vector"`` (:func:`~pyro_vae.mixture.gaussian.scatter_kind`).
        :returns: ``(sum_n log p(x_n), sum_n r_nk features(x_n) (K, F))``, summed over processes.
        """
        n_features, k = q.shape
        q_t = q.T.contiguous()
        rows = gram_block_rows(n_features, k)
        out = torch.zeros(1 + k * n_features, dtype=q.dtype, device=q.device)
        total, stats = out[0], out[1:].view(k, n_features)
        for n_rows, features in self._feature_chunks(kind):
            starts = range(0, n_rows, rows)

            def block(i):
                f_t = features(starts[i], min(starts[i] + rows, n_rows))
                resp = torch.mm(q_t, f_t)
                return normalize_(resp, resp, dim=0).sum(), torch.mm(resp, f_t.T)

            for block_total, block_stats in map_blocks(block, len(starts), q.device):
                total += block_total
                stats += block_stats
        distributed.all_reduce_sum(out, "all_reduce of the EM statistics")
        return float(total), stats

    def centered_statistics(self, params, covariance_type):
        """The E step and the M step statistics of all rows from the differences ``x - mu_k``.

        The scatter of each chunk is taken about the incoming means ``m0`` (one pass over the
        data); about the new means ``m`` it is ``S0 - a e^T - e a^T + n_k e e^T`` with ``a =
        sum_n r_nk (x_n - m0)`` and ``e = m - m0``. When a mean moved so far that this update
        cancels (``n_k e^2 > 1000 S``), a second pass computes the scatter about ``m`` directly.

        :returns: ``(sum_n log p(x_n), nk (K,), sums (K, d), scatter about the new means)``,
            summed over processes; the scatter is ``(K, d, d)`` for full and tied, its diagonal
            ``(K, d)`` otherwise.
        """
        kind = scatter_kind(covariance_type)
        k, d = params.means.shape
        rows = chunk_rows(k * d)
        old = params.means
        shape = (k, d, d) if kind == "matrix" else (k, d)
        out = torch.zeros(1 + k + k * d + k * d * (d if kind == "matrix" else 1),
                          dtype=old.dtype, device=old.device)
        total, nk = out[0], out[1:1 + k]
        sums = out[1 + k:1 + k + k * d].view(k, d)
        second = out[1 + k + k * d:].view(shape)
        for x, resp in self._responsibilities(params, covariance_type, rows, total):
            nk += resp.sum(0)
            sums.addmm_(resp.T, x)
            second += scatter_centered(x, resp, old, kind, rows)
        distributed.all_reduce_sum(out, "all_reduce of the EM statistics")
        means = sums / effective_counts(nk)[:, None]
        move = means - old
        a = sums - nk[:, None] * old
        if kind == "matrix":
            cross = a[:, :, None] * move[:, None, :]
            scatter = second - cross - cross.transpose(1, 2) + nk[:, None, None] * (
                move[:, :, None] * move[:, None, :])
            diagonal = torch.diagonal(scatter, dim1=-2, dim2=-1)
        else:
            scatter = second - 2.0 * a * move + nk[:, None] * move ** 2
            diagonal = scatter
        if (nk[:, None] * move ** 2 > _MOVE_RATIO * diagonal).any():
            scatter = torch.zeros(shape, dtype=old.dtype, device=old.device)
            for x, resp in self._responsibilities(params, covariance_type, rows, None):
                scatter += scatter_centered(x, resp, means, kind, rows)
            distributed.all_reduce_sum(scatter, "all_reduce of the EM statistics")
        return float(total), nk, sums, scatter

    def _responsibilities(self, params, covariance_type, rows, total):
        """``(chunk, responsibilities)`` for every chunk; adds ``sum_n log p(x_n)`` to ``total``."""
        for x in self:
            resp = weighted_log_prob_centered(x, params, covariance_type, rows)
            log_norm = normalize_(resp, resp)
            if total is not None:
                total += log_norm.sum()
            yield x, resp


class MemorySource(ChunkSource):
    """Rows in memory: one chunk whose gram features are computed once and kept.

    The features are kept (transposed, ``(F, N)``, the fastest layout for both products of an
    iteration) when they take at most ``FEATURE_CACHE_BYTES``; otherwise they are recomputed
    block by block in every iteration. A data-dependent initialization uses all rows.

    :param X: checked data, ``(N, d)`` (:func:`as_2d_tensor`), on the device of the computation.
    """

    def __init__(self, X):
        super().__init__([X], X.dtype, X.device)
        self.first_pass()
        self._centered = X - self.origin
        self.chunks = None    # X itself is not needed any more
        self._features = {}

    def _tensors(self):   # checked already
        self.numpy_input = False
        self.d = self.chunks[0].shape[1]
        yield self.chunks[0]

    def __iter__(self):
        yield self._centered

    def init_rows(self):
        return self._centered

    def _feature_chunks(self, kind):
        n_features = n_gram_features(kind, self.d)
        X = self._centered          # this process's rows (self.n counts those of all processes)
        if X.shape[0] * n_features * X.element_size() > FEATURE_CACHE_BYTES:
            yield from super()._feature_chunks(kind)
            return
        if kind not in self._features:
            # computed from X^T, block by block side by side: contiguous reads and writes along
            # the rows of both
            x_t = X.T.contiguous()
            phi_t = torch.empty(n_features, X.shape[0], dtype=X.dtype, device=X.device)
            rows = chunk_rows(n_features)
            map_blocks(lambda i: gram_features(x_t[:, i * rows:(i + 1) * rows].T, kind,
                                               phi_t[:, i * rows:(i + 1) * rows].T),
                       -(-X.shape[0] // rows), X.device)
            self._features[kind] = phi_t
        phi_t = self._features[kind]
        yield X.shape[0], lambda s, e: phi_t[:, s:e]
