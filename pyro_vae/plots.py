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

__all__ = ["plot_history", "plot_image_grid", "plot_samples_2d", "plot_method_comparison",
           "plot_training_curves", "plot_mixture_2d", "plot_component_samples",
           "plot_inference_and_model_costs"]


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
    """Scatter of the data and of samples from a model (first two coordinates); for 1-D data,
    histograms (densities) of both on shared bins.

    :param torch.Tensor data: shape ``(N, D)``.
    :param torch.Tensor samples: shape ``(M, D)``.
    """
    fig, ax = _figure(ax, (5, 5))
    d = _numpy(data).reshape(len(data), -1)
    s = _numpy(samples).reshape(len(samples), -1)
    if d.shape[1] == 1:
        both = np.concatenate([d[:, 0], s[:, 0]])
        bins = np.histogram_bin_edges(both[np.isfinite(both)], bins=min(50, max(10, len(d) // 10)))
        ax.hist(d[:, 0], bins=bins, density=True, alpha=0.5, label="data", color="tab:blue")
        ax.hist(s[:, 0], bins=bins, density=True, alpha=0.5, label="samples", color="tab:orange")
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend()
        return fig
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


def plot_method_comparison(table, ax=None):
    """Held-out log-likelihood per method with error bars (one standard error), and the ELBO.

    :param pandas.DataFrame table: the frame of :func:`pyro_vae.compare_vae_em`.
    """
    fig, ax = _figure(ax, (6, 4))
    pos = np.arange(len(table))
    se = np.sqrt(table["heldout_log_likelihood_se"].to_numpy() ** 2
                 + table["heldout_log_likelihood_mc_se"].fillna(0).to_numpy() ** 2)
    ax.errorbar(pos - 0.08, table["heldout_log_likelihood"], yerr=se, fmt="o", capsize=4,
                label="held-out log p(x)")
    ax.errorbar(pos + 0.08, table["heldout_elbo"], fmt="s", capsize=4, label="held-out ELBO",
                alpha=0.8)
    ax.set_xticks(pos)
    ax.set_xticklabels(table["method"], rotation=20, ha="right")   # long method names do not overlap
    ax.set_ylabel("nats per datapoint")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return fig


def plot_training_curves(histories):
    """EM log-likelihood per iteration and the ELBO per epoch of the SVI fits, side by side.

    :param dict histories: ``"em"`` -> frame with ``iteration, log_likelihood``; other names ->
        frames with ``epoch, train_elbo, val_elbo``.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    em = histories.get("em")
    if em is not None:
        a.plot(em["iteration"], em["log_likelihood"], marker=".")
        a.set_title("EM: log-likelihood per iteration (= ELBO after each E step)")
        a.set_xlabel("iteration")
        a.set_ylabel("nats per datapoint")
        a.ticklabel_format(axis="y", useOffset=False)
        a.grid(alpha=0.3)
    for name, h in histories.items():
        if name == "em":
            continue
        b.plot(h["epoch"], h["train_elbo"], label=f"{name} train")
        if h["val_elbo"].notna().any():
            b.plot(h["epoch"], h["val_elbo"], label=f"{name} held-out", linestyle="--")
    b.set_title("SVI: ELBO per epoch")
    b.set_xlabel("epoch")
    b.set_ylabel("nats per datapoint")
    b.grid(alpha=0.3)
    b.legend()
    fig.tight_layout()
    return fig


def plot_mixture_2d(X, gm, labels=None, ax=None):
    """Data scatter with one ellipse per mixture component (2 standard deviations).

    For data with more than two features the first two coordinates are drawn, with the ellipses
    of the marginal Gaussians of those coordinates.

    :param X: data, shape ``(N, d)`` with ``d >= 2`` (tensor, numpy array or DataFrame).
    :param gm: a fitted :class:`pyro_vae.mixture.GaussianMixture`.
    :param labels: colour of each point, shape ``(N,)``; default ``gm.predict(X)``.
    :param ax: matplotlib axes to draw into (default: a new figure).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.patches import Ellipse

    points = np.asarray(_numpy(X), dtype=float)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(f"X must have shape (N, d) with d >= 2, got {points.shape}")
    if labels is None:
        labels = gm.predict(X)
    labels = np.asarray(_numpy(labels)).reshape(-1)
    if labels.shape[0] != points.shape[0]:
        raise ValueError(f"labels must have one entry per row of X ({points.shape[0]}), got {labels.shape[0]}")
    means = _numpy(gm.means_)[:, :2]
    covs = _mixture_covariances_2d(gm)
    weights = _numpy(gm.weights_)
    fig, ax = _figure(ax, (6, 6))
    cmap = plt.get_cmap("tab10")
    ax.scatter(points[:, 0], points[:, 1], s=5, alpha=0.5, c=[cmap(int(v) % 10) for v in labels])
    for k in range(means.shape[0]):
        vals, vecs = np.linalg.eigh(covs[k])
        vals = np.clip(vals, 0.0, None)
        angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
        ellipse = Ellipse(means[k], width=4 * math.sqrt(vals[1]), height=4 * math.sqrt(vals[0]),
                          angle=angle, fill=False, linewidth=2, edgecolor=cmap(k % 10),
                          label=f"component {k} (weight {weights[k]:.2f})")
        ax.add_patch(ellipse)
    ax.scatter(means[:, 0], means[:, 1], marker="x", s=60, color="black", zorder=3, label="means")
    ax.set_title(f"Gaussian mixture, K={means.shape[0]} ({gm.covariance_type}); ellipses: 2 sd")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    if means.shape[0] <= 10:
        ax.legend(fontsize="small", loc="best")
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    return fig


def _mixture_covariances_2d(gm):
    """Covariances of the first two coordinates per component, shape ``(K, 2, 2)``."""
    cov = _numpy(gm.covariances_)
    k = _numpy(gm.means_).shape[0]
    if gm.covariance_type == "full":
        return cov[:, :2, :2]
    if gm.covariance_type == "tied":
        return np.broadcast_to(cov[:2, :2], (k, 2, 2))
    if gm.covariance_type == "diag":
        return np.stack([np.diag(c[:2]) for c in cov])
    return np.stack([np.eye(2) * c for c in cov])


def plot_component_samples(model, shape, per_component=10, seed=0, mean=True):
    """Samples of a model with discrete components, one row per component.

    :param model: a :class:`pyro_vae.mixture_vae.MixtureVAE` (anything with ``n_components``
        and ``sample(n, seed=..., component=k, mean=...)``).
    :param tuple shape: ``(H, W)`` of an image.
    :param int per_component: samples per row.
    :param int seed: seed of the draws (row k uses ``seed + k``).
    :param bool mean: the mean of p(x|z) (smooth images) instead of a draw.
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    k = int(model.n_components)
    rows = [model.sample(per_component, seed=seed + c, component=c, mean=mean) for c in range(k)]
    weights = torch.softmax(model.prior.logits.detach(), -1).cpu()
    title = "samples per component (rows); weights " + " ".join(f"{w:.2f}" for w in weights.tolist())
    return plot_image_grid(torch.cat(rows), shape, nrow=per_component, title=title)


def plot_inference_and_model_costs(table):
    """What inference costs and what the model costs, side by side.

    Left: the Gaussian mixture fitted by EM (exact posterior) and by SVI (``gmm_svi``,
    amortized q(c|x)) -- the same model, so the differences are inference's. Right: ``gmm_svi``
    and the VAEs, all fitted by amortized SVI -- the differences in log p(x) are the models'.
    Each bar pair shows the held-out log p(x) and the held-out ELBO; the distance between them
    is the gap.

    :param pandas.DataFrame table: the frame of :func:`pyro_vae.compare_vae_em` (with the
        ``gmm_svi`` row).
    :returns: the :class:`matplotlib.figure.Figure`.
    """
    t = table.set_index("method")
    left = [m for m in ("em", "gmm_svi") if m in t.index]
    right = [m for m in ("gmm_svi", "vae_normal", "vae_mixture", "mixture_vae") if m in t.index]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [len(left), len(right)]},
                             sharey=True)
    titles = ("inference: the same Gaussian mixture, exact vs amortized",
              "model: the same amortized SVI, mixture vs VAEs")
    for ax, methods, title in zip(axes, (left, right), titles):
        pos = np.arange(len(methods))
        ax.bar(pos - 0.2, t.loc[methods, "heldout_log_likelihood"], width=0.4, label="held-out log p(x)")
        ax.bar(pos + 0.2, t.loc[methods, "heldout_elbo"], width=0.4, label="held-out ELBO", alpha=0.7)
        lo = float(np.nanmin(t.loc[left + right, ["heldout_log_likelihood", "heldout_elbo"]].to_numpy()))
        hi = float(np.nanmax(t.loc[left + right, ["heldout_log_likelihood", "heldout_elbo"]].to_numpy()))
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
        ax.set_xticks(pos)
        ax.set_xticklabels(methods)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("nats per datapoint")
    axes[1].legend()
    fig.tight_layout()
    return fig
