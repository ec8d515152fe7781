"""Binarization: :func:`binarize` (a Bernoulli draw, for dynamic binarization) and
:func:`threshold` (static binarization).

**Dynamic binarization.** Grey levels ``x`` in [0, 1] are read as Bernoulli probabilities and a
fresh binary image is drawn for every minibatch, so the model sees a different binarization of
each digit in every epoch (a standard regulariser for Bernoulli likelihoods). With one
``torch.Generator`` kept for the whole training run, the draws are reproducible::

    gen = torch.Generator().manual_seed(seed)
    for xb in minibatches:
        xb = binarize(xb, generator=gen)   # new 0/1 draw each time

Held-out data are binarized **once** with a fixed seed
(:data:`pyro_vae.data.MNIST_10K_TEST_SEED`), so every model is scored on the same binary images.
"""

import numpy as np
import torch

from pyro_vae.checks import check_float, check_seed

__all__ = ["binarize", "threshold"]


def binarize(x, seed=None, generator=None):
    """Draw binary data with ``P(1) = x`` (dynamic binarization).

    ``binarize(x, seed=s)`` equals ``torch.bernoulli(x, generator=torch.Generator().manual_seed(s))``
    for CPU tensors. For per-minibatch draws during training, pass one ``generator`` that lives
    for the whole run (see the module docstring).

    :param torch.Tensor x: probabilities in [0, 1], any shape.
    :param int seed: seed of a fresh generator on ``x``'s device.
    :param torch.Generator generator: generator to draw from (on ``x``'s device); by default
        (neither ``seed`` nor ``generator``) torch's global generator is used.
    :returns: a tensor of ``x``'s shape, dtype (float32 if ``x`` is not floating) and device,
        holding 0.0 and 1.0.
    :raises ValueError: when a value lies outside [0, 1] or both ``seed`` and ``generator`` are given.
    """
    x = _as_float_tensor(x, "binarize")
    if seed is not None and generator is not None:
        raise ValueError("binarize: pass seed or generator, not both")
    seed = check_seed(seed)
    if not ((x >= 0) & (x <= 1)).all():
        raise ValueError(f"binarize: values must be probabilities in [0, 1], got range "
                         f"[{float(x.min())}, {float(x.max())}] (NaN counts as outside); scale the "
                         "data first, e.g. load_data(..., scale='auto') divides pixels by 255")
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)


def threshold(x, level=0.5):
    """Static binarization: 1 where ``x > level``, else 0.

    :param torch.Tensor x: data, any shape.
    :param float level: the threshold.
    :returns: a tensor of ``x``'s shape and (floating) dtype holding 0.0 and 1.0.
    """
    x = _as_float_tensor(x, "threshold")
    level = check_float(level, "threshold: level")
    return (x > level).to(x.dtype)


def _as_float_tensor(x, who):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    return x
