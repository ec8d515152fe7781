"""log p(x) by annealed importance sampling, and the BDMC sandwich that checks it.

A model with one latent dimension and a nonlinear decoder, x | z ~ N(A sin(3 z) + B z, SIGMA^2 I),
has a posterior p(z|x) with several modes, and a log p(x) that a one-dimensional integral gives
to many digits (:func:`exact_log_px`). Starting from a poor guide (the prior, widened):

1. importance sampling from the guide stays below log p(x); AIS from the same guide closes the
   distance as the number of annealing steps grows;
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

D, SIGMA = 5, 0.5
g = torch.Generator().manual_seed(0)
A = torch.randn(D, generator=g)
B = torch.randn(D, generator=g)


def decode(z):
    """The mean of x given z: ``(..., 1) -> (..., D)``."""
    return A * torch.sin(3.0 * z) + B * z


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(decode(z), SIGMA).to_event(1), obs=x)


def guide(x):
    # a poor starting distribution: the prior, widened, whatever x is
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.5).to_event(1))


def exact_log_px(x, points=40001, bound=10.0):
    """log p(x) per row, ``(N,)``: the integral over z by the trapezoidal rule on a fine grid.

    The integrand is smooth and negligible beyond ``|z| = bound``; in float64 the rule is exact
    to far below a thousandth of a nat here.
    """
    z = torch.linspace(-bound, bound, points, dtype=torch.float64)[:, None]
    log_joint = (dist.Normal(0.0, 1.0).log_prob(z).squeeze(-1)[:, None]
                 + dist.Normal(decode(z.double())[:, None, :], SIGMA).log_prob(x.double()).sum(-1))
    weights = torch.full((points,), 2 * bound / (points - 1), dtype=torch.float64)
    weights[[0, -1]] /= 2
    return torch.logsumexp(log_joint + weights.log()[:, None], dim=0)


def make_data(n=100, seed=1):
    """``n`` draws of x from the model, from ``seed``, ``(n, D)``."""
    gen = torch.Generator().manual_seed(seed)
    return decode(torch.randn(n, 1, generator=gen)) + SIGMA * torch.randn(n, D, generator=gen)


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
