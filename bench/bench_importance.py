"""Benchmark of the per-datapoint importance-sampling estimator of log p(x).

Command (from the repository root; about 5 minutes on one core):

    PYTHONPATH=. python bench/bench_importance.py

Everything runs side by side in one process (the memory check in a subprocess), with one torch
thread for every contender, on the library's VAE of MNIST size (784-400-50, Bernoulli
likelihood, untrained, seed 0) and the 1,000 held-out binarized digits of the MNIST-10k
protocol (DESIGN.md):

1. time of :func:`pyro_vae.log_likelihood` against a hand-written vectorized plain-PyTorch
   estimator with the same K, data and chunk sizes (target: at most 1.2x);
2. time per datapoint against running :class:`pyro.infer.Importance` once per datapoint, the
   only per-datapoint route Pyro itself offers (on a few digits, extrapolated; target: at
   least 50x faster);
3. the per-digit estimate of the per-datapoint estimator against the joint estimate of Pyro's
   ``vectorized_importance_weights`` (one weight per particle for a whole batch) at K=200;
4. peak resident memory (VmHWM) of K=5000 over the 1,000 digits, measured in a fresh
   subprocess (target: below 2 GB);
5. the same seed under other chunk sizes: the largest change of a per-digit estimate (the draws
   do not depend on the chunking; what remains is float32 rounding of the networks).

The markdown table is printed and written to bench/results_importance.md (atomically).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import pyro  # noqa: E402
from pyro.infer import Importance  # noqa: E402
from pyro.infer.importance import vectorized_importance_weights  # noqa: E402

from pyro_vae import storage  # noqa: E402
from pyro_vae.data import load_mnist_10k  # noqa: E402
from pyro_vae.importance import chunk_sizes, log_likelihood, log_weights  # noqa: E402
from pyro_vae.vae import VAE  # noqa: E402

RESULTS = os.path.join(HERE, "results_importance.md")


def make_vae():
    return VAE(784, latent_dim=50, hidden=(400,), prior="normal", likelihood="bernoulli", seed=0).eval()


def held_out():
    return load_mnist_10k()[1]  # (1000, 784), binarized once with seed 1234


@torch.no_grad()
def plain_torch_estimator(vae, x, num_samples, particle_batch_size, data_batch_size):
    """The same estimator written by hand: encoder once per data chunk, reparameterized samples,
    Bernoulli decoder, standard-normal prior, running log-sum-exp over particle chunks."""
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    out = []
    for start in range(0, x.shape[0], data_batch_size):
        xb = x[start:start + data_batch_size]
        loc, scale = vae.encoder(xb)
        log_scale = scale.log()
        lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64)
        for k0 in range(0, num_samples, particle_batch_size):
            k = min(particle_batch_size, num_samples - k0)
            eps = torch.randn((k,) + loc.shape)
            z = loc + scale * eps
            logits = vae.decoder(z)
            log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_pz = (-0.5 * z ** 2 - half_log_2pi).sum(-1)
            log_qz = (-0.5 * eps ** 2 - log_scale - half_log_2pi).sum(-1)
            logw = (log_px_z + log_pz - log_qz).double()
            lse = torch.logaddexp(lse, torch.logsumexp(logw, 0))
        out.append(lse - math.log(num_samples))
    return torch.cat(out)


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def bench_speed(vae, x, k, repeats):
    n = x.shape[0]
    kb, nb = chunk_sizes(k, n, x.shape[1], None, None)  # log_likelihood's default chunks
    ours, plain = [], []
    for r in range(repeats):  # alternate the contenders so both see the same machine load
        t, est = timed(lambda: log_likelihood(vae.model, vae.guide, x, k, seed=r))
        ours.append(t)
        t, ref = timed(lambda: plain_torch_estimator(vae, x, k, kb, nb))
        plain.append(t)
    return {"n": n, "k": k, "chunk": f"{kb} particles x {nb} digits",
            "ours": min(ours), "plain": min(plain),
            "ours_all": ours, "plain_all": plain, "ours_mean": est.mean, "ours_stderr": est.stderr,
            "plain_mean": float(ref.mean())}


def bench_pyro_importance(vae, x, k):
    times, values = [], []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]

        def run():
            importance = Importance(vae.model, vae.guide, num_samples=k).run(xi)
            return float(importance.get_log_normalizer())

        t, v = timed(run)
        times.append(t)
        values.append(v)
    pyro.clear_param_store()
    ours = log_likelihood(vae.model, vae.guide, x, k, seed=0)
    return {"n": x.shape[0], "per_datapoint": sum(times) / len(times), "values": values,
            "ours_values": ours.per_datapoint.tolist()}


@torch.no_grad()
def bench_joint(vae, x, k, seed=0):
    """Per-digit log p(x) of the joint estimate for batches of B digits, against the
    per-datapoint estimate on the same digits."""
    rows = {}
    per = log_likelihood(vae.model, vae.guide, x, k, seed=seed)
    rows["per-datapoint (B = 1)"] = per.mean
    for b in (10, 100):
        pyro.set_rng_seed(seed)
        total = 0.0
        for s in range(0, x.shape[0], b):
            lw = vectorized_importance_weights(vae.model, vae.guide, x[s:s + b], num_samples=k,
                                               max_plate_nesting=1)[0]
            total += float(torch.logsumexp(lw, 0) - math.log(k))
        rows[f"Pyro joint, batches of B = {b}"] = total / x.shape[0]
    # B = 1000 does not fit in memory in one vectorized pass: the joint log-weight of a particle is
    # the sum of its per-datapoint log-weights (checked in tests/test_importance.py), so it is
    # accumulated over data chunks of 100
    pyro.set_rng_seed(seed)
    joint = torch.zeros(k, dtype=torch.float64)
    for s in range(0, x.shape[0], 100):
        joint += log_weights(vae.model, vae.guide, x[s:s + 100], k).double().sum(-1)
    rows[f"joint over all B = {x.shape[0]}"] = float(torch.logsumexp(joint, 0) - math.log(k)) / x.shape[0]
    pyro.clear_param_store()
    return rows


@torch.no_grad()
def bench_chunking(vae, x, k, seed=0):
    """Largest change of a per-digit estimate between the default chunks and two others."""
    ref = log_likelihood(vae.model, vae.guide, x, k, seed=seed).per_datapoint
    rows = []
    for particles, digits in ((37, 50), (k, 1), (1, x.shape[0])):
        est = log_likelihood(vae.model, vae.guide, x, k, seed=seed, particle_batch_size=particles,
                             data_batch_size=digits).per_datapoint
        rows.append((f"{particles} particles x {digits} digits", float((est - ref).abs().max())))
    return rows


MEMORY_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from bench.bench_importance import make_vae, held_out
from pyro_vae.importance import log_likelihood

def vmhwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
vae, x = make_vae(), held_out()[:{n}]
base = vmhwm()
t0 = time.perf_counter()
est = log_likelihood(vae.model, vae.guide, x, {k}, seed=0)
seconds = time.perf_counter() - t0
print(json.dumps({{"base": base, "peak": vmhwm(), "seconds": seconds, "mean": est.mean,
                  "stderr": est.stderr, "mc": est.mean_mc_stderr, "ess": float(est.ess.mean())}}))
"""


