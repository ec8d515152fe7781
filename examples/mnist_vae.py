"""A VAE on binarized MNIST digits, with held-out log p(x) by importance sampling.

Uses the MNIST-10k protocol on the real test digits when they are present (../shared/data/mnist
or $PYRO_VAE_MNIST_DIR): train on the first 9,000 with dynamic binarization, evaluate on the
last 1,000 binarized once with seed 1234. Otherwise it loads torchvision's MNIST, downloading it
only with --download.

    python examples/mnist_vae.py [--quick] [--epochs 100] [--download] [--out runs/mnist]
"""

import argparse
import os

import torch

from pyro_vae import VAE, fit, log_likelihood
from pyro_vae.data import binarize, find_mnist_dir, load_data, load_mnist_10k
from pyro_vae.runs import write_run_figures


def load(download):
    try:
        find_mnist_dir()
    except FileNotFoundError:
        train = load_data("mnist", train=True, download=download).x
        test = binarize(load_data("mnist", train=False, download=download).x[:1000], seed=1234)
        return train, test
    train_x, test_x, _, _ = load_mnist_10k()
    return train_x, test_x


def main(quick=False, epochs=100, download=False, out="runs/mnist"):
    train_x, test_x = load(download)
    if quick:
        train_x, test_x = train_x[:1000], test_x[:100]
    vae = VAE(784, 50, hidden=(400,), prior="normal", likelihood="bernoulli", seed=0)
    history = fit(vae, train_x, epochs=2 if quick else epochs, batch_size=256, lr=1e-3, val_data=test_x,
                  binarize=True, seed=0, quiet=quick)
    est = log_likelihood(vae.model, vae.guide, test_x, num_samples=50 if quick else 5000, seed=0)
    print(history.tail(3).to_string(index=False))
    print(f"held-out log p(x) = {est.mean:.2f} ± {est.stderr:.2f} nats "
          f"(K={est.num_samples}; ELBO {est.elbo.mean():.2f})")
    os.makedirs(out, exist_ok=True)
    write_run_figures(out, vae, test_x, history, (28, 28))
    return est


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--out", default="runs/mnist")
    a = parser.parse_args()
    main(a.quick, a.epochs, a.download, a.out)
