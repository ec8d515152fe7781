"""Benchmark of annealed importance sampling (:mod:`pyro_vae.ais`): speed, and log p(x) on MNIST-10k.

Commands (from the repository root)::

    PYTHONPATH=. python bench/bench_ais.py --quick        # every part on tiny sizes (1-2 minutes)
    PYTHONPATH=. python bench/bench_ais.py                # the benchmark (35-55 minutes on 2 cores)
    PYTHONPATH=. python bench/bench_ais.py --run RUN_DIR  # ... reusing a trained default run folder

All parts run in one process (the memory check in a fresh subprocess) with ``--threads`` torch
threads (default 2). Without ``--run`` the default configuration is trained first with
:func:`pyro_vae.runs.train_run` (``pyro-vae train`` with no options: VampPrior VAE 784-400-50,
100 epochs, about 4 minutes) into ``$PYRO_VAE_BENCH_RUNS/ais_default`` (default
``/tmp/pyro_vae_bench_runs``); an existing complete run there is reused.

1. **Speed.** :func:`pyro_vae.ais_log_likelihood` against a hand-vectorized plain-PyTorch AIS with
   the same kernel and schedule (sigmoid schedule, HMC with 10 leapfrog steps, the same initial
   step size, adaptation rule and step-size jitter, the same number of density evaluations), on
   the same VAE (784-400-50, Bernoulli likelihood, standard-normal prior, untrained, seed 0) and
   the same held-out digits, alternating repeats; time per datapoint x chain x step and the ratio
   (target <= 1.3x).
2. **The MNIST-10k AIS evaluation.** Wall time and peak resident memory (VmHWM, fresh subprocess)
   of ``ais_log_likelihood`` on all 1,000 held-out digits with the trained default model,
   16 chains x 100 steps; its estimates are the 100-step row of part 3.
3. **Quality.** Held-out log p(x) of the trained default model by importance sampling (K=5,000,
   all 1,000 digits) and by AIS (16 chains) at 100, 1,000 and 10,000 steps on the first 1,000,
   50 and 5 held-out digits; each AIS row is compared with IS on the same digits (paired).
4. **BDMC.** Forward and reverse AIS (4 chains each) on 100 digits simulated from the trained
   model, at 100, 300, 1,000 and 3,000 steps, stopping at the first mean gap of at most 1.0 nat
   per digit or when the next step count would take BDMC past 25 minutes.

Cost: one evaluation of log p(x, z) with its gradient for one (digit, chain) pair of the default
model takes tens of microseconds on one core; an AIS run of T steps costs T x 11 of them per
pair. The script measures this first and prints the expected time of every part before it
starts. Results go to bench/results_ais.md (atomically).
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

from pyro_vae import storage  # noqa: E402
from pyro_vae.ais import ais_log_likelihood, annealing_schedule, bdmc  # noqa: E402
from pyro_vae.data import load_mnist_10k  # noqa: E402
from pyro_vae.importance import log_likelihood  # noqa: E402
from pyro_vae.runs import load_run, train_run  # noqa: E402
from pyro_vae.vae import VAE  # noqa: E402

RESULTS = os.path.join(HERE, "results_ais.md")
ADAPT_CHAINS = 2  # the default num_adapt_chains: every digit runs chains + 2 chains
RUNS = os.environ.get("PYRO_VAE_BENCH_RUNS", "/tmp/pyro_vae_bench_runs")

LEAPFROG = 10
SPEED_STEP_SIZE = 0.05  # initial step size of both contenders in the speed comparison

FULL = {
    "speed": {"digits": 100, "chains": 16, "steps": 20, "repeats": 3},
    "evaluation": {"digits": 1000, "chains": 16, "steps": 100},
    "is_samples": 5000,
    "is_digits": 1000,
    "quality": [(1000, 50), (10000, 5)],  # (steps, digits) beyond the evaluation's 100-step row
    "quality_chains": 16,
    # step counts tried in order until the gap is <= 1 nat, while the next fits in the budget
    "bdmc": {"digits": 100, "chains": 4, "steps": (100, 300, 1000, 3000), "budget_seconds": 1500},
    "train": {},
}
QUICK = {
    "speed": {"digits": 20, "chains": 4, "steps": 5, "repeats": 2},
    "evaluation": {"digits": 20, "chains": 4, "steps": 5},
    "is_samples": 100,
    "is_digits": 100,
    "quality": [(10, 10)],
    "quality_chains": 4,
    "bdmc": {"digits": 10, "chains": 2, "steps": (5, 10), "budget_seconds": 120},
    "train": {"fit": {"epochs": 1}},
}


# --------------------------------------------------------------------------- 1. speed
def speed_vae():
    return VAE(784, latent_dim=50, hidden=(400,), prior="normal", likelihood="bernoulli", seed=0).eval()


def plain_torch_ais(vae, x, num_chains, num_steps, num_leapfrog_steps, step_size, target_accept=0.65,
                    adapt_rate=0.1, jitter=0.2, adapt_chains=2):
    """AIS from the encoder's q(z|x) to p(x, z) of a standard-normal-prior Bernoulli VAE, written
    out by hand: the same schedule, HMC kernel (a fresh gradient at the start of every transition,
    leapfrog, Metropolis-Hastings), step-size adaptation by ``adapt_chains`` extra chains, and
    jitter as pyro_vae.ais."""
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    betas = annealing_schedule(num_steps).tolist()
    with torch.no_grad():
        loc, scale = vae.encoder(x)
    n, latent = loc.shape
    log_scale_sum = scale.log().sum(-1)

    def log_terms(z):
        logits = vae.decoder(z)
        log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)
        log_p = log_px_z + (-0.5 * z.square() - half_log_2pi).sum(-1)
        log_q = (-0.5 * ((z - loc) / scale).square()).sum(-1) - log_scale_sum - latent * half_log_2pi
        return log_p, log_q

    def energy_grad(z, beta):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            log_p, log_q = log_terms(z)
            energy = -((1 - beta) * log_q + beta * log_p)
            grad, = torch.autograd.grad(energy.sum(), z)
        return energy.detach(), grad, log_p.detach(), log_q.detach()

    c, total = num_chains, num_chains + adapt_chains
    with torch.no_grad():
        z = loc + scale * torch.randn(total, n, latent)
        log_w = torch.zeros(c, n, dtype=torch.float64)
        eps = torch.full((1, n, 1), step_size)
        for t in range(1, num_steps + 1):
            beta = betas[t]
            if t == num_steps:
                log_p, log_q = log_terms(z)
                log_w += (beta - betas[t - 1]) * (log_p[:c] - log_q[:c]).double()
                break
            energy, grad, log_p, log_q = energy_grad(z, beta)
            log_w += (beta - betas[t - 1]) * (log_p[:c] - log_q[:c]).double()
            step = eps * (1 + jitter * (2 * torch.rand(total, n, 1) - 1))
            r0 = torch.randn_like(z)
            zn, r, g = z, r0, grad
            for _ in range(num_leapfrog_steps):
                r = r - 0.5 * step * g
                zn = zn + step * r
                e_new, g, _, _ = energy_grad(zn, beta)
                r = r - 0.5 * step * g
            log_accept = (energy + 0.5 * r0.square().sum(-1) - e_new - 0.5 * r.square().sum(-1)).clamp(max=0)
            log_accept = torch.where(torch.isfinite(log_accept), log_accept, torch.full_like(log_accept, -math.inf))
            accept = torch.rand_like(log_accept).log() < log_accept
            z = torch.where(accept.unsqueeze(-1), zn, z)
            eps = eps * torch.exp(adapt_rate * (log_accept[c:].exp().mean(0) - target_accept)).reshape(eps.shape)
    return torch.logsumexp(log_w, 0) - math.log(c)


def bench_speed(x, sizes):
    vae = speed_vae()
    n, c, t = sizes["digits"], sizes["chains"], sizes["steps"]
    xs = x[:n]
    ours, plain = [], []
    for r in range(sizes["repeats"]):  # alternate the contenders so both see the same machine load
        t0 = time.perf_counter()
        est = ais_log_likelihood(vae.model, vae.guide, xs, t, c, num_leapfrog_steps=LEAPFROG,
                                 step_size=SPEED_STEP_SIZE, seed=r, progress=False)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.manual_seed(r)
        ref = plain_torch_ais(vae, xs, c, t, LEAPFROG, SPEED_STEP_SIZE)
        plain.append(time.perf_counter() - t0)
    units = n * c * t
    return {"n": n, "chains": c, "steps": t, "ours": min(ours), "plain": min(plain), "ours_all": ours,
            "plain_all": plain, "ours_per": min(ours) / units, "plain_per": min(plain) / units,
            "ours_mean": est.mean, "plain_mean": float(ref.mean()),
            "max_diff": float((est.per_datapoint.double() - ref).abs().max())}


# --------------------------------------------------------------------------- 2. evaluation (subprocess)
EVAL_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads({threads})
sys.path.insert(0, {root!r})
from pyro_vae.ais import ais_log_likelihood
from pyro_vae.runs import load_run

def vmhwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
vae, _, x = load_run({run!r})
x = x[:{n}]
base = vmhwm()
t0 = time.perf_counter()
est = ais_log_likelihood(vae.model, vae.guide, x, {steps}, {chains}, seed=0, progress=False)
seconds = time.perf_counter() - t0
print(json.dumps({{"base": base, "peak": vmhwm(), "seconds": seconds, "summary": est.to_dict(),
                  "per_datapoint": est.per_datapoint.tolist()}}))
"""


