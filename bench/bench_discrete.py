"""Discrete latents: the Gaussian mixture by SVI next to EM, the variance of the three gradient
estimators, and the MixtureVAE on MNIST.

Three parts, each writing its own results file:

* ``svi`` (a) -- on the demo's mixture data (``pyro-vae demo``: 4,000 points of a synthetic 2-D
  mixture of 3 Gaussians, a quarter held out, seeds 0..), :class:`GaussianMixtureSVI` by
  ``enum`` and ``tracegraph`` (decaying-average baseline) with the settings of the ``gmm_svi``
  row of ``pyro-vae compare`` (40 epochs, minibatch 512, lr 0.03), against EM with the demo's
  initialization: held-out log-likelihood (exact), gap, ARI. ``bench/results_discrete_svi.md``.
* ``variance`` (b) -- :func:`pyro_vae.gradient_variance` on a :class:`MixtureVAE` (10
  components) trained briefly by ``enum`` on the first 2,000 MNIST-10k training digits
  (dynamically binarized), measured on a fixed minibatch of 100 binarized digits: total
  variance per parameter group for ``trace``, ``tracegraph`` (no baseline, decaying average,
  neural baseline) and ``enum``. ``bench/results_discrete_variance.md``.
* ``mnist`` (c) -- the MNIST-10k protocol (DESIGN.md) with 10 components: a MixtureVAE trained
  by each estimator (``enum``, ``tracegraph`` with the neural baseline, ``trace``), then held-out
  log p(x) by importance sampling (5,000 samples), the adjusted Rand index and the cluster
  accuracy (best one-to-one matching of components to digit labels, scipy's
  linear_sum_assignment) of ``predict`` on the held-out digits, and a PNG of samples per
  component. ``bench/results_discrete_mnist.md`` and ``bench/discrete_components_<estimator>.png``.
  Long: run it on a quiet machine; ``--quick`` checks it runs in a minute.

Usage::

    PYTHONPATH=. python bench/bench_discrete.py svi
    PYTHONPATH=. python bench/bench_discrete.py variance
    PYTHONPATH=. python bench/bench_discrete.py mnist [--quick] [--epochs 100]
"""

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyro  # noqa: E402

from pyro_vae import MixtureVAE, fit, gradient_variance, log_likelihood, storage  # noqa: E402
from pyro_vae.compare import adjusted_rand_index  # noqa: E402
from pyro_vae.data import SYNTHETIC, load_split  # noqa: E402
from pyro_vae.mixture import GaussianMixture, GaussianMixtureSVI  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _header(title, command):
    return [f"# {title}", "", f"Command: `{command}`", "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"pyro {pyro.__version__}, {torch.get_num_threads()} torch threads; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]


