"""log p(x) by annealed importance sampling, and the BDMC sandwich that checks it.

On a linear-Gaussian model log p(x) is known in closed form. With a deliberately poor guide as
the starting distribution:

1. importance sampling from the guide stays far below log p(x); AIS from the same guide closes
   the distance as the number of annealing steps grows;
2. on data simulated from the model, BDMC runs AIS forward (a stochastic lower bound) and in
   reverse from the latents that generated the data (a stochastic upper bound): the true
   log p(x) lies between, and the width of the sandwich says how far AIS with that many
   steps can be trusted on data like these.

    python examples/ais_and_bdmc.py [--quick]
"""

import argparse

import torch

import pyro
import pyro.distributions as dist

from pyro_vae import ais_log_likelihood, bdmc, log_likelihood

D, L, SIGMA = 6, 2, 0.6
g = torch.Generator().manual_seed(0)
W = torch.randn(D, L, generator=g)
B = torch.randn(D, generator=g)


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)


def guide(x):
    # a poor starting distribution: the prior, widened, whatever x is
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], L), 1.5).to_event(1))


def exact_log_px(x):
    """log N(x | B, W W^T + SIGMA^2 I) per row, ``(N,)``."""
    return torch.distributions.MultivariateNormal(B, W @ W.T + SIGMA ** 2 * torch.eye(D)).log_prob(x)


def make_data(n=100, seed=1):
    """``n`` draws of x from the model, from ``seed``, ``(n, D)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, L, generator=gen) @ W.T + B + SIGMA * torch.randn(n, D, generator=gen)


def main(quick=False):
    x = make_data(20 if quick else 200)
    print(f"exact log p(x) = {exact_log_px(x).mean():.4f} nats per point")
    est = log_likelihood(model, guide, x, num_samples=16, seed=0)
    print(f"importance sampling, 16 samples: {est.mean:.4f}")
    for steps in (10, 100) if quick else (10, 100, 1000):
        est = ais_log_likelihood(model, guide, x, num_steps=steps, num_chains=16, seed=0, progress=False)
        print(f"AIS, 16 chains x {steps:>4} steps: {est.mean:.4f} "
              f"(acceptance {est.mean_acceptance_rate:.2f})")

    steps = 100 if quick else 1000
    sandwich = bdmc(model, guide, (20 if quick else 200, D), num_steps=steps, num_chains=4, seed=0,
                    progress=False)
    truth = exact_log_px(sandwich.data).mean()
    print(f"BDMC on {sandwich.data.shape[0]} simulated points, {steps} steps: lower {sandwich.lower.mean:.4f}, "
          f"exact {truth:.4f}, upper {sandwich.upper.mean:.4f}, gap {sandwich.mean_gap:.4f}")
    return sandwich


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer points and steps")
    main(parser.parse_args().quick)