def bench_evaluation(run_dir, sizes, threads):
    code = EVAL_CHILD.format(root=ROOT, run=run_dir, n=sizes["digits"], steps=sizes["steps"],
                             chains=sizes["chains"], threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- 3.-4. quality
def trained_run(args, plan):
    if args.run:
        return args.run
    out = os.path.join(RUNS, "ais_default_quick" if args.quick else "ais_default")
    if not os.path.isfile(os.path.join(out, "checkpoint.pt")) or not os.path.isfile(os.path.join(out, "samples.png")):
        t0 = time.perf_counter()
        train_run(out, plan["train"], quiet=True)
        print(f"trained {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def paired(a, b):
    d = a - b
    se = float(d.std() / math.sqrt(d.shape[0])) if d.shape[0] > 1 else math.nan
    return float(d.mean()), se


def cost_per_pair_eval(vae, x):
    """Seconds per (digit, chain) evaluation of log p(x, z) with its gradient, from a short run."""
    xs, c, t = x[:100], 8, 5
    t0 = time.perf_counter()
    ais_log_likelihood(vae.model, vae.guide, xs, t, c, num_leapfrog_steps=LEAPFROG, step_size=0.05, seed=0,
                       progress=False)
    evals = xs.shape[0] * (c + ADAPT_CHAINS) * (t + (t - 1) * LEAPFROG)
    return (time.perf_counter() - t0) / evals


def fmt(v, digits=2):
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to try the script (1-2 minutes)")
    parser.add_argument("--run", help="a run folder of the default configuration to reuse (else trained)")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; 1 with --quick)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    torch.set_num_threads(args.threads)
    x_held = load_mnist_10k()[1]

    run_dir = trained_run(args, plan)
    vae, _, test_x = load_run(run_dir)
    per_eval = cost_per_pair_eval(vae, test_x)
    ev, bd = plan["evaluation"], plan["bdmc"]
    pair_evals = lambda n, c, t: n * (c + ADAPT_CHAINS) * (t + (t - 1) * LEAPFROG)  # noqa: E731
    expect = {
        "speed (both contenders)": 2 * plan["speed"]["repeats"] * pair_evals(
            plan["speed"]["digits"], plan["speed"]["chains"], plan["speed"]["steps"]) * per_eval / 2,
        "evaluation": pair_evals(ev["digits"], ev["chains"], ev["steps"]) * per_eval,
        "quality": sum(pair_evals(n, plan["quality_chains"], t) for t, n in plan["quality"]) * per_eval,
        "bdmc (at most)": min(bd["budget_seconds"],
                              sum(2 * pair_evals(bd["digits"], bd["chains"], t) for t in bd["steps"]) * per_eval),
        "importance sampling": plan["is_digits"] * plan["is_samples"] * per_eval / 2,
    }
    print(f"{per_eval * 1e6:.1f} us per (digit, chain) evaluation with gradient of the default model; "
          "expected seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in expect.items()), flush=True)

    speed = bench_speed(x_held, plan["speed"])
    print(f"speed: ours {speed['ours_all']} s, plain {speed['plain_all']} s", flush=True)

    evaluation = bench_evaluation(run_dir, ev, args.threads)
    print(f"evaluation: {evaluation['seconds']:.0f} s, peak {evaluation['peak'] / 2 ** 30:.2f} GB", flush=True)

    t0 = time.perf_counter()
    imp = log_likelihood(vae.model, vae.guide, test_x[:plan["is_digits"]], plan["is_samples"], seed=0,
                         progress=False)
    is_seconds = time.perf_counter() - t0
    print(f"IS: {imp} ({is_seconds:.0f} s)", flush=True)
    rows = []
    ais_100 = torch.tensor(evaluation["per_datapoint"], dtype=imp.per_datapoint.dtype)
    s = evaluation["summary"]
    rows.append({"steps": ev["steps"], "digits": ev["digits"], "mean": s["mean"], "stderr": s["stderr"],
                 "mc": s["mean_mc_stderr"], "ess": s["mean_ess"], "accept": s["mean_acceptance_rate"],
                 "is_same": float(imp.per_datapoint[:ev["digits"]].mean()),
                 "diff": paired(ais_100, imp.per_datapoint[:ev["digits"]]), "seconds": evaluation["seconds"]})
    for steps, n in plan["quality"]:
        t0 = time.perf_counter()
        est = ais_log_likelihood(vae.model, vae.guide, test_x[:n], steps, plan["quality_chains"], seed=0,
                                 progress=False)
        rows.append({"steps": steps, "digits": n, "mean": est.mean, "stderr": est.stderr,
                     "mc": est.mean_mc_stderr, "ess": float(est.ess.mean()), "accept": est.mean_acceptance_rate,
                     "is_same": float(imp.per_datapoint[:n].mean()),
                     "diff": paired(est.per_datapoint, imp.per_datapoint[:n]),
                     "seconds": time.perf_counter() - t0})
        print(f"AIS {steps} steps on {n} digits: {est}", flush=True)

    bdmc_rows, spent = [], 0.0
    for steps in bd["steps"]:
        if bdmc_rows and spent + bdmc_rows[-1]["seconds"] * steps / bdmc_rows[-1]["steps"] > bd["budget_seconds"]:
            print(f"BDMC at {steps} steps would exceed the budget of {bd['budget_seconds']} s; stopping", flush=True)
            break
        t0 = time.perf_counter()
        r = bdmc(vae.model, vae.guide, (bd["digits"], vae.data_dim), steps, bd["chains"], seed=0, progress=False)
        bdmc_rows.append({"steps": steps, **r.to_dict(), "seconds": time.perf_counter() - t0})
        spent += bdmc_rows[-1]["seconds"]
        print(f"{r} ({bdmc_rows[-1]['seconds']:.0f} s)", flush=True)
        if r.mean_gap <= 1.0:
            break

    write_report(args, plan, run_dir, per_eval, speed, evaluation, imp, is_seconds, rows, bdmc_rows)
    return 0


def write_report(args, plan, run_dir, per_eval, speed, evaluation, imp, is_seconds, rows, bdmc_rows):
    gb = 1024 ** 3
    ev = plan["evaluation"]
    command = "PYTHONPATH=. python bench/bench_ais.py" + (" --quick" if args.quick else "") + \
        (f" --run {args.run}" if args.run else "") + f" --threads {args.threads}"
    reached = [r for r in bdmc_rows if r["mean_gap"] <= 1.0]
    lines = [
        "# log p(x) by annealed importance sampling: benchmark",
        "",
        f"Command: `{command}`" + (" (tiny sizes: not a result)" if args.quick else ""),
        "",
        f"{args.threads} torch threads. HMC with {LEAPFROG} leapfrog steps per transition, sigmoid schedule, "
        "per-digit step size adapted toward acceptance 0.65 by 2 extra chains per digit, step-size jitter 0.2 "
        "(the defaults). "
        f"Trained model: `{run_dir}` (the default configuration of `pyro-vae train`). One evaluation "
        f"of log p(x, z) with its gradient for one (digit, chain) pair took {per_eval * 1e6:.1f} us.",
        "",
        "## Speed",
        "",
        f"Untrained VAE 784-400-50 (Bernoulli likelihood, standard-normal prior, seed 0), the first "
        f"{speed['n']} held-out digits, {speed['chains']} chains (+{ADAPT_CHAINS} adaptation chains in both), "
        f"{speed['steps']} steps, initial step size {SPEED_STEP_SIZE}; best of {len(speed['ours_all'])} "
        "alternating runs.",
        "",
        "| contender | seconds | per digit x chain x step | ratio to plain PyTorch |",
        "|---|---|---|---|",
        f"| `pyro_vae.ais_log_likelihood` | {speed['ours']:.2f} | {speed['ours_per'] * 1e6:.1f} us | "
        f"**{speed['ours'] / speed['plain']:.2f}x** (target <= 1.3x) |",
        f"| hand-vectorized plain PyTorch, same kernel and schedule | {speed['plain']:.2f} | "
        f"{speed['plain_per'] * 1e6:.1f} us | 1.00x |",
        "",
        f"Both draw the same random numbers in the same order from the same seed, so they compute the "
        f"same estimates: ours {speed['ours_mean']:.4f}, plain {speed['plain_mean']:.4f} nats per digit "
        f"(largest difference for one digit {speed['max_diff']:.1e}, float32 rounding).",
        "",
        "## The MNIST-10k AIS evaluation",
        "",
        f"`ais_log_likelihood(vae.model, vae.guide, test_x, {ev['steps']}, {ev['chains']})` on {ev['digits']} "
        "held-out digits in a fresh subprocess:",
        "",
        "| wall time | peak RSS (VmHWM) | before estimating | log p(x) per digit |",
        "|---|---|---|---|",
        f"| **{evaluation['seconds']:.0f} s** | **{evaluation['peak'] / gb:.2f} GB** | "
        f"{evaluation['base'] / gb:.2f} GB | {evaluation['summary']['mean']:.2f} |",
        "",
        "## Held-out log p(x) of the trained default model",
        "",
        f"Importance sampling with K = {plan['is_samples']} on the first {imp.num_datapoints} held-out digits: "
        f"**{imp.mean:.2f} +- {imp.stderr:.2f}** nats (Monte Carlo stderr {imp.mean_mc_stderr:.3f}, mean ESS "
        f"{float(imp.ess.mean()):.1f}, {is_seconds:.0f} s). AIS with {plan['quality_chains']} chains on the "
        "first N digits; 'AIS - IS' is the paired difference on the same digits (mean +- standard error).",
        "",
        "| AIS steps | digits | AIS log p(x) | IS (K=%d) same digits | AIS - IS | Monte Carlo stderr | "
        "mean ESS | acceptance | seconds |" % plan["is_samples"],
        "|---|---|---|---|---|---|---|---|---|",
    ] + [
        f"| {r['steps']} | {r['digits']} | {r['mean']:.2f} +- {fmt(r['stderr'])} | {r['is_same']:.2f} | "
        f"**{r['diff'][0]:+.2f} +- {fmt(r['diff'][1])}** | {r['mc']:.3f} | {r['ess']:.1f} | {r['accept']:.2f} | "
        f"{r['seconds']:.0f} |" for r in rows
    ] + [
        "",
        f"## BDMC on {plan['bdmc']['digits']} digits simulated from the trained model",
        "",
        f"{plan['bdmc']['chains']} forward and {plan['bdmc']['chains']} reverse chains per digit; step counts tried "
        f"in order until the mean gap is at most 1.0 nat per digit (within {plan['bdmc']['budget_seconds']} s).",
        "",
        "| steps | lower (forward AIS) | upper (reverse AIS) | mean gap | gap stderr | largest gap | "
        "acceptance fwd / rev | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ] + [
        f"| {r['steps']} | {r['lower']:.2f} | {r['upper']:.2f} | **{r['mean_gap']:.3f}** | {r['gap_stderr']:.3f} | "
        f"{r['max_gap']:.2f} | {r['forward_acceptance']:.2f} / {r['reverse_acceptance']:.2f} | {r['seconds']:.0f} |"
        for r in bdmc_rows
    ] + [
        "",
        (f"The BDMC gap reaches **{reached[0]['mean_gap']:.2f} nat per digit at {reached[0]['steps']} steps** "
         "(target <= 1.0)." if reached else "The BDMC gap did not reach 1.0 nat per digit at the step counts tried."),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    # a quick run is a smoke test: it does not replace the results of a real run
    path = os.path.join(RUNS, "results_ais_quick.md") if args.quick else RESULTS
    os.makedirs(os.path.dirname(path), exist_ok=True)
    storage.write_text(path, text)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
