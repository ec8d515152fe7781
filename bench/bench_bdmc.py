"""The BDMC sandwich and IS against AIS on a trained run, at chosen step counts: the short form of
parts 3 and 4 of ``bench_ais.py`` for when its full plan does not fit the time at hand.

For a run folder of a trained model (e.g. the default configuration trained by
``bench/bench_guides.py --run diagonal``):

1. held-out log p(x) on the first ``--digits`` held-out digits by importance sampling
   (K=``--is-samples``) and by AIS (``--chains`` chains) at each of ``--ais-steps``, paired on the
   same digits;
2. BDMC on ``--bdmc-digits`` digits simulated from the model: forward AIS (lower bound) and reverse
   AIS from the true latents (upper bound), ``--bdmc-chains`` chains, at each of ``--bdmc-steps``
   in order, stopping at the first mean gap of at most 1.0 nat per digit.

Usage::

    PYTHONPATH=. python bench/bench_bdmc.py RUN_DIR --ais-steps 100 300 --bdmc-steps 100 300 1000
"""

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyro_vae import storage  # noqa: E402
from pyro_vae.ais import ais_log_likelihood, bdmc  # noqa: E402
from pyro_vae.importance import log_likelihood  # noqa: E402
from pyro_vae.runs import load_run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def paired(a, b):
    """Mean of a - b and its standard error over datapoints."""
    d = (a - b).double()
    return float(d.mean()), float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder of a trained model")
    p.add_argument("--digits", type=int, default=100, help="held-out digits for IS against AIS")
    p.add_argument("--is-samples", type=int, default=5000)
    p.add_argument("--ais-steps", type=int, nargs="*", default=[100, 300])
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--bdmc-digits", type=int, default=100)
    p.add_argument("--bdmc-chains", type=int, default=4)
    p.add_argument("--bdmc-steps", type=int, nargs="*", default=[100, 300, 1000])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results_bdmc.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vae, _, test_x = load_run(args.run)
    x = test_x[:args.digits]

    t0 = time.perf_counter()
    imp = log_likelihood(vae.model, vae.guide, x, args.is_samples, seed=0, progress=False)
    rows = [("IS", args.is_samples, imp.mean, imp.stderr, float(imp.ess.mean()), float("nan"), float("nan"),
             time.perf_counter() - t0)]
    print(f"IS: {imp}", flush=True)
    for steps in args.ais_steps:
        t0 = time.perf_counter()
        est = ais_log_likelihood(vae.model, vae.guide, x, steps, args.chains, seed=0, progress=False)
        diff, diff_se = paired(est.per_datapoint, imp.per_datapoint)
        rows.append((f"AIS {steps} steps", args.chains, est.mean, est.stderr, float(est.ess.mean()), diff, diff_se,
                     time.perf_counter() - t0))
        print(f"AIS {steps}: {est} (AIS - IS {diff:+.3f} +- {diff_se:.3f})", flush=True)

    bdmc_rows = []
    for steps in args.bdmc_steps:
        t0 = time.perf_counter()
        r = bdmc(vae.model, vae.guide, (args.bdmc_digits, vae.data_dim), steps, args.bdmc_chains, seed=0,
                 progress=False)
        bdmc_rows.append((steps, float(r.lower.mean), float(r.upper.mean), r.mean_gap,
                          float(r.gap.std() / math.sqrt(r.gap.numel())), time.perf_counter() - t0))
        print(f"BDMC {steps}: {r} ({bdmc_rows[-1][-1]:.0f} s)", flush=True)
        if r.mean_gap <= 1.0:
            break

    command = "PYTHONPATH=. python bench/bench_bdmc.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# BDMC sandwich and IS against AIS on a trained run", "",
        f"Command: `{command}`", "",
        f"Run: `{args.run}`; {args.threads} torch thread(s); torch {torch.__version__}.", "",
        f"## Held-out log p(x), first {args.digits} held-out digits", "",
        "| estimator | samples / chains | mean log p(x) | s.e. over digits | mean ESS | minus IS (paired) | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, k, mean, se, ess, diff, diff_se, sec in rows:
        d = "–" if math.isnan(diff) else f"{diff:+.3f} ± {diff_se:.3f}"
        lines.append(f"| {name} | {k} | {mean:.3f} | {se:.3f} | {ess:.1f} | {d} | {sec:.0f} |")
    lines += ["", f"## BDMC on {args.bdmc_digits} digits simulated from the model ({args.bdmc_chains} chains "
              "each way)", "",
              "| steps | forward AIS (lower) | reverse AIS (upper) | mean gap | s.e. | seconds |",
              "|---:|---:|---:|---:|---:|---:|"]
    for steps, lo, up, gap, se, sec in bdmc_rows:
        lines.append(f"| {steps} | {lo:.3f} | {up:.3f} | {gap:.3f} | {se:.3f} | {sec:.0f} |")
    storage.write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
