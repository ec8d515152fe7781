"""Data: anything -> float tensors ``(N, D)``.

The package by concern:

* :mod:`~pyro_vae.data.loaders` -- :func:`load_data` reads tensors, numpy arrays, pandas
  DataFrames, ``.csv``, ``.npy``, ``.npz``, ``.pt`` and IDX files (raw or ``.gz``), folders of
  MNIST-style IDX files, and the torchvision datasets ``"mnist"``, ``"fashion-mnist"`` and
  ``"kmnist"`` (downloaded only with ``download=True``). Images are flattened to
  ``(N, H * W)`` and pixel values scaled to [0, 1]. The file readers live in
  :mod:`~pyro_vae.data.tables` (DataFrames, CSV, :class:`CsvChunks` for files larger than
  memory), :mod:`~pyro_vae.data.files` (``.npy``, ``.npz``, ``.pt``) and
  :mod:`~pyro_vae.data.idx` (IDX files and folders). Input that would be misread is refused
  with what to do: CSV layouts pandas reads with the wrong columns, array headers that claim
  more data than the file holds, values too large for the dtype.
* :mod:`~pyro_vae.data.mnist` -- :func:`load_mnist_10k`, the MNIST-10k protocol on the real
  MNIST test digits, found by :func:`find_mnist_dir` (``root``, ``$PYRO_VAE_MNIST_DIR``, or
  ``../shared/data/mnist``, ``shared/data/mnist``, ``data/mnist`` under the working directory).
* :mod:`~pyro_vae.data.binarization` -- :func:`binarize` (a Bernoulli draw, for dynamic
  binarization) and :func:`threshold` (static binarization); :mod:`~pyro_vae.data.splits` --
  :func:`train_test_split`, a seeded holdout split.
* :mod:`~pyro_vae.data.synthetic` -- :func:`make_gaussian_mixture`: synthetic Gaussian-mixture
  data whose generating density (:meth:`MixtureData.log_prob`) is known exactly.
* :mod:`~pyro_vae.data.holdout` -- :func:`load_split`: load (or draw) data and split it into
  training and held-out parts in one call, as run folders and the comparison do.
"""

from pyro_vae.data.binarization import binarize, threshold
from pyro_vae.data.holdout import SYNTHETIC, SplitData, load_split, resolve_data_location
from pyro_vae.data.idx import read_idx
from pyro_vae.data.loaders import DATASET_NAMES, FILE_TYPES, Data, default_root, load_data
from pyro_vae.data.mnist import (MNIST_10K_TEST_SEED, MNIST_DIR_CANDIDATES, MNIST_DIR_ENV,
                                 find_mnist_dir, load_mnist_10k)
from pyro_vae.data.splits import train_test_split
from pyro_vae.data.synthetic import MixtureData, make_gaussian_mixture
from pyro_vae.data.tables import CsvChunks

__all__ = [
    "Data",
    "MixtureData",
    "SplitData",
    "load_data",
    "load_split",
    "CsvChunks",
    "load_mnist_10k",
    "find_mnist_dir",
    "read_idx",
    "default_root",
    "resolve_data_location",
    "binarize",
    "threshold",
    "train_test_split",
    "make_gaussian_mixture",
    "DATASET_NAMES",
    "FILE_TYPES",
    "MNIST_10K_TEST_SEED",
    "MNIST_DIR_ENV",
    "MNIST_DIR_CANDIDATES",
    "SYNTHETIC",
]
