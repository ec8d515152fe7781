"""Training and held-out data in one call: :func:`load_split`.

This is how the command line, run folders (:mod:`pyro_vae.runs`) and the VAE-versus-EM
comparison (:mod:`pyro_vae.compare`) get their data: load (or draw) it, split it with a seeded
permutation, and binarize the held-out part once when asked. :func:`resolve_data_location`
turns the paths of a data source into absolute ones, so that a configuration storing them
works from any working directory.
"""

import dataclasses
import os
from typing import Optional

import numpy as np
import torch

from pyro_vae.checks import check_bool, check_seed
from pyro_vae.data import binarization
from pyro_vae.data.loaders import TORCHVISION_NAMES, default_root, load_data
from pyro_vae.data.mnist import MNIST_10K_TEST_SEED, find_mnist_dir, load_mnist_10k
from pyro_vae.data.splits import train_test_split
from pyro_vae.data.synthetic import MixtureData, make_gaussian_mixture

__all__ = ["SplitData", "load_split", "resolve_data_location", "SYNTHETIC"]

#: the source name of a synthetic Gaussian mixture (:func:`pyro_vae.data.make_gaussian_mixture`)
SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True)
class SplitData:
    """Training and held-out data.

    :ivar torch.Tensor train_x: training data ``(N, D)``.
    :ivar torch.Tensor test_x: held-out data ``(M, D)``.
    :ivar train_labels: labels ``(N,)`` (long) or ``None``.
    :ivar test_labels: labels ``(M,)`` (long) or ``None``.
    :ivar shape: image shape ``(H, W)`` for image data, else ``None``.
    :ivar mixture: the generating :class:`~pyro_vae.data.MixtureData` of synthetic data, else ``None``.
    :ivar str name: where the data came from.
    """

    train_x: torch.Tensor
    test_x: torch.Tensor
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None
    shape: Optional[tuple] = None
    mixture: Optional[MixtureData] = None
    name: str = ""


def _key(source):
    return os.fspath(source).strip().lower() if isinstance(source, (str, os.PathLike)) else None


