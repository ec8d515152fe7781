"""EM for Gaussian mixtures: pyro_vae.GaussianMixture against scikit-learn, side by side.

Command (from the repository root)::

    PYTHONPATH=. python bench/bench_em.py --threads 1,2 --repeats 5

On a machine with a GPU add ``--device cuda`` (scikit-learn stays on the CPU).

Both estimators get the same float64 data (N samples of a K-component mixture in d dimensions
with random full covariances), the same initial parameters (``weights_init``, ``means_init``,
``precisions_init``: K distinct random samples as means, equal weights, the inverse of the data
variance as diagonal precisions), ``max_iter`` iterations with ``tol=0`` (so both run exactly
the same number of iterations) and the same number of threads (torch and the numpy BLAS). The
time of a whole ``fit`` (for ours including the one-off setup of the data features) is divided
by the number of iterations; fits of the two libraries alternate, and the median and the best
of ``--repeats`` fits are reported (the best is the steadier figure on a shared machine; the
load average before and after the run is recorded). The relative differences of the
final lower bound (mean log-likelihood of the last E step) and of ``score(X)`` after the fit
show that both computed the same thing.

The markdown table is printed and written to ``bench/results_em.md`` (atomically).
"""

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyro_vae.em import GaussianMixture  # noqa: E402
from pyro_vae.storage import write_text  # noqa: E402


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
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results_em.md"))
    args = p.parse_args(argv)
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

                def make_sk():
                    return SkGaussianMixture(**common)

                def make_ours():
                    return GaussianMixture(device=device, **common)

                timed_fit(make_ours, X_torch, sync)  # warm-up (allocator, kernels)
                t_sk, t_ours = [], []
                for _ in range(args.repeats):
                    sk, t = timed_fit(make_sk, X, lambda: None)
                    t_sk.append(t)
                    ours, t = timed_fit(make_ours, X_torch, sync)
                    t_ours.append(t)
                assert sk.n_iter_ == ours.n_iter_ == args.iters
                ms_sk = statistics.median(t_sk) / args.iters * 1e3
                ms_ours = statistics.median(t_ours) / args.iters * 1e3
                best = min(t_sk) / min(t_ours)
                rel_lb = abs(ours.lower_bound_ - sk.lower_bound_) / abs(sk.lower_bound_)
                sk_score, our_score = sk.score(X), ours.score(X_torch)
                rel_score = abs(our_score - sk_score) / abs(sk_score)
                rows.append((ct, threads, ms_sk, ms_ours, ms_sk / ms_ours, best, rel_lb, rel_score))
                print(f"{ct}, {threads} thread(s): sklearn {ms_sk:.1f} ms/iter, ours {ms_ours:.1f} "
                      f"ms/iter, x{ms_sk / ms_ours:.2f} (best of {args.repeats}: x{best:.2f}), "
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
        "| covariance | threads | sklearn ms/iter | ours ms/iter | speed-up | speed-up (best) | "
        "rel. diff lower bound | rel. diff final log-lik |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ct, threads, ms_sk, ms_ours, speed, best, rel_lb, rel_score in rows:
        lines.append(f"| {ct} | {threads} | {ms_sk:.1f} | {ms_ours:.1f} | {speed:.1f}x | {best:.1f}x | "
                     f"{rel_lb:.1e} | {rel_score:.1e} |")
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
