import numpy as np
import pandas as pd
import pytest
import torch

from pyro_vae import plots


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_plot_history_draws_both_elbo_curves():
    h = pd.DataFrame({"epoch": [1, 2, 3], "train_elbo": [-5.0, -4.0, -3.5], "val_elbo": [-5.5, -4.5, -4.0]})
    ax = plots.plot_history(h).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train ELBO", "held-out ELBO"}
    np.testing.assert_array_equal(lines["train ELBO"].get_ydata(), h["train_elbo"])
    np.testing.assert_array_equal(lines["held-out ELBO"].get_xdata(), h["epoch"])
    # no held-out curve when there is no held-out ELBO
    h["val_elbo"] = np.nan
    assert [line.get_label() for line in plots.plot_history(h).axes[0].get_lines()] == ["train ELBO"]


def test_plot_image_grid_shows_the_images_in_order():
    images = torch.zeros(3, 4)
    images[1] = 1.0  # the second 2x2 image is white
    ax = plots.plot_image_grid(images, (2, 2), nrow=3).axes[0]
    grid = ax.get_images()[0].get_array()
    # padding 2 around 2x2 images: image k occupies columns 2 + 4k .. 3 + 4k of rows 2..3
    assert grid.shape == (6, 14)
    np.testing.assert_array_equal(grid[2:4, 2:4], 0.0)
    np.testing.assert_array_equal(grid[2:4, 6:8], 1.0)
    np.testing.assert_array_equal(grid[2:4, 10:12], 0.0)


def test_plot_samples_2d_scatters_data_and_samples():
    data, samples = torch.randn(20, 3), torch.randn(7, 3)
    ax = plots.plot_samples_2d(data, samples).axes[0]
    data_pts, sample_pts = (c.get_offsets() for c in ax.collections)
    np.testing.assert_allclose(data_pts, data[:, :2].numpy())
    np.testing.assert_allclose(sample_pts, samples[:, :2].numpy())


def test_plot_samples_2d_draws_histograms_for_1d_data():
    data = torch.tensor([[0.0], [0.1], [0.2], [2.0]])
    samples = torch.tensor([[0.0], [2.0], [2.1], [2.2], [2.3]])
    ax = plots.plot_samples_2d(data, samples).axes[0]
    bars = [p for p in ax.patches]
    assert len(bars) > 0 and not ax.collections
    heights = np.array([b.get_height() for b in bars]).reshape(2, -1)
    widths = np.array([b.get_width() for b in bars]).reshape(2, -1)
    lefts = np.array([b.get_x() for b in bars]).reshape(2, -1)
    np.testing.assert_allclose(lefts[0], lefts[1])  # shared bins
    np.testing.assert_allclose((heights * widths).sum(1), 1.0)  # densities
    expected, _ = np.histogram(data.numpy()[:, 0], bins=np.append(lefts[0], lefts[0, -1] + widths[0, -1]),
                               density=True)
    np.testing.assert_allclose(heights[0], expected)
    assert ax.get_legend() is not None


def test_plot_method_comparison_places_each_method():
    table = pd.DataFrame({"method": ["em", "vae"], "heldout_log_likelihood": [-2.0, -2.5],
                          "heldout_log_likelihood_se": [0.1, 0.2], "heldout_log_likelihood_mc_se": [np.nan, 0.1],
                          "heldout_elbo": [-2.0, -2.8]})
    ax = plots.plot_method_comparison(table).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["em", "vae"]
    ys = sorted(tuple(line.get_ydata()) for line in ax.get_lines() if len(line.get_ydata()) == 2)
    assert (-2.0, -2.5) in ys and (-2.0, -2.8) in ys


def test_plot_mixture_2d_draws_one_ellipse_per_component_at_two_sd():
    from pyro_vae.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(6, 0.5, (100, 2))])
    gm = GaussianMixture(2, covariance_type="diag", random_state=0).fit(x)
    ax = plots.plot_mixture_2d(x, gm).axes[0]
    from matplotlib.patches import Ellipse

    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2
    for e, mean, var in zip(ellipses, np.asarray(gm.means_), np.asarray(gm.covariances_)):
        np.testing.assert_allclose(e.center, mean)
        np.testing.assert_allclose(sorted([e.width, e.height]), sorted(4 * np.sqrt(var)), rtol=1e-6)
