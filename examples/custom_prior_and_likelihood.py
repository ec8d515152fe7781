"""Declare your own prior p(z) and likelihood p(x|z) and train a VAE with them.

The prior is any callable (or nn.Module) returning a Pyro distribution with event shape
(latent_dim,); the likelihood is any callable mapping the decoder output (..., D * k) to a
distribution with event shape (D,), declaring k outputs per feature. Parameters of nn.Module
priors and likelihoods are learned with the networks.

    python examples/custom_prior_and_likelihood.py [--quick]
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F

import pyro.distributions as dist

from pyro_vae import VAE, fit, log_likelihood
from pyro_vae.data import make_gaussian_mixture, train_test_split


class LearnedLaplacePrior(nn.Module):
    """p(z) = Laplace(loc, scale) per coordinate, with learned loc and scale."""

    def __init__(self, latent_dim):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self):
        return dist.Laplace(self.loc, F.softplus(self.raw_scale) + 1e-3).to_event(1)


def student_t_likelihood(out):
    """Heavy-tailed p(x|z): Student-t with 4 degrees of freedom; the decoder predicts the
    location (first D outputs) and the scale (next D outputs)."""
    d = out.shape[-1] // 2
    return dist.StudentT(4.0, out[..., :d], F.softplus(out[..., d:]) + 1e-3).to_event(1)


student_t_likelihood.outputs_per_feature = 2


def main(quick=False):
    mix = make_gaussian_mixture(n_samples=1000 if quick else 4000, n_components=3, dim=2, seed=0)
    train_x, test_x = train_test_split(mix.x, test_fraction=0.25, seed=0)
    vae = VAE(2, 2, hidden=(64, 64), prior=LearnedLaplacePrior(2), likelihood=student_t_likelihood,
              seed=0)
    history = fit(vae, train_x, epochs=5 if quick else 150, batch_size=128, lr=3e-3, val_data=test_x,
                  seed=0, quiet=True)
    est = log_likelihood(vae.model, vae.guide, test_x, num_samples=100 if quick else 1000, seed=0)
    truth = mix.log_prob(test_x).mean().item()
    print(history.tail(3).to_string(index=False))
    print(f"held-out ELBO        {est.elbo.mean():.4f} nats per point")
    print(f"held-out log p(x)    {est.mean:.4f} ± {est.stderr:.4f} (importance sampling)")
    print(f"generating mixture   {truth:.4f} (exact)")
    print("learned prior scale:", (F.softplus(vae.prior.fn.raw_scale) + 1e-3).detach().numpy().round(3)
          if hasattr(vae.prior, "fn") else "")
    return est


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    main(parser.parse_args().quick)
