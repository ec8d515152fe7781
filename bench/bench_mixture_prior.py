"""Training epoch with the VampPrior: NormalMixtureEvent against the generic MixtureSameFamily.

The mixture priors' log-density is ``pyro_vae.distributions.NormalMixtureEvent``, which forms the
squared scaled distances of the latent samples to the K components from two matrix products.
The reference is the same prior written as ``MixtureSameFamily(Categorical, Normal.to_event(1))``,
which forms the ``(samples, K, L)`` differences forward and backward. Both train the same VAE
(VampPrior, z=50, [400] softplus, Bernoulli, batch 64, Adam 2e-3) from the same initial weights
and seed, one epoch each on the first ``--digits`` MNIST-10k training digits, alternating over
``--rounds`` rounds after an untimed warm-up; the median epoch time of each and their ratio are reported, and the final
training ELBOs of the two (equal up to float rounding) are printed as a check.

    PYTHONPATH=. python bench/bench_mixture_prior.py [--digits 3000] [--rounds 3] [--threads 1]
"""

import argparse
import contextlib
import os
import statistics
import sys
import time
from unittest import mock

import torch

import pyro.distributions as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyro_vae import VAE, fit, storage  # noqa: E402
from pyro_vae.data import load_split  # noqa: E402
from pyro_vae.priors import VampPrior  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def generic_forward(self):
    """VampPrior.forward with the generic mixture of torch/Pyro."""
    loc, scale = self.encoder(self.pseudo_inputs)
    logits = torch.zeros(loc.shape[:-1], dtype=loc.dtype, device=loc.device)
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))


def one_epoch(x, n_pseudo, particles, generic):
    vae = VAE(784, 50, hidden=(400,), prior=("vamp", {"n_pseudo": n_pseudo}), likelihood="bernoulli", seed=0)
    objective = "iwae" if particles > 1 else "trace"
    with mock.patch.object(VampPrior, "forward", generic_forward) if generic else contextlib.nullcontext():
        t0 = time.perf_counter()
        history = fit(vae, x, epochs=1, batch_size=64, lr=2e-3, binarize=True, objective=objective,
                      num_particles=particles, seed=0, quiet=True)
        return time.perf_counter() - t0, float(history["train_elbo"].iloc[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--digits", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default=None, help="MNIST folder (default: the library's search)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x = load_split("mnist10k", root=args.root).train_x[:args.digits]
    for generic in (True, False):       # warm-up: first-call costs of torch and Pyro
        one_epoch(x[:640], 50, 10, generic)
    rows = []
    for n_pseudo, particles in [(50, 1), (50, 10), (500, 1), (500, 10)]:
        times, elbos = {True: [], False: []}, {}
        for r in range(args.rounds):
            for generic in ((True, False) if r % 2 == 0 else (False, True)):
                seconds, elbos[generic] = one_epoch(x, n_pseudo, particles, generic)
                times[generic].append(seconds)
        ref, ours = statistics.median(times[True]), statistics.median(times[False])
        rows.append((n_pseudo, particles, ref, ours, ref / ours, elbos[True], elbos[False]))
        print(rows[-1], flush=True)
    lines = ["# Training epoch with the VampPrior: NormalMixtureEvent against MixtureSameFamily", "",
             f"Command: `PYTHONPATH=. python bench/bench_mixture_prior.py --digits {args.digits} --rounds "
             f"{args.rounds} --threads {args.threads}`", "",
             f"One epoch on the first {args.digits} MNIST-10k training digits (dynamic binarization), VAE with "
             "VampPrior, z=50, [400] softplus, Bernoulli, batch 64, Adam 2e-3; median of "
             f"{args.rounds} alternating rounds, {args.threads} torch thread(s); torch {torch.__version__}.", "",
             "| pseudo-inputs | objective | MixtureSameFamily s/epoch | NormalMixtureEvent s/epoch | speed-up | "
             "train ELBO (generic / ours) |",
             "|---:|---|---:|---:|---:|---|"]
    for n_pseudo, particles, ref, ours, ratio, e_ref, e_ours in rows:
        objective = f"IWAE K={particles}" if particles > 1 else "ELBO"
        lines.append(f"| {n_pseudo} | {objective} | {ref:.2f} | {ours:.2f} | **{ratio:.2f}×** | "
                     f"{e_ref:.4f} / {e_ours:.4f} |")
    storage.write_text(os.path.join(HERE, "results_mixture_prior.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
