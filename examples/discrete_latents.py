"""Discrete latents: the Gaussian mixture by SVI beside EM, and the gradient estimators of a
MixtureVAE.

1. The same mixture model fitted two ways: EM (exact E step) and SVI with an amortized
   q(c|x), the component summed out exactly (``enum``) or sampled with a score-function
   gradient (``tracegraph``, decaying-average baseline). The held-out log-likelihood of each
   fit is exact (a sum over components), and so is the gap KL(q(c|x) || p(c|x)) of SVI.
2. A MixtureVAE (y ~ Categorical, z | y ~ Normal, x | z) on the same data: the variance of
   each estimator's gradient with respect to q(y|x), at the same parameters.

    python examples/discrete_latents.py [--quick]
"""

import argparse

import torch

from pyro_vae import MixtureVAE, fit, gradient_variance
from pyro_vae.data import load_split
from pyro_vae.mixture import GaussianMixture, GaussianMixtureSVI


def main(quick=False):
    torch.set_num_threads(1)
    split = load_split("synthetic", test_fraction=0.25, split_seed=0, seed=0, n_samples=2000 if quick else 4000,
                       n_components=3, dim=2, separation=4.0)
    x, test = split.train_x, split.test_x

    em = GaussianMixture(3, covariance_type="full", max_iter=500, random_state=0).fit(x)
    print("held-out log-likelihood per point (exact), and the gap log p(x) - ELBO:")
    print(f"  EM                 {em.score(test):.4f}  gap 0 (the E step is exact)")
    for objective in ("enum", "tracegraph"):
        svi = GaussianMixtureSVI(3, covariance_type="full", objective=objective, baseline="decaying",
                                 epochs=20 if quick else 40, batch_size=256, seed=0).fit(x)
        print(f"  SVI, {objective:<12} {svi.score(test):.4f}  gap {float(svi.gap(test).mean()):.4f}")

    m = MixtureVAE(2, 2, n_components=3, hidden=(32,), likelihood="gaussian_feature", seed=0)
    fit(m, x, epochs=5 if quick else 20, batch_size=128, lr=3e-3, objective="enum", seed=0, quiet=True)
    table = gradient_variance(m, test[:100], num_draws=50 if quick else 200, warmup=50 if quick else 200, seed=0)
    rows = table[table["group"] == "encoder_y"].set_index("estimator")["total_variance"]
    print("variance of the gradient with respect to q(y|x), summed over its parameters:")
    for estimator, variance in rows.items():
        ratio = "" if estimator == "trace" else f"  ({rows['trace'] / variance:.1f}x less than trace)"
        print(f"  {estimator:<20} {variance:.4g}{ratio}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="less data, fewer epochs and draws")
    main(parser.parse_args().quick)