def load_split(source=SYNTHETIC, *, labels=None, test_fraction=0.1, split_seed=0, binarize=False,
               root=None, download=False, label_column=None, scale="auto", seed=0, n_samples=2000,
               n_components=3, dim=2, separation=4.0, dtype=torch.float32):
    """Load data and split it into training and held-out parts.

    * ``"synthetic"`` (or ``None``): a Gaussian mixture drawn by
      :func:`~pyro_vae.data.make_gaussian_mixture` with ``n_samples``, ``n_components``,
      ``dim``, ``separation`` and its own ``seed``; its labels and generating mixture come along.
    * a :class:`~pyro_vae.data.MixtureData`: its samples, labels and mixture.
    * ``"mnist10k"``: the MNIST-10k protocol's own split (:func:`~pyro_vae.data.load_mnist_10k`;
      ``test_fraction``, ``split_seed`` and ``binarize`` do not apply: the held-out digits are
      always binarized once).
    * anything else :func:`~pyro_vae.data.load_data` reads (tensor, array, DataFrame, file,
      folder, dataset name), with ``root``, ``download``, ``label_column`` and ``scale``.

    The rows are split by :func:`~pyro_vae.data.train_test_split` with ``test_fraction`` and
    ``split_seed``. With ``binarize`` the held-out part is binarized once with
    :data:`~pyro_vae.data.MNIST_10K_TEST_SEED`, so every model is scored on the same binary
    data (the training part stays grey, for dynamic binarization).

    :param source: the data (see above).
    :param labels: class labels ``(N,)`` for data given without them (they win over labels
        the source carries).
    :param float test_fraction: share of rows held out, in (0, 1).
    :param int split_seed: seed of the split.
    :param bool binarize: binarize the held-out part once.
    :param str root: folder of a named dataset or of the MNIST test files.
    :param bool download: let torchvision download a named dataset.
    :param label_column: column of class labels in a table.
    :param scale: see :func:`~pyro_vae.data.load_data`.
    :param int seed: seed of the synthetic data (not of the split).
    :param int n_samples: synthetic data: number of points.
    :param int n_components: synthetic data: number of components.
    :param int dim: synthetic data: dimension.
    :param float separation: synthetic data: minimum distance between means.
    :param torch.dtype dtype: floating dtype of the data.
    :returns: :class:`SplitData`.
    :raises FileNotFoundError: missing files.
    :raises TypeError: arguments of the wrong type.
    :raises ValueError: unreadable or invalid data, labels that do not fit the rows.
    """
    binarize = check_bool(binarize, "binarize")
    key = _key(source)
    mixture = shape = None
    if source is None or key == SYNTHETIC:
        if labels is not None:
            raise ValueError("labels: synthetic data come with their own labels; leave labels out")
        seed = check_seed(seed, allow_none=False)
        mixture = make_gaussian_mixture(n_samples=n_samples, n_components=n_components, dim=dim,
                                        separation=separation, seed=seed)
        x, labels, name = mixture.x.to(dtype), mixture.labels, f"synthetic mixture (seed {seed})"
    elif isinstance(source, MixtureData):
        if labels is not None:
            raise ValueError("labels: a MixtureData comes with its own labels; leave labels out")
        mixture = source
        x, labels, name = source.x.to(dtype), source.labels, "MixtureData"
    elif key == "mnist10k" and not os.path.exists(os.fspath(source)):
        if labels is not None:
            raise ValueError("labels: the MNIST-10k digits come with their own labels; leave labels out")
        train_x, test_x, train_l, test_l = load_mnist_10k(root)
        return SplitData(train_x.to(dtype), test_x.to(dtype), train_l, test_l, (28, 28), None, "mnist10k")
    else:
        loaded = load_data(source, root=root, download=download, label_column=label_column,
                           dtype=dtype, scale=scale)
        x, shape, name = loaded.x, loaded.shape, loaded.name
        if labels is None:
            labels = loaded.labels
        else:
            labels = _as_labels(labels, x.shape[0])
    if labels is None:
        train_x, test_x = train_test_split(x, test_fraction=test_fraction, seed=split_seed)
        train_l = test_l = None
    else:
        train_x, test_x, train_l, test_l = train_test_split(x, test_fraction=test_fraction,
                                                            seed=split_seed, labels=labels)
    if binarize:
        test_x = binarization.binarize(test_x, seed=MNIST_10K_TEST_SEED)
    return SplitData(train_x, test_x, train_l, test_l, shape, mixture, name)


def _as_labels(labels, n):
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    labels = torch.as_tensor(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},); got {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError("labels must be whole numbers (class codes), not fractions")
    return labels.long()


def resolve_data_location(source, root=None):
    """The paths of a data source made absolute, for a configuration that must work anywhere.

    * an existing file or folder: its absolute path;
    * ``"mnist10k"``: the source unchanged and, as ``root``, the folder
      :func:`~pyro_vae.data.find_mnist_dir` finds now;
    * a torchvision dataset name: the source unchanged and ``root`` made absolute (default
      :func:`~pyro_vae.data.default_root`);
    * anything else (``"synthetic"``, a path that does not exist): unchanged, with a given
      ``root`` made absolute.

    :param source: the data source of a configuration (usually a string).
    :param str root: its ``root`` setting, or ``None``.
    :returns: ``(source, root)``; ``root`` stays ``None`` when none applies.
    :raises FileNotFoundError: ``"mnist10k"`` whose files are not found.
    """
    key = _key(source)
    if key is None:
        return source, root
    text = os.fspath(source)
    absolute_root = os.path.abspath(os.path.expanduser(os.fspath(root))) if root is not None else None
    if os.path.exists(text):
        return os.path.abspath(text), absolute_root
    if key == "mnist10k":
        return source, find_mnist_dir(root)
    if key in TORCHVISION_NAMES:
        return source, absolute_root if absolute_root is not None else default_root()
    return source, absolute_root
