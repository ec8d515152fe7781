"""Train a Pyro program of your own with ``fit``: probabilistic PCA as a model/guide pair.

    model:  z ~ N(0, I_L),  x | z ~ N(W z + b, sigma^2 I_D)     (W, b, sigma: pyro.param)
    guide:  q(z | x) = N(A x + c, diag(s^2))                    (an encoder, pyro.module)

``fit`` trains the pair by minibatch SVI (the plate over the minibatch is scaled to the whole
data), writes a checkpoint after every epoch and resumes from it. The marginal likelihood of
this model is known, p(x) = N(b, W W^T + sigma^2 I), so the example checks the trained model
three ways: its exact log p(x) against the maximum-likelihood solution (scikit-learn's PCA
fits the same model in closed form), and the importance-sampling estimate of
:func:`pyro_vae.log_likelihood` against the exact value.

    python examples/fit_pyro_program.py [--quick]
"""

import argparse
import os

import torch
import torch.nn as nn
from sklearn.decomposition import PCA

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_vae import fit, log_likelihood

D, L = 6, 2


class LinearEncoder(nn.Module):
    """q(z|x): a linear map to the mean, a learned scale per latent dimension."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Linear(D, L)
        self.log_scale = nn.Parameter(torch.zeros(L))

    def forward(self, x):
        return self.loc(x), self.log_scale.exp().expand(x.shape[0], L)



def model(x):
    W = pyro.param("W", lambda: 0.1 * torch.randn(D, L))
    b = pyro.param("b", lambda: torch.zeros(D))
    sigma = pyro.param("sigma", lambda: torch.tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], L), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)


def make_guide(encoder):
    """The guide program of ``encoder``."""

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


def make_data(n=2000, seed=0):
    """``n`` draws from a probabilistic PCA with fixed random parameters, ``(n, D)``."""
    g = torch.Generator().manual_seed(seed)
    W, b = 2.0 * torch.randn(D, L, generator=g), torch.randn(D, generator=g)
    return torch.randn(n, L, generator=g) @ W.T + b + 0.5 * torch.randn(n, D, generator=g)


def exact_log_px(x):
    """log N(x | b, W W^T + sigma^2 I) per row under the parameters in Pyro's param store."""
    W, b, sigma = (pyro.param(name).detach() for name in ("W", "b", "sigma"))
    cov = W @ W.T + sigma ** 2 * torch.eye(D)
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x)


def main(quick=False, folder="runs/fit_pyro_program"):
    x = make_data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)                        # the initial values of W and of the encoder
    guide = make_guide(LinearEncoder())
    os.makedirs(folder, exist_ok=True)
    checkpoint = os.path.join(folder, "checkpoint.pt")
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    epochs = 40 if quick else 100
    # the exponential schedule does not depend on the number of epochs: the two calls run
    # exactly what one call to fit with all the epochs runs
    settings = dict(batch_size=100, lr=0.05, lr_schedule="exponential", lr_decay=0.95, seed=0,
                    checkpoint=checkpoint, quiet=True)
    # half the epochs, then a second call that resumes from the checkpoint and runs the rest
    fit(model, guide, x, epochs=epochs // 2, **settings)
    history = fit(model, guide, x, epochs=epochs, resume=True, **settings)
    print(f"trained {int(history['epoch'].iloc[-1])} epochs (resumed after {epochs // 2}); "
          f"final ELBO {history['train_elbo'].iloc[-1]:.4f} nats per point")

    exact = exact_log_px(x).mean()
    best = PCA(n_components=L).fit(x.double().numpy()).score(x.double().numpy())
    est = log_likelihood(model, guide, x, num_samples=100 if quick else 1000, seed=0)
    print(f"fitted model: exact log p(x) = {exact:.4f}")
    print(f"maximum likelihood (scikit-learn PCA, closed form) = {best:.4f}")
    print(f"importance sampling (K={est.num_samples}): {est.mean:.4f} ± {est.stderr:.4f}, ELBO {est.elbo.mean():.4f}")
    return est


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer epochs and samples")
    main(parser.parse_args().quick)
