"""Matplotlib figures (PNG) for pyro-vae.

Each function returns a :class:`matplotlib.figure.Figure`; save it with
:func:`pyro_vae.storage.save_figure` (atomic PNG write).
"""

import math

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["plot_history", "plot_image_grid", "plot_samples_2d", "image_shape"]


def image_shape(data_dim):
    """``(side, side)`` if ``data_dim`` is a perfect square larger than 16, else ``None``."""
    side = int(round(math.sqrt(data_dim)))
    return (side, side) if side * side == data_dim and side > 4 else None


def plot_history(history, ax=None):
    """Training curve: train and held-out ELBO per epoch.

    :param pandas.DataFrame history: the frame returned by :func:`pyro_vae.fit`.
    """
    fig, ax = _figure(ax, (6, 4))
    ax.plot(history["epoch"], history["train_elbo"], label="train ELBO", marker=".")
    if "val_elbo" in history and history["val_elbo"].notna().any():
        ax.plot(history["epoch"], history["val_elbo"], label="held-out ELBO", marker=".")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per datapoint)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_image_grid(images, shape, nrow=10, title=None):
    """A grid of images.

    :param torch.Tensor images: flattened images, shape ``(n, H*W)``, values in [0, 1].
    :param tuple shape: ``(H, W)``.
    :param int nrow: images per row.
    """
    from torchvision.utils import make_grid

    imgs = torch.as_tensor(images).detach().float().cpu().clamp(0, 1).reshape(-1, 1, *shape)
    grid = make_grid(imgs, nrow=nrow, padding=2, pad_value=1.0)[0].numpy()
    fig, ax = plt.subplots(figsize=(nrow * 0.6 + 0.5, grid.shape[0] / grid.shape[1] * nrow * 0.6 + 0.5))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return fig


def plot_samples_2d(data, samples, ax=None, title="model samples against the data"):
    """Scatter of the data and of samples from a model (first two coordinates).

    :param torch.Tensor data: shape ``(N, D)``, ``D >= 2``.
    :param torch.Tensor samples: shape ``(M, D)``.
    """
    fig, ax = _figure(ax, (5, 5))
    d = _numpy(data)
    s = _numpy(samples)
    ax.scatter(d[:, 0], d[:, 1], s=4, alpha=0.4, label="data", color="tab:blue")
    ax.scatter(s[:, 0], s[:, 1], s=4, alpha=0.4, label="samples", color="tab:orange")
    ax.set_title(title)
    ax.legend(markerscale=3)
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def _numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _figure(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    return fig, ax
