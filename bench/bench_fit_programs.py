"""``pyro_vae.fit`` on a user's Pyro programs against Pyro's own SVI loop on the same programs.

The programs are the model and guide of Pyro's VAE tutorial (``pyro.module`` in both, a plate
over the minibatch, Bernoulli likelihood, 784-400-50 encoder and decoder with softplus units), on
the 9,000 training digits of the MNIST-10k protocol with dynamic binarization, batch 256, Adam
with lr 1e-3. The contenders:

* ``fit(model, guide, data)``: the library's loop (one call per round of one epoch; the
  epoch time is the ``seconds`` column of its history, so its set-up -- the first run of the
  programs that checks them and finds their parameters -- is not counted);
* Pyro's SVI loop as the tutorial writes it: ``SVI(model, guide, pyro.optim.Adam({"lr": lr}),
  Trace_ELBO())`` and ``svi.step(x)`` for every minibatch, with Pyro's default settings
  (validation on);
* the same SVI loop with Pyro's validation off, as ``fit`` runs after its first step.

All see the same minibatches (a seeded permutation and dynamic binarization per epoch). They run
interleaved in one process: in round r each contender trains one epoch, the order rotating
every round; each contender's first round is a warm-up and is not counted. Reported: the median
epoch time of each contender and the median over rounds of the ratio to the SVI loop within a
round.

Usage::

    PYTHONPATH=. python bench/bench_fit_programs.py                  # writes results_fit_programs.md
    PYTHONPATH=. python bench/bench_fit_programs.py --quick          # tiny settings, checks it runs
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

from pyro_vae import fit, storage  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results_fit_programs.md")
LATENT, HIDDEN, BATCH, LR = 50, 400, 256, 1e-3


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, x_dim)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))


class TutorialVAE(nn.Module):
    """Pyro's VAE tutorial; ``prefix`` keeps the param-store names of two copies apart."""

    def __init__(self, x_dim, z_dim=LATENT, hidden_dim=HIDDEN, prefix=""):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim, x_dim)
        self.decoder = Decoder(z_dim, hidden_dim, x_dim)
        self.z_dim = z_dim
        self.x_dim = x_dim
        self.prefix = prefix

    def model(self, x):
        pyro.module(self.prefix + "decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                        obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module(self.prefix + "encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def svi_epoch(svi, data, gen, batch, validate):
    """One epoch of the tutorial's loop; returns its seconds."""
    t0 = time.perf_counter()
    n = data.shape[0]
    perm = torch.randperm(n, generator=gen)
    total = 0.0
    with pyro.validation_enabled(validate):
        for b in range(math.ceil(n / batch)):
            xb = torch.bernoulli(data[perm[b * batch:(b + 1) * batch]], generator=gen)
            total += svi.step(xb)
    return time.perf_counter() - t0


FIT, SVI_ON, SVI_OFF = "fit(model, guide)", "Pyro SVI loop", "Pyro SVI loop, validation off"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds (the first is a warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for every contender")
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (1,024 random binary 784-pixel rows, 3 rounds) to check that it runs")
    p.add_argument("--results", default=RESULTS, help="markdown file to write")
    p.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = p.parse_args()
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the first round is a warm-up)")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.no_write = 3, True
        train_x = (torch.rand(1024, 784, generator=torch.Generator().manual_seed(0)) > 0.8).float()
        what = "1,024 random binary rows of 784 pixels (--quick)"
    else:
        from pyro_vae.data import load_mnist_10k

        train_x = load_mnist_10k()[0]
        what = "the 9,000 training digits of the MNIST-10k protocol"

    pyro.clear_param_store()
    torch.manual_seed(0)
    fit_vae = TutorialVAE(784, prefix="fit_")
    svi_vaes = {}
    svis = {}
    for name, prefix in ((SVI_ON, "svi_on_"), (SVI_OFF, "svi_off_")):
        svi_vaes[name] = TutorialVAE(784, prefix=prefix)
        svi_vaes[name].load_state_dict(fit_vae.state_dict())
        svis[name] = SVI(svi_vaes[name].model, svi_vaes[name].guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    gens = {name: torch.Generator().manual_seed(0) for name in svis}
    names = [FIT, SVI_ON, SVI_OFF]
    times = {k: [] for k in names}
    ratios = {k: [] for k in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        this = {}
        for name in order:
            if name == FIT:
                hist = fit(fit_vae.model, fit_vae.guide, train_x, epochs=1, batch_size=args.batch_size, lr=LR,
                           binarize=True, seed=r, quiet=True)
                this[name] = float(hist["seconds"].iloc[0])
            else:
                this[name] = svi_epoch(svis[name], train_x, gens[name], args.batch_size, name == SVI_ON)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {this[k]:.3f}s" for k in names), flush=True)
        if r > 0:
            for k in names:
                times[k].append(this[k])
                ratios[k].append(this[k] / this[SVI_ON])
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(v) for k, v in ratios.items()}
    ratio_off = statistics.median(a / b for a, b in zip(times[FIT], times[SVI_OFF]))
    lines = [
        "# `pyro_vae.fit` on Pyro's tutorial VAE against Pyro's own SVI loop",
        "",
        "Command: `" + " ".join(["PYTHONPATH=. python bench/bench_fit_programs.py"] + sys.argv[1:]) + "`",
        "",
        f"Pyro's VAE tutorial programs (z={LATENT}, one hidden layer of {HIDDEN} softplus units, Bernoulli "
        f"likelihood) on {what}, dynamic binarization, batch {args.batch_size}, Adam lr {LR} "
        f"(`fit`: torch's fused Adam; SVI: `pyro.optim.Adam`); {args.threads} torch thread(s); torch "
        f"{torch.__version__}, pyro {pyro.__version__}. {args.rounds} interleaved rounds of one epoch per "
        f"contender, the first a warm-up not counted.",
        "",
        "| contender | median epoch (s) | min | max | median ratio to the SVI loop within a round |",
        "|---|---|---|---|---|",
    ]
    for k in names:
        v = times[k]
        lines.append(f"| {k} | {med[k]:.3f} | {min(v):.3f} | {max(v):.3f} | {ratio[k]:.3f}x |")
    verdict = "met" if ratio[FIT] <= 1.0 else "NOT met"
    lines += [
        "",
        f"Target: fit no slower per epoch than Pyro's SVI loop -> {verdict} ({ratio[FIT]:.3f}x the loop with "
        f"Pyro's default settings, {ratio_off:.3f}x the loop with validation off).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        storage.write_text(args.results, text)


if __name__ == "__main__":
    main()
