"""log p(x) by importance sampling, per datapoint, for any Pyro model/guide pair.

1. A linear-Gaussian model, where log p(x) is known in closed form: the estimate converges to
   it as the number of samples K grows, and the ELBO stays below.
2. A VAE trained briefly on mixture data: the gap between log p(x) and the ELBO, split into
   the approximation and amortization gaps.

    python examples/log_likelihood_importance_sampling.py [--quick]
"""

import argparse

import torch

import pyro
import pyro.distributions as dist

from pyro_vae import VAE, fit, inference_gaps, log_likelihood
from pyro_vae.data import make_gaussian_mixture, train_test_split
from pyro_vae.gaps import summarize_gaps

D, L, SIGMA = 4, 2, 0.5
g = torch.Generator().manual_seed(0)
W = torch.randn(D, L, generator=g)
B = torch.randn(D, generator=g)


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)


def guide(x):
    # a deliberately crude proposal: the prior shifted towards the least-squares solution
    loc = torch.linalg.lstsq(W, (x - B).T).solution.T * 0.5
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 0.8).to_event(1))


def make_data(n=200, seed=0):
    """``n`` draws of x from the linear-Gaussian model, from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, L, generator=gen)
    return z @ W.T + B + SIGMA * torch.randn(n, D, generator=gen)


def main(quick=False):
    x = make_data()
    exact = torch.distributions.MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(D)).log_prob(x).mean()
    print(f"linear-Gaussian model: exact log p(x) = {exact:.4f} nats per point")
    for k in (1, 10, 100) if quick else (1, 10, 100, 1000, 10000):
        est = log_likelihood(model, guide, x, num_samples=k, seed=0)
        print(f"  K={k:>6}: IS estimate {est.mean:.4f}, ELBO {est.elbo.mean():.4f}, "
              f"mean ESS {est.ess.mean():.1f}")

    mix = make_gaussian_mixture(n_samples=1000 if quick else 3000, n_components=3, dim=2, seed=1)
    train_x, test_x = train_test_split(mix.x, test_fraction=0.2, seed=0)
    vae = VAE(2, 2, hidden=(64, 64), likelihood="gaussian_feature", seed=0)
    fit(vae, train_x, epochs=5 if quick else 100, batch_size=128, lr=3e-3, seed=0, quiet=True)
    gaps = inference_gaps(vae, test_x[:50], num_samples=200 if quick else 2000,
                          steps=50 if quick else 300, seed=0)
    print("VAE on mixture data, inference gaps (nats per point):")
    print(summarize_gaps(gaps).to_string())
    return gaps


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    main(parser.parse_args().quick)
