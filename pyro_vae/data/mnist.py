"""The MNIST-10k protocol on the 10,000 real MNIST test digits, and where to find them.

The folder of the MNIST test files (``t10k-images-idx3-ubyte[.gz]``,
``t10k-labels-idx1-ubyte[.gz]``) is, in this order of precedence:

1. the ``root`` argument (CLI: ``--root``);
2. the environment variable ``PYRO_VAE_MNIST_DIR``;
3. the first of ``../shared/data/mnist``, ``shared/data/mnist`` and ``data/mnist`` that holds
   the files, relative to the current working directory.

An explicit folder (1 or 2) that lacks the files is an error; nothing else is tried.
"""

import os

import torch

from pyro_vae.data.idx import find_idx_images, load_idx_images

__all__ = ["load_mnist_10k", "find_mnist_dir", "MNIST_10K_TEST_SEED", "MNIST_DIR_ENV",
           "MNIST_DIR_CANDIDATES"]

#: seed of the one-off binarization of held-out data: the last 1,000 MNIST-10k digits, and the
#: held-out part of any data split by :func:`pyro_vae.data.load_split` with ``binarize=True``
MNIST_10K_TEST_SEED = 1234

#: environment variable naming the folder of the MNIST test files
MNIST_DIR_ENV = "PYRO_VAE_MNIST_DIR"

#: folders searched, relative to the working directory, when neither ``root`` nor
#: ``$PYRO_VAE_MNIST_DIR`` is given
MNIST_DIR_CANDIDATES = (os.path.join("..", "shared", "data", "mnist"),
                        os.path.join("shared", "data", "mnist"),
                        os.path.join("data", "mnist"))

_FILES = "MNIST test files (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"
_HOW = (f"point at them with root=<folder> (CLI: --root <folder>) or {MNIST_DIR_ENV}=<folder>, or "
        f"run from a folder where {', '.join(MNIST_DIR_CANDIDATES)} holds them; or fetch MNIST with "
        "load_data('mnist', train=False, download=True) (CLI: --data mnist --download)")


def _holds_test_files(folder):
    return find_idx_images([folder], False)[0] is not None


def find_mnist_dir(root=None):
    """The folder holding the MNIST test files ``t10k-images-idx3-ubyte[.gz]``.

    :param str root: the folder; by default ``$PYRO_VAE_MNIST_DIR``, else the first of
        :data:`MNIST_DIR_CANDIDATES` (relative to the working directory) that holds the files.
    :returns: the folder as an absolute path.
    :raises FileNotFoundError: when the folder given, or every candidate, lacks the files; the
        message says how to point at them.
    """
    if root is not None:
        folder = os.path.abspath(os.path.expanduser(os.fspath(root)))
        if not _holds_test_files(folder):
            raise FileNotFoundError(f"{_FILES} not found in {folder} (given as root); {_HOW}")
        return folder
    env = os.environ.get(MNIST_DIR_ENV)
    if env:
        folder = os.path.abspath(os.path.expanduser(env))
        if not _holds_test_files(folder):
            raise FileNotFoundError(f"{_FILES} not found in {folder} (from ${MNIST_DIR_ENV}); {_HOW}")
        return folder
    candidates = [os.path.abspath(c) for c in MNIST_DIR_CANDIDATES]
    for folder in candidates:
        if _holds_test_files(folder):
            return folder
    raise FileNotFoundError(f"{_FILES} not found in {', '.join(candidates)}; {_HOW}")


def load_mnist_10k(root=None):
    """The MNIST-10k protocol on the 10,000 real MNIST test digits.

    The digits are read from the IDX files in ``root`` (see :func:`find_mnist_dir` for the
    default), scaled to [0, 1], and split in file order:

    * training: the first 9,000 digits, grey levels in [0, 1], meant for dynamic binarization
      (a fresh :func:`pyro_vae.data.binarize` draw per minibatch);
    * held-out: the last 1,000 digits, binarized once with
      ``torch.bernoulli(x, generator=torch.Generator().manual_seed(1234))``
      (:data:`MNIST_10K_TEST_SEED`), so every call returns the same binary images.

    :param str root: folder of ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
    :returns: ``(train_x, test_x, train_labels, test_labels)``: float32 tensors ``(9000, 784)``
        and ``(1000, 784)``, long tensors ``(9000,)`` and ``(1000,)``.
    :raises FileNotFoundError: when the files are not found.
    :raises ValueError: when the folder holds other files than the 10,000 MNIST test digits.
    """
    folder = find_mnist_dir(root)
    images, _ = find_idx_images([folder], False)
    x, labels = load_idx_images(images)
    if x.shape != (10000, 28, 28) or labels is None:
        raise ValueError(f"{folder}: expected the 10,000 MNIST test digits with their label file, "
                         f"got images {tuple(x.shape)} and {'no' if labels is None else 'a'} label file")
    x = x.reshape(10000, 784).to(torch.float32) / 255.0
    labels = labels.long()
    test_x = torch.bernoulli(x[9000:], generator=torch.Generator().manual_seed(MNIST_10K_TEST_SEED))
    return x[:9000].contiguous(), test_x, labels[:9000].contiguous(), labels[9000:].contiguous()