def _write(name, lines):
    path = os.path.join(HERE, name)
    storage.write_text(path, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------
# (a) gmm_svi against EM on the demo data
# ---------------------------------------------------------------------------------------
def bench_svi(seeds, epochs, batch_size, lr):
    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        split = load_split(SYNTHETIC, test_fraction=0.25, split_seed=seed, seed=seed, n_samples=4000,
                           n_components=3, dim=2, separation=4.0)
        x, test, labels = split.train_x, split.test_x, split.test_labels
        t0 = time.perf_counter()
        gm = GaussianMixture(3, covariance_type="full", init_params="random_from_data", max_iter=500,
                             random_state=seed).fit(x)
        em_s = time.perf_counter() - t0
        em = gm.score(test)
        rows.append((seed, "em", em, 0.0, 0.0, adjusted_rand_index(labels, gm.predict(test)), em_s))
        for objective in ("enum", "tracegraph"):
            t0 = time.perf_counter()
            svi = GaussianMixtureSVI(3, covariance_type="full", objective=objective, baseline="decaying",
                                     epochs=epochs, batch_size=batch_size, lr=lr, seed=seed).fit(x)
            s = time.perf_counter() - t0
            ll = svi.score(test)
            rows.append((seed, f"gmm_svi {objective}", ll, em - ll, float(svi.gap(test).mean()),
                         adjusted_rand_index(labels, svi.predict(test)), s))
    lines = _header("Gaussian mixture by SVI against EM on the demo data",
                    f"PYTHONPATH=. python bench/bench_discrete.py svi --seeds {' '.join(map(str, seeds))}")
    lines += [f"Demo data (4,000 points, 2-D, 3 components, separation 4, a quarter held out). SVI: "
              f"{epochs} epochs, minibatch {batch_size}, Adam lr {lr}, full covariances, q(c|x) an MLP (32); "
              "tracegraph with the decaying-average baseline. Held-out log-likelihood exact (nats per point); "
              "`EM - method` is EM's held-out log-likelihood minus the method's; the gap is KL(q(c|x) || p(c|x)) "
              "averaged over held-out points. Times are wall-clock on a machine shared with other jobs.", "",
              "| seed | method | held-out log p(x) | EM - method | gap | ARI | seconds |",
              "|---|---|---|---|---|---|---|"]
    for seed, m, ll, d, gap, ari, s in rows:
        lines.append(f"| {seed} | {m} | {ll:.4f} | {d:+.4f} | {gap:.4f} | {ari:.4f} | {s:.1f} |")
    worst = max(r[3] for r in rows if r[1] == "gmm_svi enum")
    lines += ["", f"Largest shortfall of gmm_svi (enum) against EM: {worst:.4f} nats per point "
              f"(target: within 0.05) -- {'met' if worst < 0.05 else 'NOT met'}."]
    _write("results_discrete_svi.md", lines)


# ---------------------------------------------------------------------------------------
# (b) gradient variance on a MixtureVAE
# ---------------------------------------------------------------------------------------
def bench_variance(n_train, train_epochs, batch, num_draws, warmup, quick):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    split = load_split("mnist10k", binarize=True)
    x = split.train_x[:n_train]
    pyro.clear_param_store()
    model = MixtureVAE(784, 10, 10, hidden=(200,), likelihood="bernoulli", seed=0)
    t0 = time.perf_counter()
    hist = fit(model, x, epochs=train_epochs, batch_size=100, lr=1e-3, objective="enum", binarize=True,
               seed=0, quiet=True)
    train_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    xb = torch.bernoulli(split.train_x[n_train:n_train + batch], generator=g)
    t0 = time.perf_counter()
    table = gradient_variance(model, xb, num_draws=num_draws, warmup=warmup, seed=0)
    var_s = time.perf_counter() - t0
    t = table.set_index(["estimator", "group"])
    trace_y = t.loc[("trace", "encoder_y"), "total_variance"]
    cmd = "PYTHONPATH=. python bench/bench_discrete.py variance" + (" --quick" if quick else "")
    lines = _header("Variance of the gradient estimators on a MixtureVAE", cmd)
    lines += [f"MixtureVAE(784, latent 10, 10 components, hidden 200, Bernoulli) trained {train_epochs} epochs by "
              f"enum on the first {n_train} MNIST-10k training digits (final train ELBO "
              f"{float(hist['train_elbo'].iloc[-1]):.1f} nats, {train_s:.0f} s); gradients of minus the ELBO per "
              f"datapoint on a fixed minibatch of {batch} binarized digits, {num_draws} draws per estimator after "
              f"{warmup} warm-up draws for the tracegraph estimators ({var_s:.0f} s). `total variance` is the sum "
              "over a group's coordinates; `squared norm of mean gradient` is the unbiased estimate of "
              "|E[g]|^2 (the squared norm of the sample mean minus the variance of that mean), which can be "
              "negative where the variance dominates; `ratio to enum` divides by enum's; `trace / this` is the "
              "reduction of q(y|x)'s gradient variance against trace.", "",
              "| estimator | group | parameters | total variance | squared norm of mean gradient (unbiased) | ratio to enum "
              "| trace / this (encoder_y) | seconds per draw |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        red = f"{trace_y / r['total_variance']:.1f}x" if r["group"] == "encoder_y" else ""
        lines.append(f"| {r['estimator']} | {r['group']} | {int(r['num_parameters'])} | {r['total_variance']:.4g} "
                     f"| {r['mean_grad_sq_norm']:.4g} | {r['variance_ratio']:.3g} | {red} | "
                     f"{r['seconds_per_draw']:.4f} |")
    best = {e: trace_y / t.loc[(e, "encoder_y"), "total_variance"]
            for e in ("tracegraph", "tracegraph_decaying", "tracegraph_neural")}
    lines += ["", "Reduction of the variance of q(y|x)'s gradient against trace: "
              + ", ".join(f"{e} {v:.1f}x" for e, v in best.items())
              + f" (target: >= 10x with a baseline -- {'met' if max(best['tracegraph_decaying'], best['tracegraph_neural']) >= 10 else 'NOT met'})."]
    _write("results_discrete_variance.md" if not quick else "results_discrete_variance_quick.md", lines)


# ---------------------------------------------------------------------------------------
# (c) MNIST-10k with 10 components
# ---------------------------------------------------------------------------------------
def _hungarian_accuracy(labels, pred):
    """Cluster accuracy under the best one-to-one matching of components to labels."""
    from scipy.optimize import linear_sum_assignment

    labels, pred = np.asarray(labels), np.asarray(pred)
    k = max(labels.max(), pred.max()) + 1
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (pred, labels), 1)
    rows, cols = linear_sum_assignment(-counts)
    return counts[rows, cols].sum() / labels.shape[0]


def bench_mnist(epochs, num_samples, quick, estimators, threads, latent_dim=16):
    from pyro_vae import plots

    torch.set_num_threads(threads)
    suffix = (f"_latent{latent_dim}" if latent_dim != 16 else "") + ("_quick" if quick else "")
    split = load_split("mnist10k", binarize=True)
    x, test, labels = split.train_x, split.test_x, split.test_labels
    if quick:
        x, test, labels = x[:500], test[:100], labels[:100]
    lines = _header("MixtureVAE on MNIST-10k with 10 components, by estimator",
                    "PYTHONPATH=. python bench/bench_discrete.py mnist" + (" --quick" if quick else "")
                    + f" --epochs {epochs} --num-samples {num_samples}"
                    + (f" --latent-dim {latent_dim}" if latent_dim != 16 else ""))
    lines += [f"MNIST-10k protocol (DESIGN.md): {x.shape[0]} training digits dynamically binarized, "
              f"{test.shape[0]} held out binarized once. MixtureVAE(784, latent {latent_dim}, 10 components, hidden 400, "
              f"Bernoulli), {epochs} epochs, minibatch 100, Adam lr 1e-3, seed 0. Held-out log p(x) by importance "
              f"sampling ({num_samples} samples; y drawn from q(y|x)); ARI and cluster accuracy (best one-to-one "
              "matching) of argmax q(y|x) against the digit labels.", "",
              "| estimator | held-out log p(x) | MC s.e. | held-out ELBO | ARI | cluster accuracy | train seconds |",
              "|---|---|---|---|---|---|---|"]
    for est in estimators:
        objective, baseline = {"enum": ("enum", None), "tracegraph": ("tracegraph", "neural"),
                               "trace": ("trace", None)}[est]
        pyro.clear_param_store()
        model = MixtureVAE(784, latent_dim, 10, hidden=(400,), likelihood="bernoulli", baseline=baseline, seed=0)
        t0 = time.perf_counter()
        fit(model, x, epochs=epochs, batch_size=100, lr=1e-3, objective=objective, binarize=True, seed=0,
            quiet=True)
        train_s = time.perf_counter() - t0
        ll = log_likelihood(model.model, model.guide, test, num_samples=num_samples, seed=0)
        pred = model.predict(test)
        lines.append(f"| {est} | {ll.mean:.2f} | {ll.mean_mc_stderr:.3f} "
                     f"| {float(ll.elbo.mean()):.2f} | {adjusted_rand_index(labels, pred):.3f} "
                     f"| {_hungarian_accuracy(labels, pred):.3f} | {train_s:.0f} |")
        png = os.path.join(HERE, f"discrete_components_{est}{suffix}.png")
        storage.save_figure(plots.plot_component_samples(model, (28, 28), per_component=10, seed=0), png)
    lines += ["", "Samples per component (rows): " + ", ".join(
        f"`bench/discrete_components_{e}{suffix}.png`" for e in estimators) + "."]
    _write(f"results_discrete_mnist{suffix}.md", lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    a = sub.add_parser("svi", help="(a) gmm_svi against EM on the demo data")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--epochs", type=int, default=40)
    a.add_argument("--batch-size", type=int, default=512)
    a.add_argument("--lr", type=float, default=0.03)
    b = sub.add_parser("variance", help="(b) gradient variance per estimator and parameter group")
    b.add_argument("--quick", action="store_true")
    c = sub.add_parser("mnist", help="(c) MNIST-10k with 10 components, per estimator (long)")
    c.add_argument("--quick", action="store_true", help="500 digits, 2 epochs, 50 samples")
    c.add_argument("--epochs", type=int, default=100)
    c.add_argument("--num-samples", type=int, default=5000)
    c.add_argument("--estimators", nargs="+", default=["enum", "tracegraph", "trace"],
                   choices=["enum", "tracegraph", "trace"])
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--latent-dim", type=int, default=16, help="size of z (results file and figures get a suffix "
                   "when it is not 16)")
    args = p.parse_args(argv)
    if args.part == "svi":
        bench_svi(args.seeds, args.epochs, args.batch_size, args.lr)
    elif args.part == "variance":
        if args.quick:
            bench_variance(200, 1, 50, 20, 20, True)
        else:
            bench_variance(2000, 5, 100, 200, 200, False)
    else:
        if args.quick:
            bench_mnist(2, 50, True, args.estimators, args.threads, args.latent_dim)
        else:
            bench_mnist(args.epochs, args.num_samples, False, args.estimators, args.threads, args.latent_dim)


if __name__ == "__main__":
    main()
