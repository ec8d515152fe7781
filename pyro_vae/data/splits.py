"""Holdout splits: :func:`train_test_split`, a seeded random partition of the rows."""

import numpy as np
import torch

from pyro_vae.checks import check_float, check_seed

__all__ = ["train_test_split"]


def train_test_split(x, test_fraction=0.1, seed=0, labels=None):
    """Split rows into a training and a held-out part with a seeded random permutation.

    The permutation is ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))``;
    its first ``round(N * test_fraction)`` (at least 1) entries are the held-out rows, the rest
    the training rows, each in permutation order.

    :param torch.Tensor x: data ``(N, ...)``.
    :param float test_fraction: share of rows held out, in (0, 1).
    :param int seed: seed of the permutation (a non-negative integer).
    :param torch.Tensor labels: optional ``(N,)`` labels split the same way.
    :returns: ``(train_x, test_x)``, or ``(train_x, test_x, train_labels, test_labels)`` when
        ``labels`` is given.
    :raises TypeError: ``x`` not a tensor or array, a fraction that is not a number, a seed that
        is not an integer.
    :raises ValueError: for a fraction outside (0, 1), fewer than 2 rows, or mismatched labels.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"train_test_split: expected a tensor, got {type(x).__name__}")
    test_fraction = check_float(test_fraction, "train_test_split: test_fraction")
    if not 0 < test_fraction < 1:
        raise ValueError(f"train_test_split: test_fraction must be between 0 and 1 (exclusive), "
                         f"got {test_fraction!r}; e.g. 0.1 holds out 10% of the rows")
    seed = check_seed(seed, "train_test_split: seed", allow_none=False)
    n = x.shape[0] if x.dim() > 0 else 0
    if n < 2:
        raise ValueError(f"train_test_split: need at least 2 rows to hold some out, got {n}")
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = perm[:n_test].to(x.device), perm[n_test:].to(x.device)
    if labels is None:
        return x[train_idx], x[test_idx]
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"train_test_split: labels must have shape ({n},), got {tuple(labels.shape)}")
    l_train, l_test = train_idx.to(labels.device), test_idx.to(labels.device)
    return x[train_idx], x[test_idx], labels[l_train], labels[l_test]
