"""EM for Gaussian mixtures: pyro_vae.GaussianMixture against scikit-learn and an earlier version, side by side.

Command (from the repository root)::

    PYTHONPATH=. python bench/bench_em.py --threads 1,2 --repeats 5 --baseline-ref main

On a machine with a GPU add ``--device cuda`` (scikit-learn stays on the CPU). ``--quick`` runs
a tiny problem, to check that the script works.

``--baseline-ref REF`` also times the mixture of an earlier version of this package in the same
run: the module ``pyro_vae/em.py`` of the git revision ``REF`` (the code before the
``pyro_vae.mixture`` package; ``main`` until that package is merged, a commit before it after),
loaded from ``git show REF:pyro_vae/em.py`` into a temporary module. Without it (or with
``none``) only the current code and scikit-learn are timed.

Both estimators get the same float64 data (N samples of a K-component mixture in d dimensions
with random full covariances), the same initial parameters (``weights_init``, ``means_init``,
``precisions_init``: K distinct random samples as means, equal weights, the inverse of the data
variance as diagonal precisions), ``max_iter`` iterations with ``tol=0`` (so both run exactly
the same number of iterations) and the same number of threads (torch and the numpy BLAS). Fits
alternate in an order that rotates from one repeat to the next, half a second apart (numpy's
OpenBLAS threads spin on the cores for a while after a call, which slowed whichever contender
came right after scikit-learn in a fixed order). The time of a whole ``fit`` (for ours including the one-off setup of the data features) is divided
by the number of iterations; fits of the two libraries alternate, and the median and the best
of ``--repeats`` fits are reported (the best is the steadier figure on a shared machine; the
load average before and after the run is recorded). The relative differences of the
final lower bound (mean log-likelihood of the last E step) and of ``score(X)`` after the fit
show that both computed the same thing.

The markdown table is printed and written to ``bench/results_em.md`` (atomically).
"""

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyro_vae.mixture import GaussianMixture  # noqa: E402
from pyro_vae.storage import write_text  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# seconds between two timed fits: numpy's OpenBLAS threads keep spinning on the cores for a while
# after a call returns, and would slow whichever contender ran right after scikit-learn
PAUSE = 0.5


