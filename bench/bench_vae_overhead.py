"""Pyro overhead of ``pyro_vae.fit``: epoch time against plain PyTorch on the MNIST-10k protocol.

The contenders train the same architecture (784-400-50 encoder and 50-400-784 decoder,
softplus units, Bernoulli likelihood, standard-normal prior) on the 9,000 training digits of
the MNIST-10k protocol with dynamic binarization, batch 256, Adam with lr 1e-3:

* ``pyro_vae.fit`` (objective ``"trace"``, i.e. Trace_ELBO with the Monte Carlo KL term);
* plain PyTorch, the same estimator written by hand: one reparameterized sample of z per
  digit, loss = -mean_i [log p(x_i|z_i) + log p(z_i) - log q(z_i|x_i)], with the same
  optimizer as ``fit`` (:func:`pyro_vae.training.adam`, the fused Adam kernel). This is the
  reference of the ratio: the two differ only in what Pyro adds;
* plain PyTorch with ``torch.optim.Adam``'s default per-tensor loop, what a plain training
  script usually runs;
* a "textbook" Pyro VAE as in Pyro's VAE tutorial: model/guide register their networks with
  ``pyro.module`` on every call, ``pyro.infer.SVI`` with ``pyro.optim.Adam`` and
  ``Trace_ELBO`` (Pyro's default settings, validation on).

They run interleaved in one process: in round r each contender trains ``--epochs-per-round``
epochs, the order rotating every round, all with the same number of torch threads. Each
contender's first round is a warm-up and is not counted. Reported: the median epoch time of
each contender, the ratio of medians, and the median over rounds of the ratio within a round
(the two epochs of a pair run seconds apart, so a slow spell of the shared machine mostly
cancels).

Usage::

    PYTHONPATH=. python bench/bench_vae_overhead.py                 # writes results_vae_overhead.md
    PYTHONPATH=. python bench/bench_vae_overhead.py --repeats 1 --rounds 5 --no-write
    PYTHONPATH=. python bench/bench_vae_overhead.py --profile       # cProfile of pyro_vae.fit
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

from pyro_vae import storage  # noqa: E402
from pyro_vae.data import load_mnist_10k  # noqa: E402
from pyro_vae.networks import MIN_SCALE  # noqa: E402
from pyro_vae.training import adam, fit  # noqa: E402
from pyro_vae.vae import VAE  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results_vae_overhead.md")
LATENT, HIDDEN, BATCH, LR = 50, 400, 256, 1e-3


# --------------------------------------------------------------------------- plain PyTorch
class PlainVAE(nn.Module):
    """The same networks as pyro_vae's MLP Encoder/Decoder, without Pyro."""

    def __init__(self, data_dim=784, latent_dim=LATENT, hidden=HIDDEN, pseudo_inputs=None):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc = nn.Sequential(nn.Linear(data_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(), nn.Linear(hidden, data_dim))
        # VampPrior: p(z) = (1/K) sum_k q(z | u_k) at learned pseudo-inputs u_k
        self.pseudo = None if pseudo_inputs is None else nn.Parameter(pseudo_inputs.detach().clone())

    def encode(self, x):
        loc, raw = self.enc(x).split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE

    def log_prior(self, z):
        c = 0.5 * math.log(2 * math.pi)
        if self.pseudo is None:
            return (-0.5 * z.pow(2) - c).sum(-1)
        ploc, pscale = self.encode(self.pseudo)  # (K, L)
        lp = (-0.5 * ((z.unsqueeze(-2) - ploc) / pscale).pow(2) - pscale.log() - c).sum(-1)  # (B, K)
        return torch.logsumexp(lp, -1) - math.log(ploc.shape[0])

    def loss(self, x):
        """-ELBO per digit with one reparameterized sample and the Monte Carlo KL term."""
        loc, scale = self.encode(x)
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        # log q(z|x) and log p(z) of the sampled z (the constants cancel but are kept, as in Pyro)
        log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_pz = self.log_prior(z)
        logits = self.dec(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        return -(log_px + log_pz - log_q).mean()


def timed_epochs(step, data, epochs, gen, batch):
    """Epoch times of ``step(xb) -> loss`` over seeded minibatches with dynamic binarization."""
    n = data.shape[0]
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for b in range(math.ceil(n / batch)):
            xb = torch.bernoulli(data[perm[b * batch:(b + 1) * batch]], generator=gen)
            total += step(xb) * xb.shape[0]
        times.append(time.perf_counter() - t0)
    return times


def plain_epochs(model, optimizer, data, epochs, gen, batch):
    def step(xb):
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(xb)
        loss.backward()
        optimizer.step()
        return loss.item()

    return timed_epochs(step, data, epochs, gen, batch)


# --------------------------------------------------------------------------- textbook Pyro
class TextbookVAE(nn.Module):
    """Pyro's VAE tutorial: pyro.module in model and guide, plate over the minibatch."""

    def __init__(self, data_dim=784, latent_dim=LATENT, hidden=HIDDEN):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc = nn.Sequential(nn.Linear(data_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(), nn.Linear(hidden, data_dim))

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.latent_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.latent_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.dec(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(x).split(self.latent_dim, dim=-1)
            pyro.sample("latent", dist.Normal(loc, F.softplus(raw) + MIN_SCALE).to_event(1))


def textbook_epochs(svi, data, epochs, gen):
    return timed_epochs(svi.step, data, epochs, gen, BATCH)


# --------------------------------------------------------------------------- pyro_vae.fit
def pyro_vae_epochs(vae, data, epochs, seed, batch):
    t0 = time.perf_counter()
    history = fit(vae, data, epochs=epochs, batch_size=batch, lr=LR, objective="trace",
                  binarize=True, seed=seed, quiet=True)
    wall = time.perf_counter() - t0
    return list(history["seconds"]), wall


PLAIN, PLAIN_DEFAULT, FIT, TEXTBOOK = ("plain PyTorch", "plain PyTorch, default Adam", "pyro_vae.fit",
                                       "textbook Pyro")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=16, help="interleaved rounds (the first is a warm-up)")
    p.add_argument("--epochs-per-round", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="independent repeats of all the rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for every contender")
    p.add_argument("--no-textbook", action="store_true", help="skip the textbook Pyro VAE")
    p.add_argument("--prior", choices=("normal", "vamp"), default="normal",
                   help="p(z) on both sides: standard normal (the protocol) or VampPrior (50 pseudo-inputs)")
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--results", default=RESULTS, help="markdown file to write")
    p.add_argument("--no-write", action="store_true", help="do not write results_vae_overhead.md")
    p.add_argument("--profile", action="store_true", help="cProfile two epochs of pyro_vae.fit and exit")
    args = p.parse_args()
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the first round is a warm-up)")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    torch.set_num_threads(args.threads)
    train_x = load_mnist_10k()[0]

    if args.profile:
        import cProfile
        import pstats

        vae = VAE(784, LATENT, hidden=(HIDDEN,), seed=0)
        fit(vae, train_x, epochs=1, binarize=True, quiet=True)
        prof = cProfile.Profile()
        prof.enable()
        fit(vae, train_x, epochs=2, binarize=True, quiet=True)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return

    torch.manual_seed(0)
    pyro.clear_param_store()
    vae = VAE(784, LATENT, hidden=(HIDDEN,), prior=args.prior, seed=0)
    vamp = args.prior == "vamp"

    def plain_copy():
        """A PlainVAE with the VAE's initial weights."""
        plain = PlainVAE(pseudo_inputs=vae.prior.pseudo_inputs if vamp else None)
        plain.load_state_dict({k.replace("q.encoder.net", "enc").replace("decoder.net", "dec")
                               .replace("prior.pseudo_inputs", "pseudo"): v.clone()
                               for k, v in vae.state_dict().items()
                               if k.startswith(("q.encoder.", "decoder.", "prior.pseudo"))})
        return plain

    plain = plain_copy()
    plain_opt = adam(list(plain.parameters()), LR)  # the optimizer fit uses
    plain_gen = torch.Generator().manual_seed(0)
    plain_default = plain_copy()
    default_opt = torch.optim.Adam(plain_default.parameters(), lr=LR)
    default_gen = torch.Generator().manual_seed(0)
    textbook = TextbookVAE()
    textbook.load_state_dict({k: v for k, v in plain.state_dict().items() if k != "pseudo"})
    svi = SVI(textbook.model, textbook.guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    text_gen = torch.Generator().manual_seed(0)

    names = [FIT, PLAIN, PLAIN_DEFAULT] + ([] if args.no_textbook or vamp else [TEXTBOOK])
    batch = args.batch_size
    e = args.epochs_per_round

    def one_repeat(rep):
        """``args.rounds`` interleaved rounds; returns epoch times, per-round ratios, fit walls."""
        times = {k: [] for k in names}
        paired = {k: [] for k in names}  # per round: median epoch of k / median epoch of plain
        walls = []
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            this_round = {}
            for name in order:
                if name == FIT:
                    t, wall = pyro_vae_epochs(vae, train_x, e, seed=1000 * rep + r, batch=batch)
                    if r > 0:
                        walls.append(wall / e)
                elif name == PLAIN:
                    t = plain_epochs(plain, plain_opt, train_x, e, plain_gen, batch)
                elif name == PLAIN_DEFAULT:
                    t = plain_epochs(plain_default, default_opt, train_x, e, default_gen, batch)
                else:
                    t = textbook_epochs(svi, train_x, e, text_gen)
                this_round[name] = statistics.median(t)
                if r > 0:
                    times[name] += t
            if r > 0:
                for name in names:
                    paired[name].append(this_round[name] / this_round[PLAIN])
            print(f"repeat {rep + 1}/{args.repeats}, round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {this_round[k]:.3f}s" for k in names), flush=True)
        return times, paired, walls

    times = {k: [] for k in names}
    walls = []
    repeats = []  # per repeat: {contender: (ratio of medians, median ratio within a round)}, steal
    for rep in range(args.repeats):
        steal0 = _steal_seconds()
        t, paired, w = one_repeat(rep)
        steal = _steal_seconds() - steal0
        for k in names:
            times[k] += t[k]
        walls += w
        base = statistics.median(t[PLAIN])
        repeats.append(({k: (statistics.median(t[k]) / base, statistics.median(paired[k])) for k in names},
                        steal, sum(sum(v) for v in t.values())))

    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[PLAIN]
    pooled = {k: statistics.median(r[0][k][1] for r in repeats) for k in names}
    lines = [
        "# Pyro overhead of `pyro_vae.fit` on the MNIST-10k protocol",
        "",
        "Command: `" + " ".join(["PYTHONPATH=. python bench/bench_vae_overhead.py"] + sys.argv[1:]) + "`",
        "",
        f"9,000 training digits, dynamic binarization, z={LATENT}, one hidden layer of {HIDDEN} softplus "
        f"units, Bernoulli likelihood, {'VampPrior (50 pseudo-inputs)' if vamp else 'standard-normal'} "
        f"prior, batch {batch}, Adam lr {LR}; "
        f"{args.threads} torch thread(s) for every contender; torch {torch.__version__}, "
        f"pyro {pyro.__version__}. Estimator on every side: single-sample reparameterized ELBO "
        "with the Monte Carlo KL term log p(z) - log q(z|x) at the sampled z (Trace_ELBO). "
        f"`pyro_vae.fit` and the plain-PyTorch reference use the same optimizer "
        f"(`pyro_vae.training.adam`: {_adam_kind(plain_opt)}); 'default Adam' is "
        "`torch.optim.Adam(params, lr)`, the per-tensor loop, as is `pyro.optim.Adam` in the "
        f"textbook VAE. {args.repeats} repeat(s) of {args.rounds} interleaved rounds of {e} epoch(s) "
        f"per contender, the first round of each repeat a warm-up not counted; "
        f"{len(times[PLAIN])} timed epochs each.",
        "",
        "## All timed epochs",
        "",
        "| contender | median epoch (s) | min | max | ratio of medians |",
        "|---|---|---|---|---|",
    ]
    for k in names:
        v = times[k]
        b = "**" if k == FIT else ""
        lines.append(f"| {k} | {med[k]:.3f} | {min(v):.3f} | {max(v):.3f} | {b}{med[k] / base:.3f}x{b} |")
    lines += [
        "",
        "## Per repeat",
        "",
        "Ratio to plain PyTorch as the ratio of the repeat's medians / the median over its rounds of "
        "the ratio within a round (the epochs of a round run seconds apart, so a slow spell of the "
        "shared machine mostly cancels). 'Steal' is the CPU time the hypervisor gave to other "
        "machines during the repeat, as a share of the repeat's timed seconds (`/proc/stat`).",
        "",
        "| repeat | " + " | ".join(names) + " | steal |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for i, (ratios, steal, seconds) in enumerate(repeats):
        lines.append(f"| {i + 1} | " + " | ".join(f"{a:.3f}x / {p:.3f}x" for a, p in
                                                   (ratios[k] for k in names))
                     + f" | {100 * steal / seconds:.1f}% |")
    lines.append("| median | " + " | ".join(f"{pooled[k]:.3f}x" for k in names) + " | |")
    verdict = "met" if pooled[FIT] <= 1.10 else "NOT met"
    lines += [
        "",
        f"`pyro_vae.fit` wall time per epoch including its set-up (whole call / epochs): median "
        f"{statistics.median(walls):.3f} s ({statistics.median(walls) / base:.2f}x).",
        "",
        f"Target: pyro_vae.fit <= 1.10x plain PyTorch -> {verdict} ({pooled[FIT]:.3f}x, the median "
        f"over repeats of the within-round ratio; repeats ranged "
        f"{min(r[0][FIT][1] for r in repeats):.3f}x-{max(r[0][FIT][1] for r in repeats):.3f}x).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        storage.write_text(args.results, text)


def _steal_seconds():
    """CPU seconds stolen by the hypervisor so far, over all cores (0 where not reported)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _adam_kind(optimizer):
    return "fused kernel" if optimizer.defaults.get("fused") else "per-tensor loop (no fused kernel here)"


if __name__ == "__main__":
    main()