def bench_memory(n, k):
    code = MEMORY_CHILD.format(root=ROOT, n=n, k=k)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, to try the script (the table is printed, not written, unless --out)")
    parser.add_argument("--out", default=None, help=f"where to write the table (default {RESULTS} for a full run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    vae, x = make_vae(), held_out()
    quick = args.quick
    n_speed, k_speed = (200, 200) if quick else (1000, 200)
    n_mem, k_mem = (100, 500) if quick else (1000, 5000)

    speed = bench_speed(vae, x[:n_speed], k_speed, repeats=2 if quick else 5)
    print(f"speed: ours {speed['ours_all']} s, plain {speed['plain_all']} s", flush=True)
    imp = bench_pyro_importance(vae, x[:3 if quick else 5], k_speed)
    print(f"Importance: {imp['per_datapoint']:.3f} s per digit", flush=True)
    joint = bench_joint(vae, x[:n_speed], k_speed)
    print(f"joint: {joint}", flush=True)
    mem = bench_memory(n_mem, k_mem)
    print(f"memory: {mem}", flush=True)
    n_chunk = 20 if quick else 100
    chunking = bench_chunking(vae, x[:n_chunk], k_speed)
    print(f"chunking: {chunking}", flush=True)

    ours_per = speed["ours"] / speed["n"]
    plain_per = speed["plain"] / speed["n"]
    gb = 1024 ** 3
    lines = [
        "# log p(x) by importance sampling: benchmark",
        "",
        "Command: `PYTHONPATH=. python bench/bench_importance.py`" + (" --quick" if quick else ""),
        "",
        f"VAE 784-400-50 (Bernoulli likelihood, standard-normal prior, untrained, seed 0); the "
        f"held-out binarized digits of the MNIST-10k protocol; one torch thread for every "
        f"contender; times are the best of {len(speed['ours_all'])} alternating runs.",
        "",
        "## Speed",
        "",
        "| contender | K | digits | seconds | per digit | ratio to plain PyTorch |",
        "|---|---|---|---|---|---|",
        f"| `pyro_vae.log_likelihood` | {speed['k']} | {speed['n']} | {speed['ours']:.2f} | "
        f"{ours_per * 1e3:.2f} ms | **{speed['ours'] / speed['plain']:.2f}x** (target <= 1.2x) |",
        f"| hand-written vectorized plain PyTorch (same chunks: {speed['chunk']}) | {speed['k']} | "
        f"{speed['n']} | {speed['plain']:.2f} | "
        f"{plain_per * 1e3:.2f} ms | 1.00x |",
        f"| `pyro.infer.Importance`, once per digit | {speed['k']} | {imp['n']} (extrapolated) | "
        f"{imp['per_datapoint'] * speed['n']:.1f} | {imp['per_datapoint'] * 1e3:.1f} ms | "
        f"{imp['per_datapoint'] / plain_per:.0f}x |",
        "",
        f"`log_likelihood` is **{imp['per_datapoint'] / ours_per:.0f}x faster** per digit than "
        f"`pyro.infer.Importance` run once per digit (target >= 50x). Mean estimates of the timed "
        f"runs: ours {speed['ours_mean']:.2f} (+- {speed['ours_stderr']:.2f} over digits), plain "
        f"PyTorch {speed['plain_mean']:.2f} (independent samples).",
        "",
        f"Per-digit values of `Importance` on the first {imp['n']} digits: "
        + ", ".join(f"{v:.2f}" for v in imp["values"]) + "; `log_likelihood` (other samples): "
        + ", ".join(f"{v:.2f}" for v in imp["ours_values"]) + ".",
        "",
        f"## Per-datapoint vs joint estimate (K = {speed['k']}, first {speed['n']} digits)",
        "",
        "Pyro's `Importance` and `vectorized_importance_weights` give one weight per particle for a "
        "whole batch of B digits (the sum of the digits' log-weights); the estimate per digit is "
        "(logsumexp_k log w_k - log K) / B, which loosens as B grows.",
        "",
        "| estimator | log p(x) per digit (nats) |",
        "|---|---|",
    ] + [f"| {name} | {value:.2f} |" for name, value in joint.items()] + [
        "",
        "## Memory",
        "",
        f"K = {k_mem} over {n_mem} digits in a fresh subprocess (default chunks):",
        "",
        "| peak RSS (VmHWM) | before estimating | seconds | log p(x) per digit | stderr over digits | "
        "Monte Carlo stderr | mean ESS |",
        "|---|---|---|---|---|---|---|",
        f"| **{mem['peak'] / gb:.2f} GB** (target < 2 GB) | {mem['base'] / gb:.2f} GB | "
        f"{mem['seconds']:.0f} | {mem['mean']:.2f} | {mem['stderr']:.2f} | {mem['mc']:.4f} | "
        f"{mem['ess']:.1f} |",
        "",
        f"## The same seed under other chunk sizes (K = {k_speed}, first {n_chunk} digits)",
        "",
        "Largest change of a per-digit estimate against the default chunks (the draws of digit i's "
        "particle k do not depend on the chunking; float32 networks may round the last bit "
        "differently for another number of rows):",
        "",
        "| chunks | max abs change (nats) |",
        "|---|---|",
    ] + [f"| {name} | {change:.2e} |" for name, change in chunking] + [
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = args.out if args.out is not None else (None if quick else RESULTS)
    if out is not None:
        storage.write_text(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