def load_baseline(ref):
    """The ``GaussianMixture`` class of ``pyro_vae/em.py`` at git revision ``ref``, or ``None`` for "none".

    The module is loaded under another name; it imports the rest of the package (``pyro_vae``)
    from this checkout.
    """
    if ref is None or ref.lower() == "none":
        return None
    try:
        source = subprocess.run(["git", "show", f"{ref}:pyro_vae/em.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise SystemExit(f"--baseline-ref {ref}: cannot read pyro_vae/em.py at that revision "
                         f"({detail.strip()}); give a revision from before the pyro_vae.mixture "
                         "package, or 'none'")
    with tempfile.NamedTemporaryFile("w", suffix=".py", prefix="baseline_em_", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location("baseline_em", f.name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.unlink(f.name)
    return module.GaussianMixture


def make_data(n, d, k, seed):
    """Samples of a mixture with means ~ N(0, 4^2 I) and random full covariances."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(k, d))
    factors = np.tril(rng.normal(scale=0.3, size=(k, d, d)), -1)
    factors += np.einsum("ki,ij->kij", rng.uniform(0.5, 1.5, size=(k, d)), np.eye(d))
    labels = rng.integers(k, size=n)
    noise = rng.normal(size=(n, d))
    X = means[labels] + np.einsum("nij,nj->ni", factors[labels], noise)
    return X


def initial_parameters(X, k, covariance_type, seed):
    """Equal weights, k distinct random samples as means, diagonal precisions 1 / var(X)."""
    rng = np.random.default_rng(seed + 1)
    n, d = X.shape
    weights = np.full(k, 1.0 / k)
    means = X[rng.choice(n, size=k, replace=False)]
    inv_var = 1.0 / X.var(axis=0)
    if covariance_type == "full":
        prec = np.broadcast_to(np.diag(inv_var), (k, d, d)).copy()
    elif covariance_type == "tied":
        prec = np.diag(inv_var)
    elif covariance_type == "diag":
        prec = np.broadcast_to(inv_var, (k, d)).copy()
    else:
        prec = np.full(k, inv_var.mean())
    return weights, means, prec


def timed_fit(make, X, sync):
    gm = make()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0: "did not converge" is expected
        gm.fit(X)
    sync()
    return gm, time.perf_counter() - t0


def _describe(ref):
    """``ref``'s commit, abbreviated, for the results file."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def _thread_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive thread counts, got {text!r}")
    return values


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="samples")
    p.add_argument("--d", type=int, default=16, help="dimensions")
    p.add_argument("--k", type=int, default=16, help="components")
    p.add_argument("--iters", type=int, default=10, help="EM iterations per fit")
    p.add_argument("--repeats", type=int, default=3, help="fits per library (median reported)")
    p.add_argument("--threads", type=_thread_list, default=[2],
                   help="torch and BLAS threads, both sides; several as 1,2")
    p.add_argument("--types", default="full,diag", help="covariance types, comma-separated")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-ref", default="none",
                   help="git revision whose pyro_vae/em.py is timed too, e.g. main before the "
                   "pyro_vae.mixture package was merged (default none)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny problem (N=3000, d=4, K=3, 3 iterations, 1 repeat): checks that the script runs")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results_em.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k, args.iters, args.repeats = 3000, 4, 3, 3, 1
    command = " ".join(["PYTHONPATH=. python bench/bench_em.py"] + list(sys.argv[1:] if argv is None else argv))

    from sklearn import __version__ as sk_version
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from threadpoolctl import threadpool_limits

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    Baseline = load_baseline(args.baseline_ref)
    load_before = os.getloadavg()[0]
    X = make_data(args.n, args.d, args.k, args.seed)
    X_torch = torch.from_numpy(X).to(device)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            for ct in [t.strip() for t in args.types.split(",") if t.strip()]:
                w, m, prec = initial_parameters(X, args.k, ct, args.seed)
                common = dict(n_components=args.k, covariance_type=ct, max_iter=args.iters, tol=0.0,
                              weights_init=w, means_init=m, precisions_init=prec)

                makers = {"sklearn": (lambda: SkGaussianMixture(**common), X, lambda: None),
                          "ours": (lambda: GaussianMixture(device=device, **common), X_torch, sync)}
                if Baseline is not None:
                    makers["baseline"] = (lambda: Baseline(device=device, **common), X_torch, sync)
                for name in ("ours", "baseline"):     # warm-up (allocator, kernels)
                    if name in makers:
                        make, data, done = makers[name]
                        timed_fit(make, data, done)
                times, fits = {name: [] for name in makers}, {}
                order = list(makers)
                for r in range(args.repeats):          # the contenders alternate, in rotating order
                    for name in order[r % len(order):] + order[:r % len(order)]:
                        make, data, done = makers[name]
                        time.sleep(PAUSE)  # a BLAS's threads that spin after its call go to sleep first
                        fits[name], t = timed_fit(make, data, done)
                        times[name].append(t)
                assert all(gm.n_iter_ == args.iters for gm in fits.values())
                ms = {name: statistics.median(t) / args.iters * 1e3 for name, t in times.items()}
                best = {name: min(t) for name, t in times.items()}
                sk = fits["sklearn"]
                rel_lb = abs(fits["ours"].lower_bound_ - sk.lower_bound_) / abs(sk.lower_bound_)
                sk_score, our_score = sk.score(X), fits["ours"].score(X_torch)
                rel_score = abs(our_score - sk_score) / abs(sk_score)
                row = {"ct": ct, "threads": threads, "ms": ms, "speed": ms["sklearn"] / ms["ours"],
                       "best": best["sklearn"] / best["ours"], "rel_lb": rel_lb, "rel_score": rel_score}
                if Baseline is not None:
                    row["vs_baseline"] = ms["baseline"] / ms["ours"]
                    row["vs_baseline_best"] = best["baseline"] / best["ours"]
                    row["rel_baseline"] = (abs(fits["ours"].lower_bound_ - fits["baseline"].lower_bound_)
                                           / abs(fits["baseline"].lower_bound_))
                rows.append(row)
                extra = (f", baseline {ms['baseline']:.1f} ms/iter (baseline / ours: x{row['vs_baseline']:.2f})"
                         if Baseline is not None else "")
                print(f"{ct}, {threads} thread(s): sklearn {ms['sklearn']:.1f} ms/iter, ours {ms['ours']:.1f} "
                      f"ms/iter, x{row['speed']:.2f} (best of {args.repeats}: x{row['best']:.2f}){extra}, "
                      f"rel. diff {rel_lb:.1e} / {rel_score:.1e}", flush=True)

    lines = [
        "# EM benchmark: pyro_vae.GaussianMixture vs scikit-learn",
        "",
        f"Command: `{command}`",
        "",
        f"N={args.n}, d={args.d}, K={args.k}, float64, {args.iters} EM iterations per fit (tol=0), "
        f"same data and initial parameters on both sides; median of {args.repeats} fits "
        f"(speed-up also from the best fit of each); the same number of threads for torch and for "
        f"the numpy BLAS; ours on {device}. torch {torch.__version__}, scikit-learn {sk_version}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU(s), load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run.",
        "",
    ]
    if Baseline is not None:
        lines += [f"Baseline: `pyro_vae/em.py` at `{args.baseline_ref}` "
                  f"({_describe(args.baseline_ref)}), timed in the same run, interleaved with the others.", "",
                  "| covariance | threads | sklearn ms/iter | baseline ms/iter | ours ms/iter | speed-up vs "
                  "sklearn | (best) | baseline / ours | (best) | rel. diff lower bound (sklearn / baseline) "
                  "| rel. diff final log-lik |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| covariance | threads | sklearn ms/iter | ours ms/iter | speed-up | speed-up (best) | "
                  "rel. diff lower bound | rel. diff final log-lik |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms = r["ms"]
        if Baseline is not None:
            lines.append(f"| {r['ct']} | {r['threads']} | {ms['sklearn']:.1f} | {ms['baseline']:.1f} | "
                         f"{ms['ours']:.1f} | {r['speed']:.1f}x | {r['best']:.1f}x | {r['vs_baseline']:.2f}x | "
                         f"{r['vs_baseline_best']:.2f}x | {r['rel_lb']:.1e} / {r['rel_baseline']:.1e} | "
                         f"{r['rel_score']:.1e} |")
        else:
            lines.append(f"| {r['ct']} | {r['threads']} | {ms['sklearn']:.1f} | {ms['ours']:.1f} | "
                         f"{r['speed']:.1f}x | {r['best']:.1f}x | {r['rel_lb']:.1e} | {r['rel_score']:.1e} |")
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
